//! The replication service loop: restore or initial copy, stream, apply, checkpoint, confirm,
//! reconnect.
//!
//! Invariants kept here:
//! - the flush LSN sent to the server is never more than what both checkpoints on disk cover
//!   ([`crate::checkpoint::Manifest::confirmable`]), so a crash anywhere, or a corrupt newest
//!   snapshot, loses nothing;
//! - transactions that ended at or before the restored position are skipped (the server may
//!   resend from its `confirmed_flush_lsn`);
//! - a restored position behind the slot's `confirmed_flush_lsn`, a missing or invalidated
//!   slot, or a checkpoint of another mapping is refused (or rebuilt with `rebuild`), never
//!   streamed over;
//! - when nothing mapped is pending, the covered LSN follows the server's keepalives (and one
//!   copy of the unchanged graph lets the fallback follow too), so an idle slot does not hold
//!   WAL.
//!
//! Not for CLI or HTTP (the binary reads [`ReplicaStatus`]).

use crate::assembly::{AssemblyError, TxnAssembler};
use crate::catalog::{self, CatalogError, TableInfo};
use crate::change::CommittedTxn;
use crate::checkpoint::{CheckpointError, CheckpointStore, Fallback, Manifest};
use crate::config::MappingConfig;
use crate::copy::{CopyError, CopyReader};
use crate::mapper::{BulkLoad, MapError, Mapper, RowIndex};
use graph::{ApplyError, CompactionPolicy, Graph, GraphReader, Topology};
use pgoutput::{DecodeError, Decoder, Lsn, PgTimestamp};
use pgrepl::{
    CreateSlotOptions, Next, ReplError, ReplicationClient, ReplicationEvent, SlotSnapshot, StartOptions, Streaming,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How to replicate.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mapping.
    pub config: Arc<MappingConfig>,
    /// Connection settings.
    pub conn: pgrepl::Config,
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Data directory (checkpoints).
    pub data_dir: PathBuf,
    /// Drop and rebuild from source when the state cannot be resumed.
    pub rebuild: bool,
    /// Full checkpoint at most this often while changes arrive.
    pub checkpoint_interval: Duration,
    /// Standby status update interval.
    pub status_interval: Duration,
    /// Compaction thresholds.
    pub compaction: CompactionPolicy,
    /// Ask pgoutput for column values in binary form where the type allows.
    pub binary: bool,
    /// Reconnect when nothing (data or keepalive) came from the server for this long; while
    /// idle the replicator asks for a keepalive every 250 ms.
    pub receive_timeout: Duration,
    /// Streamed transactions buffered in memory past this many bytes spill to temporary
    /// files in the data directory.
    pub spill_threshold: usize,
}

impl Options {
    /// Options with defaults: 10 s checkpoints and status updates.
    pub fn new(config: Arc<MappingConfig>, conn: pgrepl::Config, data_dir: PathBuf) -> Self {
        Options {
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
            config,
            conn,
            data_dir,
            rebuild: false,
            checkpoint_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(10),
            compaction: CompactionPolicy::default(),
            spill_threshold: 64 << 20,
            receive_timeout: Duration::from_secs(30),
            binary: false,
        }
    }
}

