//! Durable checkpoints in the data directory, and recovering the newest good one.
//!
//! A checkpoint is three files:
//! - `graph-<LSN>.snap`: the graph snapshot (graph engine format: checksummed, mmap-loaded);
//! - `rows-<LSN>.idx`: the mapper's row index (checksummed);
//! - `checkpoint.json`: the manifest naming them, the mapping hash, and the *covered LSN*:
//!   every transaction that committed before it is in the snapshot. It can be ahead of the
//!   snapshot's own LSN when only WAL of unmapped tables followed (an idle advance); then it is
//!   rewritten without a new snapshot.
//!
//! Every file is written to a temporary name, fsynced, renamed, and the directory fsynced, so
//! a crash leaves either the old or the new checkpoint. The covered LSN of the manifest on disk
//! is the only position graphsync ever confirms to the server. The previous snapshot is kept
//! (older ones pruned), so one corrupt file still leaves a fallback.
//!
//! Not for deciding when to checkpoint (the replicator does).

use crate::mapper::RowIndex;
use graph::snapshot::{self, SnapshotError};
use graph::{CompactionPolicy, Graph, GraphView};
use pgoutput::Lsn;
use std::fs::File;
use std::io::Write;
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

/// The manifest (`checkpoint.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Every transaction committed before this LSN is in the checkpoint.
    pub lsn: Lsn,
    /// The snapshot's own LSN (≤ `lsn`).
    pub snapshot_lsn: Lsn,
    /// Snapshot file name (in the data directory).
    pub snapshot: String,
    /// Row index file name.
    pub rows: String,
    /// Hash of the mapping the graph was built with.
    pub mapping_hash: u64,
}

impl Manifest {
    fn to_json(&self) -> String {
        serde_json::json!({
            "format": 1,
            "lsn": self.lsn.to_string(),
            "snapshot_lsn": self.snapshot_lsn.to_string(),
            "snapshot": self.snapshot,
            "rows": self.rows,
            "mapping_hash": format!("{:016x}", self.mapping_hash),
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
        Ok(Manifest {
            lsn: lsn("lsn")?,
            snapshot_lsn: lsn("snapshot_lsn")?,
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
    /// The covered LSN: resume streaming here, skip transactions that ended at or before it.
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

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

const MANIFEST: &str = "checkpoint.json";

impl CheckpointStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(CheckpointStore { dir: dir.to_path_buf() })
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

    /// Writes a full checkpoint of `view` and `index` covering `lsn` (≥ the view's LSN), then
    /// prunes all but the previous snapshot. Returns the new manifest.
    pub fn write(
        &self,
        view: &GraphView,
        index: &RowIndex,
        lsn: Lsn,
        mapping_hash: u64,
        now_unix_ms: i64,
    ) -> Result<Manifest, CheckpointError> {
        self.write_encoded(view, &index.encode(), lsn, mapping_hash, now_unix_ms)
    }

    /// As [`CheckpointStore::write`] with the row index already encoded ([`RowIndex::encode`]),
    /// so the writer can hand the work to another thread without cloning the index.
    pub fn write_encoded(
        &self,
        view: &GraphView,
        index: &[u8],
        lsn: Lsn,
        mapping_hash: u64,
        now_unix_ms: i64,
    ) -> Result<Manifest, CheckpointError> {
        let snap_lsn = Lsn(view.lsn());
        let snapshot = format!("graph-{:016X}.snap", snap_lsn.0);
        let rows = format!("rows-{:016X}.idx", snap_lsn.0);
        write_atomic(&self.dir, &rows, index)?;
        snapshot::write(view, &self.dir.join(&snapshot), mapping_hash, now_unix_ms)?;
        let m = Manifest {
            lsn: lsn.max(snap_lsn),
            snapshot_lsn: snap_lsn,
            snapshot,
            rows,
            mapping_hash,
        };
        write_atomic(&self.dir, MANIFEST, m.to_json().as_bytes())?;
        self.prune(&m);
        Ok(m)
    }

    /// Moves the covered LSN of the current checkpoint forward (nothing mapped changed since
    /// its snapshot). Returns the new manifest.
    pub fn advance(&self, current: &Manifest, lsn: Lsn) -> Result<Manifest, CheckpointError> {
        let m = Manifest {
            lsn: lsn.max(current.lsn),
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
        // Keep the new snapshot and the newest older one.
        let snaps = self.snapshots();
        let mut kept_older = false;
        for (lsn, name) in snaps {
            if name == keep.snapshot {
                continue;
            }
            if !kept_older && lsn < keep.snapshot_lsn.0 {
                kept_older = true;
                continue;
            }
            let _ = std::fs::remove_file(self.dir.join(&name));
            let _ = std::fs::remove_file(self.dir.join(format!("rows-{lsn:016X}.idx")));
        }
    }

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

    /// The newest usable checkpoint: the manifest's, or if its files are corrupt, the newest
    /// older snapshot that loads (covering only its own LSN). `Ok(None)` when the directory
    /// holds no checkpoint at all.
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
        for (lsn, name) in self.snapshots() {
            if manifest.as_ref().is_some_and(|m| m.snapshot == name) {
                continue;
            }
            let rows = format!("rows-{lsn:016X}.idx");
            match self.load_one(&name, &rows, mapping_hash) {
                Ok((graph, index, snap_lsn)) => {
                    let m = Manifest {
                        lsn: Lsn(snap_lsn),
                        snapshot_lsn: Lsn(snap_lsn),
                        snapshot: name,
                        rows,
                        mapping_hash,
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

    /// Deletes every checkpoint file (before a rebuild).
    pub fn clear(&self) -> Result<(), CheckpointError> {
        let _ = std::fs::remove_file(self.dir.join(MANIFEST));
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
