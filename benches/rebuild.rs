//! Background rebuild benchmark against a throw-away PostgreSQL and the real `graphsync
//! replicate` binary: a graph of `GRAPHSYNC_REBUILD_BENCH_EDGES` edges (default 1,000,000) over
//! a tenth as many nodes, a writer committing small transactions all along, clients querying
//! neighbours without pause, and a forced rebuild (`POST /v1/admin/rebuild`). Reports the time
//! from the request to the swap (copy, then catch-up), the queries answered and failed during
//! it (a failure is a non-200 answer, a refused connection or an answer older than the one
//! before), graphsync's memory before, at peak and after, and whether the rebuilt graph holds
//! what SQL holds.

use pgoutput::Lsn;
use pgtest::Cluster;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One HTTP/1.1 request: status code and body (0 when the connection failed).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    if write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut buf = String::new();
    if s.read_to_string(&mut buf).is_err() {
        return (0, String::new());
    }
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, r)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || r.len() < n {
                break;
            }
            out.push_str(&r[..n]);
            rest = r[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

fn json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http(port, "GET", path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn current_lsn(cluster: &Cluster, db: &str) -> Lsn {
    cluster.psql(db, "SELECT pg_current_wal_lsn()").trim().parse().unwrap()
}

fn main() {
    let edges = env_or("GRAPHSYNC_REBUILD_BENCH_EDGES", 1_000_000);
    let nodes = (edges / 10).max(10);
    let cluster = Arc::new(Cluster::start().expect("start PostgreSQL"));
    cluster.spawn_watchdog();
    let db = cluster.create_database("rebuildbench");
    cluster.psql(
        &db,
        &format!(
            "CREATE TABLE nodes (id int PRIMARY KEY, org int, name text);
             CREATE TABLE edges (a int, b int, PRIMARY KEY (a, b));
             INSERT INTO nodes SELECT g, g % 100, 'n' || g FROM generate_series(0, {}) g;
             INSERT INTO edges SELECT g % {nodes}, (g::bigint * 7919 + g / {nodes}) % {nodes} FROM generate_series(0, {}) g ON CONFLICT DO NOTHING;",
            nodes - 1,
            edges - 1
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rebuild.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nslot = \"gs_{db}\"\npublication = \"pub_{db}\"\n\n[[nodes]]\ntable = \"public.nodes\"\nkey = \"id\"\nlabel = \"N\"\ntenant = \"org\"\nproperties = [\"name\"]\n\n[[edges]]\ntable = \"public.edges\"\nlabel = \"E\"\nsource = {{ column = \"a\", node = \"N\" }}\ntarget = {{ column = \"b\", node = \"N\" }}\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .arg("replicate")
        .arg("--config")
        .arg(&cfg)
        .args(["--database-url", &cluster.conn_str(&db)])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("graphsync.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "graphsync did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lsn = current_lsn(&cluster, &db);
    json(port, &format!("/v1/neighbors?node=N:0&min_lsn={lsn}&timeout_ms=600000"));
    let first_copy = started.elapsed().as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (cluster, db, stop, commits) = (cluster.clone(), db.clone(), stop.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                // Ten small transactions per psql call.
                let mut sql = String::new();
                for _ in 0..10 {
                    i += 1;
                    let (a, b) = (i * 31 % nodes, (i * 17 + 5) % nodes);
                    sql.push_str(&format!(
                        "BEGIN; INSERT INTO edges VALUES ({a}, {b}) ON CONFLICT DO NOTHING; \
                         DELETE FROM edges WHERE a = {b} AND b = (SELECT min(b) FROM edges WHERE a = {b}); \
                         UPDATE nodes SET name = 'w{i}' WHERE id = {a}; COMMIT;\n"
                    ));
                }
                cluster.psql(&db, &sql);
                commits.fetch_add(10, Ordering::SeqCst);
            }
        })
    };
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let pollers: Vec<_> = (0..2)
        .map(|k| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut last = Lsn(0);
                let mut n = k;
                while !stop.load(Ordering::SeqCst) {
                    n = (n + 7) % nodes;
                    let (code, body) = http(
                        port,
                        "GET",
                        &format!("/v1/neighbors?node=N:{n}&direction=both&limit=20"),
                    );
                    let lsn = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|j| j["lsn"].as_str().and_then(|l| l.parse::<Lsn>().ok()));
                    match (code, lsn) {
                        (200, Some(l)) if l >= last => {
                            last = l;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // A few seconds of steady state, then the forced rebuild.
    std::thread::sleep(Duration::from_secs(3));
    let rss_before = rss_mb(pid);
    let (answered0, failed0, commits0) = (
        answered.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        commits.load(Ordering::SeqCst),
    );
    let t0 = Instant::now();
    let (code, body) = http(port, "POST", "/v1/admin/rebuild");
    assert_eq!(code, 200, "{body}");
    let mut rss_peak: f64 = rss_before;
    let mut copied_at = None;
    loop {
        let s = json(port, "/v1/status");
        rss_peak = rss_peak.max(rss_mb(pid));
        if copied_at.is_none() && s["rebuild"]["phase"] == "streaming" {
            copied_at = Some(t0.elapsed().as_secs_f64());
        }
        if s["rebuilds"] == 1 && s["rebuild"].is_null() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1800), "no swap: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let swapped = t0.elapsed().as_secs_f64();
    let (answered1, failed1, commits1) = (
        answered.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        commits.load(Ordering::SeqCst),
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    for p in pollers {
        p.join().unwrap();
    }
    let lsn = current_lsn(&cluster, &db);
    json(port, &format!("/v1/neighbors?node=N:0&min_lsn={lsn}&timeout_ms=600000"));
    let s = json(port, "/v1/status");
    let sql_edges: u64 = cluster.psql(&db, "SELECT count(*) FROM edges").trim().parse().unwrap();
    let rss_after = rss_mb(pid);
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    println!("| | |\n|---|---|");
    println!(
        "| graph | {} nodes, {} edges (first copy + start {first_copy:.1} s) |",
        nodes, s["edges"]
    );
    println!(
        "| request → swapped | {swapped:.2} s (copy {:.2} s, then catch-up) |",
        copied_at.unwrap_or(f64::NAN)
    );
    println!(
        "| during the rebuild | {} queries answered, {} failed; {} transactions committed by the writer |",
        answered1 - answered0,
        failed1 - failed0,
        commits1 - commits0
    );
    println!(
        "| whole run | {} queries answered, {} failed |",
        answered.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    println!("| RSS | {rss_before:.0} MB before, {rss_peak:.0} MB peak, {rss_after:.0} MB after |");
    println!("| edges after | graph {} vs SQL {sql_edges} |", s["edges"]);
    assert_eq!(
        s["edges"].as_u64(),
        Some(sql_edges),
        "the rebuilt graph differs from SQL"
    );
}