/// Why replication stopped (or, for transient errors, paused to reconnect).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Catalog checks or set-up failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The replication connection failed.
    #[error(transparent)]
    Repl(#[from] ReplError),
    /// Checkpoint write or restore failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A message could not be decoded.
    #[error("cannot decode a message from the server: {0} (nothing after the last checkpoint is confirmed; report this with the server version)")]
    Decode(#[from] DecodeError),
    /// The message sequence made no sense.
    #[error(transparent)]
    Assembly(#[from] AssemblyError),
    /// A change could not be mapped.
    #[error("cannot apply a change: {0}")]
    Map(#[from] MapError),
    /// Initial copy data was malformed.
    #[error("initial copy of {table}: {source}")]
    Copy {
        /// The table.
        table: String,
        /// What was wrong.
        source: CopyError,
    },
    /// The slot we resume from is gone.
    #[error("replication slot {slot:?} does not exist but the data directory holds a checkpoint at {lsn}: changes since then are lost to us; fix: run with --rebuild to recreate the slot and copy the tables again")]
    SlotMissing {
        /// Slot.
        slot: String,
        /// Checkpoint position.
        lsn: Lsn,
    },
    /// The slot was invalidated (WAL removed).
    #[error("replication slot {slot:?} was invalidated (wal_status = lost: the server removed WAL it needed, see max_slot_wal_keep_size); fix: run with --rebuild")]
    SlotInvalidated {
        /// Slot.
        slot: String,
    },
    /// The slot exists but we have no state for it.
    #[error("replication slot {slot:?} exists but {dir} holds no checkpoint: the slot's changes cannot be applied to nothing; fix: run with --rebuild to drop and recreate it, or point --data-dir at the right directory")]
    SlotWithoutState {
        /// Slot.
        slot: String,
        /// Data directory.
        dir: PathBuf,
    },
    /// The slot is ahead of our state.
    #[error("replication slot {slot:?} has confirmed {confirmed} but the newest usable checkpoint covers only {restored}: the server would skip changes we never applied; fix: run with --rebuild")]
    Gap {
        /// Slot.
        slot: String,
        /// Slot's confirmed_flush_lsn.
        confirmed: Lsn,
        /// Our position.
        restored: Lsn,
    },
    /// Another process is streaming from the slot.
    #[error("replication slot {slot:?} is in use by server process {pid}; stop the other consumer (SELECT pg_terminate_backend({pid})) or use another slot")]
    SlotInUse {
        /// Slot.
        slot: String,
        /// The walsender's PID.
        pid: u32,
    },
    /// The server ended the stream.
    #[error("the server ended the replication stream")]
    StreamEnded,
    /// Nothing came from the server for too long.
    #[error("nothing heard from the server for {0:?} (network stalled?); reconnecting")]
    ReceiveTimeout(Duration),
    /// Initial copy data was malformed (table unknown).
    #[error("initial copy: {0}")]
    CopyData(#[from] CopyError),
    /// A local I/O error.
    #[error("{0}")]
    Io(String),
}

impl From<ApplyError> for SyncError {
    fn from(e: ApplyError) -> Self {
        SyncError::Map(MapError::Apply(e))
    }
}

impl SyncError {
    /// Worth retrying after a pause (connection-level trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Repl(e) => e.is_transient() || e.is_slot_in_use(),
            SyncError::Catalog(CatalogError::Repl(e)) => e.is_transient(),
            SyncError::StreamEnded | SyncError::SlotInUse { .. } | SyncError::ReceiveTimeout(_) => true,
            _ => false,
        }
    }
}

/// Where replication is, for health reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Connecting or restoring.
    #[default]
    Starting,
    /// Copying the tables.
    InitialCopy,
    /// Streaming.
    Streaming,
    /// Waiting to reconnect.
    Disconnected,
    /// Shutting down.
    Stopping,
    /// Stopped after an error.
    Failed,
}

impl Phase {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::InitialCopy => "initial_copy",
            Phase::Streaming => "streaming",
            Phase::Disconnected => "disconnected",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

/// A latency histogram with fixed buckets (seconds), Prometheus style.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`Histogram::BOUNDS`] (cumulative counts are
    /// computed when exported).
    pub buckets: [u64; 12],
    /// Observations.
    pub count: u64,
    /// Sum of observed seconds.
    pub sum: f64,
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds.
    pub const BOUNDS: [f64; 12] = [
        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
    ];

    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = Self::BOUNDS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// A point-in-time copy of the replica's status.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// Time to apply each transaction to the graph.
    pub apply_seconds: Histogram,
    /// Commit on the server → applied here, per transaction (replica lag as it happens).
    pub commit_to_apply_seconds: Histogram,
    /// Commit received from the server → applied here, per transaction: graphsync's own share
    /// of the lag (the rest is the server's: decoding and sending).
    pub receive_to_apply_seconds: Histogram,
    /// Compactions run.
    pub compactions: u64,
    /// Time spent compacting.
    pub compaction_seconds: f64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Size of the newest snapshot file.
    pub snapshot_bytes: u64,
    /// When the newest snapshot was written (Unix ms).
    pub snapshot_unix_ms: i64,
    /// Phase.
    pub phase: Phase,
    /// Every transaction committed before this is applied to the graph.
    pub applied_lsn: Lsn,
    /// The covered LSN of the newest checkpoint on disk.
    pub durable_lsn: Lsn,
    /// What is confirmed to the server: covered by both kept checkpoints
    /// ([`Manifest::confirmable`]).
    pub confirmed_lsn: Lsn,
    /// The snapshot's own LSN.
    pub snapshot_lsn: Lsn,
    /// The server's WAL end as last reported.
    pub server_wal_end: Lsn,
    /// Commit time of the last applied transaction.
    pub last_commit_time: Option<PgTimestamp>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Transactions applied since start.
    pub transactions: u64,
    /// Row changes applied since start.
    pub changes: u64,
    /// Reconnects since start.
    pub reconnects: u64,
    /// The server's version (`server_version`), once connected.
    pub server_version: Option<String>,
    /// The negotiated pgoutput protocol version, once streaming.
    pub proto_version: Option<u32>,
}

impl StatusSnapshot {
    /// Takes the checkpoint positions from the manifest: the newest checkpoint's covered and
    /// snapshot LSNs, and what is confirmed.
    fn manifest_positions(&mut self, m: &Manifest) {
        self.durable_lsn = m.lsn;
        self.confirmed_lsn = m.confirmable();
        self.snapshot_lsn = m.snapshot_lsn;
    }
}

/// The type of a node key column, for parsing keys given as text (HTTP queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// int2, int4, int8.
    Int,
    /// uuid.
    Uuid,
    /// Anything else (text, varchar...).
    Text,
}

