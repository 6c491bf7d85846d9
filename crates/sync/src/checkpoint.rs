//! Snapshots in the data directory — the bases the change log is replayed on — and finding
//! the newest good one at start.
//!
//! A checkpoint is two files plus the manifest:
//! - `graph-<LSN>.snap`: the graph snapshot (graph engine format: checksummed, mmap-loaded);
//! - `rows-<LSN>.idx`: the mapper's row index (checksummed);
//! - `checkpoint.json`: the manifest naming the current checkpoint's files, the mapping hash,
//!   its LSN (the snapshot holds every transaction that ended at or before it; the change log
//!   holds the ones after), and the previous checkpoint with its own LSN (the fallback).
//!
//! Snapshots are written when a compaction folds the overlays (the replicator decides when),
//! from the compacted view, on a background thread. Every file is written to a temporary name,
//! fsynced, renamed, and the directory fsynced, so a crash leaves either the old or the new
//! checkpoint. Two checkpoints are kept (older ones pruned) and the change log keeps every
//! record after the older one, so a corrupt newest snapshot falls back to the previous one
//! plus a longer replay, losing nothing.
//!
//! Not for: deciding when to write one (the replicator), or the change log (`changelog`).

use crate::row_index::RowIndex;
use graph::snapshot::{self, SnapshotError};
use graph::{CompactionPolicy, Graph, GraphView};
use pgoutput::Lsn;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be written or none could be restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing failed (disk full, permissions): the previous checkpoint is intact.
    #[error("cannot write checkpoint file {path}: {source} (the previous checkpoint is intact; free space or fix permissions of the data directory)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The graph snapshot could not be written.
    #[error("cannot write graph snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The checkpoint was built under another mapping.
    #[error("the mapping changed since the checkpoint in {dir} was written (hash {old:016x}, now {new:016x}); fix: run with --rebuild to rebuild the graph from the source tables")]
    MappingChanged {
        /// The data directory.
        dir: PathBuf,
        /// The checkpoint's mapping hash.
        old: u64,
        /// The configured mapping's hash.
        new: u64,
    },
    /// Checkpoints exist but none is usable.
    #[error(
        "no usable checkpoint in {dir}: {reasons}; fix: run with --rebuild to rebuild the graph from the source tables"
    )]
    NoneUsable {
        /// The data directory.
        dir: PathBuf,
        /// Why each candidate was refused.
        reasons: String,
    },
}

/// The previous checkpoint, kept as the fallback for a corrupt current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Snapshot file name.
    pub snapshot: String,
    /// Row index file name.
    pub rows: String,
    /// Covered LSN of that snapshot.
    pub lsn: Lsn,
}

/// The manifest (`checkpoint.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The snapshot holds every transaction that ended at or before this LSN; replay the change
    /// log after it.
    pub lsn: Lsn,
    /// Snapshot file name (in the data directory).
    pub snapshot: String,
    /// Row index file name.
    pub rows: String,
    /// Hash of the mapping the graph was built with.
    pub mapping_hash: u64,
    /// The previous checkpoint (none right after the initial copy or a fallback restore).
    pub previous: Option<Fallback>,
    /// Every transaction that ended at or before this LSN is in the snapshot or the change
    /// log (≥ `lsn`): moved forward while only unmapped tables change, when the log holds
    /// nothing newer ([`CheckpointStore::advance`]).
    pub position: Lsn,
}

