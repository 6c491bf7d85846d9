//! Row changes and committed transactions: what the transaction assembler hands the mapper.
//!
//! A change keeps the decoded tuple (a zero-copy slice of the pgoutput message) and the
//! relation description that was current when it arrived; values are typed when the change is
//! applied. Not for wire decoding (that is `pgoutput`) or mapping (that is [`crate::mapper`]).

use pgoutput::{Lsn, OldKind, PgTimestamp, Relation, TupleData};
use std::sync::Arc;

/// One row-level change of a mapped (or at least published) table.
#[derive(Debug, Clone)]
pub enum RowChange {
    /// A row was inserted (or copied by the initial copy).
    Insert {
        /// The table, as described when the row arrived.
        rel: Arc<Relation>,
        /// The new row.
        new: TupleData,
    },
    /// A row was updated.
    Update {
        /// The table.
        rel: Arc<Relation>,
        /// The old key (identity changed) or the whole old row (identity FULL).
        old: Option<(OldKind, TupleData)>,
        /// The new row; unchanged TOAST columns are not sent.
        new: TupleData,
    },
    /// A row was deleted.
    Delete {
        /// The table.
        rel: Arc<Relation>,
        /// The old key or the whole old row.
        old: TupleData,
    },
    /// Tables were truncated.
    Truncate {
        /// The tables.
        rels: Vec<Arc<Relation>>,
    },
}

impl RowChange {
    /// The same change with its tuples in allocations of their own ([`TupleData::detached`]),
    /// so keeping it does not pin the network buffer it was decoded from.
    pub fn detached(&self) -> RowChange {
        match self {
            RowChange::Insert { rel, new } => RowChange::Insert {
                rel: rel.clone(),
                new: new.detached(),
            },
            RowChange::Update { rel, old, new } => RowChange::Update {
                rel: rel.clone(),
                old: old.as_ref().map(|(k, t)| (*k, t.detached())),
                new: new.detached(),
            },
            RowChange::Delete { rel, old } => RowChange::Delete {
                rel: rel.clone(),
                old: old.detached(),
            },
            RowChange::Truncate { rels } => RowChange::Truncate { rels: rels.clone() },
        }
    }
}

/// A transaction that committed on the server, ready to apply atomically.
#[derive(Debug)]
pub struct CommittedTxn {
    /// Transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position the replica reaches by applying it, and the
    /// position to confirm once it is durable.
    pub end_lsn: Lsn,
    /// Commit time on the server.
    pub commit_time: PgTimestamp,
    /// The changes held in memory, in commit order (after the spilled ones).
    pub changes: Vec<RowChange>,
    /// The changes of a large streamed transaction that were spilled to disk; they come first.
    pub spilled: Option<crate::spill::SpillFile>,
}

impl CommittedTxn {
    /// Calls `f` with every change in commit order: spilled ones (read back in bounded memory),
    /// then those in memory.
    pub fn for_each_change<E: From<crate::spill::SpillError>>(
        &self,
        mut f: impl FnMut(&RowChange) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(s) = &self.spilled {
            s.for_each(&mut f)?;
        }
        self.changes.iter().try_for_each(f)
    }

    /// Number of changes (spilled and in memory).
    pub fn len(&self) -> usize {
        self.changes.len() + self.spilled.as_ref().map_or(0, |s| s.records() as usize)
    }

    /// Whether it has no changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
