//! End-to-end benchmark against a throw-away PostgreSQL: catch-up throughput vs
//! `pg_recvlogical`, CPU cost per million row changes vs the walsender, lag under a steady
//! write load, restart from a snapshot vs the initial copy, and query latency while streaming.
//!
//! `cargo bench --bench e2e` prints one table. Knobs: `GRAPHSYNC_BENCH_ROWS` (rows of the
//! catch-up tables, default 1,000,000), `GRAPHSYNC_BENCH_LOAD_SECS` (each load phase, default
//! 60), `GRAPHSYNC_BENCH_RATE` (transactions per second of 5 rows in the fixed-rate phase,
//! default 2000; the second phase writes as fast as two connections can commit; the third,
//! hub-heavy, runs `pgbench` with 4 clients: 3 inserts of edges to Zipf-distributed followees
//! and 1 delete per transaction), `GRAPHSYNC_BENCH_BIG_EDGES` (edges of the graph for the
//! second restart measurement, default 10,000,000; 0 skips it), `GRAPHSYNC_BENCH_ONLY=load`
//! (only the first catch-up, which builds the graph, and the load phases),
//! `GRAPHSYNC_BENCH_SNAPSHOT_AFTER` (graphsync's `--snapshot-after-changes` in the load phases,
//! default 1,000,000), `GRAPHSYNC_BENCH_LOG_DIR` (keep graphsync's logs of the load phases there, at info level,
//! with each phase's probe lags, `probe-*.tsv`, and the lag's parts per 250 ms from `/metrics`,
//! `split-*.tsv`).
//!
//! Catch-up and restart run the replicator inside this process; the three load phases run the
//! real `graphsync replicate` binary (cargo builds it for the bench: `CARGO_BIN_EXE_graphsync`)
//! as a child process, so its CPU (`/proc/PID/stat`) excludes the load generators, the lag
//! probe and the queries, which go over its HTTP API.

use pgoutput::Lsn;
use pgrepl::ReplicationClient;
use pgtest::Cluster;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::config::MappingConfig;
use sync::replicator::{self, Options, Phase, ReplicaStatus};

/// A sample's name with its `le` bound written as Rust prints the bound (`le="1.0"` and
/// `le="1"` are the same bucket), so lookups can format bounds with `{}`.
fn canonical_metric(k: &str) -> String {
    if let Some((name, rest)) = k.split_once("{le=\"") {
        if let Some(b) = rest.strip_suffix("\"}").and_then(|b| b.parse::<f64>().ok()) {
            return format!("{name}{{le=\"{b}\"}}");
        }
    }
    k.to_string()
}

fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const SCHEMA: &str = "
CREATE TABLE nodes (id int PRIMARY KEY, org int);
CREATE TABLE edges (a int, b int, w float8, PRIMARY KEY (a, b));
CREATE TABLE wide (id bigint PRIMARY KEY, a int, b int, c text, d text, e float8, f bigint, g bool, h timestamptz, i numeric);
";

fn config(db: &str) -> String {
    format!(
        r#"
[source]
slot = "gs_{db}"
publication = "pub_{db}"

[[nodes]]
table = "public.nodes"
key = "id"
label = "N"
tenant = "org"

[[nodes]]
table = "public.wide"
key = "id"
label = "W"

[[edges]]
table = "public.edges"
label = "E"
source = {{ column = "a", node = "N" }}
target = {{ column = "b", node = "N" }}
weight = "w"

[[edges]]
table = "public.wide"
label = "WA"
source = {{ column = "id", node = "W" }}
target = {{ column = "a", node = "N" }}
"#
    )
}

/// CPU seconds (user + system) of process `pid` (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn current_lsn(cluster: &Cluster, db: &str) -> Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").parse().unwrap()
}

fn walsender_pid(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'gs_{db}'"),
        )
        .trim()
        .to_string()
}

mod child;
mod inproc;
mod load;

use child::*;
use inproc::*;
use load::*;

