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

/// A snapshot being written in the background, and the logged changes it holds.
pub(super) struct SnapshotTask {
    task: tokio::task::JoinHandle<Result<(Manifest, Duration), CheckpointError>>,
    since_snapshot: u64,
    /// How long its compaction took to build.
    built: Duration,
}

/// What a snapshot of the compaction in flight needs, captured when it began (the row index at
/// the compacted view's LSN, and the logged changes it will hold).
struct SnapshotRequest {
    index: Vec<u8>,
    since_snapshot: u64,
}

/// The compaction and the snapshot running on background threads while streaming goes on.
#[derive(Default)]
pub(super) struct Background {
    /// Its result and how long building it took.
    pub(super) compaction: Option<tokio::task::JoinHandle<(graph::Compacted, Duration)>>,
    /// A snapshot to write of the compaction in flight once it is swapped in.
    request: Option<SnapshotRequest>,
    pub(super) snapshot: Option<SnapshotTask>,
    /// No snapshot is attempted before this (after a failed one), and the wait doubles.
    retry: Option<(Instant, Duration)>,
    /// No snapshot starts before this unless changes piled up ([`SNAPSHOT_PAUSE_FACTOR`]).
    pause_until: Option<Instant>,
}

/// Snapshots take about a tenth of the time: after one that took `T` (its compaction's
/// building and its file's writing, wall clock on their own threads, so a busy machine, where
/// their low priority stretches `T`, spaces them further; a loop that reaps it late, after a
/// reconnect or a pause, adds nothing), the next waits `9 T` unless [`SNAPSHOT_OVERDUE`]
/// bounds piled up. At a high change rate on a large graph a snapshot (a compaction and a file
/// of the whole graph) every bound of changes took a quarter of graphsync's CPU (e2e max-rate
/// phase, 1 M-change bound: 0.59 cores with a snapshot every 2–4 s, 0.46 with this pause,
/// 0.43–0.45 with none).
const SNAPSHOT_PAUSE_FACTOR: u32 = 9;

/// A snapshot starts whatever the pause once this many bounds of changes are logged since
/// the last: the replay at restart stays bounded.
const SNAPSHOT_OVERDUE: u64 = 4;

/// Whether a snapshot is due: `since` changes logged since the last reached `bound`, and the
/// pause after the last one is over (or `since` reached [`SNAPSHOT_OVERDUE`] bounds).
fn snapshot_due(since: u64, bound: u64, pause_until: Option<Instant>, now: Instant) -> bool {
    let paused = pause_until.is_some_and(|t| now < t) && since < bound.saturating_mul(SNAPSHOT_OVERDUE);
    since >= bound && !paused
}

/// When the pause after a snapshot that took `spent` (its compaction's building and its
/// file's writing, each timed on its own thread) ends, reaped at `now`.
fn pause_after(spent: Duration, now: Instant) -> Instant {
    now + spent * SNAPSHOT_PAUSE_FACTOR
}

/// What starting a snapshot needs.
pub(super) struct SnapshotCtx<'a> {
    pub(super) store: &'a CheckpointStore,
    pub(super) hash: u64,
    /// `None`: the default bound ([`snapshot_bound`]); `Some(n)`: exactly `n`, as set.
    pub(super) after_changes: Option<u64>,
}

/// The default number of graph changes logged since the last snapshot that start the next:
/// [`DEFAULT_SNAPSHOT_AFTER_CHANGES`] at most, sooner for a small graph — as many as it has
/// elements (nodes + edges), at least [`MIN_SNAPSHOT_BOUND`]. A snapshot costs O(graph),
/// replay at restart O(changes since): this writes about one element per logged change
/// whatever the size (a quarter, tried first, had a 1 M-edge graph snapshotted every 2–3 s at
/// 50 k changes/s: too much disk), and a small graph's restart replays little.
pub(super) fn snapshot_bound(graph_size: u64) -> u64 {
    DEFAULT_SNAPSHOT_AFTER_CHANGES.min(graph_size.max(MIN_SNAPSHOT_BOUND))
}

/// The least [`snapshot_bound`] for a small graph.
const MIN_SNAPSHOT_BOUND: u64 = 100_000;

/// How long a snapshot waits for the log to be durable up to its LSN before giving up (the
/// log's writer is failing: disk full).
const DURABLE_WAIT: Duration = Duration::from_secs(60);

