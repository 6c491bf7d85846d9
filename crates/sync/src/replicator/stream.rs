//! The stream loop: receive, decode, assemble, apply (and log), compact and snapshot, confirm
//! what the log made durable, until shutdown or a connection error.

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
    let durable = st.log.durable();
    let mut stream = client.start_replication(&opts.slot, durable, &start).await?;
    tracing::info!(slot = %opts.slot, from = %durable, proto = stream.proto_version(), "streaming");
    let proto = stream.proto_version();
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
    let mut next_position = Instant::now();
    let mut next_confirm = Instant::now();
    let mut next_ping = Instant::now() + Duration::from_secs(1);
    // Nothing is confirmed by starting to stream; the loop confirms what the log made durable.
    let mut confirmed = Lsn(0);
    let mut log_error: Option<String> = None;
    let mut server_end = Lsn(0);
    let mut last_heard = Instant::now();
    let mut next_progress = Instant::now() + Duration::from_secs(10);
    let mut progress_txns = status.snapshot().transactions;
    let mut pending = Batch::default();
    loop {
        if *shutdown.borrow() {
            apply_pending(&mut pending, mapper, st, status)?;
            status.update(|s| s.phase = Phase::Stopping);
            finish_background(st, status, store).await;
            let durable = tokio::task::block_in_place(|| st.log.flush(Duration::from_secs(30)))?;
            stream.set_flushed(durable);
            status.update(|s| {
                s.durable_lsn = durable;
                s.confirmed_lsn = durable;
            });
            let _ = stream.stop().await;
            tracing::info!(confirmed = %durable, "stopped cleanly");
            return Ok(());
        }
        // Wake at least every 10 ms while the log has something to confirm.
        let tick = Instant::now()
            + if st.log.durable() > confirmed || st.logged > st.log.durable() {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(50)
            };
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
        let mut bg = std::mem::take(&mut st.bg);
        let compacted = bg.compaction(st, status, &snapshots).await;
        st.bg = bg;
        compacted?;
        // While nothing mapped is pending, log the position the server's keepalives report,
        // so the slot does not hold WAL of unmapped tables only for us.
        if pending.txns.is_empty() && st.safe > st.logged && now >= next_position {
            st.log.append(st.safe, crate::changelog::record::encode_position())?;
            st.logged = st.safe;
            next_position = now + Duration::from_millis(250);
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
        // While idle, ask the server where decoding stands (its keepalive answer carries the
        // position), so the covered LSN follows WAL that touches no mapped table.
        if assembler.is_idle() && now >= next_ping {
            stream.send_status(true).await?;
            next_ping = now + Duration::from_millis(250);
        }
        let durable = st.log.durable();
        if durable > confirmed && now >= next_confirm {
            confirmed = durable;
            stream.set_flushed(confirmed);
            stream.send_status(false).await?;
            status.update(|s| {
                s.durable_lsn = durable;
                s.confirmed_lsn = durable;
            });
            next_confirm = now + Duration::from_millis(20);
        }
    }
}
