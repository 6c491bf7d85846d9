//! The load phases against the child process: a fixed rate, as fast as the server commits, and
//! hub-heavy pgbench.

#[allow(unused_imports)]
use super::*;

/// What a load phase writes.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// Transactions of 5 edge rows at this many per second, from one connection.
    Rate(u64),
    /// Transactions of 5 edge rows as fast as two connections commit.
    Max,
    /// pgbench, 4 clients, as fast as they commit: 3 inserts of an edge to a Zipf-distributed
    /// followee and 1 delete of an edge of a Zipf-distributed followee per transaction.
    Hub,
}

/// The pgbench script of the hub phase (followees 1..n-1, Zipf s = 1.3: node 1 is the target
/// of about a quarter of the inserts and deletes). The delete removes one edge of its
/// followee through an index on `b`, skipping rows another client holds.
pub(crate) fn hub_script(n_nodes: u64) -> String {
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
pub(crate) fn load(
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
        child::bound_for(delta, metric, p).map_or("> 5 s".into(), |b| format!("<= {:.1} ms", b * 1e3))
    };
    let pct = |p: f64| pct_of("commit_to_apply_seconds", p);
    // graphsync's own share: commit received → applied.
    let own = |p: f64| pct_of("receive_to_apply_seconds", p);
    // The server's share (commit → sent) and the socket's (sent → received).
    let server = |p: f64| pct_of("commit_to_send_seconds", p);
    let socket = |p: f64| pct_of("send_to_receive_seconds", p);
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
            "max {:.1} ms (probe p50 {:.1} / p99 {:.1} ms); commit->send p99 {}, send->receive p99 {}, receive->apply p50 {} / p99 {}; CPU graphsync {:.2} ({:.2} net of probe{}), walsender {:.2} cores",
            ms(lag.max),
            ms(lag.p50),
            ms(lag.p99),
            server(0.99),
            socket(0.99),
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
