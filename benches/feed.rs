//! Change feed benchmark against a throw-away PostgreSQL and the real `graphsync replicate`
//! binary: a fixed-rate write load (pgbench) measured twice side by side — without
//! subscribers, then with `GRAPHSYNC_FEED_BENCH_SUBSCRIBERS` (default 1,000) SSE subscribers
//! spread over `GRAPHSYNC_FEED_BENCH_TENANTS` (default 100) tenants — comparing commit→apply
//! latency and graphsync's CPU, and reporting commit→delivered latency at the clients, memory
//! per idle subscriber, and whether any subscriber missed or repeated an event (each one's
//! events are checked against a long-poll read of its tenant's feed). Then the time to stream
//! `/v1/subgraph` of a tenant of `GRAPHSYNC_FEED_BENCH_BIG_TENANT` (default 100,000) nodes.
//!
//! Knobs: `GRAPHSYNC_FEED_BENCH_SECS` (each load phase, default 30), `GRAPHSYNC_FEED_BENCH_RATE`
//! (transactions per second, default 2,000; each inserts or updates an edge inside one tenant
//! and updates a node of it).

use pgoutput::Lsn;
use pgtest::Cluster;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const SCHEMA: &str = "
CREATE TABLE nodes (id int PRIMARY KEY, org int, name text);
CREATE TABLE edges (a int, b int, w float8, PRIMARY KEY (a, b));
";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

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
properties = ["name"]

[[edges]]
table = "public.edges"
label = "E"
source = {{ column = "a", node = "N" }}
target = {{ column = "b", node = "N" }}
weight = "w"
"#
    )
}

fn current_lsn(cluster: &Cluster, db: &str) -> Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap()
}

fn proc_field(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the ')'.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// A blocking HTTP GET (Connection: close): status and the de-chunked body.
fn get(port: u16, path: &str, accept: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return (code, body.to_vec());
    }
    let mut out = Vec::new();
    loop {
        let nl = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&body[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&body[nl + 2..nl + 2 + n]);
        body = &body[nl + 2 + n + 2..];
    }
    (code, out)
}

fn metrics(port: u16) -> HashMap<String, f64> {
    let (_, body) = get(port, "/metrics", "*/*");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.replace(".0\"", "\""), v.parse().ok()?)))
        .collect()
}

/// The `p` percentile of the commit→apply histogram between two scrapes (bucket bound).
fn pct(m0: &HashMap<String, f64>, m1: &HashMap<String, f64>, p: f64) -> String {
    let d = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    let count = d("graphsync_commit_to_apply_seconds_count");
    let want = (count * p).ceil();
    for b in sync::replicator::Histogram::BOUNDS {
        let k = format!("graphsync_commit_to_apply_seconds_bucket{{le=\"{b}\"}}").replace(".0\"", "\"");
        if d(&k) >= want {
            return format!("<= {:.1} ms", b * 1e3);
        }
    }
    "> 5 s".into()
}

/// RFC 3339 UTC with microseconds → µs since 1970.
fn rfc3339_micros(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let us: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + us)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[derive(Default)]
struct Seen {
    lsns: Vec<Lsn>,
    latencies_us: Vec<i64>,
    up_to_date: Lsn,
}

/// One SSE subscriber: records each event's LSN and commit→delivered latency.
async fn subscribe(port: u16, tenant: u32, from: Lsn, seen: Arc<Mutex<Seen>>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req =
        format!("GET /v1/changes?tenant={tenant}&from={from} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut r = tokio::io::BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut chunk = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
            return;
        };
        if n == 0 {
            return;
        }
        chunk.resize(n + 2, 0);
        if r.read_exact(&mut chunk).await.is_err() {
            return;
        }
        let msg = String::from_utf8_lossy(&chunk[..n]);
        let at = now_micros();
        let id = msg
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .and_then(|v| v.parse::<Lsn>().ok());
        let mut g = seen.lock().unwrap();
        if msg.contains("event: up-to-date") {
            if let Some(id) = id {
                g.up_to_date = id;
            }
        } else if let Some(id) = id {
            g.lsns.push(id);
            if let Some(t) = msg
                .find("\"commit_time\":\"")
                .and_then(|i| rfc3339_micros(&msg[i + 15..i + 15 + 27]))
            {
                g.latencies_us.push(at - t);
            }
        }
    }
}