impl Background {
    /// Starts a compaction when overlays passed the soft limit, or the log since the last
    /// snapshot passed its bound (then a snapshot is written of its result); swaps in a
    /// finished one and starts its snapshot; records a finished snapshot; waits for the
    /// compaction when overlays reached the hard limit.
    pub(super) async fn compaction(
        &mut self,
        st: &mut State,
        status: &ReplicaStatus,
        ctx: &SnapshotCtx<'_>,
    ) -> Result<(), SyncError> {
        if self.snapshot.as_ref().is_some_and(|s| s.task.is_finished()) {
            self.reap_snapshot(st, status, ctx.store).await;
        }
        let retry_ok = self.retry.is_none_or(|(t, _)| Instant::now() >= t);
        let bound = ctx.after_changes.unwrap_or_else(|| {
            let v = st.graph.view();
            snapshot_bound(u64::from(v.node_count()) + v.edge_count() as u64)
        });
        let due = snapshot_due(st.since_snapshot, bound, self.pause_until, Instant::now());
        let want_snapshot = due && retry_ok && self.snapshot.is_none();
        if self.compaction.is_none() && (want_snapshot || st.graph.needs_compaction()) {
            let job = st.graph.begin_compaction();
            let lsn = Lsn(st.graph.view().lsn());
            self.request = (want_snapshot && lsn > st.manifest.lsn).then(|| SnapshotRequest {
                index: st.index.encode(),
                since_snapshot: st.since_snapshot,
            });
            let started = Instant::now();
            self.compaction = Some(crate::background::spawn("compaction", move || {
                let done = job.build();
                let took = started.elapsed();
                tracing::debug!(ms = took.as_millis() as u64, "compaction built");
                (done, took)
            }));
            status.update(|s| s.compactions += 1);
        }
        let must_wait = st.graph.read_only_reason().is_some();
        let ready = self.compaction.as_ref().is_some_and(|h| h.is_finished());
        if ready || (must_wait && self.compaction.is_some()) {
            if must_wait {
                tracing::warn!("overlays at the hard limit; waiting for the compaction");
            }
            self.finish_compaction(st, status, ctx).await?;
        }
        Ok(())
    }

    /// Waits for the compaction in flight, swaps it in, and starts writing its snapshot.
    async fn finish_compaction(
        &mut self,
        st: &mut State,
        status: &ReplicaStatus,
        ctx: &SnapshotCtx<'_>,
    ) -> Result<(), SyncError> {
        let Some(h) = self.compaction.take() else {
            return Ok(());
        };
        let request = self.request.take();
        let started = Instant::now();
        let (done, built) = h
            .await
            .map_err(|e| SyncError::Io(format!("compaction task failed: {e}")))?;
        // The compacted view itself (it shares the fresh base): what the snapshot holds.
        let base = request.as_ref().and_then(|_| done.view().cloned());
        match st.graph.finish_compaction(done) {
            // A synchronous compaction at the hard limit superseded this one.
            Err(ApplyError::StaleCompaction) => return Ok(()),
            r => {
                r?;
            }
        }
        let took = started.elapsed();
        // The old base and overlay versions are freed on a background thread, not here.
        if let Some(old) = st.graph.take_retired() {
            drop(crate::background::spawn("free-view", move || drop(old)));
        }
        tracing::info!(ms = took.as_millis() as u64, "compacted overlays");
        status.update(|s| s.compaction_seconds += took.as_secs_f64());
        if let (Some(req), Some(view)) = (request, base) {
            let lsn = Lsn(view.lsn());
            let previous = Fallback {
                snapshot: st.manifest.snapshot.clone(),
                rows: st.manifest.rows.clone(),
                lsn: st.manifest.lsn,
            };
            let (store, hash, durable, position) = (ctx.store.clone(), ctx.hash, st.log.watch(), st.manifest.position);
            let task = crate::background::spawn("snapshot", move || {
                let started = Instant::now();
                wait_durable(&durable, lsn, &store)
                    .and_then(|()| store.write_encoded(&view, &req.index, Some(previous), position, hash, now_ms()))
                    .map(|m| (m, started.elapsed()))
            });
            self.snapshot = Some(SnapshotTask {
                task,
                since_snapshot: req.since_snapshot,
                built,
            });
        }
        Ok(())
    }

