//! The leader's publisher: every durable change-log record, in LSN order, to the JetStream
//! stream; every new snapshot to the object store.
//!
//! Invariants:
//! - only records the log made durable are published (a crash never leaves a record in the
//!   stream that the leader's log lost);
//! - `published` (which gates what is confirmed to PostgreSQL) only moves to a position
//!   through which every record is acknowledged by JetStream;
//! - each message expects the stream's end as this publisher left it (the first of a session
//!   its sequence, every later one the id of the message before): a publisher with a stale
//!   view of the stream (a deposed leader) is refused, never interleaved;
//! - publishing happens only while this process streams from the slot (it pauses while the
//!   replicator reconnects), and stops for good when the stream holds a higher term than the
//!   one it leads in (a standby fenced it): [`Published::Fenced`] tells the caller to stop
//!   leading.
//!
//! While NATS is unreachable the replicator keeps applying and logging; this loop reports why
//! in the status (`/health`), retries with backoff, and publishes the backlog from the log on
//! disk when NATS returns (the log keeps every record not yet published).

use crate::snapshots;
use crate::wire::{message_id, Layout, Meta, H_SLOT};
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
    /// The configured slot name (the generation in force names the slot streamed from).
    pub base_slot: String,
}

/// How publishing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Shutdown was asked.
    Stopped,
    /// Another process took over the stream (it holds a higher term): this one must stop
    /// leading. Says what was found.
    Fenced(String),
}

/// At most one position message per this (while only unmapped tables change).
const POSITION_EVERY: Duration = Duration::from_millis(200);

/// Most payload bytes read from the log per publish round.
const ROUND_BYTES: usize = 8 << 20;

/// How a session ended.
enum Ended {
    Done(Published),
    /// The replicator stopped streaming from the slot: wait until it does again.
    SlotReleased,
}

