//! The replication service loop: restore or initial copy, stream, apply, checkpoint, confirm,
//! reconnect.
//!
//! Invariants kept here:
//! - the flush LSN sent to the server is never more than the change log's durable position
//!   (the last fsynced record), so a crash anywhere loses nothing the server dropped; a
//!   snapshot is written only of changes already durable in the log, and the log keeps every
//!   record after the older of the two kept snapshots, so a corrupt newest snapshot falls back
//!   to the previous one plus a longer replay;
//! - transactions that ended at or before the restored position are skipped (the server may
//!   resend from its `confirmed_flush_lsn`);
//! - a restored position behind the slot's `confirmed_flush_lsn`, a missing or invalidated
//!   slot, or a checkpoint of another mapping is refused (or rebuilt with `rebuild`), never
//!   streamed over;
//! - when nothing mapped is pending, the position follows the server's keepalives (a position
//!   record in the log), so an idle slot does not hold WAL.
//!
//! Split by job (after Supabase's `etl`): `session` (connect, check, decide how to resume),
//! `initial_copy` (with `loader`, its mapping thread), `stream` (the loop), `apply` (batches into graph transactions and change
//! log records), `jobs` (compactions and the snapshots written with them, in the background), `status` (what the HTTP layer reads),
//! `error`. A [`run`] keeps a `Replicator` (options, store, mapper, status, the state kept
//! across reconnects) and runs one session per connection.
//!
//! Not for CLI or HTTP (the binary reads [`ReplicaStatus`]).

use crate::assembly::{AssemblyError, TxnAssembler};
use crate::catalog::{self, CatalogError, TableInfo};
use crate::changelog::{LogDir, LogError, LogWriter, ReplayError, WriterOptions};
use crate::checkpoint::{CheckpointError, CheckpointStore, Fallback, Manifest};
use crate::committed::CommittedTxn;
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

mod apply;
mod error;
mod follow;
mod initial_copy;
mod jobs;
mod loader;
mod probe;
mod rebuild;
mod reload;
mod restore;
mod session;
mod status;
mod stream;

#[allow(unused_imports)]
use apply::*;
pub use error::SyncError;
pub use follow::Follower;
#[allow(unused_imports)]
use initial_copy::*;
#[allow(unused_imports)]
use jobs::*;
use rebuild::Rebuild;
pub use reload::{reload_channel, ReloadOutcome, ReloadRequest, Reloads};
pub use restore::load;
#[allow(unused_imports)]
use session::*;
pub use status::{GraphSchema, Histogram, KeyKind, Phase, RebuildInfo, ReplicaStatus, StatusSnapshot};
#[allow(unused_imports)]
use stream::*;

/// Graph changes logged between snapshots by default, for a graph of at least as many nodes
/// and edges (a smaller graph is snapshotted sooner).
pub const DEFAULT_SNAPSHOT_AFTER_CHANGES: u64 = 1_000_000;

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
    /// Data directory (snapshots and the change log).
    pub data_dir: PathBuf,
    /// Drop and rebuild from source when the state cannot be resumed.
    pub rebuild: bool,
    /// Write a snapshot (with a compaction, started for it if need be) once this many graph
    /// changes were logged since the last one: bounds the replay at restart. `None`: the
    /// default, [`DEFAULT_SNAPSHOT_AFTER_CHANGES`] for a large graph and fewer for a small one
    /// (`jobs::snapshot_bound`).
    pub snapshot_after_changes: Option<u64>,
    /// Change log segment size: a new segment file starts past it.
    pub log_segment_bytes: u64,
    /// The change log's group-commit window: fdatasyncs at most this often (default 20 ms;
    /// confirms to the server go out every 100 ms at most, so a shorter window buys little).
    pub log_sync_interval: Duration,
    /// After a light batch (the socket ran dry), the next read waits this long so the
    /// transactions that follow are applied together: fewer wake-ups per transaction under a
    /// steady trickle, at most this much added latency. Zero: read at once. Default
    /// [`DEFAULT_APPLY_LINGER`].
    pub apply_linger: Duration,
    /// Memory for the change feed's recent records; older ones are read from disk.
    pub feed_memory_bytes: usize,
    /// The data directory was written before online mapping changes: its snapshots and log
    /// carry [`MappingConfig::legacy_hash`] (set by [`run`]).
    pub legacy_hash: bool,
    /// Standby status update interval.
    pub status_interval: Duration,
    /// Compaction thresholds.
    pub compaction: CompactionPolicy,
    /// Ask pgoutput for column values in binary form where the type allows.
    pub binary: bool,
    /// Reconnect when nothing (data or keepalive) came from the server for this long; while
    /// idle the replicator asks for a keepalive every 100 ms.
    pub receive_timeout: Duration,
    /// Streamed transactions buffered in memory past this many bytes spill to temporary
    /// files in the data directory.
    pub spill_threshold: usize,
    /// Return [`SyncError::SlotInUse`] instead of retrying when another process streams from
    /// the slot, and [`SyncError::SlotTakenOver`] when another process confirmed it past this
    /// replica's state (a publishing leader then stands by as a follower).
    pub yield_slot: bool,
    /// Where a background rebuild runs (none: the replicator's own runtime). The binary runs
    /// the replicator on a current-thread runtime of its own and sets this to the shared
    /// multi-thread runtime, so a rebuild's copy, bulk build and first snapshot (long blocking
    /// work) never stop the graph in force from applying.
    pub side_runtime: Option<tokio::runtime::Handle>,
}

