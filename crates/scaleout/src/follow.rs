//! The follower's loop: bootstrap from the newest published snapshot (or resume from its own
//! data directory), consume the stream from the first record after what it applied, apply
//! records in LSN order (skipping those it has; a record that does not follow the last one
//! applied is a gap), and re-bootstrap when the stream no longer holds what comes next.
//! Transient trouble (NATS unreachable, the stream not created yet) is retried with backoff
//! while the API keeps serving the graph it has.

use crate::snapshots;
use crate::wire::{Layout, Meta, Parts};
use crate::{connect, NatsOptions, ScaleoutError};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy, stream};
use futures_util::StreamExt;
use pgoutput::Lsn;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::replicator::{Follower, Options, Phase, ReplicaStatus, SyncError};
use tokio::sync::watch;

/// What the follower needs.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// NATS and the stream.
    pub nats: NatsOptions,
    /// The mapping, data directory, snapshot and compaction settings (the connection settings
    /// are unused).
    pub opts: Options,
    /// A standby's signal that the slot is free: then consume to the end of the stream,
    /// fence it (a marker one term higher: any older publisher's next message fails its
    /// expected-end check, and it stops for good) and return [`Followed::TookOver`].
    pub take_over: Option<watch::Receiver<bool>>,
}

/// How following ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Shutdown was asked.
    Stopped,
    /// Everything published is applied and the stream fenced: replicate from the slot now.
    TookOver {
        /// The slot the last leader streamed from (a background rebuild on the leader gives
        /// it another name than the configured one); `None` when the stream does not say.
        slot: Option<String>,
        /// The term of the fence: this process leads in it.
        term: u64,
    },
}

/// Most records applied as one published view.
const BATCH_RECORDS: usize = 1024;

/// How a session ended.
enum Ended {
    Shutdown,
    TookOver(Option<String>, u64),
    /// The stream does not hold what comes after the graph: load a snapshot at or after the
    /// position given (the oldest record the stream holds follows it), of the lineage given.
    Rebootstrap(String, Need),
}

/// What a snapshot to bootstrap from must be.
#[derive(Debug, Clone, Copy, Default)]
struct Need {
    /// At or after this position.
    lsn: Lsn,
    /// Of this lineage (the stream's), when known.
    lineage: Option<u64>,
}

/// Runs until `shutdown` turns true; `Err` only for what retrying cannot fix (another mapping).
pub async fn run(
    cfg: FollowConfig,
    status: Arc<ReplicaStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Followed, ScaleoutError> {
    let mut follower: Option<Follower> = None;
    let mut retry = crate::Retry::new();
    let mut rebootstrap: Option<Need> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        match session(&cfg, &status, &mut follower, &mut rebootstrap, &mut shutdown).await {
            Ok(Ended::Shutdown) => break,
            Ok(Ended::TookOver(slot, term)) => {
                if let Some(f) = follower.take() {
                    f.close().await;
                }
                return Ok(Followed::TookOver { slot, term });
            }
            Ok(Ended::Rebootstrap(why, need)) => {
                tracing::warn!(why = %why, "re-bootstrapping from the newest published snapshot");
                if let Some(f) = follower.take() {
                    f.close().await;
                }
                status.count_rebootstrap();
                rebootstrap = Some(need);
                continue;
            }
            Err(e @ ScaleoutError::Refused(_)) => {
                status.report(Phase::Failed, Some(e.to_string()));
                if let Some(f) = follower.take() {
                    f.close().await;
                }
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "following the stream stopped; retrying (the API keeps serving what is applied)");
                status.report(Phase::Disconnected, Some(e.to_string()));
            }
        }
        retry.wait(started, &mut shutdown).await;
    }
    if let Some(f) = follower.take() {
        f.close().await;
    }
    Ok(Followed::Stopped)
}