/// Runs until `shutdown` turns true or the stream is fenced. `published` is what confirms wait
/// for ([`ReplicaStatus::gate_confirms`]). `term`: the term this process leads in when it
/// knows it (it fenced the stream at that term taking over); else the stream's, read when
/// publishing first starts.
pub async fn run(
    cfg: PublishConfig,
    status: Arc<ReplicaStatus>,
    published: watch::Sender<Lsn>,
    mut shutdown: watch::Receiver<bool>,
    mut term: Option<u64>,
) -> Published {
    let mut held = status.watch_slot_held();
    let mut retry = crate::Retry::new();
    loop {
        // Only the slot's holder publishes (a process that lost the slot, or never got it,
        // must not write what its log holds beyond the stream).
        tokio::select! {
            r = held.wait_for(|h| *h) => if r.is_err() { return Published::Stopped },
            _ = shutdown.wait_for(|s| *s) => return Published::Stopped,
        }
        if *shutdown.borrow() {
            return Published::Stopped;
        }
        let started = Instant::now();
        match session(&cfg, &status, &published, (&mut shutdown, &mut held), &mut term).await {
            Ok(Ended::Done(p)) => return p,
            Ok(Ended::SlotReleased) => {
                tracing::info!("the replicator is not streaming from the slot: publishing waits until it is again");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing to JetStream stopped; retrying. Nothing after what JetStream acknowledged is confirmed to PostgreSQL meanwhile (the server keeps that WAL)");
                status.set_published(*published.borrow(), Some(e.to_string()));
            }
        }
        retry.wait(started, &mut shutdown).await;
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

/// The stream's last message.
pub(crate) struct Last {
    /// Its stream sequence.
    pub(crate) seq: u64,
    /// Its message id.
    pub(crate) id: String,
    /// What it says.
    pub(crate) meta: Meta,
    /// The slot its publisher streamed from (absent in markers of older versions).
    pub(crate) slot: Option<String>,
}

/// The stream's last message.
pub(crate) async fn last_message(s: &mut stream::Stream) -> Result<Option<Last>, ScaleoutError> {
    let state = stream_state(s).await?;
    // Empty, or emptied by retention (the last sequence stays).
    if state.messages == 0 {
        return Ok(None);
    }
    let last = state.last_sequence;
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
    Ok(Some(Last {
        seq: last,
        id,
        meta,
        slot: m.headers.get(H_SLOT).map(|v| v.as_str().to_string()),
    }))
}

/// Messages sent before their acknowledgements are awaited (each holds one of the client's
/// in-flight permits, 5,000 by default).
const WINDOW: usize = 1_000;

/// The stream's end as this publisher knows it. A session's first message expects the
/// stream's last sequence (a restarted server forgets the last id, never the last sequence);
/// every later one expects the id of the message before it, so a message of another
/// publisher (a deposed or second leader, a standby's fence) between two pipelined ones makes
/// every later one fail too, instead of leaving a hole.
struct Chain<'a> {
    js: &'a jetstream::Context,
    subject: String,
    stream: String,
    last_seq: u64,
    last_id: Option<String>,
    /// Makes this session's message ids its own (a message refused in a replicated stream
    /// keeps its id in the duplicate window; the same record sent again in a later session, or
    /// by another leader, must not be taken for it).
    nonce: u32,
    prev: Lsn,
    hash: u64,
    lineage: u64,
    term: u64,
    slot: String,
    max_part: usize,
    acks: Vec<(Lsn, jetstream::context::PublishAckFuture)>,
}

impl Chain<'_> {
    /// Sends the record (or position) at `lsn`, in parts if it is large.
    async fn send(&mut self, lsn: Lsn, prev: Lsn, id_suffix: &str, payload: bytes::Bytes) -> Result<(), ScaleoutError> {
        let parts = payload.len().div_ceil(self.max_part).max(1);
        for i in 0..parts {
            let chunk = payload.slice(i * self.max_part..((i + 1) * self.max_part).min(payload.len()));
            let id = format!("{}-{:08x}{id_suffix}", message_id(self.lineage, lsn, i), self.nonce);
            let meta = Meta {
                lsn,
                prev,
                hash: self.hash,
                lineage: self.lineage,
                part: (i, parts),
                term: self.term,
            };
            let mut headers = meta.headers(&id);
            headers.insert(H_SLOT, self.slot.as_str());
            let msg = PublishMessage::build().payload(chunk).headers(headers);
            let msg = match self.last_id.replace(id) {
                Some(last) => msg.expected_last_message_id(last),
                None => msg.expected_last_sequence(self.last_seq),
            };
            let ack = self
                .js
                .send_publish(self.subject.clone(), msg)
                .await
                .map_err(|e| ScaleoutError::js("publish")(e.to_string()))?;
            self.last_seq += 1;
            self.acks.push((lsn, ack));
            if self.acks.len() >= WINDOW {
                self.settle().await?;
            }
        }
        self.prev = lsn;
        Ok(())
    }

    /// Awaits every acknowledgement outstanding; the LSN of the last.
    async fn settle(&mut self) -> Result<Option<Lsn>, ScaleoutError> {
        let mut acked = None;
        for (lsn, ack) in self.acks.drain(..) {
            match ack.await {
                Ok(a) if a.duplicate => {
                    return Err(ScaleoutError::Stream(format!(
                        "JetStream took record {lsn} for a duplicate (sequence {}): the stream holds a message with its id already; publishing starts over from the stream's end",
                        a.sequence
                    )))
                }
                Ok(_) => acked = Some(lsn),
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::context::PublishErrorKind::WrongLastSequence
                            | jetstream::context::PublishErrorKind::WrongLastMessageId
                    ) =>
                {
                    return Err(ScaleoutError::Stream(format!(
                        "another publisher wrote to stream {} (a standby that took over, or a second leader on the same stream): record {lsn} was refused",
                        self.stream
                    )))
                }
                Err(e) => return Err(ScaleoutError::js("publish acknowledgement")(format!("record {lsn}: {e}"))),
            }
        }
        Ok(acked)
    }
}