impl Options {
    /// Options with defaults: a snapshot per million logged changes, 64 MiB log segments, 10 s
    /// status updates.
    pub fn new(config: Arc<MappingConfig>, conn: pgrepl::Config, data_dir: PathBuf) -> Self {
        Options {
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
            config,
            conn,
            data_dir,
            rebuild: false,
            snapshot_after_changes: None,
            log_segment_bytes: 64 << 20,
            log_sync_interval: crate::changelog::DEFAULT_SYNC_INTERVAL,
            apply_linger: DEFAULT_APPLY_LINGER,
            feed_memory_bytes: crate::feed::DEFAULT_MEMORY_BYTES,
            legacy_hash: false,
            status_interval: Duration::from_secs(10),
            compaction: CompactionPolicy::default(),
            spill_threshold: 64 << 20,
            receive_timeout: Duration::from_secs(30),
            binary: false,
            yield_slot: false,
            side_runtime: None,
        }
    }
}

impl Options {
    /// The mapping hash the data directory's snapshots and log carry.
    pub fn hash(&self) -> u64 {
        if self.legacy_hash {
            self.config.legacy_hash()
        } else {
            self.config.mapping_hash()
        }
    }
}

/// The default [`Options::apply_linger`]: 2 ms cut graphsync's CPU by about a third at 1,000 single-row
/// transactions/s (docs/benchmarks.md, session 14).
pub const DEFAULT_APPLY_LINGER: Duration = Duration::from_millis(2);

/// The replica's state between sessions.
struct State {
    graph: Graph,
    index: RowIndex,
    /// Every transaction committed at or before this is applied.
    safe: Lsn,
    /// The checkpoint (snapshots) on disk.
    manifest: Manifest,
    /// The change log being appended to.
    log: LogWriter,
    /// The change feed (every appended record is pushed to it).
    feed: Arc<crate::feed::Feed>,
    /// The newest position appended to the log (≥ what is durable).
    logged: Lsn,
    /// Graph changes logged since the manifest's snapshot.
    since_snapshot: u64,
    /// Compaction (and the snapshot written with it) in flight; kept across reconnects so
    /// none is lost or raced.
    bg: Background,
    /// While a rebuild replays this log, no segment holding records after this LSN is removed
    /// (0: no pin).
    log_pin: Arc<std::sync::atomic::AtomicU64>,
}

/// Keeps a replicator's change log from being pruned past an LSN while it lives.
pub(super) struct LogPin(Arc<std::sync::atomic::AtomicU64>);

