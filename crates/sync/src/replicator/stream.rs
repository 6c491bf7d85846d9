//! The stream loop: receive, decode, assemble, apply (and log), compact and snapshot, confirm
//! what the log made durable, until shutdown or a connection error.

#[allow(unused_imports)]
use super::*;

/// While no data arrives for this long, the loop asks the server for a keepalive (its WAL
/// position) this often.
const PING_AFTER: Duration = Duration::from_millis(100);
/// The manifest's position is rewritten at most this often (while only unmapped tables
/// change): with `PING_AFTER` and the confirm interval, the slot trails the WAL end by well
/// under a second even then.
const ADVANCE_EVERY: Duration = Duration::from_millis(200);

/// What a session's stream loop reads but does not own.
pub(super) struct StreamCtx<'a> {
    pub(super) opts: &'a Options,
    pub(super) store: &'a CheckpointStore,
    pub(super) status: &'a Arc<ReplicaStatus>,
    pub(super) shutdown: &'a watch::Receiver<bool>,
    /// Mapping reloads: one ends the session at the next transaction boundary.
    pub(super) reloads: &'a mut Option<Reloads>,
    /// The status of a background rebuild in progress: the session ends for the swap once it
    /// has caught up.
    pub(super) rebuild: Option<Arc<ReplicaStatus>>,
    /// The mapped tables (OID, name, partitioned), watched for DDL replication does not carry
    /// (the replicator in force only).
    pub(super) watch_tables: Vec<(u32, String, bool)>,
}

