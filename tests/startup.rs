//! The executable's startup: glibc's malloc set up for transparent huge pages where the
//! kernel's mode is `madvise` (graphsync runs itself again with the tunable), and the
//! environment the user gave put back for the processes it starts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// The environment `pid` was started with (by its last exec).
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `graphsync decode -` (it waits on stdin), with `GRAPHSYNC_HUGE_PAGES` and `GLIBC_TUNABLES`
/// as given: the environment its `main` runs with, once it answers a line; and the
/// `GLIBC_TUNABLES` a process it starts would see (`None`: unset), as `env` prints it.
fn started_with(huge_pages: Option<&str>, tunables: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graphsync"));
    cmd.args(["decode", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match huge_pages {
        Some(v) => cmd.env("GRAPHSYNC_HUGE_PAGES", v),
        None => cmd.env_remove("GRAPHSYNC_HUGE_PAGES"),
    };
    match tunables {
        Some(v) => cmd.env("GLIBC_TUNABLES", v),
        None => cmd.env_remove("GLIBC_TUNABLES"),
    };
    let mut child = cmd.spawn().unwrap();
    // A line it cannot decode: the error it prints shows `main` runs (after any re-run).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"not a frame\n").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("expected"), "{line}");
    let env = environ(child.id());
    // Named after its file still (`ps`, `pgrep`, systemd show this).
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
    assert_eq!(comm.trim(), "graphsync");
    drop(stdin);
    child.wait().unwrap();
    env
}

fn thp_madvise() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|m| m.contains("[madvise]"))
}

#[test]
fn it_runs_again_with_huge_pages_unless_told_not_to() {
    let has = |env: &[String], v: &str| env.iter().any(|e| e == v);
    let env = started_with(None, None);
    assert_eq!(
        has(&env, "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"),
        thp_madvise(),
        "{env:?}"
    );
    // The user's own tunables are kept, the huge pages one added after them (the dynamic
    // loader cuts the variable at the `:` in place as it reads it).
    let env = started_with(None, Some("glibc.malloc.check=0"));
    assert!(has(&env, "GLIBC_TUNABLES=glibc.malloc.check=0"), "{env:?}");
    assert_eq!(has(&env, "glibc.malloc.hugetlb=1"), thp_madvise(), "{env:?}");
    for off in ["false", "0"] {
        let env = started_with(Some(off), None);
        assert!(!env.iter().any(|e| e.starts_with("GLIBC_TUNABLES=")), "{env:?}");
    }
    // Already asked for: started as is.
    let env = started_with(None, Some("glibc.malloc.hugetlb=0"));
    assert!(has(&env, "GLIBC_TUNABLES=glibc.malloc.hugetlb=0"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("GRAPHSYNC_GLIBC_TUNABLES_BEFORE")),
        "{env:?}"
    );
}
