//! Faults: the network cut and stalled between graphsync and PostgreSQL, a full disk under the
//! change log, a torn and a damaged log record, a snapshot corrupted while stopped.

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

/// A small tmpfs mounted over a directory for the length of a test (the data directory of a
/// replicator that is to run out of space); unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mb: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a {mb} MB tmpfs to fill it and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk fills while the change log is appended to: /health says `log_unwritable` with the
/// OS error, nothing is confirmed past what the log held before, queries still answer; once
/// space returns the log catches up, and nothing is lost.
#[test]
fn disk_full_while_logging() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("diskfull");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(0xd15c);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let _mount = Tmpfs::mount(&data, 16);
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--snapshot-after-changes", "1000000"]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let addr = r.addr();
    let before = replica::log_position(&data).unwrap();
    // Fill the disk.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    cluster.psql(&db, &w.script(50, None, None, None));
    let last = current_lsn(cluster, &db);
    let reported = pgtest::wait_for(DEADLINE, || {
        let (code, h) = replica::http_json(&addr, "/health");
        code == 503 && h["status"] == "log_unwritable"
    });
    let (_, health) = replica::http_json(&addr, "/health");
    assert!(reported, "{health}\n{}", r.log());
    let err = health["log_error"].as_str().unwrap_or("");
    assert!(err.contains("No space left") || err.contains("space"), "{health}");
    // The changes are applied (queries see them) but not confirmed.
    let (code, j) = replica::http_json(&addr, &format!("/v1/status?min_lsn={last}&timeout_ms=60000"));
    assert_eq!(code, 200, "{j}");
    let confirmed = replica::confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap();
    let held = replica::log_position(&data).unwrap();
    assert!(
        confirmed <= held && held < last,
        "confirmed {confirmed}, the log holds {held} (before the disk filled: {before}), last write {last}"
    );
    std::fs::remove_file(&filler).unwrap();
    r.wait_durable(last, DEADLINE);
    let (code, h) = replica::http_json(&addr, "/health");
    assert!(
        pgtest::wait_for(DEADLINE, || replica::http_json(&addr, "/health").0 == 200),
        "still unhealthy once space returned: {code} {h}"
    );
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("retrying"), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// The newest segment of the change log in `data`.
fn newest_segment(data: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v.pop().expect("a log segment")
}

/// A record torn by a crash at the end of the change log (a frame whose length runs past the
/// end of the file, then one whose checksum fails) is cut at restart and logged, never applied;
/// the server sends what it held again and nothing is lost.
#[test]
fn torn_log_tail_is_cut() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("torn");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(0x7042);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    for torn in [&b"\xe8\x03\x00\x00"[..], &[0u8; 0][..]] {
        let mut r = replica::spawn(cluster, &db, &config, &data, &["--snapshot-after-changes", "1000000"]);
        cluster.psql(&db, &w.script(30, None, None, None));
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        r.kill();
        let seg = newest_segment(&data);
        let mut bytes = std::fs::read(&seg).unwrap();
        let good = bytes.len();
        if torn.is_empty() {
            // A whole frame whose payload did not reach the disk intact.
            let lsn = u64::MAX - 1;
            let payload = [1u8, 2, 0, 0, 0, 0];
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&lsn.to_le_bytes());
            bytes.extend_from_slice(&0x1234_5678u64.to_le_bytes());
            bytes.extend_from_slice(&payload);
        } else {
            // A frame claiming 1000 bytes of which 50 made it.
            bytes.extend_from_slice(torn);
            bytes.extend_from_slice(&u64::MAX.to_le_bytes());
            bytes.extend_from_slice(&[0x5a; 58]);
        }
        std::fs::write(&seg, &bytes).unwrap();
        cluster.psql(&db, &w.script(30, None, None, None));
        let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        let (status, log) = r.stop();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("cut a torn record") && log.contains(&format!("offset={good}")),
            "{log}"
        );
        assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
    }
}

/// A damaged record before the end of the change log (bit rot in an older segment) is not a
/// torn tail: the start is refused naming the file, the offset and the fix; `graphsync log
/// verify` names it too; --rebuild rebuilds.
#[test]
fn corrupt_log_record_is_refused() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("corruptlog");
    cluster.psql(&db, workload::SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(
        cluster,
        &db,
        &config,
        &data,
        &["--snapshot-after-changes", "100000000", "--log-segment-mb", "1"],
    );
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    // Two records of ~1.5 MB each (30,000 users), so the log rolls to a second segment.
    for part in 0..2 {
        let from = part * 30_000 + 1;
        cluster.psql(
            &db,
            &format!(
                "INSERT INTO users SELECT g, g % 4, 'user number ' || g, NULL FROM generate_series({from}, {}) g",
                from + 29_999
            ),
        );
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    }
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    let mut segments: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "one segment only: {segments:?}");
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(first, &bytes).unwrap();
    let name = first.file_name().unwrap().to_string_lossy().into_owned();

    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(["log", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout).into_owned() + &String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(1), "{out}");
    assert!(out.contains(&name), "{out}");

    let r = replica::spawn(cluster, &db, &config, &data, &[]);
    let (status, log) = r.wait(DEADLINE);
    assert!(!status.success(), "a damaged log was replayed:\n{log}");
    assert!(log.contains(&name) && log.contains("--rebuild"), "{log}");
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--rebuild"]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// A snapshot corrupted while graphsync is stopped is refused at start and the previous one is
/// used with a longer replay of the change log (which keeps everything after the older
/// snapshot): nothing is lost. With both corrupted, the start is refused (the message names the
/// files and the fix) and --rebuild rebuilds from source.
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
    let store = sync::checkpoint::CheckpointStore::open(&data).unwrap();
    // Runs until two snapshots besides the copy's are kept (a snapshot every 50 changes).
    for _ in 0..10 {
        let mut r = replica::spawn(cluster, &db, &config, &data, &["--snapshot-after-changes", "50"]);
        cluster.psql(&db, &w.script(40, None, None, None));
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        let (status, log) = r.stop();
        assert!(status.success(), "{log}");
        if store.manifest().is_some_and(|m| m.previous.is_some()) {
            break;
        }
    }
    // Damage that stays damage when applied twice (a flipped bit would flip back).
    let corrupt = |name: &str| {
        let snap = data.join(name);
        let mut bytes = std::fs::read(&snap).unwrap();
        let at = bytes.len() / 2;
        bytes[at..at + 16].copy_from_slice(&[0xee; 16]);
        std::fs::write(&snap, bytes).unwrap();
    };
    let manifest = store.manifest().unwrap();
    let previous = manifest.previous.clone().expect("two snapshots");
    corrupt(&manifest.snapshot);
    cluster.psql(&db, &w.script(20, None, None, None));
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--snapshot-after-changes", "1000000"]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("skipped an unusable snapshot") && log.contains(&manifest.snapshot),
        "the corrupt snapshot was not reported:\n{log}"
    );
    assert!(
        log.contains(&format!("snapshot={}", previous.snapshot)),
        "the previous snapshot was not used:\n{log}"
    );
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));

    // Both kept snapshots corrupted: refused, and --rebuild rebuilds.
    let manifest = store.manifest().unwrap();
    corrupt(&manifest.snapshot);
    if let Some(p) = &manifest.previous {
        corrupt(&p.snapshot);
    }
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