/// Names the graph's numbers stand for, and the replication it comes from.
#[derive(Debug, Clone, Default)]
pub struct GraphSchema {
    /// Node label names, by [`graph::NodeLabel`].
    pub node_labels: Vec<String>,
    /// Edge label names, by [`graph::EdgeLabel`].
    pub edge_labels: Vec<String>,
    /// Filter column names, by [`graph::FilterId`].
    pub filter_names: Vec<String>,
    /// Per node label, the kinds of its key columns.
    pub key_kinds: Vec<Vec<KeyKind>>,
    /// Replication slot.
    pub slot: String,
    /// Publication.
    pub publication: String,
    /// Hash of the mapping.
    pub mapping_hash: u64,
}

/// Shared, live status of a replicator, and the graph it maintains.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    inner: Mutex<StatusSnapshot>,
    graph: Mutex<Option<GraphReader>>,
    schema: Mutex<Option<Arc<GraphSchema>>>,
    applied: Mutex<Option<watch::Sender<Lsn>>>,
}

impl ReplicaStatus {
    /// A fresh status.
    pub fn new() -> Arc<Self> {
        let (tx, _) = watch::channel(Lsn(0));
        Arc::new(ReplicaStatus {
            inner: Mutex::default(),
            graph: Mutex::default(),
            schema: Mutex::default(),
            applied: Mutex::new(Some(tx)),
        })
    }

    /// Label names and key kinds, once the catalog was read.
    pub fn schema(&self) -> Option<Arc<GraphSchema>> {
        self.schema.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_schema(&self, s: GraphSchema) {
        *self.schema.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(s));
    }

    /// The current status.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The graph, once restored or copied.
    pub fn graph(&self) -> Option<GraphReader> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver that sees the applied LSN change (read-your-writes waits).
    pub fn subscribe_applied(&self) -> watch::Receiver<Lsn> {
        match &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(Lsn(0)).1,
        }
    }

    fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.applied_lsn;
        f(&mut g);
        if g.applied_lsn != before {
            if let Some(tx) = &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
                tx.send_replace(g.applied_lsn);
            }
        }
    }

    fn set_graph(&self, r: GraphReader) {
        *self.graph.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }
}

/// The replica's state between sessions.
struct State {
    graph: Graph,
    index: RowIndex,
    /// Every transaction committed before this is applied.
    safe: Lsn,
    /// The manifest on disk.
    manifest: Manifest,
    /// Incremented by every applied batch.
    version: u64,
    /// The version the manifest's snapshot holds; anything newer is not durable yet.
    durable_version: u64,
    /// Whether the manifest's previous checkpoint holds the same graph state as its current
    /// one (a fallback copy written while idle), so an idle advance moves both.
    previous_same: bool,
    /// Checkpoint and compaction in flight; kept across reconnects so none is lost or raced.
    bg: Background,
}

impl State {
    /// Whether transactions were applied since the manifest's snapshot.
    fn dirty(&self) -> bool {
        self.version != self.durable_version
    }

