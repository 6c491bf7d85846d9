//! Throw-away PostgreSQL clusters for integration tests.
//!
//! What it is for: starting a real server from the system's binaries (`PG_BIN`,
//! `pg_config --bindir`, `/usr/lib/postgresql/*/bin`, `PATH`) with `wal_level=logical`, a random
//! free port and its own socket directory; giving each test its own database; editing
//! `pg_hba.conf` / `postgresql.conf` and reloading or restarting; and removing everything
//! afterwards. As root (CI), `initdb` and `postgres` run as the `postgres` user via `runuser`.
//!
//! What it is not for: production use, or mocking the server. A cluster from
//! [`Cluster::shared`] lives for the whole test binary (`cargo test` runs a binary's tests in
//! one process) and a watchdog process stops it when the binary exits, even on a crash.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running throw-away cluster. Stopped and deleted on drop.
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    keep: bool,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL client program (`psql`, `pgbench`, `pg_recvlogical`): next to the server
/// binaries if there, else the system's (`/usr/lib/postgresql/*/bin`, newest first, then
/// `PATH`) — server-only builds (`PG_BIN` pointing at the embedded-postgres packages of other
/// majors) ship no clients, and the system's work against any supported server.
pub fn tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = find_bin_dir().map(|d| d.join(name)).filter(|p| p.is_file()) {
        return Some(p);
    }
    let mut system: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    system.retain(|p| p.is_file());
    system.sort();
    if let Some(p) = system.pop() {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let ok = |p: &Path| p.join("initdb").is_file() && p.join("postgres").is_file() && p.join("pg_ctl").is_file();
    if let Some(p) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if ok(&p) {
            return Some(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && ok(&p) {
            return Some(p);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| ok(p))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(p) = versions.pop() {
        return Some(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|p| ok(p)))
        .map(|p| {
            std::fs::canonicalize(p.join("initdb"))
                .ok()
                .and_then(|i| i.parent().map(Path::to_path_buf))
                .unwrap_or(p)
        })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Cluster {
    /// The cluster shared by every test of this test binary (started on first use).
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| {
            let c = Cluster::start().unwrap_or_else(|e| panic!("could not start a test PostgreSQL cluster: {e}"));
            c.spawn_watchdog();
            c
        })
    }

    /// Starts a cluster of its own, for tests that restart or reconfigure the server.
    pub fn start() -> Result<Cluster, String> {
        let bin = find_bin_dir().ok_or(
            "no PostgreSQL server binaries found (looked in PG_BIN, pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); install PostgreSQL 15+ (apt-get install -y postgresql)",
        )?;
        let as_postgres = euid_is_root();
        let root = tempfile::Builder::new()
            .prefix("graphsync-pg-")
            .tempdir()
            .map_err(|e| format!("create temp dir: {e}"))?
            .keep();
        if as_postgres {
            chown_to_postgres(&root)?;
        }
        let mut c = Cluster {
            bin,
            data: root.join("data"),
            root,
            port: 0,
            as_postgres,
            keep: std::env::var_os("GRAPHSYNC_KEEP_TEST_CLUSTER").is_some(),
        };
        c.run(
            "initdb",
            &[
                "-D",
                c.data.to_str().unwrap(),
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
        let mut last = String::new();
        for _ in 0..5 {
            c.port = free_port();
            c.write_base_conf()?;
            match c.pg_ctl_start() {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(format!("server did not start: {last}"))
    }

    fn write_base_conf(&self) -> Result<(), String> {
        let conf = format!(
            "# written by pgtest\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = logical\n\
             max_wal_senders = 60\n\
             max_replication_slots = 60\n\
             max_prepared_transactions = 20\n\
             max_connections = 200\n\
             logical_decoding_work_mem = '64kB'\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = '64MB'\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             log_min_messages = warning\n\
             include_if_exists = 'test_extra.conf'\n",
            port = self.port,
            sock = self.root.display()
        );
        self.write_file(&self.data.join("postgresql.auto.conf"), &conf)
    }

    fn write_file(&self, path: &Path, text: &str) -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        if self.as_postgres {
            chown_to_postgres(path)?;
        }
        Ok(())
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

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.root.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(|_| ())
        .map_err(|e| format!("{e}\nserver log:\n{}", self.server_log()))
    }

    /// The cluster's directory (data directory, socket, server log).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps stopping and deleting the cluster even if this process is killed.
    pub fn spawn_watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; {rm}",
            pid = std::process::id(),
            ctl = self.shell_prefix() + &self.bin.join("pg_ctl").display().to_string(),
            data = self.data.display(),
            rm = if self.keep { String::new() } else { format!("rm -rf '{}'", self.root.display()) },
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn shell_prefix(&self) -> String {
        if self.as_postgres {
            "runuser -u postgres -- ".into()
        } else {
            String::new()
        }
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host to connect to over TCP.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// `key=value` connection string for `db` as the superuser over TCP.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=disable",
            self.port
        )
    }

    /// Runs an SQL script with `psql` as the superuser in `db`; each statement runs in its own
    /// transaction unless the script says `BEGIN`. Returns unaligned, tuples-only output.
    /// Panics with the server's message on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        use std::io::Write;
        let psql = tool("psql").expect("psql not found (apt-get install -y postgresql-client)");
        let mut child = Command::new(psql)
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write to psql");
        let out = child.wait_with_output().expect("wait for psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Creates a fresh database named after `prefix` and returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut name: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        name.truncate(40);
        let _ = write!(name, "_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Replaces `pg_hba.conf` with `lines` and reloads the server.
    pub fn set_hba(&self, lines: &[&str]) {
        let mut text = lines.join("\n");
        text.push('\n');
        self.write_file(&self.data.join("pg_hba.conf"), &text)
            .expect("write pg_hba.conf");
        self.reload();
    }

    /// Replaces the extra configuration file with `settings` (postgresql.conf syntax).
    /// Takes effect on [`Cluster::reload`] or [`Cluster::restart`].
    pub fn set_extra_conf(&self, settings: &str) {
        self.write_file(&self.data.join("test_extra.conf"), settings)
            .expect("write test_extra.conf");
    }

    /// Writes a file into the data directory (e.g. TLS keys), readable only by the server.
    pub fn write_data_file(&self, name: &str, contents: &[u8]) {
        let path = self.data.join(name);
        std::fs::write(&path, contents).expect("write data file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if self.as_postgres {
            chown_to_postgres(&path).expect("chown");
        }
    }

    /// Reloads the configuration (`pg_ctl reload`) and waits until the server has done so.
    pub fn reload(&self) {
        let before = self.psql("postgres", "SELECT pg_conf_load_time()");
        self.run("pg_ctl", &["-D", self.data.to_str().unwrap(), "reload"])
            .expect("pg_ctl reload");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT pg_conf_load_time()") == before {
            assert!(
                Instant::now() < deadline,
                "server did not reload its configuration within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with `mode` (`fast`, `immediate`), waiting until it is down.
    pub fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"])
            .expect("pg_ctl stop");
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start().expect("pg_ctl start");
    }

    /// Restarts the server (fast shutdown) on the same port.
    pub fn restart(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        )
        .expect("pg_ctl stop");
        self.pg_ctl_start().expect("pg_ctl start");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn chown_to_postgres(path: &Path) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if !status.success() {
        return Err(format!(
            "chown postgres {} failed: is there a 'postgres' system user?",
            path.display()
        ));
    }
    Ok(())
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes. Returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
