//! End-to-end benchmark against a throw-away PostgreSQL: catch-up throughput vs
//! `pg_recvlogical`, CPU cost per million row changes vs the walsender, lag under a steady
//! write load, restart from a snapshot vs the initial copy, and query latency while streaming.
//!
//! `cargo bench --bench e2e` prints one table. Knobs: `GRAPHSYNC_BENCH_ROWS` (rows of the
//! catch-up tables, default 1,000,000), `GRAPHSYNC_BENCH_LOAD_SECS` (each load phase, default
//! 60), `GRAPHSYNC_BENCH_RATE` (transactions per second of 5 rows in the fixed-rate phase,
//! default 2000; the second phase writes as fast as two connections can commit),
//! `GRAPHSYNC_BENCH_BIG_EDGES` (edges of the graph for the second restart measurement, default
//! 10,000,000; 0 skips it).

use graph::{query, Direction, EdgeFilter, NodeId, Topology};
use pgoutput::Lsn;
use pgrepl::ReplicationClient;
use pgtest::Cluster;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::config::MappingConfig;
use sync::replicator::{self, Options, Phase, ReplicaStatus};

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

struct Running {
    status: Arc<ReplicaStatus>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), replicator::SyncError>>,
}

fn start(rt: &tokio::runtime::Runtime, cluster: &Cluster, db: &str, cfg: &Path, data: &Path) -> Running {
    start_with(rt, cluster, db, cfg, data, false)
}

fn start_with(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    binary: bool,
) -> Running {
    let config = Arc::new(MappingConfig::load(cfg).unwrap());
    let conn = pgrepl::Config::parse(&cluster.conn_str(db)).unwrap();
    let mut opts = Options::new(config, conn, data.to_path_buf());
    opts.checkpoint_interval = Duration::from_secs(5);
    opts.binary = binary;
    let status = ReplicaStatus::new();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = rt.spawn(replicator::run(opts, status.clone(), rx));
    Running { status, stop, task }
}

