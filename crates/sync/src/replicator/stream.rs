//! The stream loop: receive, decode, assemble, apply, checkpoint, confirm, until shutdown or
//! a connection error.

#[allow(unused_imports)]
use super::*;

pub(super) async fn stream(
    opts: &Options,
    store: &CheckpointStore,
    mapper: &mut Mapper,
    st: &mut State,
    client: ReplicationClient,
    status: &Arc<ReplicaStatus>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let hash = opts.config.mapping_hash();
    let mut start = StartOptions::new(opts.publication.clone());
    start.streaming = Streaming::On;
    start.binary = opts.binary;
    start.status_interval = opts.status_interval;
    // Confirm exactly the durable position from the first status update on.
    let mut stream = client.start_replication(&opts.slot, st.manifest.lsn, &start).await?;
    tracing::info!(slot = %opts.slot, from = %st.manifest.lsn, proto = stream.proto_version(), "streaming");
    let proto = stream.proto_version();
    status.update(|s| {
        s.phase = Phase::Streaming;
        s.last_error = None;
        s.proto_version = Some(proto);
    });
    let mut decoder = Decoder::new();
    let mut assembler = TxnAssembler::with_spill(opts.data_dir.join("spill"), opts.spill_threshold);
    let mut next_checkpoint = Instant::now() + opts.checkpoint_interval;
    let mut next_advance = Instant::now();
    let mut next_ping = Instant::now() + Duration::from_secs(1);
    // Nothing is confirmed by starting to stream; the loop confirms what both kept
    // checkpoints cover.
    let mut confirmed = Lsn(0);
    let mut server_end = Lsn(0);
    let mut last_heard = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    let mut progress_txns = status.snapshot().transactions;
    let mut pending = Batch::default();
    loop {
        if *shutdown.borrow() {
            apply_pending(&mut pending, mapper, st, status)?;
            status.update(|s| s.phase = Phase::Stopping);
            let mut bg = std::mem::take(&mut st.bg);
            bg.reap_checkpoint(store, st, status, true).await;
            if let Some(h) = bg.compaction.take() {
                if let Ok(done) = h.await {
                    match st.graph.finish_compaction(done) {
                        Err(ApplyError::StaleCompaction) | Ok(_) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if st.dirty() {
                tokio::task::block_in_place(|| checkpoint(store, st, hash, status))?;
            } else if st.safe > st.manifest.lsn {
                st.manifest = store.advance(&st.manifest, st.safe, st.previous_same)?;
            }
            stream.set_flushed(st.manifest.confirmable());
            status.update(|s| s.manifest_positions(&st.manifest));
            let _ = stream.stop().await;
            tracing::info!(covered = %st.manifest.lsn, confirmed = %st.manifest.confirmable(), "stopped cleanly");
            return Ok(());
        }
        let tick = (Instant::now() + Duration::from_millis(50)).min(next_checkpoint);
        let next = stream.next_before(Some(tick.into())).await?;
        if !matches!(next, Next::Deadline) {
            last_heard = Instant::now();
        }
        match next {
            Next::Event(ReplicationEvent::XLogData { data, wal_end, .. }) => {
                if wal_end > server_end {
                    server_end = wal_end;
                    status.update(|s| s.server_wal_end = s.server_wal_end.max(wal_end));
                }
                let msg = decoder.decode(&data)?;
                if let Some(txn) = assembler.feed(msg, &decoder)? {
                    let after = pending.txns.last().map_or(st.safe, |t: &CommittedTxn| t.end_lsn);
                    if txn.end_lsn > after {
                        let spilled = txn.spilled.is_some();
                        pending.push(txn);
                        // Batch while more is already received, within bounds (a burst is
                        // published at least every few ms, so its first transactions do not
                        // wait for the whole burst).
                        if spilled
                            || !stream.has_buffered()
                            || pending.changes >= 50_000
                            || pending.txns.len() >= 2_000
                            || pending.received[0].elapsed() >= MAX_BATCH_DELAY
                        {
                            apply_pending(&mut pending, mapper, st, status)?;
                        }
                    }
                }
            }
            Next::Event(ReplicationEvent::Keepalive { wal_end, .. }) => {
                apply_pending(&mut pending, mapper, st, status)?;
                if wal_end > server_end {
                    server_end = wal_end;
                    status.update(|s| s.server_wal_end = s.server_wal_end.max(wal_end));
                }
                if assembler.is_idle() && wal_end > st.safe {
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
        let now = Instant::now();
        // A checkpoint that cannot be written (disk full, permissions) is not fatal: the
        // previous one stays, nothing more is confirmed, and it is retried next interval.
        let mut bg = std::mem::take(&mut st.bg);
        bg.reap_checkpoint(store, st, status, false).await;
        let compacted = bg.compaction(st, status).await;
        if (st.dirty() || st.needs_fallback_copy()) && now >= next_checkpoint && bg.checkpoint.is_none() {
            bg.start_checkpoint(store, st, hash);
            next_checkpoint = Instant::now() + opts.checkpoint_interval;
        }
        let idle_advance = !st.dirty() && bg.checkpoint.is_none() && st.safe > st.manifest.lsn && now >= next_advance;
        st.bg = bg;
        compacted?;
        if idle_advance {
            match store.advance(&st.manifest, st.safe, st.previous_same) {
                Ok(m) => {
                    st.manifest = m;
                    status.update(|s| s.manifest_positions(&st.manifest));
                }
                Err(e) => checkpoint_failed(status, &e),
            }
            next_advance = now + Duration::from_secs(1);
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
        if now >= next_checkpoint {
            next_checkpoint = now + opts.checkpoint_interval;
        }
        // While idle, ask the server where decoding stands (its keepalive answer carries the
        // position), so the covered LSN follows WAL that touches no mapped table.
        if assembler.is_idle() && now >= next_ping {
            stream.send_status(true).await?;
            next_ping = now + Duration::from_millis(250);
        }
        if st.manifest.confirmable() > confirmed {
            confirmed = st.manifest.confirmable();
            stream.set_flushed(confirmed);
            stream.send_status(false).await?;
        }
    }
}
