//! `graphsync snapshot info|verify`: check a snapshot file the way a restart would.

use std::path::Path;
use std::process::ExitCode;

/// Validates `file` and prints its metadata as one JSON object.
pub fn info(file: &Path) -> anyhow::Result<ExitCode> {
    match graph::snapshot::load(file) {
        Ok(s) => {
            let m = s.meta;
            let json = serde_json::json!({
                "file": file.display().to_string(),
                "format_version": m.format_version,
                "config_hash": format!("{:016x}", m.config_hash),
                "lsn": pgoutput::Lsn(m.lsn).to_string(),
                "nodes": m.node_count,
                "stored_edges": m.stored_edges,
                "visible_edges": m.visible_edges,
                "created_unix_ms": m.created_unix_ms,
                "bytes": m.file_bytes,
            });
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refuse(file, &e),
    }
}

/// Validates `file`; exit 0 if sound.
pub fn verify(file: &Path) -> anyhow::Result<ExitCode> {
    match graph::snapshot::load(file) {
        Ok(s) => {
            println!(
                "{}: ok (LSN {}, {} nodes, {} edges)",
                file.display(),
                pgoutput::Lsn(s.meta.lsn),
                s.meta.node_count,
                s.meta.visible_edges
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refuse(file, &e),
    }
}

fn refuse(file: &Path, e: &graph::snapshot::SnapshotError) -> anyhow::Result<ExitCode> {
    eprintln!("{}: refused: {e}", file.display());
    eprintln!("graphsync will not load this file; an older snapshot or a rebuild from the source is used instead");
    Ok(ExitCode::from(1))
}
