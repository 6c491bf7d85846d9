//! Faults: the network cut and stalled between graphsync and PostgreSQL, a checkpoint that
//! cannot be written, a snapshot corrupted while stopped.

mod common;

use common::proxy::Proxy;
use common::replica::{self, assert_graph_equals, current_lsn};
use common::workload::{self, Workload};
use pgtest::Cluster;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// Cut and stall (3× wal_sender_timeout) the connection through a proxy while a writer runs:
/// graphsync reconnects each time and the graph equals SQL.
#[test]
fn network_cut_and_stall() {
    let cluster = Cluster::start().expect("cluster");
    cluster.set_extra_conf("wal_sender_timeout = '2s'\n");
    cluster.reload();
    let db = cluster.create_database("net");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(0x0e7);
    cluster.psql(&db, &w.seed(200));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let proxy = Proxy::start(cluster.port());
    let url = cluster
        .conn_str(&db)
        .replace(&format!("port={}", cluster.port()), &format!("port={}", proxy.port));
    let mut r = replica::spawn_url(&url, &config, &data, &["--receive-timeout-ms", "3000"], &[]);
    r.wait_durable(current_lsn(&cluster, &db), DEADLINE);
    for round in 0..3 {
        cluster.psql(&db, &w.script(30, None, None, None));
        proxy.cut();
        cluster.psql(&db, &w.script(30, None, None, None));
        let lsn = current_lsn(&cluster, &db);
        r.wait_durable(lsn, DEADLINE);
        // Stall: no bytes either way for 3× wal_sender_timeout.
        proxy.stall();
        cluster.psql(&db, &w.script(30, None, (round == 1).then_some(5), None));
        let stalled = Instant::now();
        while stalled.elapsed() < Duration::from_secs(6) {
            // Waiting out the stall itself is the point of the test.
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy.resume();
        r.wait_durable(current_lsn(&cluster, &db), DEADLINE);
    }
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(log.matches("reconnecting").count() >= 4, "expected reconnects:\n{log}");
    assert_graph_equals(&data, &config, &workload::expected(&cluster, &db));
}

/// A checkpoint that cannot be written is reported, the previous one stays and nothing more
/// is confirmed; once writable again, replication carries on and nothing is lost.
#[test]
fn unwritable_checkpoint() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("unwritable");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(0xd15c);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let before = replica::manifest_lsn(&data).unwrap();
    // The manifest's temporary name taken by a directory: every checkpoint write fails
    // (as with a full disk), whatever the user running the test may write.
    let blocker = data.join(".checkpoint.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    cluster.psql(&db, &w.script(50, None, None, None));
    let failed = pgtest::wait_for(DEADLINE, || r.log().contains("checkpoint failed"));
    assert!(failed, "{}", r.log());
    let (_, health) = replica::http_json(&r.addr(), "/health");
    assert!(
        health["last_error"].as_str().unwrap_or("").contains("checkpoint"),
        "{health}"
    );
    assert_eq!(replica::manifest_lsn(&data), Some(before), "the manifest moved");
    let confirmed = replica::confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap();
    assert!(
        confirmed <= before,
        "confirmed {confirmed} past the durable checkpoint {before}"
    );
    std::fs::remove_dir(&blocker).unwrap();
    let last = current_lsn(cluster, &db);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// A snapshot corrupted while graphsync is stopped is refused at start and the previous one is
/// used (the server still holds everything after it, since only what both cover is
/// confirmed): nothing is lost. With both corrupted, the start is refused (the message names
/// the files and the fix) and --rebuild rebuilds from source.
#[test]
fn corrupted_snapshot_falls_back_then_rebuilt() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("corrupt");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(0xbad);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    for _ in 0..2 {
        let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
        cluster.psql(&db, &w.script(20, None, None, None));
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        let (status, log) = r.stop();
        assert!(status.success(), "{log}");
    }
    let store = sync::checkpoint::CheckpointStore::open(&data).unwrap();
    let corrupt = |name: &str| {
        let snap = data.join(name);
        let mut bytes = std::fs::read(&snap).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&snap, bytes).unwrap();
    };
    let manifest = store.manifest().unwrap();
    let previous = manifest.previous.clone().expect("two checkpoints after two runs");
    assert!(
        replica::confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap() <= previous.lsn,
        "confirmed past the previous checkpoint"
    );
    corrupt(&manifest.snapshot);
    cluster.psql(&db, &w.script(20, None, None, None));
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("skipped an unusable checkpoint file") && log.contains(&manifest.snapshot),
        "the corrupt snapshot was not reported:\n{log}"
    );
    assert!(
        log.contains(&previous.snapshot),
        "the previous snapshot was not used:\n{log}"
    );
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));

    // Both kept snapshots corrupted: refused, and --rebuild rebuilds.
    let manifest = store.manifest().unwrap();
    corrupt(&manifest.snapshot);
    corrupt(&manifest.previous.clone().expect("a previous checkpoint").snapshot);
    let r = replica::spawn(cluster, &db, &config, &data, &[]);
    let (status, log) = r.wait(DEADLINE);
    assert!(!status.success(), "a corrupt snapshot was accepted:\n{log}");
    assert!(log.contains(&manifest.snapshot) && log.contains("--rebuild"), "{log}");
    cluster.psql(&db, &w.script(20, None, None, None));
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--rebuild"]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// Peak resident memory (kB) of process `pid`.
/// Size of the big streamed transaction, in MB: `GRAPHSYNC_BIG_TXN_MB`, or 2 GB when the temp
/// directory has room for it (the server's WAL and table plus our spill file: about 3× the
/// size), else as much as fits, at least 200 MB.
fn big_txn_mb() -> usize {
    if let Ok(v) = std::env::var("GRAPHSYNC_BIG_TXN_MB") {
        return v.parse().expect("GRAPHSYNC_BIG_TXN_MB must be a whole number of MB");
    }
    let free_mb = free_mb(&std::env::temp_dir());
    let mb = (free_mb / 4).clamp(200, 2048) as usize;
    if mb < 2048 {
        eprintln!("only {free_mb} MB free in the temp directory: the big transaction is {mb} MB, not 2 GB");
    }
    mb
}

