//! The explorer page (`bin/explorer/`) in a real browser: headless Chromium driven by Selenium
//! (`tests/browser/explorer.py`) opens `/#node=User:1&depth=2` on a live `graphsync
//! replicate`, and an edge committed in PostgreSQL appears on the page through the change feed
//! within 2 s; removed again, it goes. The static page loads without the token, the API calls carry it.
//!
//! Needs `chromium`, `chromedriver` and Python with selenium: `.ci/run` installs them (the
//! venv in `target/venv`; `GRAPHSYNC_PYTHON` picks another interpreter). Missing ones fail
//! the test, never skip it.

mod common;

use common::replica::{self, http_get, http_json};
use common::workload;
use pgtest::Cluster;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "explorer-s3cret";
const INSTALL: &str = "run `bash .ci/run` (or its chromium/selenium block) to install them";

/// Users 1-12 in two tenants; User:1 follows 2, 3 and 7 and is followed by 4, 5 and 6, User:8 is
/// two hops away (7 → 8); User:9 is not within two hops of User:1 (the test links it while the
/// page is open).
const DATA: &str = "
INSERT INTO users SELECT g, 1 + g % 2, 'user ' || g, NULL FROM generate_series(1, 12) g;
INSERT INTO follows VALUES (1, 2, 1), (1, 3, 2), (1, 7, 1), (4, 1, 1), (5, 1, 3), (6, 1, 1),
                           (2, 3, 1), (3, 5, 1), (7, 8, 1), (9, 10, 1), (10, 11, 1);
";

/// The interpreter: `GRAPHSYNC_PYTHON`, else the venv `.ci/run` makes, else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAPHSYNC_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// The first of `names` found on `PATH` or in /usr/bin and /usr/lib/chromium.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// The header block of a GET (status line and headers, lower-cased).
fn head(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

/// The Selenium script: its stdin, its stdout lines on a channel, its stderr in a file. Dropped,
/// it closes stdin (the script then quits the browser) and waits for it, bounded.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Browser {
    /// The script's next line, or a panic after `timeout` with what it wrote on stderr.
    fn line(&self, timeout: Duration, what: &str) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "no {what} line from the browser script within {timeout:?}; its stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        })
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the browser script");
        stdin.flush().unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let exited = pgtest::wait_for(Duration::from_secs(20), || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `OK <ms>` → ms; anything else fails the test with the line.
fn ok_ms(line: &str, what: &str) -> u64 {
    line.strip_prefix("OK ")
        .and_then(|ms| ms.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: {line}"))
}

#[test]
fn explorer_draws_and_follows_the_change_feed() {
    // What the browser needs, first: a missing piece is a failure that says how to install it.
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
        .unwrap_or_else(|| panic!("chromium not found: {INSTALL}"));
    let chromedriver = find_program(&["chromedriver"]).unwrap_or_else(|| panic!("chromedriver not found: {INSTALL}"));
    let py = python();
    let check = Command::new(&py)
        .args(["-c", "import selenium"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", py.display()));
    assert!(
        check.status.success(),
        "selenium is not installed for {}: {INSTALL}\n{}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );

    let cluster = Cluster::shared();
    let db = cluster.create_database("explorer");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(&db, DATA);
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let mut r = replica::spawn(cluster, &db, &config, &dir.path().join("data"), &["--api-token", TOKEN]);
    let addr = r.addr();
    assert!(
        pgtest::wait_for(Duration::from_secs(120), || http_json(&addr, "/health").0 == 200),
        "not streaming: {:?}; log:\n{}",
        http_json(&addr, "/health"),
        r.log()
    );

    // The page and its files are served without the token; the API is not.
    for (path, ctype) in [
        ("/", "content-type: text/html; charset=utf-8"),
        ("/explorer/app.js", "content-type: text/javascript"),
        ("/explorer/style.css", "content-type: text/css"),
    ] {
        let h = head(&addr, path);
        assert!(
            h.starts_with("http/1.1 200"),
            "GET {path} without a token: {h} (is explorer::router() merged into http::router?)"
        );
        assert!(h.contains(ctype), "GET {path}: {h}");
        assert!(h.contains("cache-control: no-cache"), "GET {path}: {h}");
    }
    let (code, body) = http_get(&addr, "/", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("id=\"status\"") && body.contains("/explorer/app.js"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/v1/status", None).0, 401);

    // The browser, until it has drawn User:1's neighbourhood with the feed open.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("explorer-test");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("explorer.png");
    let _ = std::fs::remove_file(&shot);
    let stderr = dir.path().join("browser.stderr");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/explorer.py");
    let mut child = Command::new(&py)
        .arg(&script)
        .args([
            "--base",
            &format!("http://{addr}"),
            "--node",
            "User:1",
            "--depth",
            "2",
            "--token",
            TOKEN,
        ])
        .args(["--expect", "User:2", "--expect", "User:4", "--expect", "User:8"])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--chromedriver")
        .arg(&chromedriver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stdin = child.stdin.take();
    let mut browser = Browser {
        child,
        stdin,
        lines: rx,
        stderr,
    };
    let ready = browser.line(Duration::from_secs(90), "READY");
    assert_eq!(
        ready,
        "READY",
        "the page did not draw User:1's neighbourhood; log:\n{}",
        r.log()
    );

    // A new edge to a node not drawn yet: on the page within 2 s (the script measures).
    cluster.psql(&db, "INSERT INTO follows VALUES (1, 9, 4)");
    browser.send("GO User:9");
    let ms = ok_ms(&browser.line(Duration::from_secs(60), "GO"), "User:9 did not appear");
    assert!(ms <= 2000, "User:9 appeared after {ms} ms");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} is no screenshot",
        shot.display()
    );

    // And the edge removed: User:9 goes.
    cluster.psql(&db, "DELETE FROM follows WHERE follower_id = 1 AND followee_id = 9");
    browser.send("GONE User:9");
    let gone = ok_ms(&browser.line(Duration::from_secs(60), "GONE"), "User:9 stayed");
    assert!(gone <= 2000, "User:9 went after {gone} ms");

    drop(browser.stdin.take());
    let mut status = None;
    pgtest::wait_for(Duration::from_secs(30), || {
        status = browser.child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.expect("the browser script did not exit within 30 s of its input's end");
    assert!(status.success(), "browser script exited with {status}");
    eprintln!(
        "explorer: User:9 drawn {ms} ms after its commit, removed after {gone} ms; screenshot {}",
        shot.display()
    );
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
}
