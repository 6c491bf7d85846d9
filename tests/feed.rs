//! The change feed end to end: clients that take `/v1/subgraph` and then follow
//! `/v1/changes` (long-poll and SSE) hold exactly the subgraph at every LSN checked and SQL at
//! the end — through tenant moves, key changes, deletes and returns, a TRUNCATE, a streamed
//! transaction and rollbacks — and resume across a SIGKILL of graphsync with `Last-Event-ID`,
//! missing nothing and getting nothing twice.

mod common;

use common::replica::{self, current_lsn, http_get};
use common::workload::{self, Workload};
use pgoutput::Lsn;
use pgtest::Cluster;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn setup(prefix: &str) -> (&'static Cluster, String, tempfile::TempDir, std::path::PathBuf) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix);
    cluster.psql(&db, workload::SCHEMA);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = workload::write_config(dir.path(), &db);
    (cluster, db, dir, config)
}

/// Nodes with their tenant, and edges (source, label, target), sorted.
type Shape = (Vec<(String, Value)>, Vec<(String, String, String)>);

/// A client's copy of one subgraph.
#[derive(Debug, Default, Clone, PartialEq)]
struct Model {
    nodes: BTreeMap<String, Value>,
    edges: BTreeMap<(String, String, String, String), u32>,
}

fn edge_key(e: &Value) -> (String, String, String, String) {
    (
        e["source"].as_str().unwrap().to_string(),
        e["target"].as_str().unwrap().to_string(),
        e["edge_label"].as_str().unwrap().to_string(),
        e["weight"].to_string(),
    )
}

fn node_value(n: &Value) -> Value {
    let mut n = n.clone();
    let m = n.as_object_mut().unwrap();
    m.remove("op");
    m.remove("kind");
    n
}

impl Model {
    fn from_subgraph(v: &Value) -> (Lsn, Model) {
        let mut m = Model::default();
        for n in v["nodes"].as_array().unwrap() {
            m.nodes.insert(n["node"].as_str().unwrap().to_string(), node_value(n));
        }
        for e in v["edges"].as_array().unwrap() {
            *m.edges.entry(edge_key(e)).or_default() += 1;
        }
        (v["lsn"].as_str().unwrap().parse().unwrap(), m)
    }

    /// Applies one event; an impossible change (an edge to a node not held, removing what is
    /// not there) is an error.
    fn apply(&mut self, ev: &Value) -> Result<(), String> {
        for c in ev["changes"].as_array().unwrap() {
            match c["op"].as_str().unwrap() {
                "node_upsert" => {
                    self.nodes
                        .insert(c["node"].as_str().unwrap().to_string(), node_value(c));
                }
                "node_delete" => {
                    let n = c["node"].as_str().unwrap();
                    if self.nodes.remove(n).is_none() {
                        return Err(format!("delete of {n}, not held: {ev}"));
                    }
                    self.edges.retain(|k, _| k.0 != n && k.1 != n);
                }
                "edge_add" => {
                    let k = edge_key(c);
                    if !self.nodes.contains_key(&k.0) || !self.nodes.contains_key(&k.1) {
                        return Err(format!("edge {k:?} with an end not held: {ev}"));
                    }
                    *self.edges.entry(k).or_default() += 1;
                }
                "edge_remove" => {
                    let k = edge_key(c);
                    match self.edges.get_mut(&k) {
                        Some(n) if *n > 1 => *n -= 1,
                        Some(_) => {
                            self.edges.remove(&k);
                        }
                        None => return Err(format!("removal of edge {k:?}, not held: {ev}")),
                    }
                }
                op => return Err(format!("unknown op {op}")),
            }
        }
        Ok(())
    }

    /// What differs from `want`, briefly (names only): empty when equal.
    fn diff(&self, want: &Model) -> String {
        let mut out = Vec::new();
        for (k, v) in &self.nodes {
            match want.nodes.get(k) {
                None => out.push(format!("extra node {k}")),
                Some(w) if w != v => out.push(format!("node {k} differs")),
                _ => {}
            }
        }
        out.extend(
            want.nodes
                .keys()
                .filter(|k| !self.nodes.contains_key(*k))
                .map(|k| format!("missing node {k}")),
        );
        for (k, n) in &self.edges {
            if want.edges.get(k) != Some(n) {
                out.push(format!("edge {k:?} x{n} (want {:?})", want.edges.get(k)));
            }
        }
        out.extend(
            want.edges
                .keys()
                .filter(|k| !self.edges.contains_key(*k))
                .map(|k| format!("missing edge {k:?}")),
        );
        out.truncate(20);
        out.join("; ")
    }

