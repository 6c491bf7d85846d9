//! A short coverage-guided fuzzing run of the cargo-fuzz targets in `fuzz/` (the pgoutput
//! decoder and the snapshot loader), as part of the test suite so CI runs it.
//!
//! Needs `cargo-fuzz` (`cargo install cargo-fuzz --locked`; `.ci/run` installs it). The targets
//! are built with AddressSanitizer by the machine's stable toolchain: cargo-fuzz's flags are
//! nightly-only, so the run sets `RUSTC_BOOTSTRAP=1` for that build alone (no second toolchain
//! can be fetched on the CI machines). `GRAPHSYNC_FUZZ_SECONDS` sets the time per target
//! (default 60 with `CI` set, 10 otherwise; 0 skips the run). New inputs go to a temporary
//! corpus seeded from `fuzz/corpus/`, so the checked-in corpus is not modified; a crashing
//! input is kept under `fuzz/artifacts/<target>/` and printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TARGETS: [&str; 2] = ["decode", "snapshot"];

fn seconds() -> u64 {
    match std::env::var("GRAPHSYNC_FUZZ_SECONDS") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("GRAPHSYNC_FUZZ_SECONDS must be a whole number of seconds"),
        Err(_) if std::env::var_os("CI").is_some() => 60,
        Err(_) => 10,
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("RUSTC_BOOTSTRAP", "1");
    c
}

/// Waits for `child` until `deadline`; kills it past the deadline. Returns whether it succeeded.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> bool {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn crash_inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok().map(|e| e.path())).collect()
}

#[test]
fn fuzz_targets_short_run() {
    let secs = seconds();
    if secs == 0 {
        eprintln!("GRAPHSYNC_FUZZ_SECONDS=0: fuzzing skipped");
        return;
    }
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let version = cargo().arg("fuzz").arg("--version").output();
    assert!(
        matches!(&version, Ok(o) if o.status.success()),
        "cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked` \
         (or set GRAPHSYNC_FUZZ_SECONDS=0 to skip this test)"
    );

    // Build both targets first (one cargo invocation), then fuzz them side by side.
    let mut build = cargo()
        .args(["fuzz", "build"])
        .current_dir(&fuzz_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting cargo fuzz build");
    assert!(
        wait_until(
            &mut build,
            Instant::now() + Duration::from_secs(900),
            "cargo fuzz build"
        ),
        "cargo fuzz build failed (its output is above)"
    );

    let work = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for target in TARGETS {
        let corpus = work.path().join(target);
        std::fs::create_dir_all(&corpus).unwrap();
        let artifacts = fuzz_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts).unwrap();
        let before = crash_inputs(&artifacts);
        let log = std::fs::File::create(work.path().join(format!("{target}.log"))).unwrap();
        let child = cargo()
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=1024")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(&fuzz_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting cargo fuzz run");
        runs.push((target, child, artifacts, before));
    }

    let deadline = Instant::now() + Duration::from_secs(secs + 300);
    let mut failures = Vec::new();
    for (target, mut child, artifacts, before) in runs {
        let ok = wait_until(&mut child, deadline, &format!("fuzzing {target}"));
        let log = std::fs::read_to_string(work.path().join(format!("{target}.log"))).unwrap_or_default();
        let done = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no summary line");
        eprintln!("{target}: {done}");
        let new: Vec<PathBuf> = crash_inputs(&artifacts)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if !ok || !new.is_empty() {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let inputs: Vec<String> = new
                .iter()
                .map(|p| format!("{} = {:02x?}", p.display(), std::fs::read(p).unwrap_or_default()))
                .collect();
            failures.push(format!(
                "fuzz target `{target}` failed; crashing inputs:\n{}\nend of its output:\n{}",
                inputs.join("\n"),
                tail.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
