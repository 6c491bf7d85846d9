//! Driving the real `graphsync replicate` binary and comparing its graph with SQL.
#![allow(dead_code)]

use graph::{query, Direction, EdgeFilter, GraphView, NodeId, NodeKey, Topology};
use pgoutput::Lsn;
use pgtest::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::checkpoint::CheckpointStore;
use sync::config::MappingConfig;
use sync::mapper::Mapper;

/// A running `graphsync replicate`.
pub struct Replicator {
    pub child: Child,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Starts `graphsync replicate` for `db` with `config` (a file path), a snapshot every 500
/// logged changes (so tests restart from snapshots plus a replay, and old log segments go).
pub fn spawn(cluster: &Cluster, db: &str, config: &Path, data_dir: &Path, extra: &[&str]) -> Replicator {
    spawn_with_env(cluster, db, config, data_dir, extra, &[])
}

/// As [`spawn`], with extra environment variables.
pub fn spawn_with_env(
    cluster: &Cluster,
    db: &str,
    config: &Path,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Replicator {
    spawn_url(&cluster.conn_str(db), config, data_dir, extra, env)
}

/// Starts `graphsync replicate` against connection string `url`.
pub fn spawn_url(url: &str, config: &Path, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Replicator {
    let mut args: Vec<std::ffi::OsString> = vec!["replicate".into(), "--database-url".into(), url.into()];
    if !extra.contains(&"--snapshot-after-changes") {
        args.extend(["--snapshot-after-changes".into(), "500".into()]);
    }
    spawn_graphsync(args, config, data_dir, extra, env)
}

/// Starts `graphsync follow` of the stream on NATS at `nats`.
pub fn spawn_follower(nats: &str, config: &Path, data_dir: &Path, extra: &[&str]) -> Replicator {
    let args = vec!["follow".into(), "--nats".into(), nats.into()];
    spawn_graphsync(args, config, data_dir, extra, &[])
}

fn spawn_graphsync(
    args: Vec<std::ffi::OsString>,
    config: &Path,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Replicator {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, Ordering::SeqCst);
    let log = data_dir.with_extension(format!("run{n}.log"));
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .spawn()
        .expect("spawn graphsync");
    Replicator {
        child,
        data_dir: data_dir.to_path_buf(),
        log,
    }
}

impl Replicator {
    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP API's address, once it listens (panics after 60 s).
    pub fn addr(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(a) = self
                .log()
                .lines()
                .find(|l| l.contains("HTTP API listening"))
                .and_then(|l| l.split("listen=").nth(1))
            {
                return a.trim().to_string();
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("graphsync exited with {s}; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no HTTP listener; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The position the data directory holds (snapshot or change log record) on disk.
    pub fn durable_lsn(&self) -> Option<Lsn> {
        log_position(&self.data_dir)
    }

    /// Waits until the data directory holds `lsn`; panics with the log after `timeout` or if the
    /// process exits.
    pub fn wait_durable(&mut self, lsn: Lsn, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.durable_lsn().is_some_and(|l| l >= lsn) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "graphsync exited with {status} before covering {lsn}; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "graphsync did not cover {lsn} within {timeout:?} (at {:?}); log:\n{}",
                    self.durable_lsn(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn stop(mut self) -> (ExitStatus, String) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = wait_exit(&mut self.child, Duration::from_secs(60));
        let log = self.log();
        (status, log)
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_exit(&mut self.child, timeout);
        let log = self.log();
        (status, log)
    }
}

/// A test that panics before stopping its replicator leaves no process behind.
impl Drop for Replicator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("graphsync did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The newest snapshot's LSN in `data_dir`'s manifest.
pub fn manifest_lsn(data_dir: &Path) -> Option<Lsn> {
    let data_dir = &sync::generation::state_dir(data_dir);
    CheckpointStore::open(data_dir).ok()?.manifest().map(|m| m.lsn)
}

/// The newest position `data_dir` holds: its last valid change log record, or its manifest's
/// position (the snapshot's LSN, or further while only unmapped tables changed). Read without changing anything, also while a replicator writes: a record being
/// written may already count (it is in the file, maybe not yet fsynced), so this is at least
/// the replicator's durable position.
pub fn log_position(data_dir: &Path) -> Option<Lsn> {
    let data_dir = &sync::generation::state_dir(data_dir);
    let snapshot = CheckpointStore::open(data_dir).ok()?.manifest().map(|m| m.position)?;
    let log = sync::changelog::LogDir::open(&data_dir.join("log")).ok()?;
    let last = log.verify().ok()?.iter().filter_map(|s| s.last).max().unwrap_or(Lsn(0));
    Some(snapshot.max(last))
}

/// `pg_current_wal_lsn()`.
pub fn current_lsn(cluster: &Cluster, db: &str) -> Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").parse().expect("lsn")
}

/// The slot's `confirmed_flush_lsn`, if the slot exists.
pub fn confirmed_flush(cluster: &Cluster, db: &str, slot: &str) -> Option<Lsn> {
    let s = cluster.psql(
        db,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    );
    s.trim().parse().ok()
}

/// A node as `Label:key` text.
pub type NodeName = String;

/// What the graph should hold, as SQL computes it: every node with its tenant, and every edge
/// as (source, label, target).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    pub nodes: BTreeMap<NodeName, Option<String>>,
    pub edges: Vec<(NodeName, String, NodeName)>,
}

fn key_text(k: &NodeKey) -> String {
    k.to_string()
}

/// Loads the state in `data_dir` (snapshot + change log) and compares it with `expected`: the same visible
/// nodes, tenants, and for every node the same out- and in-neighbours (with edge labels).
pub fn assert_graph_equals(data_dir: &Path, config: &Path, expected: &Expected) -> Lsn {
    let config = MappingConfig::load(config).expect("config");
    let mapper = Mapper::new(Arc::new(config.clone()));
    let (graph, _, lsn) = sync::replicator::load(data_dir, config.mapping_hash())
        .expect("restore")
        .expect("a snapshot");
    let view = graph.view();
    compare(&view, &mapper, expected);
    lsn
}

/// Compares a view with `expected`.
pub fn compare(view: &GraphView, mapper: &Mapper, expected: &Expected) {
    let name = |n: NodeId| -> NodeName {
        let d = view.node(n).expect("node data");
        format!("{}:{}", mapper.node_labels()[d.label.0 as usize], key_text(&d.key))
    };
    let mut got_nodes = BTreeMap::new();
    for id in 0..view.node_count() {
        let n = NodeId(id);
        if view.is_visible(n) {
            let d = view.node(n).expect("visible node has data");
            got_nodes.insert(name(n), d.tenant.as_ref().map(key_text));
        }
    }
    let missing: Vec<_> = expected
        .nodes
        .keys()
        .filter(|k| !got_nodes.contains_key(*k))
        .take(10)
        .collect();
    let extra: Vec<_> = got_nodes
        .keys()
        .filter(|k| !expected.nodes.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "node sets differ: missing {missing:?}, extra {extra:?} ({} expected, {} in graph)",
        expected.nodes.len(),
        got_nodes.len()
    );
    for (k, t) in &expected.nodes {
        assert_eq!(got_nodes.get(k), Some(t), "tenant of {k}");
    }
    let mut want_out: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    let mut want_in: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (s, l, t) in &expected.edges {
        if expected.nodes.contains_key(s) && expected.nodes.contains_key(t) {
            want_out.entry(s).or_default().push((l.clone(), t.clone()));
            want_in.entry(t).or_default().push((l.clone(), s.clone()));
        }
    }
    let mut checked = BTreeSet::new();
    for id in 0..view.node_count() {
        let n = NodeId(id);
        if !view.is_visible(n) {
            continue;
        }
        let me = name(n);
        for (dir, want) in [(Direction::Out, &want_out), (Direction::In, &want_in)] {
            let mut got: Vec<(String, String)> = query::neighbors(view, n, dir, EdgeFilter::default())
                .expect("neighbors")
                .into_iter()
                .map(|(m, l)| (mapper.edge_labels()[l.0 as usize].clone(), name(m)))
                .collect();
            got.sort();
            let mut w = want.get(me.as_str()).cloned().unwrap_or_default();
            w.sort();
            assert_eq!(got, w, "{dir:?} neighbours of {me}");
        }
        checked.insert(me);
    }
    assert_eq!(checked.len(), expected.nodes.len());
}

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of metric `name` (a sample without labels) on `addr`'s `/metrics`, if it has one.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (bounded) until /health says `status`; returns its body.
pub fn wait_health(r: &mut Replicator, addr: &str, status: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, j) = http_json(addr, "/health");
        if j["status"] == status {
            return j;
        }
        if let Ok(Some(s)) = r.child.try_wait() {
            panic!("graphsync exited with {s} waiting for {status}; log:\n{}", r.log());
        }
        assert!(
            Instant::now() < deadline,
            "health never said {status} (last {j}); log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until a background rebuild was swapped in `n` times in all.
pub fn wait_rebuilds(r: &mut Replicator, addr: &str, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = r.child.try_wait() {
            panic!("graphsync exited with {s}; log:\n{}", r.log());
        }
        let (_, j) = http_json(addr, "/v1/status");
        if j["rebuilds"].as_u64() == Some(n) && j["rebuild"].is_null() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no rebuild swapped in (status {j}); log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the API until stopped; returns (polls, failures with what failed).
pub fn poller(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut polls, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            for path in ["/v1/nodes/User/1", "/v1/neighbors?node=User:1&direction=in&limit=5"] {
                let (code, body) = http_get(&addr, path, None);
                polls += 1;
                if code != 200 {
                    failed.push(format!("{path}: {code} {body}"));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (polls, failed)
    })
}

/// A poller that also checks the applied position never goes back.
pub fn lsn_poller(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut polls, mut failed) = (0, Vec::new());
        let mut last = pgoutput::Lsn(0);
        while !stop.load(Ordering::SeqCst) {
            let (code, j) = http_json(&addr, "/v1/neighbors?node=User:1&direction=in&limit=5");
            polls += 1;
            if code != 200 {
                failed.push(format!("{code} {j}"));
                continue;
            }
            let lsn: pgoutput::Lsn = j["lsn"].as_str().unwrap_or("0/0").parse().unwrap();
            if lsn < last {
                failed.push(format!("the answer went back from {last} to {lsn}"));
            }
            last = lsn;
            std::thread::sleep(Duration::from_millis(5));
        }
        (polls, failed)
    })
}

/// GET returning parsed JSON.
pub fn http_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(addr, path, None);
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// Compares every expected node's neighbours (out and in), read over the HTTP API at
/// `min_lsn`, with `expected`.
pub fn compare_over_http(addr: &str, expected: &Expected, min_lsn: Lsn) {
    let mut want: BTreeMap<&str, Vec<(String, String, String)>> = BTreeMap::new();
    for (s, l, t) in &expected.edges {
        if expected.nodes.contains_key(s) && expected.nodes.contains_key(t) {
            want.entry(s).or_default().push(("out".into(), l.clone(), t.clone()));
            want.entry(t).or_default().push(("in".into(), l.clone(), s.clone()));
        }
    }
    for (name, tenant) in &expected.nodes {
        // Every page (small pages, so the cursor is exercised on hubs too).
        let mut got: Vec<(String, String, String)> = Vec::new();
        let mut cursor = String::new();
        loop {
            let (code, j) = http_json(
                addr,
                &format!(
                    "/v1/neighbors?node={name}&direction=both&min_lsn={min_lsn}&timeout_ms=30000&limit=500{cursor}"
                ),
            );
            assert_eq!(code, 200, "neighbors of {name}: {j}");
            got.extend(j["neighbors"].as_array().expect("neighbors array").iter().map(|n| {
                (
                    n["direction"].as_str().unwrap_or("").to_string(),
                    n["edge_label"].as_str().unwrap_or("").to_string(),
                    n["node"].as_str().unwrap_or("").to_string(),
                )
            }));
            match j["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        got.sort();
        let mut w = want.get(name.as_str()).cloned().unwrap_or_default();
        w.sort();
        assert_eq!(got, w, "neighbours of {name} over HTTP");
        let (label, key) = name.split_once(':').unwrap();
        let (code, j) = http_json(addr, &format!("/v1/nodes/{label}/{key}"));
        assert_eq!(code, 200, "{name}: {j}");
        assert_eq!(
            j["tenant"].as_str().map(str::to_string),
            tenant.clone(),
            "tenant of {name}"
        );
    }
}