fn wait_applied(r: &Running, lsn: Lsn, timeout: Duration) -> Duration {
    let t = Instant::now();
    while r.status.snapshot().applied_lsn < lsn {
        assert!(
            t.elapsed() < timeout,
            "not caught up within {timeout:?}: {:?}",
            r.status.snapshot()
        );
        assert!(
            !r.task.is_finished(),
            "replicator stopped: {:?}",
            r.status.snapshot().last_error
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

fn stop(rt: &tokio::runtime::Runtime, r: Running) {
    let _ = r.stop.send(true);
    rt.block_on(r.task).unwrap().unwrap();
}

fn current_lsn(cluster: &Cluster, db: &str) -> Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").parse().unwrap()
}

/// Catch-up of `rows` rows committed in 1,000-row transactions while nobody consumed:
/// graphsync (`slot` of the mapping) vs pg_recvlogical (its own slot, same options).
#[allow(clippy::too_many_arguments)]
fn catch_up(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    insert: &dyn Fn(u64, u64) -> String,
    rows: u64,
    out: &mut Vec<[String; 4]>,
    what: &str,
    binary: bool,
) {
    // Both slots exist before the writes; graphsync's has a checkpoint of the current state.
    let r = start(rt, cluster, db, cfg, data);
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(600));
    stop(rt, r);
    let recv_slot = format!("recv_{db}");
    cluster.psql(
        db,
        &format!("SELECT pg_create_logical_replication_slot('{recv_slot}', 'pgoutput')"),
    );
    let mut script = String::new();
    let mut i = 0;
    while i < rows {
        script.push_str(&format!("BEGIN;\n{}COMMIT;\n", insert(i, (i + 1000).min(rows))));
        i += 1000;
    }
    cluster.psql(db, &script);
    let target = current_lsn(cluster, db);

    let cpu0 = cpu_seconds("self");
    let r = start_with(rt, cluster, db, cfg, data, binary);
    let took = wait_applied(&r, target, Duration::from_secs(1800));
    let cpu = cpu_seconds("self") - cpu0;
    let snap = r.status.snapshot();
    let apply = snap.apply_seconds.sum;
    let compaction = snap.compaction_seconds;
    let walsender_cpu = cluster
        .psql(
            db,
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'gs_{db}'"),
        )
        .trim()
        .to_string();
    let ws_cpu = cpu_seconds(&walsender_cpu);
    stop(rt, r);

    let bin = pgtest::find_bin_dir().unwrap();
    let t = Instant::now();
    let status = std::process::Command::new(bin.join("pg_recvlogical"))
        .args([
            "-d",
            &cluster.conn_str(db),
            "--slot",
            &recv_slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-E", &target.to_string()])
        .args([
            "-o",
            "proto_version=3",
            "-o",
            &format!("publication_names=pub_{db}"),
            "-o",
            "streaming=on",
        ])
        .status()
        .unwrap();
    let recv = t.elapsed();
    assert!(status.success(), "pg_recvlogical failed");
    cluster.psql(db, &format!("SELECT pg_drop_replication_slot('{recv_slot}')"));
    let g = rows as f64 / took.as_secs_f64();
    let p = rows as f64 / recv.as_secs_f64();
    out.push([
        format!("catch-up {what}, {rows} rows"),
        format!("{:.0} rows/s ({:.2} s)", g, took.as_secs_f64()),
        format!("{:.0} rows/s ({:.2} s)", p, recv.as_secs_f64()),
        format!("ratio {:.2}", g / p),
    ]);
    out.push([
        format!("CPU per million changes, {what}"),
        format!("{:.2} s graphsync", cpu / rows as f64 * 1e6),
        format!("{:.2} s walsender", ws_cpu / rows as f64 * 1e6),
        format!(
            "of which applying {:.2} s, compacting {:.2} s",
            apply / rows as f64 * 1e6,
            compaction / rows as f64 * 1e6
        ),
    ]);
}

/// Time from process start to streaming from the checkpoint of the current graph, vs a fresh
/// initial copy of the same tables (on a second slot and data directory).
fn restart_vs_copy(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    dir: &Path,
    out: &mut Vec<[String; 4]>,
) {
    let r = start(rt, cluster, db, cfg, data);
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(1800));
    stop(rt, r);
    let t = Instant::now();
    let r = start(rt, cluster, db, cfg, data);
    while r.status.snapshot().phase != Phase::Streaming {
        std::thread::sleep(Duration::from_micros(200));
    }
    let restart = t.elapsed();
    let edges = r.status.graph().map_or(0, |g| g.view().edge_count());
    stop(rt, r);
    let cfg2 = dir.join("copy.toml");
    std::fs::write(&cfg2, config(db).replace("slot = \"gs_", "slot = \"gs2_")).unwrap();
    let copy_dir = dir.join("copy");
    let _ = std::fs::remove_dir_all(&copy_dir);
    let t = Instant::now();
    let r = start(rt, cluster, db, &cfg2, &copy_dir);
    while r.status.snapshot().phase != Phase::Streaming {
        std::thread::sleep(Duration::from_micros(200));
    }
    let copy = t.elapsed();
    stop(rt, r);
    cluster.psql(db, &format!("SELECT pg_drop_replication_slot('gs2_{db}')"));
    let _ = std::fs::remove_dir_all(&copy_dir);
    out.push([
        format!("start to streaming, {edges} edges"),
        format!("{:.1} ms from snapshot", restart.as_secs_f64() * 1e3),
        format!("{:.0} ms initial copy", copy.as_secs_f64() * 1e3),
        format!("{:.0}x faster", copy.as_secs_f64() / restart.as_secs_f64()),
    ]);
}

/// `secs` of transactions of 5 edge rows, at `rate` per second or (`None`) as fast as two
/// connections commit, with queries on the live graph meanwhile: lag (commit → applied) and
/// query latency rows.
#[allow(clippy::too_many_arguments)]
fn load(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    rate: Option<u64>,
    secs: u64,
    n_nodes: u64,
    next_key: &mut u64,
    out: &mut Vec<[String; 4]>,
) {
    let r = start(rt, cluster, db, cfg, data);
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(600));
    let before = r.status.snapshot().commit_to_apply_seconds;
    let walsender = cluster
        .psql(
            db,
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'gs_{db}'"),
        )
        .trim()
        .to_string();
    let (cpu0, ws0) = (cpu_seconds("self"), cpu_seconds(&walsender));
    let conn = pgrepl::Config::parse(&cluster.conn_str(db)).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..if rate.is_some() { 1 } else { 2 })
        .map(|w| {
            let (done, conn) = (done.clone(), conn.clone());
            // Each writer its own key range (within int4): rows never conflict.
            let base = *next_key + w * 100_000_000;
            rt.spawn(async move {
                let mut c = ReplicationClient::connect_sql(&conn).await.unwrap();
                let start = Instant::now();
                let mut k: u64 = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(rate) = rate {
                        let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let a = base + k * 5;
                    c.simple_query(&format!(
                        "BEGIN; INSERT INTO edges SELECT g % {n_nodes}, {a} + g, 1 FROM generate_series(0, 4) g; COMMIT;"
                    ))
                    .await
                    .unwrap();
                    k += 1;
                }
                (k, start.elapsed())
            })
        })
        .collect();
    *next_key += 200_000_000;
    let reader = r.status.graph().unwrap();
    let mut neigh = Vec::new();
    let mut hop3 = Vec::new();
    let mut scratch = query::Scratch::default();
    let t = Instant::now();
    let mut i = 0u32;
    while t.elapsed() < Duration::from_secs(secs) {
        let view = reader.view();
        let n = NodeId((i.wrapping_mul(2_654_435_761)) % view.node_count().max(1));
        i += 1;
        if !view.is_visible(n) {
            continue;
        }
        let q = Instant::now();
        let _ = query::neighbors(&*view, n, Direction::Out, EdgeFilter::default());
        neigh.push(q.elapsed());
        let q = Instant::now();
        let _ = query::k_hop(
            &*view,
            &mut scratch,
            n,
            Direction::Out,
            EdgeFilter::default(),
            3,
            100_000,
        );
        hop3.push(q.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (cpu, ws) = (cpu_seconds("self") - cpu0, cpu_seconds(&walsender) - ws0);
    let wall = t.elapsed().as_secs_f64();
    let mut txns = 0;
    let mut took = Duration::ZERO;
    for w in writers {
        let (k, d) = rt.block_on(w).unwrap();
        txns += k;
        took = took.max(d);
    }
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(600));
    let after = r.status.snapshot().commit_to_apply_seconds;
    stop(rt, r);
    let mut h = after.clone();
    for (b, a) in h.buckets.iter_mut().zip(before.buckets) {
        *b -= a;
    }
    h.count -= before.count;
    let pct = |p: f64| -> String {
        let want = (h.count as f64 * p).ceil() as u64;
        let mut cum = 0;
        for (b, c) in sync::replicator::Histogram::BOUNDS.iter().zip(h.buckets) {
            cum += c;
            if cum >= want {
                return format!("<= {:.1} ms", b * 1e3);
            }
        }
        "> 5 s".into()
    };
    let how = if rate.is_some() { "fixed rate" } else { "max rate" };
    let achieved = txns as f64 / took.as_secs_f64();
    out.push([
        format!("lag, {how} {achieved:.0} tx/s x 5 rows, {secs} s"),
        format!("p50 {}", pct(0.5)),
        format!("p99 {}", pct(0.99)),
        format!(
            "max {}; CPU graphsync {:.2}, walsender {:.2} cores",
            pct(1.0),
            cpu / wall,
            ws / wall
        ),
    ]);
    let q = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    out.push([
        format!("query latency while streaming, {how}"),
        format!(
            "neighbours p50 {:.1} us / p99 {:.1} us",
            q(&mut neigh, 0.5),
            q(&mut neigh, 0.99)
        ),
        format!(
            "3-hop p50 {:.1} us / p99 {:.1} us",
            q(&mut hop3, 0.5),
            q(&mut hop3, 0.99)
        ),
        format!("{} queries each", neigh.len()),
    ]);
}

fn main() {
    let rows = env_or("GRAPHSYNC_BENCH_ROWS", 1_000_000);
    let load_secs = env_or("GRAPHSYNC_BENCH_LOAD_SECS", 60);
    let rate = env_or("GRAPHSYNC_BENCH_RATE", 2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = Cluster::start().expect("start PostgreSQL");
    cluster.spawn_watchdog();
    // The harness keeps logical_decoding_work_mem tiny to exercise streaming; benchmark with
    // the server's default instead.
    cluster.set_extra_conf("logical_decoding_work_mem = '64MB'\n");
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
    restart_vs_copy(&rt, &cluster, &db, &cfg, &data, dir.path(), &mut out);
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
    for (offset, what, binary) in [
        (0, "10-column table", false),
        (2 * rows, "10-column table, binary", true),
    ] {
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
    for rate in [Some(rate), None] {
        load(
            &rt,
            &cluster,
            &db,
            &cfg,
            &data,
            rate,
            load_secs,
            n_nodes,
            &mut next_key,
            &mut out,
        );
    }

    // Restart from a snapshot of a bigger graph: the edge table topped up to `big` edges.
    let big = env_or("GRAPHSYNC_BENCH_BIG_EDGES", 10_000_000);
    if big > 0 {
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

    println!("\n{:<42} | {:<34} | {:<34} |", "measure", "graphsync", "reference");
    println!("{}", "-".repeat(130));
    for row in out {
        println!("{:<42} | {:<34} | {:<34} | {}", row[0], row[1], row[2], row[3]);
    }
}