impl LogPin {
    pub(super) fn new(pin: &Arc<std::sync::atomic::AtomicU64>, lsn: Lsn) -> LogPin {
        pin.store(lsn.0.max(1), std::sync::atomic::Ordering::SeqCst);
        LogPin(pin.clone())
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        self.0.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

fn now_ms() -> i64 {
    unix_micros_now() / 1000
}

/// The wall clock, Unix microseconds (0 before 1970).
pub(super) fn unix_micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Capped exponential backoff with jitter.
struct Backoff {
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }
    fn next(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(9)).min(30_000);
        self.attempt += 1;
        // Full jitter in [base/2, base].
        Duration::from_millis(base / 2 + self.rng.u64(..=base / 2))
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs replication until `shutdown` turns true (then writes a final checkpoint, confirms it
/// and returns `Ok`) or a non-transient error stops it. Transient errors reconnect with backoff.
pub async fn run(opts: Options, status: Arc<ReplicaStatus>, shutdown: watch::Receiver<bool>) -> Result<(), SyncError> {
    // Nobody sends reloads: a paused replica waits for shutdown.
    let (_, reloads) = reload_channel();
    run_with_reloads(opts, status, shutdown, reloads).await
}

/// As [`run`], also applying the mappings sent on `reloads` (online when compatible); a
/// transaction the mapping does not fit pauses replication (phase `mapping_broken`, the graph
/// still served) until a reload fixes it.
pub async fn run_with_reloads(
    mut opts: Options,
    status: Arc<ReplicaStatus>,
    shutdown: watch::Receiver<bool>,
    reloads: Reloads,
) -> Result<(), SyncError> {
    // The state in force may be a generation a background rebuild made.
    let root = opts.data_dir.clone();
    let base_slot = opts.slot.clone();
    std::fs::create_dir_all(&root)
        .map_err(|e| SyncError::Io(format!("cannot create the data directory {}: {e}", root.display())))?;
    let generation = crate::generation::current(&root, &base_slot).map_err(|e| SyncError::Io(e.to_string()))?;
    opts.data_dir = generation.dir.clone();
    opts.slot = generation.slot.clone();
    let store = CheckpointStore::open(&opts.data_dir)?;
    let log = LogDir::open(&opts.data_dir.join("log"))?;
    // --rebuild with a usable state: serve it and rebuild beside it.
    let rebuild_after_restore = opts.rebuild && store.manifest().is_some();
    if rebuild_after_restore {
        opts.rebuild = false;
    }
    // A data directory written before online mapping changes keeps its hash.
    opts.legacy_hash = store
        .manifest()
        .is_some_and(|m| m.mapping_hash == opts.config.legacy_hash() && m.mapping_hash != opts.config.mapping_hash());
    // Restore while connecting: a restart costs the slower of the two, not both.
    let restoring = (!opts.rebuild).then(|| {
        let (store, log, hash) = (store.clone(), log.clone(), opts.hash());
        tokio::task::spawn_blocking(move || restore::restore(&store, &log, hash))
    });
    let mut r = Replicator {
        mapper: Mapper::new(opts.config.clone()),
        rebuild: opts.rebuild,
        opts,
        store,
        log,
        status,
        shutdown,
        reloads: Some(reloads),
        state: None,
        restoring,
        root,
        base_slot,
        generation,
        rebuilding: None,
        rebuild_after_restore,
        nested: false,
        auto_rebuild: None,
        tables: Vec::new(),
        base: None,
    };
    let mut backoff = Backoff::new();
    loop {
        if *r.shutdown.borrow() {
            r.stop_unconnected().await;
            return Ok(());
        }
        match session(&mut r).await {
            Ok(SessionEnd::Shutdown) => {
                r.abandon_rebuild().await;
                return Ok(());
            }
            Ok(SessionEnd::Reload(req)) => {
                r.reload(req).await;
            }
            Ok(SessionEnd::Swap) => r.swap().await,
            Ok(SessionEnd::Restored) => {
                r.rebuild_after_restore = false;
                let config = r.opts.config.clone();
                if let Err(why) = r.start_rebuild(config, "--rebuild".into(), None) {
                    tracing::error!(%why, "cannot rebuild in the background; the restored graph keeps serving");
                }
            }
            Err(e) if r.opts.yield_slot && e.is_slot_in_use() => {
                tracing::warn!(error = %e, "another process streams from the slot, or led from it meanwhile; standing by");
                r.stop_unconnected().await;
                return Err(e);
            }
            Err(e) if r.rebuild_after_restore && r.state.is_none() && !e.is_transient() => {
                // Nothing usable to serve: rebuild in place.
                tracing::warn!(error = %e, "the data directory cannot be resumed; rebuilding in place");
                r.rebuild_after_restore = false;
                r.rebuild = true;
                r.restoring = None;
            }
            Err(e) if e.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "replication interrupted; reconnecting");
                r.status.update(|s| {
                    s.phase = Phase::Disconnected;
                    s.last_error = Some(e.to_string());
                    s.reconnects += 1;
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = r.shutdown.changed() => {}
                }
                if *r.shutdown.borrow() {
                    r.stop_unconnected().await;
                    return Ok(());
                }
            }
            Err(e) if e.is_mapping_broken() && r.state.is_some() => {
                if !r.pause(e).await {
                    return Ok(());
                }
            }
            Err(e) => {
                r.status.update(|s| {
                    s.phase = Phase::Failed;
                    s.last_error = Some(e.to_string());
                });
                return Err(e);
            }
        }
        if r.state.is_some() {
            backoff.reset();
        }
    }
}

/// Why a session ended without an error.
pub(super) enum SessionEnd {
    /// Shutdown was asked (and the final position confirmed).
    Shutdown,
    /// A mapping reload arrived: apply it between sessions.
    Reload(ReloadRequest),
    /// The background rebuild caught up (or failed): swap it in (or reap it).
    Swap,
    /// The state was restored and `--rebuild` asked for a rebuild beside it.
    Restored,
}

impl Replicator {
    /// Ends a run that has no connection: what was applied is in the log already (nothing
    /// more can be confirmed without one).
    async fn stop_unconnected(&mut self) {
        self.abandon_rebuild().await;
        let hash = self.opts.hash();
        if let Some(st) = self.state.as_mut() {
            let _ = st.log.flush(Duration::from_secs(30));
            finish_background(st, &self.status, &self.store, hash).await;
        }
    }

    /// Pauses before the transaction the mapping does not fit, serving the graph as applied,
    /// until a reload applies (`true`: stream again) or shutdown (`false`).
    async fn pause(&mut self, e: SyncError) -> bool {
        let applied = self.state.as_ref().map_or(Lsn(0), |st| st.safe);
        tracing::error!(
            error = %e,
            applied = %applied,
            "replication paused: the mapping does not fit the source any more; queries keep answering from the graph as applied, \
             nothing after it is confirmed. Fix the mapping and reload it (kill -HUP the process, or graphsync reload)"
        );
        self.status.update(|s| {
            s.phase = Phase::MappingBroken;
            s.last_error = Some(e.to_string());
        });
        if let Some(st) = self.state.as_mut() {
            let _ = crate::blocking(|| st.log.flush(Duration::from_secs(30)));
        }
        let cause = e.to_string();
        if e.needs_rebuild() && self.rebuilding.is_none() && self.auto_rebuild.as_deref() == Some(cause.as_str()) {
            tracing::error!(
                "the background rebuild for this failed before; fix the cause, then graphsync reload --rebuild"
            );
        } else if e.needs_rebuild() && self.rebuilding.is_none() {
            self.auto_rebuild = Some(cause);
            let config = self.opts.config.clone();
            if let Err(why) = self.start_rebuild(config, e.to_string(), None) {
                tracing::error!(%why, "cannot rebuild in the background");
                self.status
                    .update(|s| s.last_error = Some(format!("{e}; cannot rebuild in the background: {why}")));
            }
        }
        loop {
            let req = tokio::select! {
                req = next_reload(&mut self.reloads) => req,
                _ = self.shutdown.changed() => None,
                _ = tokio::time::sleep(Duration::from_millis(50)) => None,
            };
            if *self.shutdown.borrow() {
                self.stop_unconnected().await;
                return false;
            }
            if let Some(req) = req {
                match self.reload(req).await {
                    ReloadOutcome::Refused(_) | ReloadOutcome::Rebuilding(_) => {}
                    _ => return true,
                }
            }
            let applied = self.state.as_ref().map_or(Lsn(0), |st| st.safe);
            if self
                .rebuilding
                .as_ref()
                .is_some_and(|rb| Rebuild::wants_swap(&rb.status, applied))
            {
                self.swap().await;
                return true;
            }
        }
    }
}

/// The next reload, or never when nobody can send one.
async fn next_reload(reloads: &mut Option<Reloads>) -> Option<ReloadRequest> {
    match reloads {
        Some(rx) => match rx.recv().await {
            Some(req) => Some(req),
            None => {
                *reloads = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// What one replication run keeps across its sessions (one per connection).
struct Replicator {
    /// The options, with the mapping in force (replaced by a reload).
    opts: Options,
    /// Mapping reloads (`None` once nobody can send any).
    reloads: Option<Reloads>,
    store: CheckpointStore,
    /// The change log's directory.
    log: LogDir,
    mapper: Mapper,
    status: Arc<ReplicaStatus>,
    shutdown: watch::Receiver<bool>,
    /// The replica's state once restored or copied; kept across reconnects.
    state: Option<State>,
    /// Copy again instead of restoring (`--rebuild`; cleared once rebuilt).
    rebuild: bool,
    /// The state being restored while the first connection is made.
    restoring: Option<restore::RestoreTask>,
    /// The data directory (generations live in it).
    root: PathBuf,
    /// The configured slot name (generations' slots are named after it).
    base_slot: String,
    /// The generation in force.
    generation: crate::generation::Generation,
    /// A background rebuild in progress.
    rebuilding: Option<rebuild::Rebuild>,
    /// `--rebuild` with a usable state: once restored, rebuild in the background.
    rebuild_after_restore: bool,
    /// The replicator of a background rebuild (not the one in force).
    nested: bool,
    /// The mapped tables as the catalog described them when the mapping in force was last
    /// checked (a reload compares columns' attnums with them).
    tables: Vec<TableInfo>,
    /// A rebuild that copies only newly mapped tables: what it starts from (taken by its
    /// session).
    base: Option<initial_copy::Base>,
    /// The error that last started a rebuild by itself (not started again for the same error
    /// until one is swapped in).
    auto_rebuild: Option<String>,
}