    /// Nodes and edges without properties, for comparing with SQL.
    fn shape(&self) -> Shape {
        let nodes = self
            .nodes
            .iter()
            .map(|(k, v)| (k.clone(), v["tenant"].clone()))
            .collect();
        let mut edges: Vec<(String, String, String)> = self
            .edges
            .iter()
            .flat_map(|(k, n)| std::iter::repeat_n((k.0.clone(), k.2.clone(), k.1.clone()), *n as usize))
            .collect();
        edges.sort();
        (nodes, edges)
    }
}

fn query(tenant: Option<&str>) -> String {
    tenant.map_or(String::new(), |t| format!("tenant={t}&"))
}

fn subgraph(addr: &str, tenant: Option<&str>, min_lsn: Lsn) -> (Lsn, Model) {
    let (code, body) = http_get(
        addr,
        &format!("/v1/subgraph?{}min_lsn={min_lsn}&timeout_ms=60000", query(tenant)),
        None,
    );
    assert_eq!(code, 200, "{body}");
    Model::from_subgraph(&serde_json::from_str(&body).expect("subgraph JSON"))
}

/// What SQL says a scope's subgraph is (nodes with their tenant, edges).
fn sql_shape(cluster: &Cluster, db: &str, tenant: Option<&str>) -> Shape {
    let e = workload::expected(cluster, db);
    let inside = |n: &str| {
        e.nodes
            .get(n)
            .is_some_and(|t| tenant.is_none() || t.as_deref() == tenant)
    };
    let nodes: Vec<(String, Value)> = e
        .nodes
        .iter()
        .filter(|(n, _)| inside(n))
        .map(|(n, t)| (n.clone(), t.as_ref().map_or(Value::Null, |t| Value::String(t.clone()))))
        .collect();
    let mut edges: Vec<(String, String, String)> = e
        .edges
        .iter()
        .filter(|(s, _, t)| inside(s) && inside(t))
        .cloned()
        .collect();
    edges.sort();
    (
        nodes.into_iter().collect::<BTreeMap<_, _>>().into_iter().collect(),
        edges,
    )
}

/// A long-poll follower: applies events until it reaches `upto` (never past it).
struct Poller {
    tenant: Option<&'static str>,
    at: Lsn,
    model: Model,
    pending: Vec<Value>,
    events: usize,
}

impl Poller {
    fn catch_up(&mut self, addr: &str, upto: Lsn) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready: Vec<Value> = {
                let (now, later): (Vec<Value>, Vec<Value>) = self
                    .pending
                    .drain(..)
                    .partition(|e| e["lsn"].as_str().unwrap().parse::<Lsn>().unwrap() <= upto);
                self.pending = later;
                now
            };
            for ev in ready {
                let lsn: Lsn = ev["lsn"].as_str().unwrap().parse().unwrap();
                assert!(lsn > self.at, "event {lsn} not after {}", self.at);
                self.model
                    .apply(&ev)
                    .unwrap_or_else(|e| panic!("{:?}: {e}", self.tenant));
                self.at = lsn;
                self.events += 1;
            }
            if self.at >= upto || !self.pending.is_empty() {
                self.at = self.at.max(upto);
                return;
            }
            assert!(Instant::now() < deadline, "feed did not reach {upto}");
            let (code, body) = http_get(
                addr,
                &format!("/v1/changes?{}from={}&wait_ms=2000", query(self.tenant), self.at),
                None,
            );
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            self.pending.extend(v["events"].as_array().unwrap().iter().cloned());
            let next: Lsn = v["next"].as_str().unwrap().parse().unwrap();
            if self.pending.is_empty() && next > self.at {
                self.at = next.min(upto);
            }
        }
    }
}

/// A minimal SSE client over one HTTP/1.1 connection (chunked body).
struct Sse {
    r: BufReader<TcpStream>,
    buf: String,
}

