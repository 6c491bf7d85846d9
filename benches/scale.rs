//! Graph-size benchmark (the durable change log's targets: cost that follows the work, not the
//! graph), against a throw-away PostgreSQL and the real `graphsync` binary. For each graph size,
//! side by side in one run:
//!
//! 1. initial copy: process start to streaming, rows (nodes + edges) per second, RSS then;
//! 2. a steady load: pgbench at `GRAPHSYNC_SCALE_RATE` single-row transactions/s (default 1,000)
//!    for `GRAPHSYNC_SCALE_SECS` (default 60): graphsync's and the walsender's CPU per million
//!    changes, and graphsync's peak RSS while streaming (sampled every 100 ms) over its RSS
//!    right after the copy;
//! 3. restart after SIGKILL: stopped (a final snapshot), started with snapshots far apart,
//!    `GRAPHSYNC_SCALE_LOGGED` changes (default 1,000,000; 1,000-row transactions) logged after
//!    the snapshot, SIGKILL; process start to streaming, and the changes replayed.
//!
//! Sizes: `GRAPHSYNC_SCALE_EDGES`, comma-separated edge counts (default
//! `100000,10000000,50000000`); nodes are a tenth of the edges. Each size has its own database,
//! dropped afterwards. `GRAPHSYNC_SCALE_KEEP_DATA=DIR` keeps each size's data directory there.

mod common;

use common::*;
use pgtest::Cluster;
use std::path::Path;
use std::time::{Duration, Instant};

struct Row {
    edges: u64,
    nodes: u64,
    copy: Duration,
    rss_copy_kb: u64,
    changes: f64,
    cpu_gs: f64,
    cpu_ws: f64,
    rss_peak_kb: u64,
    restart: Duration,
    replayed: u64,
}

fn config(db: &str) -> String {
    format!(
        "[source]\nslot = \"gs_{db}\"\npublication = \"gs_{db}\"\n\n[[nodes]]\ntable = \"public.nodes\"\nkey = \"id\"\nlabel = \"N\"\ntenant = \"org\"\n\n[[edges]]\ntable = \"public.edges\"\nlabel = \"E\"\nsource = {{ column = \"a\", node = \"N\" }}\ntarget = {{ column = \"b\", node = \"N\" }}\nweight = \"w\"\n"
    )
}

fn spawn(cluster: &Cluster, db: &str, cfg: &Path, data: &Path, log: &Path, snapshot_after: u64) -> Proc {
    Proc::spawn(
        &[
            "replicate",
            "--config",
            &cfg.display().to_string(),
            "--database-url",
            &cluster.conn_str(db),
            "--data-dir",
            &data.display().to_string(),
            "--snapshot-after-changes",
            &snapshot_after.to_string(),
        ],
        log,
    )
}

fn streaming(port: u16) -> bool {
    health(port)["status"] == "streaming"
}

