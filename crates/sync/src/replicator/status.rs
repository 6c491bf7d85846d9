//! The replica's live status shared with the HTTP layer: phase, positions, counters,
//! latency histograms, the graph reader and the label names.

#[allow(unused_imports)]
use super::*;

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
    /// Paused before a transaction the mapping does not fit (a column renamed or dropped...):
    /// queries answer from the last applied graph until the mapping is fixed and reloaded.
    MappingBroken,
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
            Phase::MappingBroken => "mapping_broken",
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
    /// Commit on the server → the server sending it, per transaction: the server's share of
    /// the lag (its WAL flush, its walsender's turn on a CPU, decoding). Both ends are the
    /// server's clock.
    pub commit_to_send_seconds: Histogram,
    /// The server sending a commit → received here, per transaction: the network and
    /// graphsync's reading (a difference of two machines' clocks: skew shows here; like the
    /// other parts, clamped at 0).
    pub send_to_receive_seconds: Histogram,
    /// Commit received from the server → applied here, per transaction: graphsync's own share
    /// of the lag (the rest is the server's and the network's, above).
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
    /// The change log's durable position: every transaction committed at or before it is in
    /// a fsynced record (or the snapshot).
    pub durable_lsn: Lsn,
    /// What is confirmed to the server (never more than `durable_lsn`).
    pub confirmed_lsn: Lsn,
    /// The newest snapshot's LSN (the log is replayed after it at restart).
    pub snapshot_lsn: Lsn,
    /// Graph changes replayed from the change log at the last restore.
    pub replayed_changes: u64,
    /// The error the change log's writer is retrying (disk full...), if any: nothing more is
    /// confirmed until it clears.
    pub log_error: Option<String>,
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
    /// Tables copied from the source since start (an initial copy counts each of its tables).
    pub copies: u64,
    /// Rows read by copies since start (progress of a copy in progress).
    pub copied_rows: u64,
    /// Mapping reloads applied since start.
    pub mapping_reloads: u64,
    /// Background rebuilds swapped in since start.
    pub rebuilds: u64,
    /// This status is a follower's (`graphsync follow`): `server_wal_end` is then the
    /// leader's newest record.
    pub follower: bool,
    /// Records a follower applied.
    pub follower_records: u64,
    /// Times a follower loaded a newer snapshot (a gap in the stream).
    pub rebootstraps: u64,
    /// Publishing to JetStream (`--publish`): every record at or before this LSN is in the
    /// stream (or was no record). `None` when not publishing.
    pub published_lsn: Option<Lsn>,
    /// Why publishing is stuck (NATS unreachable, the stream refusing), while it is.
    pub publish_error: Option<String>,
    /// The server's version (`server_version`), once connected.
    pub server_version: Option<String>,
    /// The negotiated pgoutput protocol version, once streaming.
    pub proto_version: Option<u32>,
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
    /// The graph served and the names to read it with, behind one lock so a query never
    /// pairs one generation's graph with another's schema (key kinds differ across a rebuild).
    served: Mutex<Served>,
    applied: Mutex<Option<watch::Sender<Lsn>>>,
    feed: Mutex<Option<Arc<crate::feed::Feed>>>,
    rebuild: Mutex<Option<RebuildInfo>>,
    /// What the log holds: the durable position (or the manifest's), for the publisher.
    durable: watch::Sender<Lsn>,
    /// Set when publishing: confirms wait for it (everything through it is published).
    confirm_gate: Mutex<Option<watch::Receiver<Lsn>>>,
    /// Whether the replicator streams from its slot now (since this process began leading).
    slot_held: watch::Sender<bool>,
}

/// A background rebuild in progress: the graph in force keeps serving meanwhile.
#[derive(Debug, Clone)]
pub struct RebuildInfo {
    /// The generation being built.
    pub generation: u64,
    /// Why it was started.
    pub why: String,
    /// When it was requested (Unix ms).
    pub started_unix_ms: i64,
    /// The new generation's own status (its phase: initial_copy, then streaming while it
    /// catches up; its applied position).
    pub status: Arc<ReplicaStatus>,
}

impl ReplicaStatus {
    /// A fresh status.
    pub fn new() -> Arc<Self> {
        let (tx, _) = watch::channel(Lsn(0));
        Arc::new(ReplicaStatus {
            inner: Mutex::default(),
            served: Mutex::default(),
            applied: Mutex::new(Some(tx)),
            feed: Mutex::default(),
            rebuild: Mutex::default(),
            durable: watch::channel(Lsn(0)).0,
            confirm_gate: Mutex::default(),
            slot_held: watch::channel(false).0,
        })
    }

