//! The real `graphsync replicate` binary as a child process, and what watches it: its HTTP
//! API, the lag probe and the queries that run while it streams.

#[allow(unused_imports)]
use super::*;

/// `graphsync replicate` (the real binary, built by cargo for this bench) as a child process,
/// so its CPU is its own: the load generators and the queries run elsewhere.
pub(crate) struct Binary {
    child: std::process::Child,
    http: Http,
    log: PathBuf,
}

impl Binary {
    pub(crate) fn spawn(cluster: &Cluster, db: &str, cfg: &Path, data: &Path, dir: &Path) -> Binary {
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

    pub(crate) fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub(crate) fn port(&self) -> u16 {
        self.http.port
    }

    pub(crate) fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!(
                "graphsync replicate exited ({s}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Waits until `/health` reports `lsn` applied.
    pub(crate) fn wait_applied(&mut self, lsn: Lsn, timeout: Duration) {
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
    pub(crate) fn metrics(&mut self) -> std::collections::HashMap<String, f64> {
        let (code, body) = self.http.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "GET /metrics");
        parse_metrics(&String::from_utf8_lossy(&body))
    }

    /// SIGTERM, then wait for the final checkpoint and a clean exit.
    pub(crate) fn stop(mut self) {
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
pub(crate) struct Http {
    port: u16,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl Http {
    pub(crate) fn new(port: u16) -> Http {
        Http { port, conn: None }
    }

    /// GET `path`: status code and body. Reconnects once if the kept connection failed.
    pub(crate) fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
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

    pub(crate) fn exchange(
        c: &mut std::io::BufReader<std::net::TcpStream>,
        path: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
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
pub(crate) fn applied_lsn(http: &mut Http) -> Option<Lsn> {
    let (_, body) = http.get("/health").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("applied_lsn")?.as_str()?.parse().ok()
}

/// Lag as a real maximum, not a histogram bucket: one task samples the server's WAL write
/// position every ms (every transaction acknowledged before the sample ends at or before it),
/// one thread polls graphsync's applied LSN every ms; a sample's lag is the time from the
/// sample to the first poll that saw it applied. Over-estimates by at most the time to the
/// next commit plus one poll interval (~1-2 ms at these rates).
pub(crate) struct Probe {
    sampling: Arc<std::sync::atomic::AtomicBool>,
    polling: Arc<std::sync::atomic::AtomicBool>,
    /// Per sample: when, the server's WAL write position, the slot's confirmed position.
    server: tokio::task::JoinHandle<Vec<(Instant, Lsn, Lsn)>>,
    applied: std::thread::JoinHandle<Vec<(Instant, Lsn)>>,
    /// With `GRAPHSYNC_BENCH_LOG_DIR`: `/metrics` every 250 ms (wall-clock ms, the lag
    /// histograms), to tell which part of the lag a spike was in.
    split: Option<std::thread::JoinHandle<Vec<(u128, String)>>>,
}

/// A `/metrics` body as name (with labels) → value.
fn parse_metrics(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((canonical_metric(k), v.parse().ok()?)))
        .collect()
}

/// The histograms of the lag's parts, in the order `split-*.tsv` prints them.
const SPLIT: [&str; 4] = [
    "commit_to_apply_seconds",
    "commit_to_send_seconds",
    "send_to_receive_seconds",
    "receive_to_apply_seconds",
];

/// Per interval between two `/metrics` bodies: transactions, and per histogram of [`SPLIT`]
/// the bound of the highest bucket that gained any (ms), as `split-*.tsv` lines.
/// The smallest bound (seconds) of histogram `graphsync_{metric}` holding a share `p` of its
/// observations, from the deltas of its cumulative buckets (`delta(name)`); `None` past the
/// last bound.
pub(crate) fn bound_for(delta: impl Fn(&str) -> f64, metric: &str, p: f64) -> Option<f64> {
    let count = delta(&format!("graphsync_{metric}_count")) as u64;
    let want = (count as f64 * p).ceil() as u64;
    sync::replicator::Histogram::BOUNDS
        .iter()
        .copied()
        .find(|b| delta(&format!("graphsync_{metric}_bucket{{le=\"{b}\"}}")) as u64 >= want)
}

fn split_series(samples: &[(u128, String)]) -> String {
    let mut out =
        String::from("wall_ms\ttxns\tcommit_to_apply_ms\tcommit_to_send_ms\tsend_to_receive_ms\treceive_to_apply_ms\n");
    let mut prev = samples.first().map(|(_, b)| parse_metrics(b)).unwrap_or_default();
    for (wall, body) in samples.iter().skip(1) {
        let cur = parse_metrics(body);
        let d = |k: &str| cur.get(k).copied().unwrap_or(0.0) - prev.get(k).copied().unwrap_or(0.0);
        let n = d("graphsync_commit_to_apply_seconds_count");
        out.push_str(&format!("{wall}\t{n}"));
        for h in SPLIT {
            let top = (d(&format!("graphsync_{h}_count")) > 0.0)
                .then(|| bound_for(d, h, 1.0))
                .flatten()
                .map_or("-".to_string(), |b| format!("{}", b * 1e3));
            out.push_str(&format!("\t{top}"));
        }
        out.push('\n');
        prev = cur;
    }
    out
}

pub(crate) struct ProbeLag {
    pub(crate) samples: usize,
    /// Samples never seen applied (none once the phase waited for everything to apply).
    pub(crate) unresolved: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    /// How far the slot's confirmed position trails the server's WAL end: per sample, the
    /// time until a later sample's confirmed position reached its WAL position (p50, p99,
    /// max; samples never confirmed before sampling stopped are left out).
    pub(crate) confirmed: (Duration, Duration, Duration),
}

impl Probe {
    pub(crate) fn start(rt: &tokio::runtime::Runtime, cluster: &Cluster, db: &str, port: u16) -> Probe {
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
        let on = polling.clone();
        let split = std::env::var_os("GRAPHSYNC_BENCH_LOG_DIR").map(|_| {
            std::thread::spawn(move || {
                let mut http = Http::new(port);
                let mut v = Vec::new();
                while on.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok((200, body)) = http.get("/metrics") {
                        v.push((now_unix_ms(), String::from_utf8_lossy(&body).into_owned()));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                v
            })
        });
        Probe {
            sampling,
            polling,
            server,
            applied,
            split,
        }
    }

    /// Stops sampling the server (call while transactions still commit, so that every sample
    /// is followed by a commit).
    pub(crate) fn stop_sampling(&self) {
        self.sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops polling (call once everything is applied) and computes the lag of each sample.
    pub(crate) fn finish(self, rt: &tokio::runtime::Runtime) -> ProbeLag {
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
        // GRAPHSYNC_BENCH_LOG_DIR also keeps each sample's lag (wall-clock ms, lag ms), to set
        // beside graphsync's log.
        let keep = std::env::var_os("GRAPHSYNC_BENCH_LOG_DIR");
        let (wall_now, now) = (now_unix_ms(), Instant::now());
        let mut series = String::new();
        for (t, lsn, _) in server {
            while j < applied.len() && (applied[j].1 < lsn || applied[j].0 < t) {
                j += 1;
            }
            match applied.get(j) {
                Some((u, _)) => {
                    if keep.is_some() {
                        let wall = wall_now.saturating_sub(now.saturating_duration_since(t).as_millis());
                        series.push_str(&format!("{wall}\t{:.1}\n", (*u - t).as_secs_f64() * 1e3));
                    }
                    lags.push(*u - t)
                }
                None => unresolved += 1,
            }
        }
        if let Some(d) = keep {
            let at = now_unix_ms();
            let _ = std::fs::write(PathBuf::from(&d).join(format!("probe-{at}.tsv")), series);
            if let Some(split) = self.split.and_then(|h| h.join().ok()) {
                let _ = std::fs::write(PathBuf::from(&d).join(format!("split-{at}.tsv")), split_series(&split));
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
pub(crate) struct Queries {
    pub(crate) neigh: Vec<Duration>,
    pub(crate) hop3: Vec<Duration>,
    i: u64,
}

impl Queries {
    pub(crate) fn round(&mut self, http: &mut Http, n_nodes: u64) {
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