pub(super) async fn stream(
    ctx: StreamCtx<'_>,
    mapper: &mut Mapper,
    st: &mut State,
    client: ReplicationClient,
) -> Result<SessionEnd, SyncError> {
    let StreamCtx {
        opts,
        store,
        status,
        shutdown,
        reloads,
        rebuild,
        watch_tables,
    } = ctx;
    let probe = probe::Probe::start(opts.conn.clone(), watch_tables);
    let hash = opts.hash();
    let mut start = StartOptions::new(opts.publication.clone());
    start.streaming = Streaming::On;
    start.binary = opts.binary;
    start.status_interval = opts.status_interval;
    // Confirm exactly the durable position from the first status update on.
    let durable = st.log.durable().max(st.manifest.position);
    let mut stream = client.start_replication(&opts.slot, durable, &start).await?;
    tracing::info!(slot = %opts.slot, from = %durable, proto = stream.proto_version(), "streaming");
    let proto = stream.proto_version();
    status.note_slot_held();
    status.update(|s| {
        s.phase = Phase::Streaming;
        s.last_error = None;
        s.proto_version = Some(proto);
    });
    let mut decoder = Decoder::new();
    let mut assembler = TxnAssembler::with_spill(opts.data_dir.join("spill"), opts.spill_threshold);
    let snapshots = SnapshotCtx {
        store,
        hash,
        after_changes: opts.snapshot_after_changes,
    };
    let mut next_advance = Instant::now();
    let mut next_confirm = Instant::now();
    let mut next_chores = Instant::now();
    let mut next_ping = Instant::now() + Duration::from_secs(1);
    let mut last_data = Instant::now();
    // Nothing is confirmed by starting to stream; the loop confirms what the log made durable.
    let mut confirmed = Lsn(0);
    let mut log_error: Option<String> = None;
    let mut server_end = Lsn(0);
    let mut last_heard = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    let mut progress_txns = status.snapshot().transactions;
    let mut pending = Batch::default();
    let mut linger_until: Option<Instant> = None;
    // The clock, read by the loop once per frame, after the read (a few readings per frame
    // were a few percent of the loop's time under a heavy load).
    let mut now = Instant::now();
    loop {
        if *shutdown.borrow() {
            apply_pending(&mut pending, mapper, st, status)?;
            status.update(|s| s.phase = Phase::Stopping);
            // Confirm what is applied first (the log flushed), then let background work end.
            let durable = crate::blocking(|| st.log.flush(Duration::from_secs(30)))?;
            let durable = durable.max(st.manifest.position);
            status.note_durable(durable);
            let confirmable = status.confirmable(durable);
            stream.set_flushed(confirmable);
            let _ = stream.send_status(false).await;
            status.update(|s| {
                s.durable_lsn = durable;
                s.confirmed_lsn = confirmable;
            });
            finish_background(st, status, store, hash).await;
            let _ = stream.stop().await;
            tracing::info!(confirmed = %confirmable, "stopped cleanly");
            return Ok(SessionEnd::Shutdown);
        }
        // The log's writer is far behind (a slow or full disk): stop reading until it catches
        // up, so records do not pile up in memory (the server keeps the WAL meanwhile).
        if st.log.backlogged() {
            let mut sd = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = sd.changed() => {}
            }
            let err = st.log.error();
            if err != log_error {
                status.update(|s| s.log_error = err.clone());
                log_error = err;
            }
            now = Instant::now();
            last_heard = now;
            continue;
        }
        // Wake at least every 10 ms while the log has something to confirm (from a fresh
        // reading when the read may wait: the last one can be old after a long apply).
        let tick = if stream.has_buffered() { now } else { Instant::now() }
            + if st.log.durable() > confirmed || st.logged > confirmed {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(50)
            };
        // A light batch was just applied: let what follows gather for a moment before the
        // next read, so a steady trickle of small transactions is read, applied and logged a
        // few at a time instead of one wake-up each (under a heavy load batches are large and
        // nothing waits).
        if let Some(until) = linger_until.take() {
            if !stream.has_buffered() {
                wait_until(until, shutdown).await;
            }
        }
        let next = stream.next_before(Some(tick.into())).await?;
        now = Instant::now();
        if !matches!(next, Next::Deadline) {
            last_heard = now;
        }
        match next {
            Next::Event(ReplicationEvent::XLogData {
                data,
                wal_end,
                server_time,
                ..
            }) => {
                last_data = now;
                if wal_end > server_end {
                    server_end = wal_end;
                    status.update(|s| s.server_wal_end = s.server_wal_end.max(wal_end));
                }
                let msg = decoder.decode(&data)?;
                if let Some(txn) = assembler.feed(msg, &decoder)? {
                    let after = pending.txns.last().map_or(st.safe, |t: &CommittedTxn| t.end_lsn);
                    if txn.end_lsn > after {
                        let spilled = txn.spilled.is_some();
                        pending.push(txn, server_time, now);
                        // Batch while more is already received, within bounds (the time
                        // bound, checked below after every frame, publishes a burst at least
                        // every few ms, so its first transactions do not wait for the whole
                        // burst).
                        if spilled || !stream.has_buffered() || pending.changes >= 50_000 || pending.txns.len() >= 2_000
                        {
                            let light = pending.is_light();
                            apply_pending(&mut pending, mapper, st, status)?;
                            if light && !stream.has_buffered() {
                                linger_until = linger(opts);
                            }
                        }
                    }
                }
            }
            Next::Event(ReplicationEvent::Keepalive { wal_end, .. }) => {
                // The server sends one when it goes idle after a commit: what is pending is
                // applied then, unless more was already read (the batch goes on).
                if !stream.has_buffered() {
                    let light = pending.is_light();
                    apply_pending(&mut pending, mapper, st, status)?;
                    if light {
                        linger_until = linger(opts);
                    }
                }
                if wal_end > server_end {
                    server_end = wal_end;
                    status.update(|s| s.server_wal_end = s.server_wal_end.max(wal_end));
                }
                if pending.txns.is_empty() && assembler.is_idle() && wal_end > st.safe {
                    st.safe = wal_end;
                    status.update(|s| {
                        s.applied_lsn = wal_end;
                        s.server_wal_end = s.server_wal_end.max(wal_end);
                    });
                }
            }
            Next::Deadline => {
                apply_pending(&mut pending, mapper, st, status)?;
            }
            Next::Ended => return Err(SyncError::StreamEnded),
        }
        // A batch waits no longer than its bound, whatever frames follow it (more commits, a
        // large streamed transaction's chunks, keepalives while more is read).
        if !pending.txns.is_empty() && now.saturating_duration_since(pending.received[0].at) >= MAX_BATCH_DELAY {
            apply_pending(&mut pending, mapper, st, status)?;
        }
        // Chores (background jobs, positions, errors, confirms) at most every 10 ms, not per
        // message.
        if now < next_chores {
            continue;
        }
        next_chores = now + Duration::from_millis(10);
        // A mapped table dropped: pause (what was received before is applied).
        if let Some(e) = probe.changed() {
            apply_pending(&mut pending, mapper, st, status)?;
            let _ = stream.stop().await;
            return Err(e);
        }
        // A background rebuild that caught up (or failed) ends the session for the swap.
        if rebuild.as_ref().is_some_and(|rs| Rebuild::wants_swap(rs, st.safe)) {
            apply_pending(&mut pending, mapper, st, status)?;
            let _ = stream.stop().await;
            return Ok(SessionEnd::Swap);
        }
        // A mapping reload ends the session between two transactions (what was received is
        // applied under the mapping it was written for); the run applies it and reconnects.
        if let Some(rx) = reloads.as_mut() {
            // What was received is applied first: if that fails (the mapping does not fit),
            // the reload stays queued for the pause that follows.
            if !rx.is_empty() {
                apply_pending(&mut pending, mapper, st, status)?;
            }
            match rx.try_recv() {
                Ok(req) => {
                    let _ = stream.stop().await;
                    return Ok(SessionEnd::Reload(req));
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => *reloads = None,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            }
        }
        let mut bg = std::mem::take(&mut st.bg);
        let compacted = bg.compaction(st, status, &snapshots).await;
        let writing_snapshot = bg.writing_snapshot();
        st.bg = bg;
        compacted?;
        // While nothing mapped is pending and the log holds everything applied, record the
        // position the server's keepalives report in the manifest (at most every 200 ms), so
        // the slot does not hold WAL of unmapped tables only for us. Not while a snapshot is
        // written: it writes the manifest too.
        if pending.txns.is_empty()
            && st.safe > st.manifest.position.max(st.logged)
            && st.log.durable() >= st.logged
            && !writing_snapshot
            && now >= next_advance
        {
            match store.advance(&st.manifest, st.safe) {
                Ok(m) => st.manifest = m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the position in the manifest; retrying");
                    status.update(|s| s.last_error = Some(e.to_string()));
                }
            }
            next_advance = now + ADVANCE_EVERY;
        }
        // A log that cannot be written (disk full) is not fatal: its writer keeps the records
        // and retries, and nothing more is confirmed meanwhile.
        let err = st.log.error();
        if err != log_error {
            status.update(|s| s.log_error = err.clone());
            log_error = err;
        }
        // Progress while far behind (a backlog after downtime): every 10 s.
        if now >= next_progress {
            next_progress = now + Duration::from_secs(10);
            let snap = status.snapshot();
            let behind = server_end.0.saturating_sub(st.safe.0);
            if behind > 16 << 20 {
                let txns = snap.transactions - progress_txns;
                tracing::info!(
                    applied = %st.safe,
                    server = %server_end,
                    behind_mb = behind >> 20,
                    txns_per_s = txns / 10,
                    "catching up"
                );
            }
            progress_txns = snap.transactions;
        }
        if now.duration_since(last_heard) > opts.receive_timeout {
            return Err(SyncError::ReceiveTimeout(opts.receive_timeout));
        }
        // While idle (no data for 100 ms), ask the server where decoding stands (its keepalive
        // answer carries the position), so the position follows WAL that touches no mapped
        // table.
        if assembler.is_idle() && now >= next_ping && now.duration_since(last_data) >= PING_AFTER {
            stream.send_status(true).await?;
            next_ping = now + PING_AFTER;
        }
        // Confirm what the log made durable (or the manifest's position), every 100 ms at most;
        // when publishing, only what JetStream holds too.
        let durable = st.log.durable().max(st.manifest.position);
        status.note_durable(durable);
        let confirmable = status.confirmable(durable);
        if confirmable > confirmed && now >= next_confirm {
            confirmed = confirmable;
            stream.set_flushed(confirmed);
            stream.send_status(false).await?;
            status.update(|s| {
                s.durable_lsn = durable;
                s.confirmed_lsn = confirmable;
            });
            next_confirm = now + Duration::from_millis(100);
        }
    }
}

/// When the next read may start after a light batch (`Options::apply_linger` from now).
fn linger(opts: &Options) -> Option<Instant> {
    (!opts.apply_linger.is_zero()).then(|| Instant::now() + opts.apply_linger)
}

/// Waits until `until`. On a current-thread runtime (the binary runs the replicator on a
/// thread of its own) the tasks sharing it (the change feed's dispatcher, the table probe) run
/// first, then the thread sleeps: an async timer would wake it for every packet that arrives
/// meanwhile, since the socket stays registered with its poller. A shutdown is seen after the
/// sleep (at most `Options::apply_linger`, 1 s). Elsewhere an async sleep, cut by a shutdown.
async fn wait_until(until: Instant, shutdown: &watch::Receiver<bool>) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
        tokio::task::yield_now().await;
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        return;
    }
    let mut sd = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => {}
        _ = sd.changed() => {}
    }
}
