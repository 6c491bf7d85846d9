//! What the benches that drive the real `graphsync` binary share: a minimal HTTP client for its
//! API, `/proc` CPU and memory readings, the child process, pgbench and the walsenders.
#![allow(dead_code)]

use pgoutput::Lsn;
use pgtest::Cluster;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

pub fn health(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/health")).unwrap_or_default()
}

pub fn applied(port: u16) -> Lsn {
    health(port)["applied_lsn"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Lsn(0))
}

/// A metric's value (the first sample of that name).
pub fn metric(port: u16, name: &str) -> f64 {
    get(port, "/metrics")
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / 100.0
}

pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    pub fn spawn(args: &[&str], log: &Path) -> Proc {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_graphsync"))
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, port }
    }

    pub fn wait(&mut self, what: &str, mut cond: impl FnMut(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !cond(self.port) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "graphsync exited waiting for {what}"
            );
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn pgbench(cluster: &Cluster, db: &str, script: &Path, secs: u64, rate: Option<u64>) -> u64 {
    let mut cmd = Command::new(pgtest::tool("pgbench").expect("pgbench"));
    cmd.args([
        "-n",
        "-M",
        "prepared",
        "-c",
        "4",
        "-j",
        "2",
        "--max-tries",
        "10",
        "-T",
        &secs.to_string(),
        "-f",
    ])
    .arg(script)
    .args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-p",
        &cluster.port().to_string(),
        db,
    ]);
    if let Some(r) = rate {
        cmd.args(["-R", &r.to_string()]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.trim().parse().ok())
        .unwrap_or(0)
}

pub fn walsender_pids(cluster: &Cluster, db: &str) -> Vec<u32> {
    cluster
        .psql(
            db,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = current_database()",
        )
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