    /// The background rebuild in progress, if any.
    pub fn rebuild(&self) -> Option<RebuildInfo> {
        self.rebuild.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_rebuild(&self, r: Option<RebuildInfo>) {
        *self.rebuild.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// Label names and key kinds, once the catalog was read.
    pub fn schema(&self) -> Option<Arc<GraphSchema>> {
        self.served().1
    }

    pub(super) fn set_schema(&self, s: GraphSchema) {
        self.lock_served().schema = Some(Arc::new(s));
    }

    /// The graph and its schema, read together (both `None` until loaded).
    pub fn served(&self) -> (Option<GraphReader>, Option<Arc<GraphSchema>>) {
        let g = self.lock_served();
        (g.graph.clone(), g.schema.clone())
    }

    /// Serves another graph with its schema in one step (a rebuild's swap).
    pub(super) fn set_served(&self, r: GraphReader, s: Arc<GraphSchema>) {
        let mut g = self.lock_served();
        g.graph = Some(r);
        g.schema = Some(s);
    }

    fn lock_served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current status.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The graph, once restored or copied.
    pub fn graph(&self) -> Option<GraphReader> {
        self.served().0
    }

    /// A receiver that sees the applied LSN change (read-your-writes waits).
    pub fn subscribe_applied(&self) -> watch::Receiver<Lsn> {
        match &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.subscribe(),
            None => watch::channel(Lsn(0)).1,
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.applied_lsn;
        f(&mut g);
        if g.applied_lsn != before {
            if let Some(tx) = &*self.applied.lock().unwrap_or_else(|e| e.into_inner()) {
                tx.send_replace(g.applied_lsn);
            }
        }
    }

    /// Makes confirms wait for `published` (the position through which every logged record
    /// is in JetStream): what the server is told is never more than followers can read.
    pub fn gate_confirms(&self, published: watch::Receiver<Lsn>) {
        *self.confirm_gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(published);
    }

    /// What may be confirmed of `durable` (the log's durable position or the manifest's):
    /// all of it, or only what is published when confirms are gated.
    pub(super) fn confirmable(&self, durable: Lsn) -> Lsn {
        match &*self.confirm_gate.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(rx) => durable.min(*rx.borrow()),
            None => durable,
        }
    }

    /// The published position when confirms are gated (log segments after it are kept).
    pub(super) fn publish_floor(&self) -> Option<Lsn> {
        self.confirm_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|rx| *rx.borrow())
    }

    /// Reports the log's durable position (or the manifest's) to [`ReplicaStatus::watch_durable`].
    pub(super) fn note_durable(&self, lsn: Lsn) {
        self.durable.send_if_modified(|d| {
            let changed = *d != lsn;
            *d = lsn;
            changed
        });
    }

    /// A receiver of the durable position: every record at or before it is on disk in the
    /// change log (the publisher reads up to it).
    pub fn watch_durable(&self) -> watch::Receiver<Lsn> {
        self.durable.subscribe()
    }

    /// A follower's phase and trouble (the replicator sets its own).
    pub fn report(&self, phase: Phase, error: Option<String>) {
        self.update(|s| {
            s.phase = phase;
            s.follower = true;
            if error.is_some() || phase == Phase::Streaming {
                s.last_error = error;
            }
        });
    }

    /// This process leads now (a standby took over the slot): no longer a follower; it has
    /// not streamed from the slot yet.
    pub fn lead(&self) {
        self.slot_held.send_replace(false);
        self.update(|s| s.follower = false);
    }

    /// Leading ended: confirms are no longer gated and nothing is published.
    pub fn stop_publishing(&self) {
        *self.confirm_gate.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.slot_held.send_replace(false);
        self.update(|s| {
            s.published_lsn = None;
            s.publish_error = None;
        });
    }

    /// True while the replicator streams from its slot (after [`ReplicaStatus::lead`]): a
    /// publisher publishes only then, so a process that lost the slot (cut off, frozen,
    /// reconnecting) never writes to the stream while another may lead.
    pub fn watch_slot_held(&self) -> watch::Receiver<bool> {
        self.slot_held.subscribe()
    }

    pub(super) fn note_slot_held(&self) {
        self.slot_held.send_if_modified(|h| !std::mem::replace(h, true));
    }

    pub(super) fn note_slot_released(&self) {
        self.slot_held.send_if_modified(|h| std::mem::replace(h, false));
    }

    /// A follower loaded a newer snapshot because the stream did not hold what came next.
    pub fn count_rebootstrap(&self) {
        self.update(|s| s.rebootstraps += 1);
    }

    /// Records the publisher's progress and trouble.
    pub fn set_published(&self, published: Lsn, error: Option<String>) {
        self.update(|s| {
            s.published_lsn = Some(published);
            s.publish_error = error;
        });
    }

    /// The change feed, once the graph is loaded.
    pub fn feed(&self) -> Option<Arc<crate::feed::Feed>> {
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_feed(&self, f: Arc<crate::feed::Feed>) {
        *self.feed.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub(super) fn set_graph(&self, r: GraphReader) {
        self.lock_served().graph = Some(r);
    }
}

#[derive(Debug, Default)]
struct Served {
    graph: Option<GraphReader>,
    schema: Option<Arc<GraphSchema>>,
}