async fn session(
    cfg: &FollowConfig,
    status: &Arc<ReplicaStatus>,
    follower: &mut Option<Follower>,
    rebootstrap: &mut Option<Need>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended, ScaleoutError> {
    let client = connect(&cfg.nats).await?;
    let js = jetstream::new(client);
    let layout = Layout::new(&cfg.nats.stream);
    let mut s = js.get_stream(&layout.stream).await.map_err(|e| {
        ScaleoutError::Stream(format!(
            "stream {} is not readable ({e}); waiting for the leader (graphsync replicate --publish) to create it",
            layout.stream
        ))
    })?;
    let bucket = js.get_object_store(&layout.bucket).await.map_err(|e| {
        ScaleoutError::Stream(format!(
            "snapshot bucket {} is not readable ({e}); waiting for the leader to create it",
            layout.bucket
        ))
    })?;
    let last = crate::publish::last_message(&mut s).await?;
    // A leader on a data directory from before online mapping changes publishes the older
    // hash of the same mapping.
    let mut opts = cfg.opts.clone();
    opts.legacy_hash = last
        .as_ref()
        .is_some_and(|l| l.meta.hash == opts.config.legacy_hash() && l.meta.hash != opts.config.mapping_hash());
    let cfg = &FollowConfig {
        nats: cfg.nats.clone(),
        opts,
        take_over: cfg.take_over.clone(),
    };
    let hash = cfg.opts.hash();
    if follower.is_none() && rebootstrap.is_none() {
        match sync::blocking(|| Follower::open(cfg.opts.clone(), status.clone())) {
            Ok(f) => *follower = f,
            // The data directory cannot be resumed (damaged, another mapping): load a snapshot.
            Err(e @ (SyncError::Replay(_) | SyncError::Checkpoint(_) | SyncError::Log(_))) => {
                return Ok(Ended::Rebootstrap(
                    format!("the data directory cannot be resumed: {e}"),
                    Need::default(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if follower.is_none() {
        let need = rebootstrap.unwrap_or_default();
        let Some(lsn) = bootstrap(&bucket, cfg, status, need, shutdown).await? else {
            return Ok(Ended::Shutdown);
        };
        // Loaded: a later session resumes from this data directory.
        *rebootstrap = None;
        *follower = sync::blocking(|| Follower::open(cfg.opts.clone(), status.clone()))?;
        tracing::info!(lsn = %lsn, "bootstrapped from the leader's snapshot");
    }
    let Some(f) = follower.as_mut() else {
        return Err(ScaleoutError::Stream("the installed snapshot did not load".into()));
    };
    let applied = f.applied();
    // Records apply only to a graph of the stream's lineage.
    let mine = crate::lineage::read(&cfg.opts.data_dir)?;
    if let Some(last) = last.map(|l| l.meta) {
        check_hash(&last, hash)?;
        if Some(last.lineage) != mine {
            return Ok(Ended::Rebootstrap(
                format!(
                    "the stream holds the records of graph lineage {:016x}, this data directory's graph is {}",
                    last.lineage,
                    mine.map_or("of no known lineage".to_string(), |m| format!("{m:016x}"))
                ),
                Need {
                    lsn: Lsn(0),
                    lineage: Some(last.lineage),
                },
            ));
        }
    }
    let mine = mine.unwrap_or_default();
    let start = match find_start(&mut s, applied, mine).await? {
        Ok(seq) => seq,
        Err((why, lsn)) => {
            return Ok(Ended::Rebootstrap(
                why,
                Need {
                    lsn,
                    lineage: Some(mine),
                },
            ))
        }
    };
    let consumer = s
        .create_consumer(OrderedConfig {
            filter_subject: layout.subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await
        .map_err(|e| ScaleoutError::js("consumer creation")(e.to_string()))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| ScaleoutError::js("consuming")(e.to_string()))?;
    status.report(Phase::Streaming, None);
    tracing::info!(stream = %layout.stream, after = %applied, sequence = start, "following");
    let mut parts = Parts::default();
    let mut next_leader = Instant::now();
    // The stream sequence of the last message taken, and (taking over) the last one to take.
    let mut consumed = start.saturating_sub(1);
    let mut drain: Option<Drain> = None;
    let mut take_over = cfg.take_over.clone();
    // Taking over: the term when it began, and (another standby fenced first) until when to
    // leave the slot to that one.
    let mut began_at_term: Option<u64> = None;
    let mut defer_until: Option<Instant> = None;
    loop {
        if let Some(d) = &drain {
            if take_over.as_ref().is_some_and(|t| !*t.borrow()) {
                // The leader reconnected before the fence: it leads on.
                tracing::info!("the slot is in use again: not taking over, following on");
                (drain, began_at_term) = (None, None);
                continue;
            }
            if consumed >= d.seq {
                // At the stream's end: this replica may hold more (records it applied from the
                // slot while it led, never published); its publisher publishes those after it.
                let at = d.lsn.unwrap_or_else(|| f.applied());
                if fence(&js, &layout, (hash, mine), at, d).await? {
                    tracing::info!(at = %at, applied = %f.applied(), term = d.term + 1, "consumed the whole stream and fenced it; taking over the slot");
                    return Ok(Ended::TookOver(d.slot.clone(), d.term + 1));
                }
                tracing::info!("the stream moved on while taking over (the last leader still publishes what it logged): consuming that first");
                drain = None;
            }
        }
        if take_over.as_ref().is_some_and(|t| !*t.borrow()) {
            (began_at_term, defer_until) = (None, None);
        }
        let deferred = defer_until.is_some_and(|d| Instant::now() < d);
        if drain.is_none() && !deferred && take_over.as_ref().is_some_and(|t| *t.borrow()) {
            // The leader is gone: take everything it published, then fence.
            drain = Some(match crate::publish::last_message(&mut s).await? {
                Some(l) => Drain {
                    seq: l.seq,
                    lsn: Some(l.meta.chain_end()),
                    term: l.meta.term,
                    slot: l.slot,
                },
                None => Drain {
                    seq: crate::publish::stream_state(&mut s).await?.last_sequence,
                    lsn: None,
                    term: 0,
                    slot: None,
                },
            });
            let t = drain.as_ref().map_or(0, |d| d.term);
            match began_at_term {
                Some(b) if t > b => {
                    // Another standby fenced first: it takes the slot; leave it that long.
                    tracing::info!(term = t, "another standby took over the stream first: following it");
                    drain = None;
                    defer_until = Some(Instant::now() + Duration::from_secs(10));
                }
                _ => {}
            }
            began_at_term = Some(t);
            continue;
        }
        let first = tokio::select! {
            m = msgs.next() => match m {
                Some(m) => Some(m),
                None => return Err(ScaleoutError::js("consuming")("the consumer ended".into())),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
            _ = shutdown.changed() => return Ok(Ended::Shutdown),
            _ = slot_free(&mut take_over), if drain.is_none() && !deferred => continue,
        };
        let mut batch: Vec<(Lsn, bytes::Bytes)> = Vec::new();
        let mut pending = first;
        let mut at = f.applied();
        while let Some(m) = pending.take() {
            let m = m.map_err(|e| ScaleoutError::js("consuming")(e.to_string()))?;
            if let Ok(info) = m.info() {
                consumed = consumed.max(info.stream_sequence);
            }
            let Some(headers) = m.headers.as_ref() else {
                return Err(ScaleoutError::Stream(
                    "a stream message without headers is not graphsync's".into(),
                ));
            };
            let meta = Meta::parse(headers)
                .map_err(|e| ScaleoutError::Stream(format!("a stream message is not graphsync's: {e}")))?;
            check_hash(&meta, hash)?;
            if meta.lineage != mine {
                return Ok(Ended::Rebootstrap(
                    format!(
                        "record {} is of another graph lineage ({:016x})",
                        meta.lsn, meta.lineage
                    ),
                    Need {
                        lsn: Lsn(0),
                        lineage: Some(meta.lineage),
                    },
                ));
            }
            if let Some((meta, payload)) = parts.push(meta, &m.payload) {
                if meta.lsn > at {
                    if meta.prev != at {
                        // What the consumer delivered skips a record (seen once in CI while a
                        // NATS node of three was killed). Whether the stream itself holds the
                        // record is for the next session's `find_start` to say: it reads the
                        // stream by sequence and re-bootstraps only if the record is gone. The
                        // batch taken so far is read again then.
                        return Err(ScaleoutError::Stream(format!(
                            "the consumer delivered record {} (which follows {}) after {at}: reading the stream again from what is applied",
                            meta.lsn, meta.prev
                        )));
                    }
                    batch.push((meta.lsn, payload));
                    at = meta.lsn;
                }
            }
            if batch.len() >= BATCH_RECORDS {
                break;
            }
            // More already here: the same view.
            pending = match futures_util::FutureExt::now_or_never(msgs.next()) {
                Some(Some(m)) => Some(m),
                _ => None,
            };
        }
        if !batch.is_empty() {
            match sync::blocking(|| f.apply(&batch)) {
                Ok(_) => {}
                Err(SyncError::Replay(e)) => {
                    return Ok(Ended::Rebootstrap(
                        e.to_string(),
                        Need {
                            lsn: at,
                            lineage: Some(mine),
                        },
                    ))
                }
                Err(e) => {
                    // What the graph holds may be ahead of the log: reopen from disk.
                    if let Some(f) = follower.take() {
                        f.close().await;
                    }
                    return Err(e.into());
                }
            }
        }
        f.chores().await?;
        if Instant::now() >= next_leader {
            next_leader = Instant::now() + Duration::from_secs(1);
            if let Some(l) = crate::publish::last_message(&mut s).await? {
                f.set_leader_position(l.meta.lsn);
            }
        }
    }
}

/// Resolves once the take-over signal says the slot is free (never without one).
async fn slot_free(t: &mut Option<watch::Receiver<bool>>) {
    match t {
        Some(rx) => {
            if rx.wait_for(|free| *free).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The stream's end when a take-over began: the last message to consume before fencing.
struct Drain {
    /// Its stream sequence.
    seq: u64,
    /// Where the stream's chain ends there (the last whole record's LSN; `None`: empty).
    lsn: Option<Lsn>,
    /// Its term.
    term: u64,
    /// The slot its publisher streamed from.
    slot: Option<String>,
}

/// Publishes the take-over marker right after `end` (a position at `at`, the stream's end, one
/// term higher): a publisher that still expects an older end is refused from now on, and one
/// that reads the stream again finds the higher term and stops. `false` when the stream moved
/// on meanwhile (take what came, then try again).
async fn fence(
    js: &jetstream::Context,
    layout: &Layout,
    (hash, lineage): (u64, u64),
    at: Lsn,
    end: &Drain,
) -> Result<bool, ScaleoutError> {
    let term = end.term + 1;
    let id = format!("{}-fence-{term}", crate::wire::message_id(lineage, at, 0));
    let meta = Meta {
        lsn: at,
        prev: at,
        hash,
        lineage,
        part: (0, 1),
        term,
    };
    let mut headers = meta.headers(&id);
    if let Some(slot) = &end.slot {
        headers.insert(crate::wire::H_SLOT, slot.as_str());
    }
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(sync::changelog::record::encode_position().into())
        .headers(headers)
        .expected_last_sequence(end.seq);
    let ack = js
        .send_publish(layout.subject.clone(), msg)
        .await
        .map_err(|e| ScaleoutError::js("fence")(e.to_string()))?;
    match ack.await {
        Ok(a) if a.duplicate => Err(ScaleoutError::Stream(format!(
            "the fence marker {id} is in the stream already (sequence {}); taking over again",
            a.sequence
        ))),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => Ok(false),
        Err(e) => Err(ScaleoutError::js("fence acknowledgement")(e.to_string())),
    }
}

fn check_hash(meta: &Meta, hash: u64) -> Result<(), ScaleoutError> {
    if meta.hash != hash {
        return Err(ScaleoutError::Refused(format!(
            "the stream holds records of mapping {:016x}, this follower's mapping is {hash:016x}; run the follower with the leader's mapping file",
            meta.hash
        )));
    }
    Ok(())
}

/// Downloads and installs the newest published snapshot, once one at or after `need` is
/// published; `None` when shutdown came first.
async fn bootstrap(
    bucket: &jetstream::object_store::ObjectStore,
    cfg: &FollowConfig,
    status: &ReplicaStatus,
    need: Need,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Lsn>, ScaleoutError> {
    status.report(Phase::Starting, None);
    let mut said = false;
    let latest = loop {
        let l = snapshots::latest(bucket).await?;
        match &l {
            Some(l) if l.lsn >= need.lsn && need.lineage.is_none_or(|n| n == l.lineage) => break l.clone(),
            _ if said => {}
            Some(l) => {
                tracing::info!(newest = %l.lsn, need = %need.lsn, "waiting for the leader to publish a newer snapshot (of the stream's graph, and one the stream holds the records after)");
                said = true;
            }
            None => {
                tracing::info!("waiting for the leader's first snapshot");
                said = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return Ok(None),
        }
    };
    if latest.mapping_hash != cfg.opts.hash() {
        return Err(ScaleoutError::Refused(format!(
            "the leader's snapshot is of mapping {:016x}, this follower's mapping is {:016x}; run the follower with the leader's mapping file",
            latest.mapping_hash,
            cfg.opts.hash()
        )));
    }
    let started = Instant::now();
    let bytes = snapshots::download(bucket, &cfg.opts.data_dir, latest.lsn).await?;
    sync::blocking(|| Follower::install(&cfg.opts.data_dir, latest.lsn, latest.mapping_hash))?;
    crate::lineage::write(&cfg.opts.data_dir, latest.lineage)?;
    tracing::info!(lsn = %latest.lsn, bytes, ms = started.elapsed().as_millis() as u64, "downloaded the leader's snapshot");
    Ok(Some(latest.lsn))
}

/// The stream sequence to consume from: the first message of the first record after
/// `applied`, among the messages of the stream's current graph lineage (`lineage`, a suffix
/// of the stream). `Ok(Err((why, need)))` when the stream no longer holds the record right
/// after it: a snapshot at or after `need` is.
async fn find_start(
    s: &mut stream::Stream,
    applied: Lsn,
    lineage: u64,
) -> Result<Result<u64, (String, Lsn)>, ScaleoutError> {
    let state = crate::publish::stream_state(s).await?;
    if state.messages == 0 {
        return Ok(Ok(state.last_sequence + 1));
    }
    let meta_at = |seq: u64| {
        let s = &*s;
        async move {
            let m = s
                .get_raw_message(seq)
                .await
                .map_err(|e| ScaleoutError::js("reading a stream message")(format!("sequence {seq}: {e}")))?;
            Meta::parse(&m.headers)
                .map_err(|e| ScaleoutError::Stream(format!("stream message {seq} is not graphsync's: {e}")))
        }
    };
    // Where the current lineage's messages begin.
    let (mut lo, mut hi) = (state.first_sequence, state.last_sequence);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if meta_at(mid).await?.lineage == lineage {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let first = lo;
    // The first sequence whose record is after `applied` (LSNs increase within a lineage).
    let (mut lo, mut hi) = (first, state.last_sequence + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if meta_at(mid).await?.lsn > applied {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if lo > state.last_sequence {
        return Ok(Ok(lo));
    }
    let meta = meta_at(lo).await?;
    // Back to the record's first part.
    let start = lo.saturating_sub(meta.part.0 as u64).max(first);
    if meta.prev != applied || (meta.part.0 > 0 && start == first) {
        // A gap: a snapshot at the oldest record's predecessor. A record straddling what is
        // applied, or cut at the front: one at or after that record.
        let need = if meta.prev > applied { meta.prev } else { meta.lsn };
        return Ok(Err((
            format!(
                "the stream no longer holds the records after {applied} (its oldest kept record follows {})",
                meta.prev
            ),
            need,
        )));
    }
    Ok(Ok(start))
}