/// Free space of the file system holding `dir`, in MB.
fn free_mb(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs for the call to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >> 20
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One streamed transaction of 2 GB (102,400 rows with a 20 kB column the mapping does not
/// keep) is spilled and applied with graphsync's peak memory under 100 MB (61 MB measured), and the graph
/// equals SQL. About a minute on 2 cores.
#[test]
fn large_streamed_transaction_in_bounded_memory() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("bigtxn");
    cluster.psql(&db, workload::SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    // Stored out of line and uncompressed, so the WAL carries every byte too.
    cluster.psql(
        &db,
        "ALTER TABLE follows ADD COLUMN note text; ALTER TABLE follows ALTER COLUMN note SET STORAGE EXTERNAL",
    );
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--spill-threshold-mb", "8"]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let before = vm_hwm_kb(r.child.id());
    // follows.note is published (the whole row travels) but not mapped: rows of 20 kB reach
    // graphsync as one streamed transaction. The edges join existing users, so the graph
    // itself stays small (50,000 nodes, ~100,000 edges) and what the memory bound measures is
    // the transaction's handling.
    let mb = big_txn_mb();
    let rows = mb * 50;
    cluster.psql(
        &db,
        &format!(
            "BEGIN;
             INSERT INTO users SELECT g, g % 4, 'u' || g, NULL FROM generate_series(1, 50000) g;
             INSERT INTO follows SELECT g % 50000 + 1, g / 50000 + 1, 1.0, repeat(md5(g::text), 640) FROM generate_series(0, {rows} - 1) g;
             COMMIT;"
        ),
    );
    let started = Instant::now();
    let last = current_lsn(cluster, &db);
    r.wait_durable(last, DEADLINE + Duration::from_secs(mb as u64 / 4));
    let peak = vm_hwm_kb(r.child.id());
    let took = started.elapsed();
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("spilled to disk"),
        "the transaction was not spilled:\n{log}"
    );
    let spilled: u64 = log
        .lines()
        .filter_map(|l| l.split("spilled_bytes=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    eprintln!("{rows} rows: peak RSS before {before} kB, after {peak} kB; spilled {spilled} bytes; applied {took:?} after the commit");
    assert!(
        spilled > (rows as u64) * 20_000,
        "only {spilled} bytes went through the spill file"
    );
    assert!(
        peak < 100 * 1024,
        "peak RSS {peak} kB for a {mb} MB transaction (started at {before} kB)"
    );
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}
