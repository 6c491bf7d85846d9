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
//! default 1,000,000), `GRAPHSYNC_BENCH_LOG_DIR` (keep graphsync's logs of the load phases there, at info level).
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

    let recvlogical = pgtest::tool("pg_recvlogical").expect("pg_recvlogical not found");
    let t = Instant::now();
    let status = std::process::Command::new(&recvlogical)
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
    let replayed = r.status.snapshot().replayed_changes;
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
        format!(
            "{:.1} ms from snapshot + {replayed} logged changes",
            restart.as_secs_f64() * 1e3
        ),
        format!("{:.0} ms initial copy", copy.as_secs_f64() * 1e3),
        format!("{:.0}x faster", copy.as_secs_f64() / restart.as_secs_f64()),
    ]);
}

/// `graphsync replicate` (the real binary, built by cargo for this bench) as a child process,
/// so its CPU is its own: the load generators and the queries run elsewhere.
struct Binary {
    child: std::process::Child,
    http: Http,
    log: PathBuf,
}

impl Binary {
    fn spawn(cluster: &Cluster, db: &str, cfg: &Path, data: &Path, dir: &Path) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        // GRAPHSYNC_BENCH_LOG_DIR keeps each run's log (at info level) for reading afterwards.
        let keep = std::env::var_os("GRAPHSYNC_BENCH_LOG_DIR").map(PathBuf::from);
        let log = match &keep {
            Some(d) => {
                let _ = std::fs::create_dir_all(d);
                d.join(format!("graphsync-{}.log", now_unix_ms()))
            }
            None => dir.join("graphsync.log"),
        };
        let level = if keep.is_some() { "info" } else { "warn" };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
            .arg("replicate")
            .arg("--config")
            .arg(cfg)
            .args(["--database-url", &cluster.conn_str(db)])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--snapshot-after-changes",
                &env_or("GRAPHSYNC_BENCH_SNAPSHOT_AFTER", 1_000_000).to_string(),
            ])
            .env("RUST_LOG", level)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start graphsync replicate");
        Binary {
            child,
            http: Http::new(port),
            log,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn port(&self) -> u16 {
        self.http.port
    }

    fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!(
                "graphsync replicate exited ({s}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Waits until `/health` reports `lsn` applied.
    fn wait_applied(&mut self, lsn: Lsn, timeout: Duration) {
        let t = Instant::now();
        loop {
            if applied_lsn(&mut self.http).is_some_and(|a| a >= lsn) {
                return;
            }
            self.assert_running();
            assert!(
                t.elapsed() < timeout,
                "graphsync did not apply {lsn} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `/metrics` as name (with labels) → value.
    fn metrics(&mut self) -> std::collections::HashMap<String, f64> {
        let (code, body) = self.http.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "GET /metrics");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((canonical_metric(k), v.parse().ok()?)))
            .collect()
    }

    /// SIGTERM, then wait for the final checkpoint and a clean exit.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(
                    s.success(),
                    "graphsync replicate exited with {s}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            if t.elapsed() > Duration::from_secs(300) {
                let _ = self.child.kill();
                panic!("graphsync replicate did not stop within 300 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A minimal HTTP/1.1 client with keep-alive, for graphsync's API (no client crate needed).
struct Http {
    port: u16,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl Http {
    fn new(port: u16) -> Http {
        Http { port, conn: None }
    }

    /// GET `path`: status code and body. Reconnects once if the kept connection failed.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut last = None;
        for _ in 0..2 {
            if self.conn.is_none() {
                let s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
                s.set_nodelay(true)?;
                self.conn = Some(std::io::BufReader::new(s));
            }
            match Self::exchange(self.conn.as_mut().unwrap(), path) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap())
    }

    fn exchange(c: &mut std::io::BufReader<std::net::TcpStream>, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{BufRead, Read, Write};
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        write!(c.get_mut(), "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut line = String::new();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut len = None;
        loop {
            line.clear();
            if c.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; len.ok_or_else(|| bad("no content-length"))?];
        c.read_exact(&mut body)?;
        Ok((code, body))
    }
}

/// The applied LSN from `/health` (answered in every phase, 503 or not).
fn applied_lsn(http: &mut Http) -> Option<Lsn> {
    let (_, body) = http.get("/health").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("applied_lsn")?.as_str()?.parse().ok()
}

/// Lag as a real maximum, not a histogram bucket: one task samples the server's WAL write
/// position every ms (every transaction acknowledged before the sample ends at or before it),
/// one thread polls graphsync's applied LSN every ms; a sample's lag is the time from the
/// sample to the first poll that saw it applied. Over-estimates by at most the time to the
/// next commit plus one poll interval (~1-2 ms at these rates).
struct Probe {
    sampling: Arc<std::sync::atomic::AtomicBool>,
    polling: Arc<std::sync::atomic::AtomicBool>,
    /// Per sample: when, the server's WAL write position, the slot's confirmed position.
    server: tokio::task::JoinHandle<Vec<(Instant, Lsn, Lsn)>>,
    applied: std::thread::JoinHandle<Vec<(Instant, Lsn)>>,
}

struct ProbeLag {
    samples: usize,
    /// Samples never seen applied (none once the phase waited for everything to apply).
    unresolved: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// How far the slot's confirmed position trails the server's WAL end: per sample, the
    /// time until a later sample's confirmed position reached its WAL position (p50, p99,
    /// max; samples never confirmed before sampling stopped are left out).
    confirmed: (Duration, Duration, Duration),
}

impl Probe {
    fn start(rt: &tokio::runtime::Runtime, cluster: &Cluster, db: &str, port: u16) -> Probe {
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let polling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conn = pgrepl::Config::parse(&cluster.conn_str(db)).unwrap();
        let on = sampling.clone();
        let query = format!(
            "SELECT pg_current_wal_lsn(), (SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'gs_{db}')"
        );
        let server = rt.spawn(async move {
            let mut c = ReplicationClient::connect_sql(&conn).await.unwrap();
            let mut v = Vec::new();
            while on.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let r = c.simple_query(&query).await.unwrap();
                let lsn = r.rows[0][0].as_deref().unwrap().parse().unwrap();
                let confirmed = r.rows[0][1].as_deref().and_then(|c| c.parse().ok()).unwrap_or(Lsn(0));
                v.push((t, lsn, confirmed));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            v
        });
        let on = polling.clone();
        let applied = std::thread::spawn(move || {
            let mut http = Http::new(port);
            let mut v = Vec::new();
            while on.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(lsn) = applied_lsn(&mut http) {
                    v.push((Instant::now(), lsn));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            v
        });
        Probe {
            sampling,
            polling,
            server,
            applied,
        }
    }

    /// Stops sampling the server (call while transactions still commit, so that every sample
    /// is followed by a commit).
    fn stop_sampling(&self) {
        self.sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops polling (call once everything is applied) and computes the lag of each sample.
    fn finish(self, rt: &tokio::runtime::Runtime) -> ProbeLag {
        self.stop_sampling();
        std::thread::sleep(Duration::from_millis(20));
        self.polling.store(false, std::sync::atomic::Ordering::SeqCst);
        let server = rt.block_on(self.server).unwrap();
        let applied = self.applied.join().unwrap();
        // Confirmed lag: the first later sample whose confirmed position reached this one's WAL
        // position (confirmed positions only grow, so one pass).
        let mut confirmed = Vec::with_capacity(server.len());
        let mut k = 0;
        for (i, &(t, lsn, _)) in server.iter().enumerate() {
            k = k.max(i);
            while k < server.len() && server[k].2 < lsn {
                k += 1;
            }
            if let Some(&(u, _, _)) = server.get(k) {
                confirmed.push(u - t);
            }
        }
        confirmed.sort();
        let cat = |p: f64| {
            confirmed
                .get(((confirmed.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let confirmed = (cat(0.5), cat(0.99), confirmed.last().copied().unwrap_or_default());
        let mut lags = Vec::with_capacity(server.len());
        let (mut j, mut unresolved) = (0, 0);
        for (t, lsn, _) in server {
            while j < applied.len() && (applied[j].1 < lsn || applied[j].0 < t) {
                j += 1;
            }
            match applied.get(j) {
                Some((u, _)) => lags.push(*u - t),
                None => unresolved += 1,
            }
        }
        lags.sort();
        let at = |p: f64| {
            lags.get(((lags.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        ProbeLag {
            samples: lags.len(),
            unresolved,
            p50: at(0.5),
            p99: at(0.99),
            max: lags.last().copied().unwrap_or_default(),
            confirmed,
        }
    }
}

/// Neighbours and 3-hop queries over graphsync's HTTP API while it streams.
#[derive(Default)]
struct Queries {
    neigh: Vec<Duration>,
    hop3: Vec<Duration>,
    i: u64,
}

impl Queries {
    fn round(&mut self, http: &mut Http, n_nodes: u64) {
        let k = self.i.wrapping_mul(2_654_435_761) % n_nodes;
        self.i += 1;
        let q = Instant::now();
        let (code, _) = http.get(&format!("/v1/neighbors?node=N:{k}")).unwrap();
        self.neigh.push(q.elapsed());
        assert_eq!(code, 200, "neighbours of N:{k}");
        let q = Instant::now();
        let (code, _) = http
            .get(&format!("/v1/traverse?start=N:{k}&max_depth=3&limit=1000"))
            .unwrap();
        self.hop3.push(q.elapsed());
        assert_eq!(code, 200, "3-hop from N:{k}");
    }
}

/// What a load phase writes.
#[derive(Clone, Copy)]
enum Work {
    /// Transactions of 5 edge rows at this many per second, from one connection.
    Rate(u64),
    /// Transactions of 5 edge rows as fast as two connections commit.
    Max,
    /// pgbench, 4 clients, as fast as they commit: 3 inserts of an edge to a Zipf-distributed
    /// followee and 1 delete of an edge of a Zipf-distributed followee per transaction.
    Hub,
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

/// The pgbench script of the hub phase (followees 1..n-1, Zipf s = 1.3: node 1 is the target
/// of about a quarter of the inserts and deletes). The delete removes one edge of its
/// followee through an index on `b`, skipping rows another client holds.
fn hub_script(n_nodes: u64) -> String {
    let n = n_nodes - 1;
    let mut s = String::new();
    for i in 1..=4 {
        s.push_str(&format!(
            "\\set a{i} random(0, {n})\n\\set b{i} random_zipfian(1, {n}, 1.3)\n"
        ));
    }
    s.push_str("BEGIN;\n");
    for i in 1..=3 {
        s.push_str(&format!(
            "INSERT INTO edges VALUES (:a{i}, :b{i}, 1) ON CONFLICT DO NOTHING;\n"
        ));
    }
    s.push_str(
        "DELETE FROM edges WHERE (a, b) IN (SELECT a, b FROM edges WHERE b = :b4 LIMIT 1 FOR UPDATE SKIP LOCKED);\nEND;\n",
    );
    s
}

/// `secs` of `work` against the real `graphsync replicate` process: lag (commit → applied:
/// per transaction from its histogram's buckets, the real maximum from the LSN probe), CPU of
/// graphsync and of the walsender serving it from the phase's start until all is applied,
/// and (rate and max phases) query latency over the HTTP API meanwhile.
#[allow(clippy::too_many_arguments)]
fn load(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    dir: &Path,
    work: Work,
    secs: u64,
    n_nodes: u64,
    next_key: &mut u64,
    out: &mut Vec<[String; 4]>,
) {
    let pgbench = pgtest::tool("pgbench").unwrap_or_default();
    if matches!(work, Work::Hub) {
        if !pgbench.is_file() {
            out.push([
                "lag, hub phase".into(),
                format!("skipped: no {}", pgbench.display()),
                String::new(),
                String::new(),
            ]);
            return;
        }
        cluster.psql(db, "CREATE INDEX IF NOT EXISTS edges_b ON edges (b)");
    }
    let mut gs = Binary::spawn(cluster, db, cfg, data, dir);
    gs.wait_applied(current_lsn(cluster, db), Duration::from_secs(600));
    let pid = gs.pid();
    let queries = !matches!(work, Work::Hub);
    let mut qs = Queries::default();
    let mut http = Http::new(gs.port());
    // What the probe (and the queries) cost graphsync by themselves: 2 s while idle, once its
    // own background work after the start (compaction, a snapshot) is done: a 500 ms window
    // under 0.05 cores, waited for at most 30 s (else that work would count as the probe's).
    let settled = Instant::now();
    loop {
        let (c0, t) = (cpu_seconds(&pid), Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        let cores = (cpu_seconds(&pid) - c0) / t.elapsed().as_secs_f64();
        if cores < 0.05 || settled.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let overhead = {
        let probe = Probe::start(rt, cluster, db, gs.port());
        let (c0, t) = (cpu_seconds(&pid), Instant::now());
        while t.elapsed() < Duration::from_secs(2) {
            if queries {
                qs.round(&mut http, n_nodes);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let cores = (cpu_seconds(&pid) - c0) / t.elapsed().as_secs_f64();
        probe.finish(rt);
        qs = Queries::default();
        cores
    };
    let walsender = walsender_pid(cluster, db);
    let m0 = gs.metrics();
    let edges0: i64 = cluster.psql(db, "SELECT count(*) FROM edges").parse().unwrap();
    let probe = Probe::start(rt, cluster, db, gs.port());
    let (cpu0, ws0) = (cpu_seconds(&pid), cpu_seconds(&walsender));
    let t = Instant::now();
    let mut bench_out = None;
    let mut txns = 0;
    let mut took = Duration::ZERO;
    if let Work::Hub = work {
        let script = dir.join("hub.sql");
        std::fs::write(&script, hub_script(n_nodes)).unwrap();
        let child = std::process::Command::new(&pgbench)
            .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "--max-tries", "10"])
            .args(["-T", &secs.to_string(), "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &cluster.port().to_string()])
            .arg("-f")
            .arg(&script)
            .arg(db)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pgbench");
        // Stop sampling shortly before pgbench stops, so that commits follow every sample.
        std::thread::sleep(Duration::from_secs_f64((secs as f64 - 0.5).max(0.5)));
        probe.stop_sampling();
        let o = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let field = |prefix: &str| -> f64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        txns = field("number of transactions actually processed:") as u64;
        took = Duration::from_secs(secs);
        bench_out = Some((field("tps ="), field("number of failed transactions:")));
    } else {
        let rate = if let Work::Rate(r) = work { Some(r) } else { None };
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
        while t.elapsed() < Duration::from_secs(secs) {
            qs.round(&mut http, n_nodes);
            std::thread::sleep(Duration::from_millis(25));
        }
        probe.stop_sampling();
        std::thread::sleep(Duration::from_millis(50));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            let (k, d) = rt.block_on(w).unwrap();
            txns += k;
            took = took.max(d);
        }
    }
    let writes = t.elapsed();
    gs.wait_applied(current_lsn(cluster, db), Duration::from_secs(1800));
    let (cpu, ws) = (cpu_seconds(&pid) - cpu0, cpu_seconds(&walsender) - ws0);
    let wall = t.elapsed().as_secs_f64();
    let lag = probe.finish(rt);
    let m1 = gs.metrics();
    gs.stop();
    let delta = |name: &str| m1.get(name).copied().unwrap_or(0.0) - m0.get(name).copied().unwrap_or(0.0);
    // Percentiles of a histogram over the phase, from the deltas of its cumulative buckets.
    let pct_of = |metric: &str, p: f64| -> String {
        let count = delta(&format!("graphsync_{metric}_count")) as u64;
        let want = (count as f64 * p).ceil() as u64;
        for b in sync::replicator::Histogram::BOUNDS {
            if delta(&format!("graphsync_{metric}_bucket{{le=\"{b}\"}}")) as u64 >= want {
                return format!("<= {:.1} ms", b * 1e3);
            }
        }
        "> 5 s".into()
    };
    let pct = |p: f64| pct_of("commit_to_apply_seconds", p);
    // graphsync's own share: commit received → applied.
    let own = |p: f64| pct_of("receive_to_apply_seconds", p);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let how = match work {
        Work::Rate(_) => "fixed rate",
        Work::Max => "max rate",
        Work::Hub => "hub",
    };
    let achieved = txns as f64 / took.as_secs_f64();
    let label = match work {
        Work::Hub => format!("lag, hub {achieved:.0} tx/s x (3 ins + 1 del), {secs} s"),
        _ => format!("lag, {how} {achieved:.0} tx/s x 5 rows, {secs} s"),
    };
    out.push([
        label,
        format!("p50 {}", pct(0.5)),
        format!("p99 {}", pct(0.99)),
        format!(
            "max {:.1} ms (probe p50 {:.1} / p99 {:.1} ms); receive->apply p50 {} / p99 {}; CPU graphsync {:.2} ({:.2} net of probe{}), walsender {:.2} cores",
            ms(lag.max),
            ms(lag.p50),
            ms(lag.p99),
            own(0.5),
            own(0.99),
            cpu / wall,
            cpu / wall - overhead,
            if queries { " + queries" } else { "" },
            ws / wall
        ),
    ]);
    out.push([
        format!("confirmed position behind WAL end, {how}"),
        format!("p50 {:.1} ms / p99 {:.1} ms", ms(lag.confirmed.0), ms(lag.confirmed.1)),
        format!("max {:.1} ms", ms(lag.confirmed.2)),
        "target p99 < 1 s, max < 2 s (pg_replication_slots polled every ms)".into(),
    ]);
    println!(
        "{how}: {txns} transactions in {:.1} s, all applied {:.2} s after the writes stopped; {} probe samples ({} unresolved); \
         graphsync CPU {cpu:.2} s, walsender {ws:.2} s over {wall:.1} s; probe{} cost {overhead:.3} cores idle",
        writes.as_secs_f64(),
        wall - writes.as_secs_f64(),
        lag.samples,
        lag.unresolved,
        if queries { " + queries" } else { "" },
    );
    if queries {
        let q = |v: &mut Vec<Duration>, p: f64| {
            v.sort();
            v.get(((v.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        out.push([
            format!("query latency while streaming, {how} (HTTP)"),
            format!(
                "neighbours p50 {:.0} us / p99 {:.0} us",
                q(&mut qs.neigh, 0.5),
                q(&mut qs.neigh, 0.99)
            ),
            format!(
                "3-hop p50 {:.0} us / p99 {:.0} us",
                q(&mut qs.hop3, 0.5),
                q(&mut qs.hop3, 0.99)
            ),
            format!("{} queries each", qs.neigh.len()),
        ]);
    } else {
        let changes = delta("graphsync_row_changes_applied_total");
        let edges1: i64 = cluster.psql(db, "SELECT count(*) FROM edges").parse().unwrap();
        let net = (edges1 - edges0) as f64;
        let (ins, del) = ((changes + net) / 2.0, (changes - net) / 2.0);
        let (tps, failed) = bench_out.unwrap_or_default();
        let net_cpu = cpu - overhead * wall;
        out.push([
            format!("CPU per change, hub ({changes:.0} changes)"),
            format!("{:.2} us graphsync", cpu / changes * 1e6),
            format!("{:.2} us walsender", ws / changes * 1e6),
            format!(
                "ratio {:.2} (target <= 0.5; {:.2} without the probe's cost); {ins:.0} inserts + {del:.0} deletes, pgbench {tps:.0} tps, {failed:.0} failed",
                cpu / ws,
                net_cpu / ws
            ),
        ]);
    }
}

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
