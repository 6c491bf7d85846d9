//! The leader's publisher: every durable change-log record, in LSN order, to the JetStream
//! stream; every new snapshot to the object store.
//!
//! Invariants:
//! - only records the log made durable are published (a crash never leaves a record in the
//!   stream that the leader's log lost);
//! - `published` (which gates what is confirmed to PostgreSQL) only moves to a position
//!   through which every record is acknowledged by JetStream;
//! - each message expects the id of the one before it: a publisher with a stale view of the
//!   stream (a deposed leader) is refused, never interleaved.
//!
//! While NATS is unreachable the replicator keeps applying and logging; this loop reports why
//! in the status (`/health`), retries with backoff, and publishes the backlog from the log on
//! disk when NATS returns (the log keeps every record not yet published).

use crate::snapshots;
use crate::wire::{message_id, Layout, Meta};
use crate::{connect, NatsOptions, ScaleoutError};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use pgoutput::Lsn;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::changelog::{LogDir, LogTail};
use sync::checkpoint::CheckpointStore;
use sync::replicator::ReplicaStatus;
use tokio::sync::watch;

/// What the publisher needs.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// NATS and the stream.
    pub nats: NatsOptions,
    /// The replicator's data directory.
    pub data_dir: PathBuf,
}

/// At most one position message per this (while only unmapped tables change).
const POSITION_EVERY: Duration = Duration::from_millis(200);

/// Most payload bytes read from the log per publish round.
const ROUND_BYTES: usize = 8 << 20;

