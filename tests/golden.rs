//! Golden files: `graphsync decode` on every captured stream in fixtures/pgoutput prints exactly
//! the JSON beside it; malformed lines are reported with their line number.

use std::path::Path;
use std::process::Command;

fn graphsync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graphsync"))
}

#[test]
fn every_fixture_decodes_to_its_golden_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pgoutput");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("json")).unwrap();
        let out = graphsync().arg("decode").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
            assert_eq!(g, e, "{} line {}", path.display(), i + 1);
        }
        assert_eq!(got.lines().count(), expected.lines().count(), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 8, "expected at least 8 fixtures, found {checked}");
}

#[test]
fn malformed_lines_are_reported_and_decoding_continues() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pgoutput/toast_identity.txt"))
            .unwrap();
    let mut lines: Vec<&str> = good.lines().take(3).collect();
    lines.insert(1, "0/1|zz");
    lines.insert(2, "not a line");
    lines.push("0/2|49000000");
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = graphsync().arg("decode").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.txt:2: invalid hex digit"), "{stderr}");
    assert!(stderr.contains("bad.txt:3: expected `LSN|HEX`"), "{stderr}");
    assert!(stderr.contains("bad.txt:6: insert message truncated"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.lines().nth(2).unwrap().contains("\"type\":\"insert\""));
}
