//! `graphsync snapshot info|verify` on a sound and on a corrupted snapshot.

use graph::*;
use std::process::Command;

fn graphsync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graphsync"))
}

#[test]
fn info_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.snap");
    let e = |s, t| EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: EdgeLabel(0),
        weight: 1.0,
    };
    let g = Graph::new(Csr::build(3, &[e(0, 1), e(1, 2)], false).unwrap(), 0x1_0000_0010);
    graph::snapshot::write(&g.view(), &path, 0xABCD, 1_700_000_000_000).unwrap();

    let out = graphsync().args(["snapshot", "info"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["lsn"], "1/10");
    assert_eq!(info["nodes"], 3);
    assert_eq!(info["visible_edges"], 2);
    assert_eq!(info["config_hash"], "000000000000abcd");

    let out = graphsync().args(["snapshot", "verify"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (LSN 1/10"));

    // The current checkpoint's snapshot of a data directory.
    std::fs::write(
        dir.path().join("checkpoint.json"),
        r#"{"format":1,"lsn":"1/10","snapshot_lsn":"1/10","snapshot":"g.snap","rows":"r.idx","mapping_hash":"000000000000abcd"}"#,
    )
    .unwrap();
    let out = graphsync()
        .args(["snapshot", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("g.snap: ok"));
    let missing = dir.path().join("missing");
    let out = graphsync()
        .args(["snapshot", "info", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
    assert!(!missing.exists(), "inspecting must not create the directory");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = graphsync()
        .args(["snapshot", "info", "--data-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no readable checkpoint.json"));

    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let out = graphsync().args(["snapshot", "verify"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("checksum mismatch"), "{err}");
}
