//! Restart by replay: the records after a snapshot's LSN applied to the graph and row index
//! restored from it, giving exactly the state the replica had when it last wrote them.
//!
//! Mutations are replayed in large graph transactions (many records each), row-index changes
//! one by one; a record that does not fit the graph (an edge that is not there, a node id out
//! of sequence) means the log and the snapshot are not of the same history, and is refused.
//! Two threads share the work: this one reads and decodes records and replays the row index,
//! a scoped one applies the graph's chunks as they fill (graph and row index are independent
//! until the end), at most two chunks apart.
//!
//! Not for: choosing the snapshot (`crate::checkpoint`) or reading files (`segment`).

use super::record::{self, Record};
use super::{LogDir, LogError};
use crate::row_index::RowIndex;
use graph::{Graph, Mutation, Topology};
use pgoutput::Lsn;

/// Mutations per chunk the reading thread hands the applying one.
const CHUNK: usize = 1 << 16;
/// Mutations per graph transaction while replaying (at most, plus a chunk). A transaction
/// copies each node it touches once and installs one version of it: the fewer transactions,
/// the fewer copies (a 1 M-edge graph with 2 M logged changes restored in 1.1-1.4 s with
/// 2 M per transaction, 1.7-2.0 s with 256 k). Its mutations stay in memory until it commits
/// (32 bytes each).
const PER_TXN: usize = 1 << 21;

/// Why the log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A record's payload (its checksum is good) could not be decoded.
    #[error("change log record at LSN {lsn} in {dir}: {what}; fix: a newer graphsync wrote it, or it is damaged: run `graphsync log verify --data-dir DIR`, or start with --rebuild to rebuild the graph from the source tables")]
    Undecodable {
        /// The log directory.
        dir: String,
        /// The record's LSN.
        lsn: Lsn,
        /// What was wrong.
        what: String,
    },
    /// A record does not fit the state it is replayed on.
    #[error("change log record at LSN {lsn} does not fit the snapshot it follows ({what}); the log and the snapshot are of different histories; fix: start with --rebuild to rebuild the graph from the source tables")]
    Mismatch {
        /// The record's LSN.
        lsn: Lsn,
        /// What did not fit.
        what: String,
    },
    /// Records after the snapshot are missing (segments deleted by hand?).
    #[error("the change log in {dir} starts at {first}, after the snapshot's LSN {after}: the records between are missing; fix: restore the data directory from a backup, or start with --rebuild")]
    Missing {
        /// The log directory.
        dir: String,
        /// Where the log starts.
        first: Lsn,
        /// The snapshot's LSN.
        after: Lsn,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// The newest position in the log (its last record's LSN), or the `after` given.
    pub position: Lsn,
    /// Records replayed.
    pub records: u64,
    /// Transactions replayed.
    pub txns: u64,
    /// Graph mutations replayed.
    pub mutations: u64,
}

/// Replays every record after `after` (the restored snapshot's LSN) onto `graph` and `index`.
pub fn replay(
    log: &LogDir,
    mapping_hash: u64,
    after: Lsn,
    graph: &mut Graph,
    index: &mut RowIndex,
) -> Result<Replayed, ReplayError> {
    replay_until(log, mapping_hash, after, None, graph, index)
}

/// Why a scan stopped: an error, or past the position wanted.
enum Halt {
    Err(ReplayError),
    Past,
}

impl From<LogError> for Halt {
    fn from(e: LogError) -> Self {
        Halt::Err(e.into())
    }
}

impl From<ReplayError> for Halt {
    fn from(e: ReplayError) -> Self {
        Halt::Err(e)
    }
}

/// As [`replay`], but only the transactions that ended at or before `upto` (a record is cut
/// at a transaction boundary): the state at exactly that position. The log may be one a
/// running replicator appends to, once it is durable through `upto`; damage before `upto` is
/// an error.
pub fn replay_until(
    log: &LogDir,
    mapping_hash: u64,
    after: Lsn,
    upto: Option<Lsn>,
    graph: &mut Graph,
    index: &mut RowIndex,
) -> Result<Replayed, ReplayError> {
    let dir = log.path().display().to_string();
    if let Some(first) = log.segments()?.first() {
        if first.start > after {
            return Err(ReplayError::Missing {
                dir,
                first: first.start,
                after,
            });
        }
    }
    // A log a running replicator appends to may end in a frame being written: find first
    // how far it is intact (the frames through `upto` are all on disk).
    let intact = match upto {
        Some(u) => intact_through(log, mapping_hash, after, u)?,
        None => None,
    };
    let start_id = graph.view().node_count();
    let (chunks, applied) = std::sync::mpsc::sync_channel::<(Vec<Mutation>, Lsn)>(1);
    std::thread::scope(|s| {
        let applier = s.spawn(move || apply_chunks(graph, applied));
        let scan = Scan {
            log,
            mapping_hash,
            after,
            upto,
            intact,
        };
        let read = read_records(&scan, start_id, index, &chunks);
        drop(chunks);
        let applied = applier.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        // The graph's refusal first: a reader that stopped because the applier did is not the
        // cause.
        applied?;
        read
    })
}

/// What [`read_records`] scans: the log of `mapping_hash` after `after`, through `upto` if
/// given, intact through `intact` (see [`intact_through`]).
struct Scan<'a> {
    log: &'a LogDir,
    mapping_hash: u64,
    after: Lsn,
    upto: Option<Lsn>,
    intact: Option<Lsn>,
}