impl Sse {
    fn connect(addr: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let last = last_event_id.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{last}\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
        }
        Sse { r, buf: String::new() }
    }

    /// The next message: (event name, id, data); `None` when the connection ends.
    fn next(&mut self) -> Option<(String, Option<String>, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let msg: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_string(), None, String::new());
                for line in msg.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a comment or retry line
                }
                return Some((event, id, data));
            }
            let mut size = String::new();
            if self.r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                return None;
            }
            let mut chunk = vec![0u8; n + 2];
            self.r.read_exact(&mut chunk).ok()?;
            self.buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    }
}

/// Reads an SSE feed into `model` until an `up-to-date` event at or past `upto`; returns the
/// last id seen.
fn sse_until(sse: &mut Sse, model: &mut Model, last: &mut Lsn, upto: Lsn) -> bool {
    while let Some((event, id, data)) = sse.next() {
        match event.as_str() {
            "message" => {
                let lsn: Lsn = id.expect("id").parse().unwrap();
                assert!(lsn > *last, "event {lsn} not after {last}: nothing twice");
                model.apply(&serde_json::from_str(&data).unwrap()).unwrap();
                *last = lsn;
            }
            "up-to-date" => {
                let lsn: Lsn = id.expect("id").parse().unwrap();
                *last = (*last).max(lsn);
                if lsn >= upto {
                    return true;
                }
            }
            other => panic!("unexpected event {other}: {data}"),
        }
    }
    false
}

const SCOPES: [Option<&str>; 3] = [None, Some("1"), Some("2")];

/// Random transactions in ten rounds; after each, every follower equals `/v1/subgraph` at the
/// same LSN; at the end, SQL.
#[test]
fn followers_equal_the_subgraph_at_every_round_and_sql_at_the_end() {
    let (cluster, db, dir, config) = setup("feed");
    let mut w = Workload::new(0xfeed);
    cluster.psql(&db, &w.seed(200));
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--snapshot-after-changes", "100000000"]);
    let addr = r.addr();
    let start = current_lsn(cluster, &db);
    let mut pollers: Vec<Poller> = SCOPES
        .iter()
        .map(|&tenant| {
            let (at, model) = subgraph(&addr, tenant, start);
            Poller {
                tenant,
                at,
                model,
                pending: Vec::new(),
                events: 0,
            }
        })
        .collect();
    // An SSE follower of tenant 1 from the same start.
    let (sse_at, sse_model) = (pollers[1].at, pollers[1].model.clone());
    let sse_addr = addr.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Lsn>();
    let sse = std::thread::spawn(move || {
        let mut s = Sse::connect(&sse_addr, &format!("/v1/changes?tenant=1&from={sse_at}"), None);
        let (mut model, mut last) = (sse_model, sse_at);
        let upto = done_rx.recv().unwrap();
        assert!(sse_until(&mut s, &mut model, &mut last, upto), "SSE ended early");
        model
    });
    let mut returned = None;
    for round in 0..10 {
        let script = w.script(
            60,
            (round == 5).then_some(20),
            (round == 6).then_some(10),
            (round == 2).then_some(3),
        );
        cluster.psql(&db, &script);
        if round == 7 {
            // A deleted user with edges comes back (same id): it re-enters with them.
            let row = cluster.psql(
                &db,
                "SELECT u.id, u.org_id FROM users u JOIN follows f ON f.follower_id = u.id \
                 WHERE u.org_id IS NOT NULL LIMIT 1",
            );
            if let Some((id, org)) = row.lines().next().and_then(|l| l.split_once('|')) {
                cluster.psql(&db, &format!("DELETE FROM users WHERE id = {id}"));
                cluster.psql(&db, &format!("INSERT INTO users VALUES ({id}, {org}, 'back', NULL)"));
                returned = Some(format!("User:{id}"));
            }
        }
        let now = current_lsn(cluster, &db);
        for p in &mut pollers {
            let (at, want) = subgraph(&addr, p.tenant, now);
            p.catch_up(&addr, at);
            assert_eq!(p.model.diff(&want), "", "round {round}, scope {:?} at {at}", p.tenant);
        }
    }
    let returned = returned.expect("a user to delete and bring back");
    assert!(pollers[0].model.nodes.contains_key(&returned));
    let end = current_lsn(cluster, &db);
    for p in &mut pollers {
        let (at, _) = subgraph(&addr, p.tenant, end);
        p.catch_up(&addr, at);
        assert_eq!(
            p.model.shape(),
            sql_shape(cluster, &db, p.tenant),
            "scope {:?} vs SQL",
            p.tenant
        );
        assert!(p.events > 50, "{:?}: only {} events", p.tenant, p.events);
    }
    done_tx.send(pollers[1].at).unwrap();
    let sse_model = sse.join().expect("SSE follower");
    assert_eq!(
        sse_model.diff(&pollers[1].model),
        "",
        "SSE and long-poll followers of tenant 1"
    );
    let (code, body) = http_get(&addr, "/metrics", None);
    assert_eq!(code, 200);
    assert!(body.contains("graphsync_feed_events_sent_total"), "{body}");
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}

