//! The demo's own throw-away PostgreSQL: `initdb` into a temporary directory, started with
//! `pg_ctl` on a free port with `wal_level = logical`, stopped (`pg_ctl stop -m fast`) and
//! removed when dropped — so Ctrl-C leaves no server and no files once graphsync has exited.
//!
//! Not for: tests (they use `crates/pgtest`), or any server the user did not ask us to create.

use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running throw-away server; dropping it stops it and removes its files.
pub struct DemoServer {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    /// Running as root: the server runs as the `postgres` user (initdb refuses root).
    as_postgres: bool,
    stopped: bool,
}

/// Where `initdb`, `pg_ctl` and `postgres` are: `PG_BIN`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, then `PATH`.
fn find_bin_dir() -> Option<PathBuf> {
    let ok = |p: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| p.join(b).is_file());
    if let Some(p) = std::env::var_os("PG_BIN").map(PathBuf::from).filter(|p| ok(p)) {
        return Some(p);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && ok(&p) {
            return Some(p);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| ok(p))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        let v = p
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned());
        v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    if let Some(p) = versions.pop() {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|p| ok(p))
}

impl DemoServer {
    /// Creates and starts the server.
    pub fn start() -> anyhow::Result<DemoServer> {
        let bin = find_bin_dir().ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in PG_BIN, pg_config --bindir, \
                 /usr/lib/postgresql/*/bin or PATH"
            )
        })?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let root = tempfile::Builder::new()
            .prefix("graphsync-pg-")
            .tempdir()
            .context("cannot create a temporary directory for the demo's PostgreSQL")?
            .keep();
        let mut s = DemoServer {
            bin,
            data: root.join("data"),
            root,
            port: 0,
            as_postgres,
            stopped: true,
        };
        if as_postgres {
            s.chown(&s.root.clone())?;
        }
        let data = s.data.to_string_lossy().into_owned();
        s.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        let mut last = None;
        for _ in 0..5 {
            s.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("cannot find a free port")?
                .port();
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = logical\n\
                 max_wal_senders = 10\nmax_replication_slots = 10\nfsync = off\n",
                s.port,
                s.root.display()
            );
            std::fs::write(s.data.join("postgresql.auto.conf"), conf).context("cannot write postgresql.auto.conf")?;
            let log = s.root.join("server.log").to_string_lossy().into_owned();
            match s.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"]) {
                Ok(_) => {
                    s.stopped = false;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        let log = std::fs::read_to_string(s.root.join("server.log")).unwrap_or_default();
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!("PostgreSQL did not start; its log:\n{log}")))
    }

    /// A libpq-style connection string for database `db`.
    pub fn conn_str(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    /// The directory holding the data directory, socket and server log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn chown(&self, path: &Path) -> anyhow::Result<()> {
        let ok = Command::new("chown").arg("postgres:postgres").arg(path).status();
        if !matches!(ok, Ok(s) if s.success()) {
            bail!(
                "running as root, the demo's PostgreSQL runs as the 'postgres' user, which could not own {} (is there \
                 a 'postgres' system user? useradd --system postgres)",
                path.display()
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are ended) and removes its files.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.stopped {
            self.stopped = true;
            let data = self.data.to_string_lossy().into_owned();
            self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"])?;
        }
        if self.root.exists() {
            std::fs::remove_dir_all(&self.root).with_context(|| format!("cannot remove {}", self.root.display()))?;
        }
        Ok(())
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("graphsync demo: stopping its PostgreSQL: {e:#}");
        }
    }
}