/// The reading half of [`replay_until`]: scans and decodes the records, replays the row index,
/// and sends the graph's mutations in chunks to `chunks` (a failed send: the applier stopped,
/// and says why). `start_id`: the graph's node count before the first record.
fn read_records(
    scan: &Scan<'_>,
    start_id: u32,
    index: &mut RowIndex,
    chunks: &std::sync::mpsc::SyncSender<(Vec<Mutation>, Lsn)>,
) -> Result<Replayed, ReplayError> {
    let Scan {
        log,
        mapping_hash,
        after,
        upto,
        intact,
    } = *scan;
    let dir = log.path().display().to_string();
    let mut seen = after;
    let mut done = Replayed {
        position: after,
        ..Replayed::default()
    };
    let mut decoder = graph::wire::Decoder::default();
    let mut chunk: Vec<Mutation> = Vec::new();
    let mut chunk_lsn = Lsn(0);
    let mut next_id = start_id;
    let mut stopped = false;
    let within = |lsn: Lsn| upto.is_none_or(|u| lsn <= u);
    let scanned = log.scan(after, mapping_hash, |lsn, payload| {
        seen = lsn;
        let rec = record::decode_with(payload, &mut decoder, false).map_err(|e| ReplayError::Undecodable {
            dir: dir.clone(),
            lsn,
            what: e.to_string(),
        })?;
        let Record::Changes {
            txns,
            node_count_before,
            mutations,
            index_ops,
            ..
        } = rec
        else {
            // A position record: WAL up to it changed nothing mapped.
            if !within(lsn) {
                return Err(Halt::Past);
            }
            done.records += 1;
            done.position = lsn;
            return Ok(());
        };
        if node_count_before != next_id {
            return Err(ReplayError::Mismatch {
                lsn,
                what: format!("it starts at node id {node_count_before}, the graph has {next_id} nodes"),
            }
            .into());
        }
        // Past `upto`: only the transactions that ended by then.
        let keep = txns.iter().take_while(|t| within(t.lsn)).count();
        let cut = keep < txns.len();
        let (m, i) = txns[..keep].iter().fold((0usize, 0usize), |(m, i), t| {
            (m + t.mutations as usize, i + t.index_ops as usize)
        });
        let (m, i) = if cut {
            (m, i)
        } else {
            (mutations.len(), index_ops.len())
        };
        if keep > 0 || !cut {
            done.records += 1;
            done.position = if cut { txns[keep - 1].lsn } else { lsn };
        }
        done.txns += keep as u64;
        done.mutations += m.min(mutations.len()) as u64;
        for l in mutations.into_iter().take(m) {
            if matches!(l.mutation, Mutation::AddNode) {
                next_id += 1;
            }
            chunk.push(l.mutation);
        }
        for op in index_ops.into_iter().take(i) {
            index.apply_op(op).map_err(|what| ReplayError::Mismatch { lsn, what })?;
        }
        chunk_lsn = done.position;
        if cut {
            return Err(Halt::Past);
        }
        if chunk.len() >= CHUNK && chunks.send((std::mem::take(&mut chunk), chunk_lsn)).is_err() {
            stopped = true;
            return Err(Halt::Past);
        }
        Ok::<(), Halt>(())
    });
    if stopped {
        // The applier refused a chunk: its error is the one reported.
        return Ok(done);
    }
    match scanned {
        Ok(()) | Err(Halt::Past) => {}
        // Past every frame the check found (all of them at or before `upto`): a frame the
        // writer appended since, and is still writing.
        Err(Halt::Err(ReplayError::Log(LogError::Corrupt { .. }))) if intact.is_some_and(|last| seen >= last) => {}
        Err(Halt::Err(e)) => return Err(e),
    }
    if !chunk.is_empty() {
        // A failed send: the applier's error is the one reported.
        let _ = chunks.send((chunk, chunk_lsn));
    }
    Ok(done)
}

/// With the frames through `upto` on disk: `Some(last LSN)` when the log ends before any frame
/// past `upto` (so every frame after `last` came later), `None` when an intact frame past
/// `upto` follows them. A damaged frame is read again for a few seconds (a writer completing
/// it) before it counts as damage.
fn intact_through(log: &LogDir, mapping_hash: u64, after: Lsn, upto: Lsn) -> Result<Option<Lsn>, ReplayError> {
    let mut attempt = 0;
    loop {
        let mut last = after;
        let r = log.scan(after, mapping_hash, |lsn, _| {
            if lsn > upto {
                return Err(Halt::Past);
            }
            last = lsn;
            Ok(())
        });
        match r {
            Ok(()) => return Ok(Some(last)),
            Err(Halt::Past) => return Ok(None),
            Err(Halt::Err(ReplayError::Log(LogError::Corrupt { .. }))) if attempt < 100 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            Err(Halt::Err(e)) => return Err(e),
        }
    }
}

/// The applying half of [`replay_until`]: the chunks in order, in transactions of about
/// [`PER_TXN`] mutations.
fn apply_chunks(graph: &mut Graph, chunks: std::sync::mpsc::Receiver<(Vec<Mutation>, Lsn)>) -> Result<(), ReplayError> {
    let mismatch = |lsn: Lsn| {
        move |e: graph::ApplyError| ReplayError::Mismatch {
            lsn,
            what: e.to_string(),
        }
    };
    let mut chunks = chunks.into_iter().filter(|(c, _)| !c.is_empty());
    while let Some(first) = chunks.next() {
        let begun = first.1;
        if graph.read_only_reason().is_some() {
            graph.compact().map_err(mismatch(begun))?;
        }
        let mut t = graph.begin(begun.0).map_err(mismatch(begun))?;
        let mut taken = 0;
        for (mut chunk, lsn) in std::iter::once(first).chain(chunks.by_ref()) {
            taken += chunk.len();
            t.push_all(&mut chunk).map_err(mismatch(lsn))?;
            t.advance_lsn(lsn.0);
            if taken >= PER_TXN {
                break;
            }
        }
        t.commit().map_err(mismatch(begun))?;
    }
    Ok(())
}