    /// Records a finished snapshot (waits for it).
    async fn reap_snapshot(&mut self, st: &mut State, status: &ReplicaStatus, store: &CheckpointStore) {
        let Some(s) = self.snapshot.take() else { return };
        match s.task.await {
            Ok(Ok((m, took))) => {
                tracing::info!(lsn = %m.lsn, snapshot = %m.snapshot, ms = took.as_millis() as u64, "snapshot written");
                record_snapshot(store, &m, status);
                st.since_snapshot = st.since_snapshot.saturating_sub(s.since_snapshot);
                self.pause_until = Some(pause_after(s.built + took, Instant::now()));
                // Records before the older kept snapshot are needed by neither.
                // Nor by a rebuild replaying this log (pinned).
                let pin = st.log_pin.load(std::sync::atomic::Ordering::SeqCst);
                let keep = if pin > 0 { m.oldest().min(Lsn(pin)) } else { m.oldest() };
                // Nor by the publisher, which has not sent them yet.
                let keep = status.publish_floor().map_or(keep, |p| keep.min(p));
                match st.log.remove_through(keep) {
                    Ok(n) if n > 0 => tracing::debug!(segments = n, "removed change log segments"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot remove old change log segments; retrying after the next snapshot")
                    }
                }
                // No position advance runs while a snapshot is written: this manifest is the
                // newest, its position what the loop last wrote.
                st.manifest = Manifest {
                    position: m.position.max(st.manifest.position),
                    ..m
                };
                self.retry = None;
            }
            Ok(Err(e)) => {
                let wait = self
                    .retry
                    .map_or(Duration::from_secs(10), |(_, w)| (w * 2).min(Duration::from_secs(300)));
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "snapshot failed; keeping the previous one (the change log holds everything since)");
                status.update(|s| s.last_error = Some(e.to_string()));
                self.retry = Some((Instant::now() + wait, wait));
            }
            Err(e) => tracing::error!(error = %e, "snapshot task failed"),
        }
    }

    /// Lets the compaction and the snapshot in flight finish (for a clean stop).
    pub(super) async fn finish(&mut self, st: &mut State, status: &ReplicaStatus, ctx: &SnapshotCtx<'_>) {
        if let Err(e) = self.finish_compaction(st, status, ctx).await {
            tracing::warn!(error = %e, "the compaction in flight failed while stopping");
        }
        self.reap_snapshot(st, status, ctx.store).await;
    }

    /// Whether a snapshot is being written (the manifest must not change meanwhile).
    pub(super) fn writing_snapshot(&self) -> bool {
        self.snapshot.is_some()
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

/// Lets a compaction and snapshot in flight finish before stopping.
pub(super) async fn finish_background(st: &mut State, status: &ReplicaStatus, store: &CheckpointStore, hash: u64) {
    let mut bg = std::mem::take(&mut st.bg);
    let ctx = SnapshotCtx {
        store,
        hash,
        after_changes: Some(u64::MAX),
    };
    bg.finish(st, status, &ctx).await;
    st.bg = bg;
}

#[cfg(test)]
mod tests {
    use super::{pause_after, snapshot_bound, snapshot_due, SNAPSHOT_OVERDUE};
    use std::time::{Duration, Instant};

    /// A snapshot is due at its bound, not during the pause after the last one (which lasts
    /// nine times that one's duration), unless four bounds of changes piled up.
    #[test]
    fn snapshots_pause_nine_times_their_duration_unless_overdue() {
        let t0 = Instant::now();
        let bound = 1_000;
        assert!(!snapshot_due(999, bound, None, t0));
        assert!(snapshot_due(1_000, bound, None, t0));
        // The last took 2 s (compaction and file): the next waits 18 s after it.
        let done = t0 + Duration::from_secs(2);
        let until = pause_after(Duration::from_secs(2), done);
        assert_eq!(until, done + Duration::from_secs(18));
        assert!(!snapshot_due(1_000, bound, Some(until), done + Duration::from_secs(17)));
        assert!(!snapshot_due(
            3 * bound,
            bound,
            Some(until),
            done + Duration::from_secs(17)
        ));
        assert!(snapshot_due(
            SNAPSHOT_OVERDUE * bound,
            bound,
            Some(until),
            done + Duration::from_secs(17)
        ));
        assert!(snapshot_due(1_000, bound, Some(until), done + Duration::from_secs(18)));
        // The pause never makes a snapshot due below its bound.
        assert!(!snapshot_due(999, bound, Some(until), done + Duration::from_secs(60)));
    }

    #[test]
    fn the_default_snapshot_bound_follows_a_small_graph() {
        // A small graph: at least 100,000 changes.
        assert_eq!(snapshot_bound(0), 100_000);
        assert_eq!(snapshot_bound(80_000), 100_000);
        // As many as a mid-sized graph has elements.
        assert_eq!(snapshot_bound(500_000), 500_000);
        // A large graph: the default.
        assert_eq!(snapshot_bound(50_000_000), 1_000_000);
    }
}