/// An SSE follower of one tenant that disconnects and comes back, then across a SIGKILL of
/// graphsync: it reconnects with `Last-Event-ID` and ends equal to SQL, every event once.
#[test]
fn sse_resumes_across_sigkill_with_last_event_id() {
    let (cluster, db, dir, config) = setup("feedkill");
    let mut w = Workload::new(0xdead);
    cluster.psql(&db, &w.seed(200));
    let data = dir.path().join("data");
    let extra = ["--snapshot-after-changes", "300"];
    let mut r = replica::spawn(cluster, &db, &config, &data, &extra);
    let addr = r.addr();
    let (mut last, mut model) = subgraph(&addr, Some("2"), current_lsn(cluster, &db));
    let mut sse = Sse::connect(&addr, &format!("/v1/changes?tenant=2&from={last}"), None);
    cluster.psql(&db, &w.script(150, None, Some(40), None));
    let mid = current_lsn(cluster, &db);
    assert!(sse_until(&mut sse, &mut model, &mut last, mid));
    // The client goes away, writes go on, and it comes back with Last-Event-ID.
    drop(sse);
    cluster.psql(&db, &w.script(50, None, None, None));
    let mut sse = Sse::connect(&addr, "/v1/changes?tenant=2", Some(&last.to_string()));
    let (at, want) = subgraph(&addr, Some("2"), current_lsn(cluster, &db));
    assert!(sse_until(&mut sse, &mut model, &mut last, at));
    assert_eq!(model.diff(&want), "", "after a reconnect");
    // More writes, and graphsync killed while they stream.
    let writer = {
        let script = w.script(300, Some(100), None, Some(7));
        let (c, d) = (cluster, db.clone());
        std::thread::spawn(move || c.psql(&d, &script))
    };
    // Killed once some of them were applied (bounded wait on the applied position).
    let before = current_lsn(cluster, &db);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer.is_finished() {
        let (_, h) = http_get(&addr, "/health", None);
        let applied: Option<Lsn> = serde_json::from_str::<Value>(&h)
            .ok()
            .and_then(|v| v["applied_lsn"].as_str().and_then(|l| l.parse().ok()));
        if applied.is_some_and(|a| a > before) || Instant::now() > deadline {
            break;
        }
    }
    r.kill();
    // The old connection ends; what was read so far stays.
    while let Some((event, id, data)) = sse.next() {
        if event == "message" {
            let lsn: Lsn = id.unwrap().parse().unwrap();
            assert!(lsn > last);
            model.apply(&serde_json::from_str(&data).unwrap()).unwrap();
            last = lsn;
        }
    }
    writer.join().unwrap();
    let mut r = replica::spawn(cluster, &db, &config, &data, &extra);
    let addr = r.addr();
    let end = current_lsn(cluster, &db);
    let (at, want) = subgraph(&addr, Some("2"), end);
    let mut sse = Sse::connect(&addr, "/v1/changes?tenant=2", Some(&last.to_string()));
    assert!(sse_until(&mut sse, &mut model, &mut last, at));
    assert_eq!(model.diff(&want), "");
    assert_eq!(model.shape(), sql_shape(cluster, &db, Some("2")));
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}

