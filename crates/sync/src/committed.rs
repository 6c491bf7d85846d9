//! A transaction that committed on the server, as the assembler hands it to the mapper: its row
//! changes in memory and, for a large streamed one, those spilled to disk first.
//!
//! Not for assembling (`crate::assembly`) or mapping (`crate::mapper`).

use crate::change::RowChange;
use pgoutput::{Lsn, PgTimestamp};

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