impl Manifest {
    /// The oldest LSN a kept checkpoint starts from: the change log must keep every record
    /// after it.
    pub fn oldest(&self) -> Lsn {
        self.previous.as_ref().map_or(self.lsn, |p| p.lsn.min(self.lsn))
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "format": 2,
            "lsn": self.lsn.to_string(),
            "position": self.position.to_string(),
            "snapshot": self.snapshot,
            "rows": self.rows,
            "mapping_hash": format!("{:016x}", self.mapping_hash),
            "previous": self.previous.as_ref().map(|p| serde_json::json!({
                "snapshot": p.snapshot,
                "rows": p.rows,
                "lsn": p.lsn.to_string(),
            })),
        })
        .to_string()
    }

    fn from_json(s: &str) -> Result<Manifest, String> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
        let str_ = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("manifest lacks {k}"))
        };
        let lsn =
            |k: &str| -> Result<Lsn, String> { str_(k)?.parse().map_err(|_| format!("manifest {k} is not an LSN")) };
        let previous = match v.get("previous") {
            None | Some(serde_json::Value::Null) => None,
            Some(p) => {
                let field = |k: &str| {
                    p.get(k)
                        .and_then(|x| x.as_str())
                        .map(str::to_string)
                        .ok_or_else(|| format!("manifest previous lacks {k}"))
                };
                Some(Fallback {
                    snapshot: field("snapshot")?,
                    rows: field("rows")?,
                    lsn: field("lsn")?
                        .parse()
                        .map_err(|_| "manifest previous.lsn is not an LSN".to_string())?,
                })
            }
        };
        let at = lsn("lsn")?;
        Ok(Manifest {
            previous,
            position: match v.get("position") {
                Some(_) => lsn("position")?.max(at),
                None => at,
            },
            // Format 1 (before the change log) also had `snapshot_lsn`; its `lsn` (what the
            // checkpoint covered) is where streaming resumes, as now.
            lsn: lsn("lsn")?,
            snapshot: str_("snapshot")?,
            rows: str_("rows")?,
            mapping_hash: u64::from_str_radix(&str_("mapping_hash")?, 16)
                .map_err(|_| "bad mapping_hash".to_string())?,
        })
    }
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Restored {
    /// The graph (its arrays mapped from the snapshot file).
    pub graph: Graph,
    /// The row index.
    pub index: RowIndex,
    /// The snapshot's LSN: replay the change log after it.
    pub lsn: Lsn,
    /// The manifest it came from (for a fallback snapshot: a manifest made up for it).
    pub manifest: Manifest,
    /// Candidates refused before this one (corrupt files), for the log.
    pub refused: Vec<String>,
}

/// The checkpoint files of one data directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `name` in `dir` atomically and durably ([`graph::fsio::atomic_write`]).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    graph::fsio::atomic_write(&dir.join(name), &[bytes]).map_err(|e| io(&e.path)(e.source))
}

const MANIFEST: &str = "checkpoint.json";

/// The file beside the checkpoints naming the graph's lineage when it is published (see
/// `scaleout`'s `lineage`); [`CheckpointStore::clear`] deletes it with the graph.
pub const LINEAGE_FILE: &str = "lineage";

