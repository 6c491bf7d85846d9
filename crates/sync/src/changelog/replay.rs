//! Restart by replay: the records after a snapshot's LSN applied to the graph and row index
//! restored from it, giving exactly the state the replica had when it last wrote them.
//!
//! Mutations are replayed in large graph transactions (many records each), row-index changes
//! one by one; a record that does not fit the graph (an edge that is not there, a node id out
//! of sequence) means the log and the snapshot are not of the same history, and is refused.
//!
//! Not for: choosing the snapshot (`crate::checkpoint`) or reading files (`segment`).

use super::record::{self, Record};
use super::{LogDir, LogError};
use crate::row_index::RowIndex;
use graph::{Graph, Mutation, Topology};
use pgoutput::Lsn;

/// Mutations per graph transaction while replaying.
const CHUNK: usize = 1 << 18;

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
    let mut done = Replayed {
        position: after,
        ..Replayed::default()
    };
    let mut decoder = graph::wire::Decoder::default();
    let mut chunk: Vec<Mutation> = Vec::new();
    let mut chunk_lsn = Lsn(0);
    let mut next_id = graph.view().node_count();
    log.scan(after, mapping_hash, |lsn, payload| {
        let rec = record::decode_with(payload, &mut decoder, false).map_err(|e| ReplayError::Undecodable {
            dir: dir.clone(),
            lsn,
            what: e.to_string(),
        })?;
        done.records += 1;
        done.position = lsn;
        if let Record::Changes {
            txns,
            node_count_before,
            mutations,
            index_ops,
            ..
        } = rec
        {
            if node_count_before != next_id {
                return Err(ReplayError::Mismatch {
                    lsn,
                    what: format!("it starts at node id {node_count_before}, the graph has {next_id} nodes"),
                });
            }
            done.txns += txns.len() as u64;
            done.mutations += mutations.len() as u64;
            for l in mutations {
                if matches!(l.mutation, Mutation::AddNode) {
                    next_id += 1;
                }
                chunk.push(l.mutation);
            }
            for op in index_ops {
                index.apply_op(op).map_err(|what| ReplayError::Mismatch { lsn, what })?;
            }
            chunk_lsn = lsn;
            if chunk.len() >= CHUNK {
                apply_chunk(graph, &mut chunk, chunk_lsn)?;
            }
        }
        Ok::<(), ReplayError>(())
    })?;
    apply_chunk(graph, &mut chunk, chunk_lsn)?;
    Ok(done)
}

fn apply_chunk(graph: &mut Graph, chunk: &mut Vec<Mutation>, lsn: Lsn) -> Result<(), ReplayError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let mismatch = |e: graph::ApplyError| ReplayError::Mismatch {
        lsn,
        what: e.to_string(),
    };
    if graph.read_only_reason().is_some() {
        graph.compact().map_err(mismatch)?;
    }
    let mut t = graph.begin(lsn.0).map_err(mismatch)?;
    for m in chunk.drain(..) {
        t.push(m).map_err(mismatch)?;
    }
    t.commit().map_err(mismatch)?;
    Ok(())
}
