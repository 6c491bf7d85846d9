//! `graphsync demo` serves queries and, stopped with SIGINT, leaves no process, slot or
//! temporary directory behind.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

#[test]
fn demo_serves_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(["demo", "--listen", "127.0.0.1:0", "--users", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let base = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no HTTP line from the demo; got {lines:#?}"));
        lines.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("HTTP API:") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let addr = base.trim_start_matches("http://").to_string();
    // The printed example queries come with answers.
    while !lines.iter().any(|l| l.contains("Press Ctrl-C")) {
        lines.push(rx.recv_timeout(Duration::from_secs(60)).expect("demo output"));
    }
    let out = lines.join("\n");
    assert!(out.contains("\"neighbors\":["), "{out}");
    let (code, j) = common::replica::http_json(&addr, "/v1/neighbors?node=User:1&direction=both");
    assert_eq!(code, 200, "{j}");
    assert!(!j["neighbors"].as_array().unwrap().is_empty(), "{j}");
    let dirs: Vec<String> = out
        .split_whitespace()
        .filter(|w| w.starts_with("/tmp/") || w.contains("graphsync-"))
        .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ',').to_string())
        .filter(|w| w.starts_with('/'))
        .collect();
    assert!(dirs.len() >= 2, "no directories printed: {out}");

    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop within 60 s of SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "demo exited with {status}");
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    assert!(lines.iter().any(|l| l.starts_with("demo stopped")), "{lines:#?}");
    for d in &dirs {
        assert!(!std::path::Path::new(d).exists(), "{d} left behind");
    }
    // Once graphsync has exited, no process (server, helper) refers to the demo's directories:
    // checked at once, not after a grace period.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            dirs.iter().any(|d| cmd.contains(d.as_str())).then_some(cmd)
        })
        .collect();
    assert!(
        left.is_empty(),
        "processes of the demo still running after it exited: {left:#?}"
    );
}