/// Positions older than the change log keeps are refused with 409 (and the oldest position);
/// from that position the feed answers. `/v1/subgraph` also streams NDJSON.
#[test]
fn positions_past_retention_get_409_must_refetch() {
    let (cluster, db, dir, config) = setup("feed409");
    let mut w = Workload::new(0x409);
    cluster.psql(&db, &w.seed(100));
    let data = dir.path().join("data");
    let mut r = replica::spawn(
        cluster,
        &db,
        &config,
        &data,
        &["--snapshot-after-changes", "200", "--log-segment-mb", "1"],
    );
    let addr = r.addr();
    let (start, _) = subgraph(&addr, None, current_lsn(cluster, &db));
    // Over a megabyte of changes (a new segment starts), then enough for two snapshots after.
    cluster.psql(
        &db,
        "INSERT INTO users SELECT g, 1, repeat('n', 300), NULL FROM generate_series(100000, 104000) g",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let oldest: Lsn = loop {
        cluster.psql(&db, &w.script(50, None, None, None));
        let (code, body) = http_get(&addr, &format!("/v1/changes?from={start}&wait_ms=0"), None);
        if code == 409 {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "must-refetch", "{v}");
            break v["oldest"].as_str().unwrap().parse().unwrap();
        }
        assert_eq!(code, 200, "{body}");
        assert!(Instant::now() < deadline, "the log never dropped the start position");
    };
    assert!(oldest > start);
    let (code, body) = http_get(&addr, &format!("/v1/changes?from={oldest}&wait_ms=0"), None);
    assert_eq!(code, 200, "{body}");
    // NDJSON: a header line, then one line per node and per edge, as the JSON form has them
    // (both read once everything written is applied: nothing changes between them).
    let now = current_lsn(cluster, &db);
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /v1/subgraph?tenant=1&min_lsn={now}&timeout_ms=30000 HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(" 200 ") && head.contains("application/x-ndjson"),
        "{head}"
    );
    let lines: Vec<Value> = replica::dechunk(body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["lsn"].is_string() && lines[0]["tenant"] == "1", "{}", lines[0]);
    let (_, json) = http_get(
        &addr,
        &format!("/v1/subgraph?tenant=1&min_lsn={now}&timeout_ms=30000"),
        None,
    );
    let json: Value = serde_json::from_str(&json).unwrap();
    let count = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count();
    assert_eq!(count("node"), json["nodes"].as_array().unwrap().len());
    assert_eq!(count("edge"), json["edges"].as_array().unwrap().len());
    assert!(count("node") > 4000);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}

/// A subscriber that stops reading never holds replication back: graphsync applies everything
/// while it is stuck, then disconnects it (counted in the metrics).
#[test]
fn a_subscriber_that_stops_reading_is_disconnected_and_replication_goes_on() {
    let (cluster, db, dir, config) = setup("feedslow");
    let mut w = Workload::new(0x510);
    cluster.psql(&db, &w.seed(100));
    let data = dir.path().join("data");
    let mut r = replica::spawn(
        cluster,
        &db,
        &config,
        &data,
        &["--feed-stall-timeout-ms", "15000", "--feed-memory-mb", "4"],
    );
    let addr = r.addr();
    let (start, _) = subgraph(&addr, None, current_lsn(cluster, &db));
    // Connected, then never read again (a small receive buffer).
    let mut stuck = TcpStream::connect(&addr).unwrap();
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket and a c_int option of the right size.
        unsafe {
            libc::setsockopt(
                stuck.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    write!(
        stuck,
        "GET /v1/changes?from={start} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let wait = Instant::now() + Duration::from_secs(10);
    while replica::metric(&addr, "graphsync_feed_subscribers").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < wait, "the subscriber never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Some 40 MB of events.
    for i in 0..15 {
        let a = 200_000 + i * 5000;
        cluster.psql(
            &db,
            &format!(
                "INSERT INTO users SELECT g, 1, repeat('x', 400), NULL FROM generate_series({a}, {}) g",
                a + 4999
            ),
        );
    }
    let end = current_lsn(cluster, &db);
    // Applied while the subscriber is still connected and stuck (its stall timeout is 15 s).
    let t = Instant::now();
    let (code, body) = http_get(&addr, &format!("/v1/status?min_lsn={end}&timeout_ms=10000"), None);
    assert_eq!(code, 200, "replication waited for the stuck subscriber: {body}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(replica::metric(&addr, "graphsync_feed_subscribers"), Some(1.0));
    let wait = Instant::now() + Duration::from_secs(60);
    while replica::metric(&addr, "graphsync_feed_disconnects_total").unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < wait, "the stuck subscriber was never disconnected");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(replica::metric(&addr, "graphsync_feed_subscribers"), Some(0.0));
    drop(stuck);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}