fn main() {
    let rows = env_or("GRAPHSYNC_BENCH_ROWS", 1_000_000);
    let load_secs = env_or("GRAPHSYNC_BENCH_LOAD_SECS", 60);
    let rate = env_or("GRAPHSYNC_BENCH_RATE", 2000);
    // `load`: only the first catch-up (it builds the graph) and the load phases.
    let only_load = std::env::var("GRAPHSYNC_BENCH_ONLY").is_ok_and(|v| v == "load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start().expect("start PostgreSQL");
    cluster.spawn_watchdog();
    // The harness keeps logical_decoding_work_mem tiny to exercise streaming; benchmark with
    // the server's default instead.
    cluster.set_extra_conf(
        "logical_decoding_work_mem = '64MB'\nlog_min_messages = log\nlog_checkpoints = on\nlog_autovacuum_min_duration = 0\n",
    );
    cluster.reload();
    let db = cluster.create_database("bench");
    cluster.psql(&db, SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, config(&db)).unwrap();
    let data = dir.path().join("data");
    let n_nodes = (rows / 10).max(1000);
    cluster.psql(
        &db,
        &format!(
            "INSERT INTO nodes SELECT g, g % 10 FROM generate_series(0, {}) g",
            n_nodes - 1
        ),
    );
    let mut out: Vec<[String; 4]> = Vec::new();

    catch_up(
        &rt,
        &cluster,
        &db,
        &cfg,
        &data,
        &move |from, to| {
            format!(
                "INSERT INTO edges SELECT g / 10, (g::bigint * 7919) % {n_nodes}, 1.0 FROM generate_series({from}, {}) g ON CONFLICT DO NOTHING;\n",
                to - 1
            )
        },
        rows,
        &mut out,
        "edge table",
        false,
    );
    if !only_load {
        restart_vs_copy(&rt, &cluster, &db, &cfg, &data, dir.path(), &mut out);
    }
    // Rows of the 10-column table, ids from `offset` on.
    let wide = move |offset: u64| {
        move |from: u64, to: u64| {
            let (from, to) = (from + offset, to + offset);
            format!(
                "INSERT INTO wide SELECT g, g % {n_nodes}, g % 7, 'text ' || g, md5(g::text), g * 0.5, g * 3, g % 2 = 0, \
                 '2024-01-01'::timestamptz + g * interval '1 second', g / 3.0 FROM generate_series({from}, {}) g;\n",
                to - 1
            )
        }
    };
    let wide_runs = [
        (0, "10-column table", false),
        (2 * rows, "10-column table, binary", true),
    ];
    for (offset, what, binary) in wide_runs.into_iter().filter(|_| !only_load) {
        catch_up(
            &rt,
            &cluster,
            &db,
            &cfg,
            &data,
            &wide(offset),
            rows,
            &mut out,
            what,
            binary,
        );
    }

    // Lag and query latency under a steady write load, then under as much as the server takes.
    let mut next_key = 10_000_000u64;
    // Then hub-heavy: Zipf-distributed edge inserts and deletes, as fast as pgbench commits.
    for work in [Work::Rate(rate), Work::Max, Work::Hub] {
        load(
            &rt,
            &cluster,
            &db,
            &cfg,
            &data,
            dir.path(),
            work,
            load_secs,
            n_nodes,
            &mut next_key,
            &mut out,
        );
    }

    // Restart from a snapshot of a bigger graph: the edge table topped up to `big` edges.
    let big = env_or("GRAPHSYNC_BENCH_BIG_EDGES", 10_000_000);
    if big > 0 && !only_load {
        let have: u64 = cluster.psql(&db, "SELECT count(*) FROM edges").trim().parse().unwrap();
        let mut from = 0u64;
        let mut added = 0u64;
        while have + added < big && from < 4 * big {
            let to = from + 1_000_000;
            let n: u64 = cluster
                .psql(
                    &db,
                    &format!(
                        "WITH i AS (INSERT INTO edges SELECT g % {n_nodes}, ((g / {n_nodes}) * 7 + 3) % {n_nodes}, 1.0 \
                         FROM generate_series({from}, {}) g ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM i",
                        to.min(from + big - have - added) - 1
                    ),
                )
                .trim()
                .parse()
                .unwrap();
            added += n;
            from = to;
        }
        restart_vs_copy(&rt, &cluster, &db, &cfg, &data, dir.path(), &mut out);
    }

    if let Some(d) = std::env::var_os("GRAPHSYNC_BENCH_LOG_DIR") {
        let _ = std::fs::write(PathBuf::from(d).join("postgres.log"), cluster.server_log());
    }
    println!("\n{:<42} | {:<34} | {:<34} |", "measure", "graphsync", "reference");
    println!("{}", "-".repeat(130));
    for row in out {
        println!("{:<42} | {:<34} | {:<34} | {}", row[0], row[1], row[2], row[3]);
    }
}