/// Aborts a task when dropped (a snapshot upload must not outlive its session: it could move
/// `latest` after a newer session's upload).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    cfg: &PublishConfig,
    status: &ReplicaStatus,
    published: &watch::Sender<Lsn>,
    (shutdown, held): (&mut watch::Receiver<bool>, &mut watch::Receiver<bool>),
    term: &mut Option<u64>,
) -> Result<Ended, ScaleoutError> {
    let client = connect(&cfg.nats).await?;
    let js = jetstream::new(client.clone());
    let layout = Layout::new(&cfg.nats.stream);
    let mut s = stream(&js, &cfg.nats).await?;
    let bucket = snapshots::bucket(&js, &layout, cfg.nats.replicas).await?;
    let mut durable = status.watch_durable();
    // The replicator restores or copies first (and a rebuild may switch generations
    // meanwhile): its log and first snapshot exist after that.
    let (state_dir, store, manifest) = loop {
        if *shutdown.borrow() {
            return Ok(Ended::Done(Published::Stopped));
        }
        let dir = sync::generation::state_dir(&cfg.data_dir);
        let store = CheckpointStore::open(&dir).map_err(sync::replicator::SyncError::from)?;
        match store.manifest() {
            Some(m) if *durable.borrow() > Lsn(0) => break (dir, store, m),
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
    let lineage = crate::lineage::get_or_create(&state_dir)?;
    let slot = sync::generation::current(&cfg.data_dir, &cfg.base_slot)
        .map_err(|e| ScaleoutError::Stream(e.to_string()))?
        .slot;
    let last_seq = stream_state(&mut s).await?.last_sequence;
    let last = last_message(&mut s).await?;
    // The term this process leads in: the stream's when it started publishing; a higher one
    // later is a standby's fence.
    let stream_term = last.as_ref().map_or(0, |l| l.meta.term);
    match *term {
        None => *term = Some(stream_term),
        Some(t) if stream_term > t => {
            return Ok(Ended::Done(Published::Fenced(format!(
                "stream {} was taken over (term {stream_term}, this leader's is {t}: message {})",
                layout.stream,
                last.as_ref().map_or("", |l| l.id.as_str())
            ))))
        }
        Some(_) => {}
    }
    let (continues, after) = match last.map(|l| l.meta) {
        Some(meta) if meta.lineage == lineage => {
            if meta.hash != hash {
                return Err(ScaleoutError::Stream(format!(
                    "stream {} holds records of mapping {:016x}, this replica's mapping is {hash:016x}, for the same graph; this is a bug — publish to another stream (--stream)",
                    layout.stream, meta.hash
                )));
            }
            // A record cut short (a crash between its parts) is published again whole.
            (true, meta.chain_end())
        }
        Some(meta) => {
            tracing::warn!(
                stream = %layout.stream,
                theirs = %format!("{:016x}", meta.lineage),
                ours = %format!("{lineage:016x}"),
                from = %manifest.lsn,
                "the stream holds another graph's records (this replica's graph was rebuilt, or its data directory replaced): starting a new chain from the newest snapshot published for this replica's graph, or from its own newest; followers re-bootstrap from it"
            );
            (false, manifest.lsn)
        }
        None => (false, manifest.lsn),
    };
    let log = LogDir::open(&state_dir.join("log")).map_err(sync::replicator::SyncError::from)?;
    // The log holds every record after its first segment's start (after the snapshot when it
    // has none): a stream that ends before that cannot be continued from it (this replica
    // loaded a snapshot the stream never reached): a new chain (from a snapshot, below).
    let log_floor = || -> Result<Lsn, ScaleoutError> {
        let segments = log.segments().map_err(sync::replicator::SyncError::from)?;
        Ok(segments.first().map_or(manifest.lsn, |s| s.start))
    };
    let floor = log_floor()?;
    let (continues, after) = if continues && after < floor {
        tracing::warn!(
            stream = %layout.stream,
            end = %after,
            log_from = %floor,
            from = %manifest.lsn,
            "the stream ends before what this replica's change log holds: starting the chain again from the newest snapshot published for this replica's graph, or from its own newest; followers re-bootstrap from it"
        );
        (false, manifest.lsn)
    } else {
        (continues, after)
    };
    let here = *durable.borrow();
    if after > here {
        return Err(ScaleoutError::Stream(format!(
            "stream {} is ahead of this replica: it holds records up to {after}, this replica's change log is durable up to {here}. Another leader published to it, or this data directory was restored from an older backup; publish to a new stream (--stream) or delete this one (followers then re-bootstrap)",
            layout.stream
        )));
    }
    let mut uploaded = snapshots::latest(&bucket)
        .await?
        .filter(|l| l.lineage == lineage && l.mapping_hash == hash)
        .map(|l| l.lsn);
    // A new chain starts at the snapshot already published for this graph when the log still
    // holds every record after it (an earlier session uploaded it, then failed before its
    // marker): a follower that bootstrapped from it meanwhile continues instead of
    // re-bootstrapping.
    let after = match uploaded {
        Some(u) if !continues && floor <= u && u < after => {
            // Log segments after `published` are kept: hold the log at `u` first, then check
            // again that it still starts at or before `u` (a snapshot may have removed
            // segments meanwhile). Lowering `published` only holds confirms back.
            published.send_if_modified(|p| {
                let lower = *p > u;
                if lower {
                    *p = u;
                }
                lower
            });
            if log_floor()? <= u {
                tracing::info!(lsn = %u, newest = %after, "starting the chain at the snapshot already published for this graph");
                u
            } else {
                after
            }
        }
        _ => after,
    };
    let mut tail = LogTail::new(log, hash, after);
    let mut max_part = client.server_info().max_payload.saturating_sub(4096).max(1024);
    if cfg.nats.max_bytes > 0 {
        max_part = max_part.min((cfg.nats.max_bytes as usize / 16).max(1024));
    }
    let mut chain = Chain {
        js: &js,
        subject: layout.subject.clone(),
        stream: layout.stream.clone(),
        last_seq,
        last_id: None,
        nonce: fastrand::u32(..),
        prev: after,
        hash,
        lineage,
        term: term.unwrap_or_default(),
        slot,
        max_part,
        acks: Vec::new(),
    };
    if !continues {
        // The chain starts at the snapshot followers bootstrap from: uploaded first (a
        // follower or standby that sees the new chain finds its snapshot), then a marker (a
        // position at it) so the next record has a predecessor in the stream.
        if uploaded.is_none_or(|u| u < after) {
            let keep = manifest.previous.as_ref().map(|p| p.lsn);
            let bytes = snapshots::upload(&bucket, &state_dir, after, hash, lineage, keep).await?;
            tracing::info!(lsn = %after, bytes, "published the new chain's snapshot");
            uploaded = Some(after);
        }
        chain
            .send(after, after, "", sync::changelog::record::encode_position().into())
            .await?;
        chain.settle().await?;
    }
    // Where publishing resumes: confirms may go back to it (a new chain), and log segments
    // after it are kept.
    published.send_replace(after);
    status.set_published(after, None);
    tracing::info!(stream = %layout.stream, after = %after, "publishing change-log records to JetStream");
    let mut upload: Option<AbortOnDrop<Result<Lsn, ScaleoutError>>> = None;
    let mut next_check = Instant::now();
    let mut last_position = Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(Ended::Done(Published::Stopped));
        }
        if !*held.borrow_and_update() {
            return Ok(Ended::SlotReleased);
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_secs(1);
            if upload.as_ref().is_some_and(|u| u.0.is_finished()) {
                if let Some(mut u) = upload.take() {
                    match (&mut u.0).await {
                        Ok(Ok(lsn)) => uploaded = Some(lsn),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "a snapshot upload failed; trying again with the next snapshot")
                        }
                        Err(e) => tracing::warn!(error = %e, "a snapshot upload task failed"),
                    }
                }
            }
            // Only snapshots the stream reaches (a follower bootstrapping from one finds the
            // records after it).
            let reached = *published.borrow();
            if let Some(m) = store
                .manifest()
                .filter(|m| uploaded.is_none_or(|u| m.lsn > u) && m.lsn <= reached)
            {
                if upload.is_none() {
                    let (b, dir) = (bucket.clone(), state_dir.clone());
                    let keep = m.previous.as_ref().map(|p| p.lsn);
                    upload = Some(AbortOnDrop(tokio::spawn(async move {
                        let bytes = snapshots::upload(&b, &dir, m.lsn, hash, lineage, keep).await?;
                        tracing::info!(lsn = %m.lsn, bytes, "published a snapshot");
                        Ok(m.lsn)
                    })));
                }
            }
        }
        let until = *durable.borrow_and_update();
        // Read after `until`: a rebuilt graph's positions come only after its generation is
        // committed, so an unchanged generation here means `until` is this log's.
        if sync::generation::state_dir(&cfg.data_dir) != state_dir {
            return Err(ScaleoutError::Stream(format!(
                "this replica's graph was rebuilt (a new generation in {}): publishing starts over from its snapshot",
                cfg.data_dir.display()
            )));
        }
        let recs = sync::blocking(|| tail.read(until, ROUND_BYTES))?;
        if recs.is_empty() {
            // Nothing mapped changed up to `until`: followers' positions follow (so a reader's
            // `min_lsn` taken from the primary is reached there too), at most every 200 ms.
            if until > chain.prev && last_position.elapsed() >= POSITION_EVERY {
                let prev = chain.prev;
                chain
                    .send(until, prev, "", sync::changelog::record::encode_position().into())
                    .await?;
                chain.settle().await?;
                tail.skip_to(until);
                last_position = Instant::now();
            }
            // Every record through `until` is in the stream; confirms go no further than the
            // stream's end (a standby taking over starts from the slot's confirmed position).
            publish_through(published, status, until.min(chain.prev));
            tokio::select! {
                _ = durable.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => {}
                _ = held.changed() => {}
            }
            continue;
        }
        for (lsn, payload) in recs {
            let prev = chain.prev;
            chain.send(lsn, prev, "", payload.into()).await?;
        }
        if let Some(lsn) = chain.settle().await? {
            publish_through(published, status, lsn);
        }
    }
}

/// The stream's state (message count, first and last sequence).
pub(crate) async fn stream_state(s: &mut stream::Stream) -> Result<stream::State, ScaleoutError> {
    Ok(s.info()
        .await
        .map_err(|e| ScaleoutError::js("stream info")(e.to_string()))?
        .state
        .clone())
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