    /// The current checkpoint as the fallback of the next one.
    fn fallback(&self) -> Option<Fallback> {
        (!self.manifest.snapshot.is_empty()).then(|| Fallback {
            snapshot: self.manifest.snapshot.clone(),
            rows: self.manifest.rows.clone(),
            // Unchanged since that snapshot: it covers everything applied so far.
            lsn: if self.dirty() { self.manifest.lsn } else { self.safe },
        })
    }

    /// Whether to write a copy of the unchanged graph so that the fallback catches up with
    /// the current checkpoint: nothing to checkpoint, yet the server has moved past what we
    /// can confirm (WAL of unmapped tables only).
    fn needs_fallback_copy(&self) -> bool {
        !self.dirty()
            && !self.previous_same
            && self.manifest.previous.is_some()
            && self.safe > self.manifest.confirmable()
            && CheckpointStore::snapshot_name(self.safe) != self.manifest.snapshot
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Capped exponential backoff with jitter.
struct Backoff {
    attempt: u32,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            attempt: 0,
            seed: now_ms() as u64 | 1,
        }
    }
    fn next(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = 100u64.saturating_mul(1 << self.attempt.min(9)).min(30_000);
        self.attempt += 1;
        // Full jitter in [base/2, base].
        Duration::from_millis(base / 2 + self.seed % (base / 2 + 1))
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs replication until `shutdown` turns true (then writes a final checkpoint, confirms it
/// and returns `Ok`) or a non-transient error stops it. Transient errors reconnect with backoff.
pub async fn run(
    opts: Options,
    status: Arc<ReplicaStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let store = CheckpointStore::open(&opts.data_dir)?;
    let mut mapper = Mapper::new(opts.config.clone());
    let mut state: Option<State> = None;
    let mut backoff = Backoff::new();
    let mut rebuild = opts.rebuild;
    // Load the checkpoint while connecting: a restart costs the slower of the two, not both.
    let mut restoring = (!rebuild).then(|| {
        let (store, hash) = (store.clone(), opts.config.mapping_hash());
        tokio::task::spawn_blocking(move || store.restore(hash))
    });
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let result = session(
            &opts,
            &store,
            &mut mapper,
            &mut state,
            &mut rebuild,
            &mut restoring,
            &status,
            &shutdown,
        )
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "replication interrupted; reconnecting");
                status.update(|s| {
                    s.phase = Phase::Disconnected;
                    s.last_error = Some(e.to_string());
                    s.reconnects += 1;
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    // Nothing new can be durable without a connection; the last checkpoint
                    // stands. Write one more if changes are pending.
                    if let Some(st) = state.as_mut() {
                        let mut bg = std::mem::take(&mut st.bg);
                        bg.reap_checkpoint(&store, st, &status, true).await;
                        if st.dirty() {
                            let _ = checkpoint(&store, st, opts.config.mapping_hash(), &status);
                        }
                    }
                    return Ok(());
                }
            }
            Err(e) => {
                status.update(|s| {
                    s.phase = Phase::Failed;
                    s.last_error = Some(e.to_string());
                });
                return Err(e);
            }
        }
        if state.is_some() {
            backoff.reset();
        }
    }
}

