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
//! Split by job (after Supabase's `etl`): `session` (connect, check, decide how to resume),
//! `initial_copy`, `stream` (the loop), `apply` (batches into graph transactions), `jobs`
//! (checkpoints and compactions in the background), `status` (what the HTTP layer reads),
//! `error`. A [`run`] keeps a `Replicator` (options, store, mapper, status, the state kept
//! across reconnects) and runs one session per connection.
//!
//! Not for CLI or HTTP (the binary reads [`ReplicaStatus`]).

use crate::assembly::{AssemblyError, TxnAssembler};
use crate::catalog::{self, CatalogError, TableInfo};
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
mod initial_copy;
mod jobs;
mod session;
mod status;
mod stream;

#[allow(unused_imports)]
use apply::*;
pub use error::SyncError;
#[allow(unused_imports)]
use initial_copy::*;
#[allow(unused_imports)]
use jobs::*;
#[allow(unused_imports)]
use session::*;
pub use status::{GraphSchema, Histogram, KeyKind, Phase, ReplicaStatus, StatusSnapshot};
#[allow(unused_imports)]
use stream::*;

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
    let store = CheckpointStore::open(&opts.data_dir)?;
    // Load the checkpoint while connecting: a restart costs the slower of the two, not both.
    let restoring = (!opts.rebuild).then(|| {
        let (store, hash) = (store.clone(), opts.config.mapping_hash());
        tokio::task::spawn_blocking(move || store.restore(hash))
    });
    let mut r = Replicator {
        opts: &opts,
        mapper: Mapper::new(opts.config.clone()),
        store,
        status,
        shutdown,
        state: None,
        rebuild: opts.rebuild,
        restoring,
    };
    let mut backoff = Backoff::new();
    loop {
        if *r.shutdown.borrow() {
            return Ok(());
        }
        match session(&mut r).await {
            Ok(()) => return Ok(()),
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
                    // Nothing new can be durable without a connection; the last checkpoint
                    // stands. Write one more if changes are pending.
                    if let Some(st) = r.state.as_mut() {
                        let mut bg = std::mem::take(&mut st.bg);
                        bg.reap_checkpoint(&r.store, st, &r.status, true).await;
                        if st.dirty() {
                            let _ = checkpoint(&r.store, st, opts.config.mapping_hash(), &r.status);
                        }
                    }
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

/// What one replication run keeps across its sessions (one per connection).
struct Replicator<'a> {
    opts: &'a Options,
    store: CheckpointStore,
    mapper: Mapper,
    status: Arc<ReplicaStatus>,
    shutdown: watch::Receiver<bool>,
    /// The replica's state once restored or copied; kept across reconnects.
    state: Option<State>,
    /// Copy again instead of restoring (`--rebuild`; cleared once rebuilt).
    rebuild: bool,
    /// The checkpoint being loaded while the first connection is made.
    restoring: Option<session::RestoreTask>,
}
