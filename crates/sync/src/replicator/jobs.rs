//! Compactions and the snapshots written with them: started by the stream loop when overlays
//! pass the soft limit or the log since the last snapshot passes its bound, run on
//! low-priority threads (`crate::background`), reaped by the loop.
//!
//! A snapshot is the compaction's own result (the compacted view, no second copy of the
//! graph), written only once the log is durable up to its LSN: a snapshot never holds a
//! change the log could lose, so the log since the previous snapshot is always complete.

#[allow(unused_imports)]
use super::*;

/// Writes the first snapshot (after the initial copy), on this thread.
pub(super) fn first_snapshot(
    store: &CheckpointStore,
    graph: &Graph,
    index: &RowIndex,
    hash: u64,
    status: &ReplicaStatus,
) -> Result<Manifest, CheckpointError> {
    let started = Instant::now();
    let m = store.write(&graph.view(), index, None, hash, now_ms())?;
    tracing::info!(lsn = %m.lsn, snapshot = %m.snapshot, ms = started.elapsed().as_millis() as u64, "snapshot written");
    record_snapshot(store, &m, status);
    Ok(m)
}

/// Reports a new snapshot.
fn record_snapshot(store: &CheckpointStore, m: &Manifest, status: &ReplicaStatus) {
    let bytes = std::fs::metadata(store.dir().join(&m.snapshot)).map_or(0, |md| md.len());
    status.update(|s| {
        s.snapshot_lsn = m.lsn;
        s.checkpoints += 1;
        s.snapshot_bytes = bytes;
        s.snapshot_unix_ms = now_ms();
    });
}

/// What a background compaction returns: the compacted graph, and the snapshot written of it
/// (with how long it took), if one was asked for.
type Finished = (graph::Compacted, Option<Result<(Manifest, Duration), CheckpointError>>);

/// A compaction in flight.
pub(super) struct Running {
    task: tokio::task::JoinHandle<Finished>,
    /// Logged changes the snapshot (if any) holds.
    since_snapshot: u64,
}

/// The compaction running on a background thread while streaming goes on.
#[derive(Default)]
pub(super) struct Background {
    pub(super) compaction: Option<Running>,
    /// No snapshot is attempted before this (after a failed one).
    retry_after: Option<Instant>,
}

/// What starting a snapshot needs.
pub(super) struct SnapshotCtx<'a> {
    pub(super) store: &'a CheckpointStore,
    pub(super) hash: u64,
    pub(super) after_changes: u64,
}

/// How long a snapshot waits for the log to be durable up to its LSN before giving up (the
/// log's writer is failing: disk full).
const DURABLE_WAIT: Duration = Duration::from_secs(60);

impl Background {
    /// Starts a compaction when overlays passed the soft limit, or the log since the last
    /// snapshot passed its bound (then a snapshot is written of the result); swaps in a
    /// finished one; waits for it when overlays reached the hard limit.
    pub(super) async fn compaction(
        &mut self,
        st: &mut State,
        status: &ReplicaStatus,
        ctx: &SnapshotCtx<'_>,
    ) -> Result<(), SyncError> {
        let retry_ok = self.retry_after.is_none_or(|t| Instant::now() >= t);
        let want_snapshot = st.since_snapshot >= ctx.after_changes && retry_ok;
        if self.compaction.is_none() && (st.graph.needs_compaction() || want_snapshot) {
            let job = st.graph.begin_compaction();
            let lsn = Lsn(st.graph.view().lsn());
            // Every compaction writes a snapshot when it holds anything the current one does not
            // (and no recent attempt failed): it costs one pass over the compacted arrays.
            let snapshot = (lsn > st.manifest.lsn && retry_ok).then(|| {
                (
                    st.index.encode(),
                    Fallback {
                        snapshot: st.manifest.snapshot.clone(),
                        rows: st.manifest.rows.clone(),
                        lsn: st.manifest.lsn,
                    },
                    st.log.watch(),
                )
            });
            let (store, hash) = (ctx.store.clone(), ctx.hash);
            let started = Instant::now();
            let task = crate::background::spawn("compaction", move || {
                let done = job.build();
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "compaction built");
                let written = match (snapshot, done.view()) {
                    (Some((index, previous, durable)), Some(view)) => {
                        let started = Instant::now();
                        Some(
                            wait_durable(&durable, lsn, &store)
                                .and_then(|()| store.write_encoded(view, &index, Some(previous), hash, now_ms()))
                                .map(|m| (m, started.elapsed())),
                        )
                    }
                    _ => None,
                };
                (done, written)
            });
            self.compaction = Some(Running {
                task,
                since_snapshot: st.since_snapshot,
            });
            status.update(|s| s.compactions += 1);
        }
        let must_wait = st.graph.read_only_reason().is_some();
        let ready = self.compaction.as_ref().is_some_and(|r| r.task.is_finished());
        if ready || (must_wait && self.compaction.is_some()) {
            if must_wait {
                tracing::warn!("overlays at the hard limit; waiting for the compaction");
            }
            self.reap(st, status, ctx.store).await?;
        }
        Ok(())
    }

    /// Waits for the compaction in flight, swaps it in and records its snapshot.
    pub(super) async fn reap(
        &mut self,
        st: &mut State,
        status: &ReplicaStatus,
        store: &CheckpointStore,
    ) -> Result<(), SyncError> {
        let Some(running) = self.compaction.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let (done, written) = running
            .task
            .await
            .map_err(|e| SyncError::Io(format!("compaction task failed: {e}")))?;
        match written {
            Some(Ok((m, took))) => {
                tracing::info!(lsn = %m.lsn, snapshot = %m.snapshot, ms = took.as_millis() as u64, "snapshot written");
                record_snapshot(store, &m, status);
                st.since_snapshot = st.since_snapshot.saturating_sub(running.since_snapshot);
                // Records before the older kept snapshot are needed by neither.
                match st.log.remove_through(m.oldest()) {
                    Ok(n) if n > 0 => tracing::debug!(segments = n, "removed change log segments"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot remove old change log segments; retrying later"),
                }
                st.manifest = m;
                self.retry_after = None;
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "snapshot failed; keeping the previous one (the change log holds everything since), retrying in 10 s");
                status.update(|s| s.last_error = Some(e.to_string()));
                self.retry_after = Some(Instant::now() + Duration::from_secs(10));
            }
            None => {}
        }
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
        Ok(())
    }
}

/// Waits (bounded) until the log is durable up to `lsn`.
fn wait_durable(durable: &watch::Receiver<Lsn>, lsn: Lsn, store: &CheckpointStore) -> Result<(), CheckpointError> {
    let deadline = Instant::now() + DURABLE_WAIT;
    while *durable.borrow() < lsn {
        if Instant::now() >= deadline {
            return Err(CheckpointError::Io {
                path: store.dir().join("log"),
                source: std::io::Error::other(format!(
                    "the change log is not durable up to {lsn} after {}s; a snapshot may not hold changes the log could lose",
                    DURABLE_WAIT.as_secs()
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Lets a compaction in flight finish (and its snapshot be recorded) before stopping.
pub(super) async fn finish_background(st: &mut State, status: &ReplicaStatus, store: &CheckpointStore) {
    let mut bg = std::mem::take(&mut st.bg);
    if let Err(e) = bg.reap(st, status, store).await {
        tracing::warn!(error = %e, "the compaction in flight failed while stopping");
    }
    st.bg = bg;
}
