//! The durable change log: what the replica applied after its last snapshot, as LSN-tagged
//! records in append-only segment files under `<data-dir>/log/`, so a restart replays them
//! instead of rebuilding, and the slot is confirmed only up to what is on disk.
//!
//! - [`segment`]: the file format (headers, frames, reading and checking them).
//! - `dir`: the log directory ([`LogDir`]): listing, crash recovery (cutting a torn tail),
//!   scanning, pruning, verifying.
//! - [`writer`]: [`LogWriter`], appending on a thread of its own with group commit
//!   (fdatasync per group) and a durable position callers can wait on.
//! - [`record`]: what a payload holds (the graph mutations and row-index changes of one
//!   applied batch, with each transaction's boundary; or a bare position).
//! - `replay`: restart by replay ([`replay`]): the records after a snapshot applied to it.
//! - `tail`: [`LogTail`], following the log while it is appended to (the publisher).
//!
//! Segments and the writer treat payloads as opaque bytes. Not for: when to write, snapshot or
//! prune (the replicator), or snapshots themselves (`crate::checkpoint`).

use pgoutput::Lsn;
use std::path::PathBuf;

mod dir;
pub mod record;
mod replay;
pub mod segment;
mod tail;
pub mod writer;

pub use dir::{Cut, LogDir, Problem, Recovery, SegmentReport};
pub use replay::{replay, replay_until, ReplayError, Replayed};
pub use segment::{SegmentInfo, MAX_PAYLOAD};
pub use tail::{LogTail, TailError};
pub use writer::{LogWriter, WriterOptions, DEFAULT_SYNC_INTERVAL};

/// Why a change log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed (disk full, permissions, I/O error).
    #[error("change log I/O error on {path}: {source}; fix: free space or fix permissions of the data directory")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A damaged header or record that is not a torn tail (something valid follows it, or it
    /// is in an older segment).
    #[error("change log file {file} is damaged at byte {offset}: {what}; fix: inspect it with `graphsync log verify --data-dir DIR`; restore the data directory from a backup, or start with --rebuild to rebuild the graph from the source tables")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the damaged header (0) or record in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A segment was written under another mapping.
    #[error("change log file {file} was written under another mapping (hash {found:016x}, now {expected:016x}); fix: start with --rebuild to rebuild the graph from the source tables")]
    MappingChanged {
        /// The segment file.
        file: PathBuf,
        /// The mapping hash in its header.
        found: u64,
        /// The configured mapping's hash.
        expected: u64,
    },
    /// An append whose LSN is not after the last record's (or, when opening a writer, a
    /// position before the newest segment's start).
    #[error("change log append at LSN {lsn} is not after the last record's LSN {last}; records must be appended in strictly increasing LSN order (a bug in the caller)")]
    OutOfOrder {
        /// The LSN given.
        lsn: Lsn,
        /// The LSN it must exceed.
        last: Lsn,
    },
    /// A payload larger than [`MAX_PAYLOAD`].
    #[error("change log record of {bytes} bytes exceeds the maximum of {MAX_PAYLOAD} bytes; the caller must split it")]
    TooLarge {
        /// The payload's size.
        bytes: usize,
    },
    /// The writer's thread has stopped.
    #[error("the change log writer has stopped; nothing more can be appended")]
    Closed,
}

impl LogError {
    /// An [`LogError::Io`] on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}

/// Helpers shared by the tests of this module's files.
#[cfg(test)]
pub(crate) mod testutil {
    use super::{LogDir, LogError, LogWriter, WriterOptions};
    use pgoutput::Lsn;
    use std::time::Duration;

    /// A fresh log directory in a temporary directory (kept alive by the first value).
    pub(crate) fn tmp() -> (tempfile::TempDir, LogDir) {
        let t = tempfile::tempdir().expect("tempdir");
        let d = LogDir::open(&t.path().join("log")).expect("open log dir");
        (t, d)
    }

    /// The mapping hash the tests write under.
    pub(crate) const HASH: u64 = 0x5eed_cafe_f00d_0001;

    /// Records: lsn and payload.
    pub(crate) type Recs = Vec<(Lsn, Vec<u8>)>;

    /// Options with the test hash and the given segment size.
    pub(crate) fn opts(segment_bytes: u64) -> WriterOptions {
        WriterOptions {
            segment_bytes,
            ..WriterOptions::new(HASH)
        }
    }

    /// Appends `recs` with a writer opened after `after`, flushes, and drops the writer.
    pub(crate) fn write(dir: &LogDir, after: Lsn, recs: &[(Lsn, Vec<u8>)], segment_bytes: u64) {
        let w = LogWriter::open(dir, after, opts(segment_bytes)).expect("open writer");
        for (lsn, p) in recs {
            w.append(*lsn, p.clone()).expect("append");
        }
        let last = recs.last().map_or(after, |r| r.0);
        assert_eq!(w.flush(Duration::from_secs(60)).expect("flush"), last);
        assert_eq!(w.durable(), last);
        assert_eq!(w.error(), None);
    }

    /// Every record after `after`.
    pub(crate) fn read(dir: &LogDir, after: Lsn) -> Result<Recs, LogError> {
        let mut out = Vec::new();
        dir.scan(after, HASH, |lsn, p| {
            out.push((lsn, p.to_vec()));
            Ok::<(), LogError>(())
        })?;
        Ok(out)
    }

    /// `n` records after `after` with random gaps and random payloads of up to `max_len`
    /// bytes.
    pub(crate) fn random_records(rng: &mut fastrand::Rng, n: usize, max_len: usize, after: Lsn) -> Recs {
        let mut lsn = after.0;
        (0..n)
            .map(|_| {
                lsn += rng.u64(1..10_000);
                let len = rng.usize(0..=max_len);
                (Lsn(lsn), (0..len).map(|_| rng.u8(..)).collect())
            })
            .collect()
    }
}