fn size(cluster: &'static Cluster, edges: u64, dir: &Path) -> Row {
    let rate = env_or("GRAPHSYNC_SCALE_RATE", 1_000);
    let secs = env_or("GRAPHSYNC_SCALE_SECS", 60);
    let logged = env_or("GRAPHSYNC_SCALE_LOGGED", 1_000_000);
    let nodes = (edges / 10).max(1_000);
    let db = cluster.create_database(&format!("scale_{edges}"));
    eprintln!("{edges} edges: filling the tables");
    cluster.psql(
        &db,
        &format!(
            "CREATE TABLE nodes (id int PRIMARY KEY, org int NOT NULL);
             CREATE TABLE edges (a int, b int, w float8 NOT NULL, PRIMARY KEY (a, b));
             INSERT INTO nodes SELECT g, g % 10 FROM generate_series(0, {}) g;",
            nodes - 1
        ),
    );
    let mut from = 0;
    while from < edges {
        let to = (from + 5_000_000).min(edges);
        cluster.psql(
            &db,
            &format!(
                "INSERT INTO edges SELECT g / 10, (g::bigint * 7919) % {nodes}, 1.0 FROM generate_series({from}, {}) g ON CONFLICT DO NOTHING",
                to - 1
            ),
        );
        from = to;
    }
    let edges: u64 = cluster
        .psql(&db, "VACUUM ANALYZE edges; SELECT count(*) FROM edges")
        .trim()
        .parse()
        .unwrap();
    let cfg = dir.join(format!("{db}.toml"));
    std::fs::write(&cfg, config(&db)).unwrap();
    let data = dir.join(&db);
    let log = dir.join(format!("{db}.log"));

    eprintln!("{edges} edges: initial copy");
    let t = Instant::now();
    let mut p = spawn(cluster, &db, &cfg, &data, &log, 1_000_000);
    p.wait("the initial copy", streaming);
    let copy = t.elapsed();
    let pid = p.child.id();
    let rss_copy_kb = status_kb(pid, "VmRSS");

    eprintln!("{edges} edges: steady load");
    let script = dir.join(format!("{db}.sql"));
    std::fs::write(
        &script,
        format!(
            "\\set a random(0, {n})\n\\set b random(0, {n})\nINSERT INTO edges VALUES (:a, :b, 1.0) ON CONFLICT (a, b) DO UPDATE SET w = edges.w + 1;\n",
            n = nodes - 1
        ),
    )
    .unwrap();
    let ws = walsender_pids(cluster, &db)[0];
    let (gs0, ws0) = (cpu_seconds(pid), cpu_seconds(ws));
    let ch0 = metric(p.port, "graphsync_row_changes_applied_total");
    let load = {
        let (db, script) = (db.clone(), script.clone());
        std::thread::spawn(move || pgbench(cluster, &db, &script, secs, Some(rate)))
    };
    let mut rss_peak_kb = rss_copy_kb;
    while !load.is_finished() {
        rss_peak_kb = rss_peak_kb.max(status_kb(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    load.join().unwrap();
    let end = current_lsn(cluster, &db);
    p.wait("the load applied", |port| applied(port) >= end);
    let changes = metric(p.port, "graphsync_row_changes_applied_total") - ch0;
    let (cpu_gs, cpu_ws) = (cpu_seconds(pid) - gs0, cpu_seconds(ws) - ws0);
    p.stop();

    eprintln!("{edges} edges: {logged} changes logged after the snapshot, SIGKILL, restart");
    let mut p = spawn(cluster, &db, &cfg, &data, &log, 1 << 40);
    p.wait("streaming again", streaming);
    let span = 100;
    let mut sql = String::new();
    let (mut a, mut rows) = (0u64, 0u64);
    while rows < logged {
        sql.push_str(&format!(
            "UPDATE edges SET w = w + 1 WHERE a >= {a} AND a < {};\n",
            a + span
        ));
        rows += span * 10;
        a = if a + span >= nodes { 0 } else { a + span };
    }
    cluster.psql(&db, &sql);
    let end = current_lsn(cluster, &db);
    p.wait("the logged changes applied", |port| applied(port) >= end);
    let _ = p.child.kill();
    let _ = p.child.wait();
    if let Some(to) = std::env::var_os("GRAPHSYNC_SCALE_KEEP_DATA") {
        // For profiling the restart offline: the data directory as the SIGKILL left it.
        let to = Path::new(&to).join(&db);
        let _ = std::fs::remove_dir_all(&to);
        let ok = std::process::Command::new("cp").arg("-a").arg(&data).arg(&to).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "cannot copy {} to {}",
            data.display(),
            to.display()
        );
        eprintln!("{edges} edges: data directory as killed copied to {}", to.display());
    }
    let t = Instant::now();
    let mut p = spawn(cluster, &db, &cfg, &data, &log, 1 << 40);
    p.wait("streaming after SIGKILL", streaming);
    let restart = t.elapsed();
    let status: serde_json::Value = serde_json::from_str(&get(p.port, "/v1/status")).unwrap_or_default();
    let replayed = status["replayed_changes_at_start"].as_u64().unwrap_or(0);
    p.stop();
    cluster.psql(&db, &format!("SELECT pg_drop_replication_slot('gs_{db}')"));
    cluster.psql("postgres", &format!("DROP DATABASE {db}"));
    let _ = std::fs::remove_dir_all(&data);
    Row {
        edges,
        nodes,
        copy,
        rss_copy_kb,
        changes,
        cpu_gs,
        cpu_ws,
        rss_peak_kb,
        restart,
        replayed,
    }
}

fn current_lsn(cluster: &Cluster, db: &str) -> pgoutput::Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap()
}

fn main() {
    let sizes: Vec<u64> = std::env::var("GRAPHSYNC_SCALE_EDGES")
        .unwrap_or_else(|_| "100000,10000000,50000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let cluster = Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row> = sizes.iter().map(|&e| size(cluster, e, dir.path())).collect();
    println!(
        "\n{:>10} {:>9} | {:>16} {:>9} | {:>22} {:>22} | {:>16} | {:>22}",
        "edges",
        "nodes",
        "copy rows/s",
        "RSS MB",
        "CPU s/M changes: gs",
        "walsender (ratio)",
        "peak RSS / copy",
        "restart after SIGKILL"
    );
    let per_m = |cpu: f64, r: &Row| cpu / r.changes.max(1.0) * 1e6;
    for r in &rows {
        let (g, w) = (per_m(r.cpu_gs, r), per_m(r.cpu_ws, r));
        println!(
            "{:>10} {:>9} | {:>16.0} {:>9.0} | {:>22.2} {:>14.2} ({:>4.2}x) | {:>16.2} | {:>9.0} ms, {} mutations replayed",
            r.edges,
            r.nodes,
            (r.edges + r.nodes) as f64 / r.copy.as_secs_f64(),
            r.rss_copy_kb as f64 / 1024.0,
            g,
            w,
            g / w.max(1e-9),
            r.rss_peak_kb as f64 / r.rss_copy_kb.max(1) as f64,
            r.restart.as_secs_f64() * 1e3,
            r.replayed
        );
    }
    if let (Some(small), Some(big)) = (rows.first(), rows.last()) {
        println!(
            "CPU per change, {} edges vs {} edges: {:.2}x",
            big.edges,
            small.edges,
            per_m(big.cpu_gs, big) / per_m(small.cpu_gs, small).max(1e-9)
        );
    }
}