/// Every event LSN of `tenant`'s feed in (from, upto], by long-poll.
fn feed_lsns(port: u16, tenant: u32, mut from: Lsn, upto: Lsn) -> Vec<Lsn> {
    let mut out = Vec::new();
    while from < upto {
        let (code, body) = get(
            port,
            &format!("/v1/changes?tenant={tenant}&from={from}&wait_ms=0"),
            "application/json",
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for e in v["events"].as_array().unwrap() {
            out.push(e["lsn"].as_str().unwrap().parse().unwrap());
        }
        let next: Lsn = v["next"].as_str().unwrap().parse().unwrap();
        if next <= from {
            break;
        }
        from = next;
    }
    out
}

fn pgbench(cluster: &Cluster, db: &str, dir: &Path, rate: u64, secs: u64, tenants: u64, per_tenant: u64) {
    let script = dir.join("feed.sql");
    std::fs::write(
        &script,
        format!(
            "\\set t random(0, {})\n\\set a random(0, {})\n\\set b random(0, {})\nBEGIN;\n\
             INSERT INTO edges VALUES (:a * {tenants} + :t, :b * {tenants} + :t, 1.0) ON CONFLICT (a, b) DO UPDATE SET w = edges.w + 1;\n\
             UPDATE nodes SET name = 'n' || :b WHERE id = :b * {tenants} + :t;\nEND;\n",
            tenants - 1,
            per_tenant - 1,
            per_tenant - 1
        ),
    )
    .unwrap();
    let out = std::process::Command::new(pgtest::tool("pgbench").expect("pgbench"))
        .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-R", &rate.to_string()])
        .args(["-T", &secs.to_string(), "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &cluster.port().to_string()])
        .arg("-f")
        .arg(&script)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_applied(port: u16, lsn: Lsn) {
    let (code, body) = get(port, &format!("/v1/status?min_lsn={lsn}&timeout_ms=600000"), "*/*");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}

fn percentile(v: &mut [i64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e3
}

fn main() {
    let secs = env_or("GRAPHSYNC_FEED_BENCH_SECS", 30);
    let rate = env_or("GRAPHSYNC_FEED_BENCH_RATE", 2000);
    let subscribers = env_or("GRAPHSYNC_FEED_BENCH_SUBSCRIBERS", 1000) as u32;
    let tenants = env_or("GRAPHSYNC_FEED_BENCH_TENANTS", 100);
    let big = env_or("GRAPHSYNC_FEED_BENCH_BIG_TENANT", 100_000);
    let per_tenant = 2000;
    let cluster = Cluster::start().expect("start PostgreSQL");
    cluster.spawn_watchdog();
    cluster.set_extra_conf("logical_decoding_work_mem = '64MB'\n");
    cluster.reload();
    let db = cluster.create_database("feedbench");
    cluster.psql(&db, SCHEMA);
    let n = per_tenant * tenants;
    cluster.psql(
        &db,
        &format!(
            "INSERT INTO nodes SELECT g, g % {tenants}, 'n' || g FROM generate_series(0, {}) g;\n\
             INSERT INTO edges SELECT g % {n}, ((g::bigint * 7919) % {per_tenant}) * {tenants} + g % {tenants}, 1.0 \
               FROM generate_series(0, {}) g ON CONFLICT DO NOTHING;\n\
             INSERT INTO nodes SELECT g, 1000000, 'big' || g FROM generate_series(10000000, {}) g;\n\
             INSERT INTO edges SELECT 10000000 + g % {big}, 10000000 + (g::bigint * 7919) % {big}, 1.0 \
               FROM generate_series(0, {}) g ON CONFLICT DO NOTHING;\n",
            n - 1,
            n * 5 - 1,
            10_000_000 + big - 1,
            big * 3 - 1
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("feed.toml");
    std::fs::write(&cfg, config(&db)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .arg("replicate")
        .arg("--config")
        .arg(&cfg)
        .args(["--database-url", &cluster.conn_str(&db)])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("graphsync.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "graphsync did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_applied(port, current_lsn(&cluster, &db));
    let mut rows: Vec<[String; 3]> = Vec::new();

    // Warm-up (the first snapshot after the copy, the first compaction), not measured.
    pgbench(&cluster, &db, dir.path(), rate, 5, tenants, per_tenant);
    wait_applied(port, current_lsn(&cluster, &db));

    // Phase 1: no subscribers.
    let m0 = metrics(port);
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    pgbench(&cluster, &db, dir.path(), rate, secs, tenants, per_tenant);
    wait_applied(port, current_lsn(&cluster, &db));
    let cpu1 = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    let m1 = metrics(port);
    rows.push([
        format!("no subscribers, {rate} tx/s, {secs} s"),
        format!("commit->apply p50 {} / p99 {}", pct(&m0, &m1, 0.5), pct(&m0, &m1, 0.99)),
        format!("graphsync CPU {cpu1:.2} cores"),
    ]);

    // Phase 2: subscribers, idle first (memory), then the same load.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = current_lsn(&cluster, &db);
    wait_applied(port, start);
    let rss0 = proc_field(pid, "status", "VmRSS:");
    let seen: Vec<(u32, Arc<Mutex<Seen>>)> = (0..subscribers)
        .map(|i| (i % tenants as u32, Arc::new(Mutex::new(Seen::default()))))
        .collect();
    for (tenant, s) in &seen {
        rt.spawn(subscribe(port, *tenant, start, s.clone()));
    }
    let t = Instant::now();
    while metrics(port).get("graphsync_feed_subscribers").copied().unwrap_or(0.0) < f64::from(subscribers) {
        assert!(t.elapsed() < Duration::from_secs(60), "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = proc_field(pid, "status", "VmRSS:");
    let m0 = metrics(port);
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    pgbench(&cluster, &db, dir.path(), rate, secs, tenants, per_tenant);
    let end = current_lsn(&cluster, &db);
    wait_applied(port, end);
    let cpu2 = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    let m1 = metrics(port);
    // Every subscriber caught up (bounded), then checked against its tenant's feed.
    let t = Instant::now();
    while seen.iter().any(|(_, s)| s.lock().unwrap().up_to_date < end) && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut expected: HashMap<u32, Vec<Lsn>> = HashMap::new();
    let (mut missed, mut extra, mut lat, mut events) = (0usize, 0usize, Vec::new(), 0usize);
    for (tenant, s) in &seen {
        let want = expected
            .entry(*tenant)
            .or_insert_with(|| feed_lsns(port, *tenant, start, end));
        let g = s.lock().unwrap();
        let got: Vec<Lsn> = g.lsns.iter().copied().filter(|l| *l <= end).collect();
        missed += want.iter().filter(|l| !got.contains(l)).count();
        extra += got
            .len()
            .saturating_sub(want.len() - want.iter().filter(|l| !got.contains(l)).count());
        events += got.len();
        lat.extend_from_slice(&g.latencies_us);
    }
    let disconnects = m1.get("graphsync_feed_disconnects_total").copied().unwrap_or(0.0);
    rows.push([
        format!("{subscribers} SSE subscribers over {tenants} tenants, {rate} tx/s, {secs} s"),
        format!("commit->apply p50 {} / p99 {}", pct(&m0, &m1, 0.5), pct(&m0, &m1, 0.99)),
        format!("graphsync CPU {cpu2:.2} cores ({:.2}x without)", cpu2 / cpu1),
    ]);
    rows.push([
        "commit->delivered at the clients".into(),
        format!(
            "p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0)
        ),
        format!(
            "{events} events delivered; missed {missed}, repeated or unexpected {extra}; disconnects {disconnects}"
        ),
    ]);
    rows.push([
        "memory per idle subscriber".into(),
        format!("{:.1} kB", (rss1 - rss0) / f64::from(subscribers)),
        format!(
            "RSS {:.0} MB -> {:.0} MB with {subscribers} connected",
            rss0 / 1024.0,
            rss1 / 1024.0
        ),
    ]);
    drop(rt);

    // Phase 3: the subgraph of a big tenant.
    for (accept, what) in [("application/json", "JSON"), ("application/x-ndjson", "NDJSON")] {
        let t = Instant::now();
        let (code, body) = get(port, "/v1/subgraph?tenant=1000000", accept);
        let took = t.elapsed();
        assert_eq!(code, 200);
        let nodes = if what == "JSON" {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["nodes"].as_array().unwrap().len()
        } else {
            body.split(|b| *b == b'\n')
                .filter(|l| l.windows(13).any(|w| w == b"\"kind\":\"node\""))
                .count()
        };
        rows.push([
            format!("/v1/subgraph of a {big}-node tenant, {what}"),
            format!("{:.0} ms", took.as_secs_f64() * 1e3),
            format!("{nodes} nodes, {:.1} MB", body.len() as f64 / 1e6),
        ]);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    println!("| measurement | result | detail |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r[0], r[1], r[2]);
    }
}
