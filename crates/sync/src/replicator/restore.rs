//! Resuming from the data directory: the newest usable snapshot (the previous one if the
//! newest is corrupt), the change log's torn tail cut, and every logged record after the
//! snapshot replayed onto it. Runs on a blocking thread while the first connection is made.

#[allow(unused_imports)]
use super::*;
use crate::changelog::{Cut, Replayed};
use crate::checkpoint::Restored;

/// The state found on disk.
pub(super) struct Resumed {
    /// The snapshot, with the log replayed onto its graph and row index.
    pub(super) restored: Restored,
    /// What the replay did; `position` is where streaming resumes.
    pub(super) replayed: Replayed,
    /// What recovery cut from the end of the log, if anything.
    pub(super) cut: Option<Cut>,
    /// How long restoring took.
    pub(super) took: Duration,
    /// How much of it loading the snapshot took (the rest: recovery and replay).
    pub(super) loading: Duration,
}

impl Resumed {
    /// Where streaming resumes: the log's last record, the snapshot, or the manifest's
    /// position, whichever is furthest.
    pub(super) fn position(&self) -> Lsn {
        self.replayed
            .position
            .max(self.restored.lsn)
            .max(self.restored.manifest.position)
    }
}

/// A restore running on a blocking thread.
pub(super) type RestoreTask = tokio::task::JoinHandle<Result<Option<Resumed>, SyncError>>;

/// Loads the newest usable snapshot and replays the log after it. `Ok(None)` when the data
/// directory holds no snapshot at all.
pub(super) fn restore(store: &CheckpointStore, log: &LogDir, hash: u64) -> Result<Option<Resumed>, SyncError> {
    let started = Instant::now();
    let Some(mut restored) = store.restore(hash)? else {
        return Ok(None);
    };
    let loading = started.elapsed();
    let recovery = log.recover(hash)?;
    if let Some(cut) = &recovery.cut {
        tracing::warn!(
            file = %cut.file.display(),
            offset = cut.offset,
            bytes = cut.bytes,
            valid_after = cut.valid_after,
            "cut a torn record at the end of the change log (written after its last flush by a process that crashed; the server sends it again unless it had been confirmed, which the slot check below refuses)"
        );
    }
    let replayed = crate::changelog::replay(log, hash, restored.lsn, &mut restored.graph, &mut restored.index)?;
    Ok(Some(Resumed {
        restored,
        replayed,
        cut: recovery.cut,
        took: started.elapsed(),
        loading,
    }))
}

/// The replica state stored in `data_dir` as a restart finds it: the newest usable snapshot
/// with the change log replayed onto it, and the position it reaches. `Ok(None)` when the
/// directory holds no snapshot. Cuts a torn log tail as a restart does: use it only on a
/// directory no replicator is running on.
pub fn load(data_dir: &std::path::Path, mapping_hash: u64) -> Result<Option<(Graph, RowIndex, Lsn)>, SyncError> {
    let data_dir = &crate::generation::state_dir(data_dir);
    let store = CheckpointStore::open(data_dir)?;
    let log = LogDir::open(&data_dir.join("log"))?;
    Ok(restore(&store, &log, mapping_hash)?.map(|r| {
        let position = r.position();
        (r.restored.graph, r.restored.index, position)
    }))
}
