//! `graphsync log info|verify --data-dir D`: the change log's segments and records, checked
//! frame by frame the way a restart reads them, without changing anything.

use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use sync::changelog::{LogDir, SegmentReport};

fn reports(data_dir: &Path) -> anyhow::Result<(LogDir, Vec<SegmentReport>)> {
    if !data_dir.is_dir() {
        anyhow::bail!(
            "{} is not a directory (pass the --data-dir graphsync replicate uses)",
            data_dir.display()
        );
    }
    let dir = data_dir.join("log");
    if !dir.is_dir() {
        anyhow::bail!(
            "{} holds no change log (log/): not a graphsync data directory, or written by a version before the change log",
            data_dir.display()
        );
    }
    let log = LogDir::open(&dir)?;
    let r = log.verify()?;
    Ok((log, r))
}

fn segment_json(s: &SegmentReport) -> serde_json::Value {
    json!({
        "file": s.path.display().to_string(),
        "start": s.start.to_string(),
        "bytes": s.bytes,
        "mapping_hash": s.mapping_hash.map(|h| format!("{h:016x}")),
        "records": s.records,
        "first": s.first.map(|l| l.to_string()),
        "last": s.last.map(|l| l.to_string()),
        "problem": s.problem.as_ref().map(|p| json!({
            "offset": p.offset,
            "what": p.what,
            "torn_tail": p.torn_tail,
        })),
    })
}

/// Prints the log's segments and the snapshots it is replayed on, as one JSON object.
pub fn info(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let (_, segments) = reports(data_dir)?;
    let manifest = sync::checkpoint::CheckpointStore::open(data_dir)?.manifest();
    let json = json!({
        "data_dir": data_dir.display().to_string(),
        "snapshot": manifest.as_ref().map(|m| json!({"file": m.snapshot, "lsn": m.lsn.to_string()})),
        "previous_snapshot": manifest.as_ref().and_then(|m| m.previous.as_ref()).map(|p| json!({"file": p.snapshot, "lsn": p.lsn.to_string()})),
        "segments": segments.iter().map(segment_json).collect::<Vec<_>>(),
        "records": segments.iter().map(|s| s.records).sum::<u64>(),
        "bytes": segments.iter().map(|s| s.bytes).sum::<u64>(),
        "last": segments.iter().filter_map(|s| s.last).max().map(|l| l.to_string()),
    });
    println!("{json:#}");
    Ok(ExitCode::SUCCESS)
}

/// Checks every frame; exit 0 if sound (a torn tail, which a restart cuts, is reported but
/// sound), 1 naming the first damaged record otherwise.
pub fn verify(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let (_, segments) = reports(data_dir)?;
    let mut bad = false;
    for s in &segments {
        let name = s.path.display();
        match &s.problem {
            None => println!("{name}: ok ({} records, {} bytes)", s.records, s.bytes),
            Some(p) if p.torn_tail && !p.valid_after => println!(
                "{name}: ok ({} records); a torn record at byte {} ({}) will be cut at the next start (written after the last flush: the server sends it again)",
                s.records, p.offset, p.what
            ),
            Some(p) if p.torn_tail => {
                bad = true;
                println!(
                    "{name}: damaged at byte {}: {} ({} good records before it, valid ones after): the next start cuts it here; if the slot had confirmed past it, the start is refused and needs a backup or --rebuild",
                    p.offset, p.what, s.records
                );
            }
            Some(p) => {
                bad = true;
                println!(
                    "{name}: damaged at byte {}: {} ({} good records before it); fix: restore the data directory from a backup, or start graphsync with --rebuild",
                    p.offset, p.what, s.records
                );
            }
        }
    }
    if segments.is_empty() {
        println!("{}: no segments", data_dir.join("log").display());
    }
    Ok(if bad { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