/// Runs until `shutdown` turns true. `published` is what confirms wait for
/// ([`ReplicaStatus::gate_confirms`]).
pub async fn run(
    cfg: PublishConfig,
    status: Arc<ReplicaStatus>,
    published: watch::Sender<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        match session(&cfg, &status, &published, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "publishing to JetStream stopped; retrying. Nothing after what JetStream acknowledged is confirmed to PostgreSQL meanwhile (the server keeps that WAL)");
                status.set_published(*published.borrow(), Some(e.to_string()));
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The stream, created if missing.
pub(crate) async fn stream(js: &jetstream::Context, nats: &NatsOptions) -> Result<stream::Stream, ScaleoutError> {
    let layout = Layout::new(&nats.stream);
    js.get_or_create_stream(stream::Config {
        name: layout.stream.clone(),
        description: Some("graphsync change-log records".into()),
        subjects: vec![layout.subject.clone()],
        max_bytes: if nats.max_bytes > 0 { nats.max_bytes } else { -1 },
        max_age: nats.max_age,
        num_replicas: nats.replicas.max(1),
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| ScaleoutError::js("stream creation")(e.to_string()))
}

/// The stream's last message: its sequence, its id and what it says.
pub(crate) async fn last_message(s: &mut stream::Stream) -> Result<Option<(u64, String, Meta)>, ScaleoutError> {
    let last = s
        .info()
        .await
        .map_err(|e| ScaleoutError::js("stream info")(e.to_string()))?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(None);
    }
    let m = s
        .get_raw_message(last)
        .await
        .map_err(|e| ScaleoutError::js("reading the stream's last message")(e.to_string()))?;
    let meta = Meta::parse(&m.headers).map_err(|e| {
        ScaleoutError::Stream(format!(
            "the stream's last message (sequence {last}) is not graphsync's: {e}"
        ))
    })?;
    let id = m
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    Ok(Some((last, id, meta)))
}

async fn session(
    cfg: &PublishConfig,
    status: &ReplicaStatus,
    published: &watch::Sender<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ScaleoutError> {
    let client = connect(&cfg.nats).await?;
    let js = jetstream::new(client.clone());
    let layout = Layout::new(&cfg.nats.stream);
    let mut s = stream(&js, &cfg.nats).await?;
    let bucket = snapshots::bucket(&js, &layout, cfg.nats.replicas).await?;
    let mut durable = status.watch_durable();
    // The replicator restores or copies first: its log and first snapshot exist after that.
    let state_dir = sync::generation::state_dir(&cfg.data_dir);
    let store = CheckpointStore::open(&state_dir).map_err(sync::replicator::SyncError::from)?;
    let manifest = loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match store.manifest() {
            Some(m) if *durable.borrow() > Lsn(0) => break m,
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    };
    // The log's mapping is the one its snapshots carry.
    let hash = manifest.mapping_hash;
    let (mut last_id, after) = match last_message(&mut s).await? {
        Some((_, id, meta)) => {
            if meta.hash != hash {
                return Err(ScaleoutError::Stream(format!(
                    "stream {} holds records of mapping {:016x}, this replica's mapping is {:016x}; publish to another stream (--stream) or delete this one (followers then re-bootstrap)",
                    layout.stream, meta.hash, hash
                )));
            }
            // A record cut short (a crash between its parts) is published again whole.
            let complete = meta.part.0 + 1 == meta.part.1;
            (Some(id), if complete { meta.lsn } else { meta.prev })
        }
        None => (None, manifest.lsn),
    };
    let here = *durable.borrow();
    if after > here {
        return Err(ScaleoutError::Stream(format!(
            "stream {} is ahead of this replica: it holds records up to {after}, this replica's change log is durable up to {here}. Another leader published to it, or this data directory was rebuilt; publish to a new stream (--stream) or delete this one (followers then re-bootstrap)",
            layout.stream
        )));
    }
    let mut uploaded = snapshots::latest(&bucket).await?.map(|l| l.lsn);
    if uploaded.is_none_or(|u| u < manifest.lsn) {
        let bytes = snapshots::upload(&bucket, &state_dir, manifest.lsn, hash, None).await?;
        tracing::info!(lsn = %manifest.lsn, bytes, bucket = %layout.bucket, "published a snapshot");
        uploaded = Some(manifest.lsn);
    }
    let log = LogDir::open(&state_dir.join("log")).map_err(sync::replicator::SyncError::from)?;
    let mut tail = LogTail::new(log, hash, after);
    let max_part = client.server_info().max_payload.saturating_sub(4096).max(1024);
    let mut prev = after;
    publish_through(published, status, after);
    tracing::info!(stream = %layout.stream, after = %after, "publishing change-log records to JetStream");
    let mut upload: Option<tokio::task::JoinHandle<Result<Lsn, ScaleoutError>>> = None;
    let mut next_check = Instant::now();
    let mut last_position = Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_secs(1);
            if upload.as_ref().is_some_and(|u| u.is_finished()) {
                if let Some(u) = upload.take() {
                    match u.await {
                        Ok(Ok(lsn)) => uploaded = Some(lsn),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "a snapshot upload failed; trying again with the next snapshot")
                        }
                        Err(e) => tracing::warn!(error = %e, "a snapshot upload task failed"),
                    }
                }
            }
            if let Some(m) = store.manifest().filter(|m| uploaded.is_none_or(|u| m.lsn > u)) {
                if upload.is_none() {
                    let (b, dir, hash) = (bucket.clone(), state_dir.clone(), hash);
                    let keep = m.previous.as_ref().map(|p| p.lsn);
                    upload = Some(tokio::spawn(async move {
                        let bytes = snapshots::upload(&b, &dir, m.lsn, hash, keep).await?;
                        tracing::info!(lsn = %m.lsn, bytes, "published a snapshot");
                        Ok(m.lsn)
                    }));
                }
            }
        }
        let until = *durable.borrow_and_update();
        let recs = tokio::task::block_in_place(|| tail.read(until, ROUND_BYTES))?;
        if recs.is_empty() {
            // Nothing mapped changed up to `until`: followers' positions follow (so a reader's
            // `min_lsn` taken from the primary is reached there too), at most every 200 ms.
            if until > prev && last_position.elapsed() >= POSITION_EVERY {
                let id = message_id(until, 0);
                let meta = Meta {
                    lsn: until,
                    prev,
                    hash,
                    part: (0, 1),
                };
                let mut msg = PublishMessage::build()
                    .payload(sync::changelog::record::encode_position().into())
                    .headers(meta.headers(&id));
                if let Some(l) = &last_id {
                    msg = msg.expected_last_message_id(l);
                }
                js.send_publish(layout.subject.clone(), msg)
                    .await
                    .map_err(|e| ScaleoutError::js("publish")(e.to_string()))?
                    .await
                    .map_err(|e| ScaleoutError::js("publish acknowledgement")(format!("position {until}: {e}")))?;
                last_id = Some(id);
                prev = until;
                tail.skip_to(until);
                last_position = Instant::now();
            }
            // Every record through `until` is in the stream.
            publish_through(published, status, until);
            tokio::select! {
                _ = durable.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let mut acks = Vec::with_capacity(recs.len());
        for (lsn, payload) in recs {
            let payload = bytes::Bytes::from(payload);
            let parts = payload.len().div_ceil(max_part).max(1);
            for i in 0..parts {
                let chunk = payload.slice(i * max_part..((i + 1) * max_part).min(payload.len()));
                let id = message_id(lsn, i);
                let meta = Meta {
                    lsn,
                    prev,
                    hash,
                    part: (i, parts),
                };
                let mut msg = PublishMessage::build().payload(chunk).headers(meta.headers(&id));
                if let Some(l) = &last_id {
                    msg = msg.expected_last_message_id(l);
                }
                let ack = js
                    .send_publish(layout.subject.clone(), msg)
                    .await
                    .map_err(|e| ScaleoutError::js("publish")(e.to_string()))?;
                acks.push((lsn, ack));
                last_id = Some(id);
            }
            prev = lsn;
        }
        let mut acked = None;
        for (lsn, ack) in acks {
            ack.await
                .map_err(|e| ScaleoutError::js("publish acknowledgement")(format!("record {lsn}: {e}")))?;
            acked = Some(lsn);
        }
        if let Some(lsn) = acked {
            publish_through(published, status, lsn);
        }
    }
}

/// Every record through `lsn` is acknowledged: confirms may go that far.
fn publish_through(published: &watch::Sender<Lsn>, status: &ReplicaStatus, lsn: Lsn) {
    let moved = published.send_if_modified(|p| {
        let m = lsn > *p;
        if m {
            *p = lsn;
        }
        m
    });
    let s = status.snapshot();
    if moved || s.publish_error.is_some() || s.published_lsn.is_none() {
        status.set_published((*published.borrow()).max(lsn), None);
    }
}
