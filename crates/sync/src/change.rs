//! Row changes: what a transaction is made of (see [`crate::committed`] for the transaction).
//!
//! A change keeps the decoded tuple (a zero-copy slice of the pgoutput message) and the
//! relation description that was current when it arrived; values are typed when the change is
//! applied. Not for wire decoding (that is `pgoutput`) or mapping (that is [`crate::mapper`]).

use pgoutput::{OldKind, Relation, TupleData};
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
