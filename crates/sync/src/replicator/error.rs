//! Why replication stopped, or paused to reconnect: one typed error for the service loop.

#[allow(unused_imports)]
use super::*;

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
    /// The change log could not be read or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The change log could not be replayed at start.
    #[error(transparent)]
    Replay(#[from] ReplayError),
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
    /// The log's newest segment was damaged before records the server had been told were
    /// durable (not a torn write: a torn write is never confirmed).
    #[error("the change log file {file} is damaged at byte {offset} and the records after it are gone, but replication slot confirmed {confirmed} (the log now reaches {position}): changes the server already discarded are lost to us; fix: restore the data directory from a backup, or run with --rebuild")]
    LogDamaged {
        /// The segment file.
        file: PathBuf,
        /// Where it was damaged (and cut).
        offset: u64,
        /// Slot's confirmed_flush_lsn.
        confirmed: Lsn,
        /// Our position after the cut.
        position: Lsn,
    },
    /// Another process is streaming from the slot.
    #[error("replication slot {slot:?} is in use by server process {pid}; stop the other consumer (SELECT pg_terminate_backend({pid})) or use another slot")]
    SlotInUse {
        /// Slot.
        slot: String,
        /// The walsender's PID.
        pid: u32,
    },
    /// (Standing by possible) another process advanced the slot past what this one holds: it
    /// led meanwhile (a standby that took over).
    #[error("replication slot {slot:?} was confirmed to {confirmed} by another process, this replica holds only {ours}: another replica leads (or led); standing by")]
    SlotTakenOver {
        /// Slot.
        slot: String,
        /// Slot's confirmed_flush_lsn.
        confirmed: Lsn,
        /// Our position.
        ours: Lsn,
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
    /// A mapped partitioned table gained or lost partitions (nothing comes through replication
    /// for that).
    #[error(
        "table {table}: partitions were attached or detached, which sends nothing through replication (the rows of an \
         attached partition never arrive, those of a detached one stay); the graph is rebuilt in the background (the graph \
         as applied keeps answering)"
    )]
    PartitionsChanged {
        /// `schema.table`.
        table: String,
    },
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
    /// The data itself must be copied again (a key column's type changed): the mapping is
    /// right, the graph is not.
    pub fn needs_rebuild(&self) -> bool {
        matches!(
            self,
            SyncError::Map(
                MapError::KeyTypeChanged { .. } | MapError::IdentityChanged { .. } | MapError::TableRecreated { .. }
            ) | SyncError::PartitionsChanged { .. }
        )
    }

    /// The mapping no longer fits the source (a mapped column renamed or dropped, a key
    /// column's type or the replica identity changed...): the replica pauses before the
    /// transaction, keeps serving what it applied, and waits for a fixed mapping.
    pub fn is_mapping_broken(&self) -> bool {
        matches!(
            self,
            SyncError::Map(
                MapError::Row(_)
                    | MapError::IdentityChanged { .. }
                    | MapError::NoIdentity { .. }
                    | MapError::Decode { .. }
                    | MapError::KeyTypeChanged { .. }
                    | MapError::TableRenamed { .. }
                    | MapError::TableRecreated { .. }
            ) | SyncError::Catalog(CatalogError::Table { .. } | CatalogError::PublicationIncomplete { .. })
                | SyncError::PartitionsChanged { .. }
        )
    }

    /// Another process streams from the slot.
    pub fn is_slot_in_use(&self) -> bool {
        match self {
            SyncError::Repl(e) => e.is_slot_in_use(),
            SyncError::SlotInUse { .. } | SyncError::SlotTakenOver { .. } => true,
            _ => false,
        }
    }

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