impl CheckpointStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(CheckpointStore { dir: dir.to_path_buf() })
    }

    /// The snapshot file name of a checkpoint covering `lsn`.
    pub fn snapshot_name(lsn: Lsn) -> String {
        format!("graph-{:016X}.snap", lsn.0)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest on disk, if any (and readable).
    pub fn manifest(&self) -> Option<Manifest> {
        let s = std::fs::read_to_string(self.dir.join(MANIFEST)).ok()?;
        Manifest::from_json(&s).ok()
    }

    /// Whether any checkpoint file exists (a manifest or a snapshot).
    pub fn has_any(&self) -> bool {
        self.dir.join(MANIFEST).exists() || !self.snapshots().is_empty()
    }

    /// Writes a checkpoint of `view` (at its LSN) and `index` (at the same point), with
    /// `previous` as its fallback, then prunes every other checkpoint. Returns the new
    /// manifest.
    pub fn write(
        &self,
        view: &GraphView,
        index: &RowIndex,
        previous: Option<Fallback>,
        mapping_hash: u64,
        now_unix_ms: i64,
    ) -> Result<Manifest, CheckpointError> {
        self.write_encoded(view, &index.encode(), previous, Lsn(0), mapping_hash, now_unix_ms)
    }

    /// As [`CheckpointStore::write`] with the row index already encoded ([`RowIndex::encode`]),
    /// so the writer can hand the work to another thread without cloning the index.
    ///
    /// The files are named after the view's LSN, which must be after `previous`'s; the
    /// manifest's position is the larger of that LSN and `position` (the current manifest's).
    /// A failed write leaves no file of it behind.
    pub fn write_encoded(
        &self,
        view: &GraphView,
        index: &[u8],
        previous: Option<Fallback>,
        position: Lsn,
        mapping_hash: u64,
        now_unix_ms: i64,
    ) -> Result<Manifest, CheckpointError> {
        let lsn = Lsn(view.lsn());
        let snapshot = Self::snapshot_name(lsn);
        let rows = format!("rows-{:016X}.idx", lsn.0);
        if previous.as_ref().is_some_and(|p| p.lsn >= lsn) {
            return Err(CheckpointError::Io {
                path: self.dir.join(&snapshot),
                source: std::io::Error::other("a new checkpoint must be after the one it replaces"),
            });
        }
        let m = Manifest {
            lsn,
            snapshot,
            rows,
            mapping_hash,
            previous,
            position: position.max(lsn),
        };
        let written = write_atomic(&self.dir, &m.rows, index)
            .and_then(|()| {
                snapshot::write(view, &self.dir.join(&m.snapshot), mapping_hash, now_unix_ms)
                    .map(|_| ())
                    .map_err(CheckpointError::from)
            })
            .and_then(|()| write_atomic(&self.dir, MANIFEST, m.to_json().as_bytes()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(self.dir.join(&m.rows));
            let _ = std::fs::remove_file(self.dir.join(&m.snapshot));
            return Err(e);
        }
        self.prune(&m);
        Ok(m)
    }

    /// Makes the snapshot files for `lsn` already in the directory (a snapshot written
    /// elsewhere and copied in: `graph-<LSN>.snap`, `rows-<LSN>.idx`) the only checkpoint,
    /// once they load under `mapping_hash`; every other snapshot is removed.
    pub fn adopt(&self, lsn: Lsn, mapping_hash: u64) -> Result<Manifest, CheckpointError> {
        let m = Manifest {
            lsn,
            snapshot: Self::snapshot_name(lsn),
            rows: format!("rows-{:016X}.idx", lsn.0),
            mapping_hash,
            previous: None,
            position: lsn,
        };
        let (_, _, found) = self
            .load_one(&m.snapshot, &m.rows, mapping_hash)
            .map_err(|what| CheckpointError::Io {
                path: self.dir.join(&m.snapshot),
                source: std::io::Error::other(what),
            })?;
        if found != lsn.0 {
            return Err(CheckpointError::Io {
                path: self.dir.join(&m.snapshot),
                source: std::io::Error::other(format!("the snapshot holds LSN {}, not {lsn}", Lsn(found))),
            });
        }
        write_atomic(&self.dir, MANIFEST, m.to_json().as_bytes())?;
        self.prune(&m);
        Ok(m)
    }

    /// Moves the manifest's position forward to `position` (nothing mapped changed after what
    /// the change log holds). Returns the new manifest.
    pub fn advance(&self, current: &Manifest, position: Lsn) -> Result<Manifest, CheckpointError> {
        let m = Manifest {
            position: position.max(current.position),
            ..current.clone()
        };
        write_atomic(&self.dir, MANIFEST, m.to_json().as_bytes())?;
        Ok(m)
    }

    /// Snapshot files in the directory, newest LSN first.
    fn snapshots(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let hex = name.strip_prefix("graph-")?.strip_suffix(".snap")?;
                        Some((u64::from_str_radix(hex, 16).ok()?, name))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.cmp(a));
        v
    }

    fn prune(&self, keep: &Manifest) {
        // Keep the manifest's two checkpoints.
        for (lsn, name) in self.snapshots() {
            if name == keep.snapshot || keep.previous.as_ref().is_some_and(|p| p.snapshot == name) {
                continue;
            }
            let _ = std::fs::remove_file(self.dir.join(&name));
            let _ = std::fs::remove_file(self.dir.join(format!("rows-{lsn:016X}.idx")));
        }
    }

    /// Loads one checkpoint's files; returns the snapshot's own LSN too.
    fn load_one(&self, snapshot: &str, rows: &str, mapping_hash: u64) -> Result<(Graph, RowIndex, u64), String> {
        let loaded = snapshot::load(&self.dir.join(snapshot)).map_err(|e| format!("{snapshot}: {e}"))?;
        if loaded.meta.config_hash != mapping_hash {
            return Err(format!(
                "{snapshot}: built with mapping hash {:016x}, the configured mapping has {:016x}",
                loaded.meta.config_hash, mapping_hash
            ));
        }
        let bytes = std::fs::read(self.dir.join(rows)).map_err(|e| format!("{rows}: {e}"))?;
        let index = RowIndex::decode(&bytes).map_err(|e| format!("{rows}: {e}"))?;
        let lsn = loaded.meta.lsn;
        Ok((Graph::from_view(loaded.view, CompactionPolicy::default()), index, lsn))
    }

    /// The newest usable checkpoint: the manifest's, or if its files are corrupt, the previous
    /// checkpoint the manifest names; without a readable manifest, the newest snapshot file
    /// that loads (at its own LSN). `Ok(None)` when the directory holds no checkpoint at all.
    ///
    /// A checkpoint built under another mapping is [`CheckpointError::MappingChanged`].
    pub fn restore(&self, mapping_hash: u64) -> Result<Option<Restored>, CheckpointError> {
        if !self.has_any() {
            return Ok(None);
        }
        let mut refused = Vec::new();
        let manifest = match std::fs::read_to_string(self.dir.join(MANIFEST)) {
            Ok(s) => match Manifest::from_json(&s) {
                Ok(m) => Some(m),
                Err(e) => {
                    refused.push(format!("{MANIFEST}: {e}"));
                    None
                }
            },
            Err(e) => {
                refused.push(format!("{MANIFEST}: {e}"));
                None
            }
        };
        if let Some(m) = &manifest {
            if m.mapping_hash != mapping_hash {
                return Err(CheckpointError::MappingChanged {
                    dir: self.dir.clone(),
                    old: m.mapping_hash,
                    new: mapping_hash,
                });
            }
            match self.load_one(&m.snapshot, &m.rows, mapping_hash) {
                Ok((graph, index, _)) => {
                    return Ok(Some(Restored {
                        graph,
                        index,
                        lsn: m.lsn,
                        manifest: m.clone(),
                        refused,
                    }))
                }
                Err(e) => refused.push(e),
            }
        }
        // The previous checkpoint covers what the manifest says; a file found on its own covers
        // what its name says (its covered LSN when written).
        let candidates: Vec<(String, String, Lsn)> = match manifest.as_ref() {
            Some(m) => m
                .previous
                .iter()
                .map(|p| (p.snapshot.clone(), p.rows.clone(), p.lsn))
                .collect(),
            None => self
                .snapshots()
                .into_iter()
                .map(|(lsn, name)| (name, format!("rows-{lsn:016X}.idx"), Lsn(lsn)))
                .collect(),
        };
        for (name, rows, covered) in candidates {
            match self.load_one(&name, &rows, mapping_hash) {
                Ok((graph, index, snap_lsn)) => {
                    let lsn = covered.max(Lsn(snap_lsn));
                    let m = Manifest {
                        lsn,
                        snapshot: name,
                        rows,
                        mapping_hash,
                        previous: None,
                        // The manifest's position holds for the fallback too: the log keeps
                        // every record after the older snapshot.
                        position: manifest.as_ref().map_or(lsn, |m| m.position.max(lsn)),
                    };
                    return Ok(Some(Restored {
                        graph,
                        index,
                        lsn: m.lsn,
                        manifest: m,
                        refused,
                    }));
                }
                Err(e) => refused.push(e),
            }
        }
        Err(CheckpointError::NoneUsable {
            dir: self.dir.clone(),
            reasons: refused.join("; "),
        })
    }

    /// Deletes every checkpoint file (before a rebuild), and the graph's scale-out lineage: a
    /// graph built afresh is another graph to followers.
    pub fn clear(&self) -> Result<(), CheckpointError> {
        let _ = std::fs::remove_file(self.dir.join(MANIFEST));
        let _ = std::fs::remove_file(self.dir.join(LINEAGE_FILE));
        for (lsn, name) in self.snapshots() {
            let _ = std::fs::remove_file(self.dir.join(&name));
            let _ = std::fs::remove_file(self.dir.join(format!("rows-{lsn:016X}.idx")));
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::{Csr, EdgeInput, EdgeLabel, NodeId};
    use std::sync::Arc;

    fn view(edges: u32, lsn: u64) -> Arc<GraphView> {
        let e: Vec<EdgeInput> = (0..edges)
            .map(|i| EdgeInput {
                source: NodeId(i),
                target: NodeId(i + 1),
                label: EdgeLabel(0),
                weight: 1.0,
            })
            .collect();
        Graph::new(Csr::build(edges + 1, &e, false).unwrap(), lsn).view()
    }

    fn fallback(m: &Manifest) -> Option<Fallback> {
        Some(Fallback {
            snapshot: m.snapshot.clone(),
            rows: m.rows.clone(),
            lsn: m.lsn,
        })
    }

    fn snap_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".snap"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keeps_two_snapshots_and_falls_back_to_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let idx = RowIndex::default();
        let a = store.write(&view(1, 0x10), &idx, None, 7, 0).unwrap();
        assert_eq!((a.lsn, a.oldest()), (Lsn(0x10), Lsn(0x10)));
        let b = store.write(&view(2, 0x40), &idx, fallback(&a), 7, 0).unwrap();
        assert_eq!(b.snapshot, "graph-0000000000000040.snap");
        assert_eq!(b.oldest(), Lsn(0x10), "the log must keep what follows the previous one");
        let c = store.write(&view(3, 0x70), &idx, fallback(&b), 7, 0).unwrap();
        assert_eq!(c.oldest(), Lsn(0x40));
        assert_eq!(
            snap_files(dir.path()),
            ["graph-0000000000000040.snap", "graph-0000000000000070.snap"],
            "two snapshots kept"
        );
        assert_eq!(store.manifest().unwrap(), c);
        // Not after the one it replaces: refused.
        let same = store.write(&view(3, 0x70), &idx, fallback(&c), 7, 0);
        assert!(matches!(same, Err(CheckpointError::Io { .. })), "{same:?}");

        // The newest snapshot corrupted: the previous one is restored at its own LSN (the
        // change log replays the rest).
        let newest = dir.path().join(&c.snapshot);
        let mut bytes = std::fs::read(&newest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&newest, bytes).unwrap();
        let r = store.restore(7).unwrap().unwrap();
        assert_eq!(r.lsn, Lsn(0x40));
        assert_eq!(r.manifest.snapshot, "graph-0000000000000040.snap");
        assert_eq!(r.graph.view().edge_count(), 2);
        assert!(r.refused.iter().any(|e| e.contains(&c.snapshot)), "{:?}", r.refused);

        // Another mapping: refused with the fix.
        assert!(matches!(store.restore(8), Err(CheckpointError::MappingChanged { .. })));

        // Without a manifest, the newest snapshot file that loads.
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        let r = store.restore(7).unwrap().unwrap();
        assert_eq!((r.lsn, r.graph.view().edge_count()), (Lsn(0x40), 2));
    }

    #[test]
    fn a_manifest_of_the_format_before_the_change_log_still_reads() {
        let m = Manifest::from_json(
            r#"{"format":1,"lsn":"1/10","snapshot_lsn":"1/8","snapshot":"g.snap","rows":"r.idx","mapping_hash":"000000000000abcd"}"#,
        )
        .unwrap();
        assert_eq!(
            (m.lsn, m.position, m.previous),
            (Lsn(0x1_0000_0010), Lsn(0x1_0000_0010), None)
        );
    }
}
