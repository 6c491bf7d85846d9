//! Checkpoints and compactions: writing one synchronously, and the background jobs (on
//! low-priority threads, `crate::background`) the stream loop starts and reaps.

#[allow(unused_imports)]
use super::*;

pub(super) fn checkpoint(
    store: &CheckpointStore,
    st: &mut State,
    hash: u64,
    status: &ReplicaStatus,
) -> Result<(), CheckpointError> {
    let started = Instant::now();
    let view = st.graph.view();
    let m = store.write(&view, &st.index, st.safe, st.fallback(), hash, now_ms())?;
    tracing::info!(lsn = %m.lsn, snapshot = %m.snapshot, ms = started.elapsed().as_millis() as u64, "checkpoint written");
    st.previous_same = !st.dirty();
    record_checkpoint(store, st, m, status);
    st.durable_version = st.version;
    Ok(())
}

/// Makes `m` the state's manifest and reports it.
pub(super) fn record_checkpoint(store: &CheckpointStore, st: &mut State, m: Manifest, status: &ReplicaStatus) {
    let bytes = std::fs::metadata(store.dir().join(&m.snapshot)).map_or(0, |md| md.len());
    st.manifest = m;
    status.update(|s| {
        s.manifest_positions(&st.manifest);
        s.checkpoints += 1;
        s.snapshot_bytes = bytes;
        s.snapshot_unix_ms = now_ms();
    });
}

/// A checkpoint being written on a blocking thread: the manifest and how long it took.
pub(super) type CheckpointTask = tokio::task::JoinHandle<Result<(Manifest, Duration), CheckpointError>>;

/// Checkpoints and compactions running on blocking threads while streaming goes on.
#[derive(Default)]
pub(super) struct Background {
    /// A checkpoint being written, and the state version it captured.
    pub(super) checkpoint: Option<(u64, CheckpointTask)>,
    pub(super) compaction: Option<tokio::task::JoinHandle<graph::Compacted>>,
}

impl Background {
    /// Starts a checkpoint of the current view covering `st.safe` if none is running.
    pub(super) fn start_checkpoint(&mut self, store: &CheckpointStore, st: &mut State, hash: u64) {
        if self.checkpoint.is_some() {
            return;
        }
        let view = st.graph.view();
        let index = st.index.encode();
        let (store, lsn, previous) = (store.clone(), st.safe, st.fallback());
        self.checkpoint = Some((
            st.version,
            crate::background::spawn("checkpoint", move || {
                let started = Instant::now();
                store
                    .write_encoded(&view, &index, lsn, previous, hash, now_ms())
                    .map(|m| (m, started.elapsed()))
            }),
        ));
    }

    /// Collects a finished checkpoint (or waits for it with `wait`).
    pub(super) async fn reap_checkpoint(
        &mut self,
        store: &CheckpointStore,
        st: &mut State,
        status: &ReplicaStatus,
        wait: bool,
    ) {
        let Some((_, h)) = self.checkpoint.as_ref() else { return };
        if !wait && !h.is_finished() {
            return;
        }
        let Some((version, h)) = self.checkpoint.take() else {
            return;
        };
        match h.await {
            Ok(Ok((m, took))) => {
                // A copy of the state the previous checkpoint already held (written while
                // idle) leaves both checkpoints with the same graph.
                st.previous_same = version == st.durable_version;
                // Durable up to the version the checkpoint captured, not later ones.
                st.durable_version = version;
                tracing::info!(lsn = %m.lsn, snapshot = %m.snapshot, ms = took.as_millis() as u64, "checkpoint written");
                // No idle advance runs while a checkpoint is in flight, so this manifest is the
                // newest.
                record_checkpoint(store, st, m, status);
            }
            Ok(Err(e)) => checkpoint_failed(status, &e),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
    }

    /// Starts a compaction when overlays passed the soft limit; swaps in a finished one;
    /// waits for it when overlays reached the hard limit.
    pub(super) async fn compaction(&mut self, st: &mut State, status: &ReplicaStatus) -> Result<(), SyncError> {
        if self.compaction.is_none() && st.graph.needs_compaction() {
            let job = st.graph.begin_compaction();
            let started = Instant::now();
            self.compaction = Some(crate::background::spawn("compaction", move || {
                let done = job.build();
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "compaction built");
                done
            }));
            status.update(|s| s.compactions += 1);
        }
        let must_wait = st.graph.read_only_reason().is_some();
        let ready = self.compaction.as_ref().is_some_and(|h| h.is_finished());
        if ready || (must_wait && self.compaction.is_some()) {
            if must_wait {
                tracing::warn!("overlays at the hard limit; waiting for the compaction");
            }
            let started = Instant::now();
            if let Some(h) = self.compaction.take() {
                let done = h
                    .await
                    .map_err(|e| SyncError::Io(format!("compaction task failed: {e}")))?;
                match st.graph.finish_compaction(done) {
                    // A synchronous compaction at the hard limit superseded this one.
                    Err(ApplyError::StaleCompaction) => return Ok(()),
                    r => {
                        r?;
                    }
                }
                let took = started.elapsed();
                tracing::info!(ms = took.as_millis() as u64, "compacted overlays");
                status.update(|s| s.compaction_seconds += took.as_secs_f64());
            }
        }
        Ok(())
    }
}

pub(super) fn checkpoint_failed(status: &ReplicaStatus, e: &CheckpointError) {
    tracing::error!(error = %e, "checkpoint failed; keeping the previous one, confirming nothing new, retrying");
    status.update(|s| s.last_error = Some(e.to_string()));
}
