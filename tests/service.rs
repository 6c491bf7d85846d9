//! The service around the replicator: systemd notifications and clean stop, health while the
//! server goes away and comes back, lag while the process is paused.

mod common;

use common::replica::{self, current_lsn, http_json};
use common::workload::{self, Workload};
use pgtest::Cluster;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// With NOTIFY_SOCKET set: READY=1 once streaming, STOPPING=1 after SIGTERM, exit 0, and the
/// slot's confirmed position is what the change log holds.
#[test]
fn systemd_notify_and_clean_stop() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("notify");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(3);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let data = dir.path().join("data");
    let r = replica::spawn_with_env(
        cluster,
        &db,
        &config,
        &data,
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut got = Vec::new();
    let recv_until = |got: &mut Vec<String>, what: &str| {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = m.lines().any(|l| l == what);
                got.push(m);
                if hit {
                    return true;
                }
            }
        }
        false
    };
    assert!(recv_until(&mut got, "READY=1"), "no READY=1: {got:?}\n{}", r.log());
    cluster.psql(&db, &w.script(30, None, None, None));
    let last = current_lsn(cluster, &db);
    // The test's own writes are applied before stopping (bounded wait on the applied LSN).
    let addr = {
        let mut r2 = r;
        let a = r2.addr();
        let (code, j) = http_json(&a, &format!("/v1/status?min_lsn={last}&timeout_ms=60000"));
        assert_eq!(code, 200, "{j}");
        (r2, a)
    };
    let (r, _) = addr;
    r.signal(libc::SIGTERM);
    assert!(recv_until(&mut got, "STOPPING=1"), "no STOPPING=1: {got:?}");
    let (status, log) = r.wait(DEADLINE);
    assert!(status.success(), "exit {status}; log:\n{log}");
    let ready = got.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = got.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping);
    // A clean stop confirms exactly what the change log holds.
    let held = replica::log_position(&data).expect("a snapshot and a log");
    assert!(held >= last, "the log holds {held}, the test wrote up to {last}");
    assert_eq!(replica::confirmed_flush(cluster, &db, &format!("gs_{db}")), Some(held));
}

/// /health turns 503 `disconnected` within 5 s of the server stopping and 200 again after it
/// is back; nothing is lost across the outage.
#[test]
fn health_follows_the_server() {
    let cluster = Cluster::start().expect("cluster");
    let db = cluster.create_database("health");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(4);
    cluster.psql(&db, &w.seed(100));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(&cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    assert!(
        pgtest::wait_for(DEADLINE, || http_json(&addr, "/health").0 == 200),
        "{}",
        r.log()
    );
    cluster.stop("immediate");
    let stopped = Instant::now();
    let down = pgtest::wait_for(Duration::from_secs(5), || {
        let (code, j) = http_json(&addr, "/health");
        code == 503 && j["status"] == "disconnected"
    });
    assert!(
        down,
        "health after stop: {:?} ({:?} later); log:\n{}",
        http_json(&addr, "/health"),
        stopped.elapsed(),
        r.log()
    );
    cluster.start_again();
    assert!(
        pgtest::wait_for(DEADLINE, || http_json(&addr, "/health").0 == 200),
        "not healthy after restart: {:?}\n{}",
        http_json(&addr, "/health"),
        r.log()
    );
    cluster.psql(&db, &w.script(50, None, None, None));
    let last = current_lsn(&cluster, &db);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    replica::assert_graph_equals(&data, &config, &workload::expected(&cluster, &db));
}

/// lag_bytes grows while the process is paused (SIGSTOP) under writes and returns to 0 after
/// SIGCONT.
#[test]
fn lag_grows_while_paused() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("lag");
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(5);
    let _ = &mut w;
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    assert!(
        pgtest::wait_for(DEADLINE, || http_json(&addr, "/health").0 == 200),
        "{}",
        r.log()
    );
    r.signal(libc::SIGSTOP);
    cluster.psql(&db, &w.script(50, None, None, None));
    // Enough rows that catching up takes a while: lag is observable after SIGCONT.
    let bulk: String = (0..20)
        .map(|i| {
            let a = 1_000_000 + i * 5_000;
            format!(
                "INSERT INTO follows SELECT g, g + 1, 1.0 FROM generate_series({a}, {}) g;\n",
                a + 4_999
            )
        })
        .collect();
    cluster.psql(&db, &bulk);
    let target = current_lsn(cluster, &db);
    r.signal(libc::SIGCONT);
    // Right after resuming the replica still knows it is behind: the server's WAL end it
    // learns first is ahead of what it applied. Observe positive lag, then zero.
    let mut saw_lag = false;
    let caught_up = pgtest::wait_for(DEADLINE, || {
        let (_, j) = http_json(&addr, "/health");
        if j["lag_bytes"].as_u64().unwrap_or(0) > 0 {
            saw_lag = true;
        }
        let applied: pgoutput::Lsn = j["applied_lsn"].as_str().unwrap_or("0/0").parse().unwrap();
        applied >= target && j["lag_bytes"] == 0
    });
    assert!(caught_up, "{:?}\n{}", http_json(&addr, "/health"), r.log());
    assert!(saw_lag, "lag_bytes never rose above 0 after a pause under writes");
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}