fn checkpoint(
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
fn record_checkpoint(store: &CheckpointStore, st: &mut State, m: Manifest, status: &ReplicaStatus) {
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
type CheckpointTask = tokio::task::JoinHandle<Result<(Manifest, Duration), CheckpointError>>;

/// Checkpoints and compactions running on blocking threads while streaming goes on.
#[derive(Default)]
struct Background {
    /// A checkpoint being written, and the state version it captured.
    checkpoint: Option<(u64, CheckpointTask)>,
    compaction: Option<tokio::task::JoinHandle<graph::Compacted>>,
}

impl Background {
    /// Starts a checkpoint of the current view covering `st.safe` if none is running.
    fn start_checkpoint(&mut self, store: &CheckpointStore, st: &mut State, hash: u64) {
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
    async fn reap_checkpoint(&mut self, store: &CheckpointStore, st: &mut State, status: &ReplicaStatus, wait: bool) {
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
    async fn compaction(&mut self, st: &mut State, status: &ReplicaStatus) -> Result<(), SyncError> {
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

/// How long a received transaction may wait for more to batch with.
const MAX_BATCH_DELAY: Duration = Duration::from_millis(5);

/// Transactions received back to back, applied as one graph transaction.
#[derive(Default)]
struct Batch {
    txns: Vec<CommittedTxn>,
    /// When each commit was received.
    received: Vec<Instant>,
    /// Row changes in `txns`.
    changes: usize,
}

impl Batch {
    fn push(&mut self, txn: CommittedTxn) {
        self.changes += txn.len();
        self.txns.push(txn);
        self.received.push(Instant::now());
    }

    fn clear(&mut self) {
        self.txns.clear();
        self.received.clear();
        self.changes = 0;
    }
}

/// Applies the batched transactions as one graph transaction and publishes it.
fn apply_pending(
    batch: &mut Batch,
    mapper: &mut Mapper,
    st: &mut State,
    status: &ReplicaStatus,
) -> Result<(), SyncError> {
    let pending = &batch.txns;
    let Some(last) = pending.last() else { return Ok(()) };
    let (end, time) = (last.end_lsn, last.commit_time);
    if st.graph.read_only_reason().is_some() {
        // No compaction in flight to wait for (the loop waits for one before applying).
        tracing::warn!("overlays at the hard limit; compacting before applying");
        tokio::task::block_in_place(|| st.graph.compact())?;
    }
    let started = Instant::now();
    mapper.apply_many(&mut st.graph, &mut st.index, pending)?;
    let applied = Instant::now();
    let took = applied.duration_since(started).as_secs_f64();
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
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
        for (txn, received) in pending.iter().zip(&batch.received) {
            let lag = (now_us - txn.commit_time.unix_micros()) as f64 / 1e6;
            s.commit_to_apply_seconds.observe(lag.max(0.0));
            s.receive_to_apply_seconds
                .observe(applied.duration_since(*received).as_secs_f64());
        }
        s.applied_lsn = end;
        s.last_commit_time = Some(time);
        s.transactions += pending.len() as u64;
        s.changes += changes as u64;
    });
    st.safe = end;
    st.version += 1;
    batch.clear();
    Ok(())
}

fn checkpoint_failed(status: &ReplicaStatus, e: &CheckpointError) {
    tracing::error!(error = %e, "checkpoint failed; keeping the previous one, confirming nothing new, retrying");
    status.update(|s| s.last_error = Some(e.to_string()));
}

/// A checkpoint being loaded on a blocking thread.
type RestoreTask = tokio::task::JoinHandle<Result<Option<crate::checkpoint::Restored>, CheckpointError>>;

#[allow(clippy::too_many_arguments)]
async fn session(
    opts: &Options,
    store: &CheckpointStore,
    mapper: &mut Mapper,
    state: &mut Option<State>,
    rebuild: &mut bool,
    restoring: &mut Option<RestoreTask>,
    status: &Arc<ReplicaStatus>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let hash = opts.config.mapping_hash();
    let mut client = ReplicationClient::connect(&opts.conn).await?;
    let sys = client.identify_system().await?;
    tracing::info!(target = %opts.conn.target(), system_id = %sys.system_id, wal = %sys.xlog_pos, "connected");
    let server_version = client.parameter("server_version").map(str::to_string);
    status.update(|s| s.server_version = server_version);
    let tables = catalog::check_tables(&mut client, &opts.config).await?;
    catalog::ensure_publication(&mut client, &opts.publication, &tables).await?;
    status.set_schema(GraphSchema {
        node_labels: mapper.node_labels().to_vec(),
        edge_labels: mapper.edge_labels().to_vec(),
        filter_names: mapper.filter_names().to_vec(),
        key_kinds: opts
            .config
            .nodes
            .iter()
            .map(|n| {
                let t = tables.iter().find(|t| t.qualified == n.table);
                n.key
                    .names()
                    .iter()
                    .map(|c| {
                        match t
                            .and_then(|t| t.columns.iter().find(|(name, _)| name == c))
                            .map(|x| x.1)
                        {
                            Some(20 | 21 | 23) => KeyKind::Int,
                            Some(2950) => KeyKind::Uuid,
                            _ => KeyKind::Text,
                        }
                    })
                    .collect()
            })
            .collect(),
        slot: opts.slot.clone(),
        publication: opts.publication.clone(),
        mapping_hash: hash,
    });
    let slot = catalog::slot_state(&mut client, &opts.slot).await?;

    if state.is_none() {
        let restored = if *rebuild {
            None
        } else {
            match restoring.take() {
                Some(task) => task
                    .await
                    .map_err(|e| SyncError::Io(format!("loading the checkpoint failed: {e}")))??,
                None => store.restore(hash)?,
            }
        };
        match restored {
            Some(r) => {
                for refused in &r.refused {
                    tracing::warn!(%refused, "skipped an unusable checkpoint file");
                }
                let Some(s) = &slot else {
                    return Err(SyncError::SlotMissing {
                        slot: opts.slot.clone(),
                        lsn: r.lsn,
                    });
                };
                if s.wal_status.as_deref() == Some("lost") {
                    return Err(SyncError::SlotInvalidated {
                        slot: opts.slot.clone(),
                    });
                }
                if s.confirmed_flush > r.lsn {
                    return Err(SyncError::Gap {
                        slot: opts.slot.clone(),
                        confirmed: s.confirmed_flush,
                        restored: r.lsn,
                    });
                }
                tracing::info!(lsn = %r.lsn, snapshot = %r.manifest.snapshot, nodes = r.graph.view().node_count(), edges = r.graph.view().edge_count(), "restored checkpoint");
                let mut r = r;
                r.graph.set_policy(opts.compaction);
                status.set_graph(r.graph.reader());
                status.update(|st| {
                    st.applied_lsn = r.lsn;
                    st.manifest_positions(&r.manifest);
                });
                *state = Some(State {
                    graph: r.graph,
                    index: r.index,
                    safe: r.lsn,
                    manifest: r.manifest,
                    version: 0,
                    durable_version: 0,
                    previous_same: false,
                    bg: Background::default(),
                });
            }
            None => {
                if let Some(s) = &slot {
                    let ours = store.dir().join("initial-copy.started").exists();
                    if !*rebuild && !ours {
                        return Err(SyncError::SlotWithoutState {
                            slot: opts.slot.clone(),
                            dir: store.dir().to_path_buf(),
                        });
                    }
                    if let Some(pid) = s.active_pid {
                        return Err(SyncError::SlotInUse {
                            slot: opts.slot.clone(),
                            pid,
                        });
                    }
                    tracing::warn!(slot = %opts.slot, "dropping the replication slot to rebuild from the source tables");
                    client.drop_slot(&opts.slot, false).await?;
                }
                store.clear()?;
                status.update(|s| s.phase = Phase::InitialCopy);
                let (graph, index, lsn) = initial_copy(opts, &mut client, &tables, mapper, store).await?;
                status.set_graph(graph.reader());
                let mut st = State {
                    graph,
                    index,
                    safe: lsn,
                    manifest: Manifest {
                        lsn: Lsn(0),
                        snapshot_lsn: Lsn(0),
                        snapshot: String::new(),
                        rows: String::new(),
                        mapping_hash: hash,
                        previous: None,
                    },
                    // The copied graph is not durable until its first checkpoint.
                    version: 1,
                    durable_version: 0,
                    previous_same: false,
                    bg: Background::default(),
                };
                tokio::task::block_in_place(|| checkpoint(store, &mut st, hash, status))?;
                let _ = std::fs::remove_file(store.dir().join("initial-copy.started"));
                status.update(|s| s.applied_lsn = lsn);
                *state = Some(st);
                *rebuild = false;
            }
        }
    } else if let Some(st) = state.as_ref() {
        match &slot {
            None => {
                return Err(SyncError::SlotMissing {
                    slot: opts.slot.clone(),
                    lsn: st.manifest.lsn,
                })
            }
            Some(s) if s.wal_status.as_deref() == Some("lost") => {
                return Err(SyncError::SlotInvalidated {
                    slot: opts.slot.clone(),
                })
            }
            Some(s) if s.confirmed_flush > st.safe => {
                return Err(SyncError::Gap {
                    slot: opts.slot.clone(),
                    confirmed: s.confirmed_flush,
                    restored: st.safe,
                })
            }
            _ => {}
        }
    }
    let st = state.as_mut().ok_or_else(|| SyncError::Io("no replica state".into()))?;
    if let Some(s) = &slot {
        if let Some(pid) = s.active_pid {
            return Err(SyncError::SlotInUse {
                slot: opts.slot.clone(),
                pid,
            });
        }
    }
    stream(opts, store, mapper, st, client, status, shutdown).await
}

async fn initial_copy(
    opts: &Options,
    client: &mut ReplicationClient,
    tables: &[TableInfo],
    mapper: &mut Mapper,
    store: &CheckpointStore,
) -> Result<(Graph, RowIndex, Lsn), SyncError> {
    std::fs::write(store.dir().join("initial-copy.started"), b"")
        .map_err(|e| SyncError::Io(format!("cannot write to data directory {}: {e}", store.dir().display())))?;
    let created = client
        .create_slot(
            &opts.slot,
            CreateSlotOptions {
                temporary: false,
                two_phase: false,
                snapshot: SlotSnapshot::Export,
            },
        )
        .await?;
    let snapshot = created
        .snapshot_name
        .clone()
        .ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
    tracing::info!(slot = %opts.slot, consistent_point = %created.consistent_point, "created replication slot; copying tables");
    let mut copier = ReplicationClient::connect_sql(&opts.conn).await?;
    copier
        .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    copier
        .simple_query(&format!("SET TRANSACTION SNAPSHOT {}", catalog::literal(&snapshot)))
        .await?;
    let index = mapper.index_for(|t| {
        tables
            .iter()
            .find(|x| x.qualified == t)
            .map(|x| x.identity_columns.clone())
    });
    let mut bulk = BulkLoad::new(index);
    let all = Instant::now();
    // Node tables first: most edges then find their endpoints already known.
    let mut order: Vec<&TableInfo> = tables.iter().collect();
    order.sort_by_key(|t| !opts.config.nodes.iter().any(|n| n.table == t.qualified));
    for t in order {
        let mut cols = catalog::needed_columns(&opts.config, &t.qualified);
        if !opts.config.nodes.iter().any(|n| n.table == t.qualified) {
            for c in &t.identity_columns {
                if !cols.contains(c) {
                    cols.push(c.clone());
                }
            }
        }
        let rel = Arc::new(t.relation(&cols));
        let sql = format!(
            // The SELECT form also reads partitioned tables (a plain COPY of one is refused).
            "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
            cols.iter()
                .map(|c| pgrepl::quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            t.quoted()
        );
        let mut reader = CopyReader::new(cols.len());
        let started = Instant::now();
        let before = bulk.rows();
        let mut failed: Option<SyncError> = None;
        let mut last_log = Instant::now();
        let mut values = Vec::new();
        let copied = copier
            .copy_out(&sql, |chunk| {
                let r = reader.push::<SyncError>(&chunk, |tuple| {
                    rel.typed_values_into(&tuple, "COPY", &mut values)
                        .map_err(|source| MapError::Decode {
                            table: t.qualified.clone(),
                            source,
                        })?;
                    bulk.insert(mapper, &rel, &values)?;
                    Ok(())
                });
                if let Err(e) = r {
                    let msg = e.to_string();
                    failed = Some(e);
                    return Err(msg);
                }
                if last_log.elapsed() > Duration::from_secs(5) {
                    last_log = Instant::now();
                    let rows = bulk.rows() - before;
                    tracing::info!(table = %t.qualified, rows, rows_per_s = (rows as f64 / started.elapsed().as_secs_f64()) as u64, "copying");
                }
                Ok(())
            })
            .await;
        if let Some(e) = failed {
            return Err(e);
        }
        copied?;
        reader.finish().map_err(|source| SyncError::Copy {
            table: t.qualified.clone(),
            source,
        })?;
        let rows = bulk.rows() - before;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table = %t.qualified, rows, secs = format!("{secs:.2}"), rows_per_s = (rows as f64 / secs.max(1e-9)) as u64, "copied table");
    }
    copier.simple_query("COMMIT").await?;
    copier.close().await;
    let lsn = created.consistent_point;
    let rows = bulk.rows();
    let (graph, index) = tokio::task::block_in_place(|| bulk.finish(lsn.0, opts.compaction))?;
    let v = graph.view();
    tracing::info!(
        rows,
        nodes = v.node_count(),
        edges = v.edge_count(),
        secs = format!("{:.2}", all.elapsed().as_secs_f64()),
        "initial copy done"
    );
    Ok((graph, index, lsn))
}

async fn stream(
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
        let waited = Instant::now();
        let next = stream.next_before(Some(tick.into())).await?;
        let t0 = Instant::now();
        let wait_ms = t0.duration_since(waited).as_millis();
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
        let t1 = now;
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
        let (handle_ms, rest_ms) = (t1.duration_since(t0).as_millis(), t1.elapsed().as_millis());
        if handle_ms > 100 || rest_ms > 100 {
            tracing::debug!(wait_ms, handle_ms, rest_ms, "slow stream loop iteration");
        }
    }
}
