//! Applying what was received: transactions that arrived back to back batched into one
//! graph transaction, published at the last commit, appended to the change log as one record
//! (holding each transaction's boundary), with the latency metrics.

#[allow(unused_imports)]
use super::*;

/// How long a received transaction may wait for more to batch with.
pub(super) const MAX_BATCH_DELAY: Duration = Duration::from_millis(5);

/// Transactions received back to back, applied as one graph transaction.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) txns: Vec<CommittedTxn>,
    /// When each commit was sent and received.
    pub(super) received: Vec<Arrival>,
    /// Row changes in `txns`.
    pub(super) changes: usize,
}

/// When a commit left the server and reached us.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// When the frame carrying the commit was read.
    pub(super) at: Instant,
    /// The server's clock when it sent that frame, Unix microseconds.
    pub(super) sent_us: i64,
}

impl Batch {
    /// Adds `txn`, whose commit came in a message the server sent at `sent`, received `at`.
    pub(super) fn push(&mut self, txn: CommittedTxn, sent: PgTimestamp, at: Instant) {
        self.changes += txn.len();
        self.txns.push(txn);
        self.received.push(Arrival {
            at,
            sent_us: sent.unix_micros(),
        });
    }

    /// Whether the batch is worth waiting after: some transactions, but few and small (a
    /// heavy load's batches are large, and its next read waits for nothing).
    pub(super) fn is_light(&self) -> bool {
        !self.txns.is_empty() && self.txns.len() < 100 && self.changes < 10_000
    }

    pub(super) fn clear(&mut self) {
        self.txns.clear();
        self.received.clear();
        self.changes = 0;
    }
}

/// Applies the batched transactions as one graph transaction, publishes it and queues its
/// change log record (made durable by the log's writer thread; nothing is confirmed before).
///
/// When the batch fails, its transactions are applied one by one, so what comes before the
/// transaction that failed is applied and the error is about that one (a replica paused by it
/// has applied everything before it).
pub(super) fn apply_pending(
    batch: &mut Batch,
    mapper: &mut Mapper,
    st: &mut State,
    status: &ReplicaStatus,
) -> Result<(), SyncError> {
    match apply_txns(&batch.txns, &batch.received, mapper, st, status) {
        Err(e) if batch.txns.len() > 1 => {
            tracing::debug!(error = %e, txns = batch.txns.len(), "a batch failed; applying its transactions one by one");
            for i in 0..batch.txns.len() {
                apply_txns(&batch.txns[i..=i], &batch.received[i..=i], mapper, st, status)?;
            }
        }
        done => done?,
    }
    batch.clear();
    Ok(())
}

fn apply_txns(
    pending: &[CommittedTxn],
    received: &[Arrival],
    mapper: &mut Mapper,
    st: &mut State,
    status: &ReplicaStatus,
) -> Result<(), SyncError> {
    let Some(last) = pending.last() else { return Ok(()) };
    let (end, time) = (last.end_lsn, last.commit_time);
    if st.graph.read_only_reason().is_some() {
        // No compaction in flight to wait for (the loop waits for one before applying).
        tracing::warn!("overlays at the hard limit; compacting before applying");
        crate::blocking(|| st.graph.compact())?;
    }
    let started = Instant::now();
    let done = mapper.apply_logged(&mut st.graph, &mut st.index, pending)?;
    let applied = Instant::now();
    let ends: Vec<(Lsn, i64)> = pending
        .iter()
        .map(|t| (t.end_lsn, t.commit_time.unix_micros()))
        .collect();
    let record = crate::changelog::record::encode_changes(&done, &ends);
    let logged_changes = done.mutations.len() as u64;
    drop(done);
    // The feed copies the record before the log takes it; readers see it once the applied
    // LSN (below) says so.
    st.feed.push(end, &record, st.log.durable());
    st.log.append(end, record)?;
    st.logged = end;
    st.since_snapshot += logged_changes;
    let took = applied.duration_since(started).as_secs_f64();
    // One wall-clock reading, beside the monotonic one that places each arrival on it (so
    // the three parts of a transaction's lag add up to the whole, clamping aside).
    let (now_us, now) = (unix_micros_now(), Instant::now());
    for txn in pending.iter() {
        if let Some(sp) = &txn.spilled {
            tracing::info!(
                xid = txn.xid,
                changes = txn.len(),
                spilled_bytes = sp.bytes(),
                "applied a large transaction spilled to disk"
            );
        }
    }
    let changes: usize = pending.iter().map(CommittedTxn::len).sum();
    status.update(|s| {
        s.apply_seconds.observe(took);
        let secs = |us: i64| us.max(0) as f64 / 1e6;
        for (txn, arrival) in pending.iter().zip(received) {
            let committed = txn.commit_time.unix_micros();
            s.commit_to_apply_seconds.observe(secs(now_us - committed));
            let waited = now.saturating_duration_since(arrival.at);
            s.commit_to_send_seconds.observe(secs(arrival.sent_us - committed));
            s.send_to_receive_seconds
                .observe(secs(now_us - waited.as_micros() as i64 - arrival.sent_us));
            s.receive_to_apply_seconds.observe(waited.as_secs_f64());
        }
        s.applied_lsn = end;
        s.last_commit_time = Some(time);
        s.transactions += pending.len() as u64;
        s.changes += changes as u64;
    });
    st.safe = end;
    Ok(())
}
