//! Look-ahead for applying a batch's changes: the inserts and deletes held in memory are
//! decoded a few at a time, across transaction boundaries, before any of them is applied, and
//! the loads applying them needs (their endpoints' key index slots, nodes, overlay versions)
//! are started in stages over the group. Each change's chain of cache misses (key index, node,
//! overlay slot, version) is otherwise waited for one miss after another; staged over a group,
//! the misses of its changes overlap.
//!
//! Hints only: what is applied, and every error, is what applying the changes one by one
//! gives. Staging changes no state: it reads only plans made already (planning records a
//! table's identity and key types as first seen, which must happen in apply order); a change
//! not staged (no plan yet, an update, a value that does not decode) is decoded by its apply,
//! which reports any error. The endpoint rules here follow `edge_of` and `take_edge`.
//!
//! Not for: what a change means (`mod.rs`).

use super::*;
use graph::{Ahead, Direction};

/// Changes decoded and staged together (a few microseconds of applying: long enough for one
/// stage's loads to arrive before the next stage reads them).
pub(super) const GROUP: usize = 8;

/// An endpoint a staged change will touch.
#[derive(Debug)]
enum End {
    /// Found by its key when applied (until the key's slot names a node).
    Key(NodeLabel, NodeKey),
    /// The node the key's slot names, or an endpoint of the edge the row index holds for a
    /// deleted row.
    Id(NodeId),
}

/// A group of changes, their decoded values and the endpoints they touch.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// The changes not applied yet: (transaction, change) positions in the batch, and whether
    /// the change ends its transaction.
    group: Vec<(usize, usize, bool)>,
    /// Per change of the group, in order: the values it is applied with (an insert's new row,
    /// a delete's old one), if it decoded here.
    values: Vec<Option<Vec<Value>>>,
    /// Endpoints, their direction, and whether an edge is removed there.
    ends: Vec<(End, Direction, bool)>,
}

/// Where each transaction of a batch ends: called with the graph transaction and the row
/// index right after its last change is applied.
type Close<'c> = dyn FnMut(&mut graph::Txn<'_>, &RowIndex) + 'c;

impl Mapper {
    /// Applies `txns` in order to `t` and `index`, calling `close` after each. Changes in
    /// memory are staged [`GROUP`] at a time across transaction boundaries (a batch of small
    /// transactions overlaps like one large one); spilled ones (a large transaction's, read
    /// back from disk, before those in memory) are applied as read.
    pub(super) fn apply_txns(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        txns: &[CommittedTxn],
        close: &mut Close<'_>,
    ) -> Result<(), MapError> {
        // The buffers are the mapper's, kept between batches (a batch is often one small
        // transaction).
        let mut staged = std::mem::take(&mut self.staged);
        let done = self.apply_staged(t, index, txns, close, &mut staged);
        self.staged = staged;
        done
    }

    fn apply_staged(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        txns: &[CommittedTxn],
        close: &mut Close<'_>,
        staged: &mut Staged,
    ) -> Result<(), MapError> {
        staged.group.clear();
        for (i, txn) in txns.iter().enumerate() {
            if let Some(s) = &txn.spilled {
                self.apply_group(t, index, txns, staged, close)?;
                s.for_each(|change| self.apply_change(t, index, change, None))?;
            }
            let n = txn.changes.len();
            if n == 0 {
                self.apply_group(t, index, txns, staged, close)?;
                close(t, index);
                continue;
            }
            for k in 0..n {
                staged.group.push((i, k, k + 1 == n));
                if staged.group.len() == GROUP {
                    self.apply_group(t, index, txns, staged, close)?;
                }
            }
        }
        self.apply_group(t, index, txns, staged, close)
    }

    /// Stages and applies `staged.group` (changes of `txns`), emptied once all are applied.
    fn apply_group(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        txns: &[CommittedTxn],
        staged: &mut Staged,
        close: &mut Close<'_>,
    ) -> Result<(), MapError> {
        self.stage(t, index, txns, staged);
        for j in 0..staged.group.len() {
            let (i, k, last) = staged.group[j];
            let values = staged.values[j].take();
            self.apply_change(t, index, &txns[i].changes[k], values)?;
            if last {
                close(t, index);
            }
        }
        staged.group.clear();
        Ok(())
    }

    /// Decodes the changes of `staged.group` into `staged.values` and starts the loads
    /// applying them reads.
    fn stage(&self, t: &graph::Txn<'_>, index: &RowIndex, txns: &[CommittedTxn], staged: &mut Staged) {
        staged.values.clear();
        staged.ends.clear();
        let hint = staged.group.len() > 1;
        for &(i, k, _) in &staged.group {
            let ends = hint.then_some(&mut staged.ends);
            let values = match &txns[i].changes[k] {
                RowChange::Insert { rel, new } => self.stage_row(t, index, rel, new, false, ends),
                RowChange::Delete { rel, old } => self.stage_row(t, index, rel, old, true, ends),
                _ => None,
            };
            staged.values.push(values);
        }
        // Each stage, over every endpoint of the group, finds what the one before loaded: the
        // key slots (loaded as each change was decoded) name the nodes, known by id from then.
        for (end, dir, removal) in &mut staged.ends {
            if let End::Key(label, key) = end {
                match t.prefetch_key(*label, key, true) {
                    Some(n) => *end = End::Id(n),
                    None => continue,
                }
            }
            if let End::Id(n) = end {
                t.prefetch_node(*n, *dir, *removal, Ahead::Node);
            }
        }
        for (end, dir, removal) in &staged.ends {
            if let End::Id(n) = end {
                t.prefetch_node(*n, *dir, *removal, Ahead::State);
            }
        }
    }

    /// The values an insert's new row (`removal`: a delete's old row) is applied with, if its
    /// relation is planned already and they decode; with `ends`, its edges' endpoints are
    /// added there, their key slots' loads started.
    fn stage_row(
        &self,
        t: &graph::Txn<'_>,
        index: &RowIndex,
        rel: &Arc<Relation>,
        tuple: &TupleData,
        removal: bool,
        ends: Option<&mut Vec<(End, Direction, bool)>>,
    ) -> Option<Vec<Value>> {
        let plan = self.cached_plan(rel)?;
        let values = rel
            .typed_values(tuple, if removal { "Delete" } else { "Insert" })
            .ok()?;
        let Some(ends) = ends else {
            return Some(values);
        };
        for ep in &plan.edges {
            if removal && index.mode(ep.mapping) == EdgeLookup::Rows {
                // Found by the row's identity: the index holds the edge.
                if let Some(e) = row_key(&plan, &values).ok().and_then(|rk| index.peek(ep.mapping, &rk)) {
                    ends.push((End::Id(e.source), Direction::Out, true));
                    ends.push((End::Id(e.target), Direction::In, true));
                }
                continue;
            }
            for ((label, cols), dir) in [(&ep.source, Direction::Out), (&ep.target, Direction::In)] {
                // The row's own node (a foreign key in a node table) is usually new when its
                // row is inserted: nothing in the base to load.
                let new_own = !removal && plan.node.as_ref().is_some_and(|np| np.key == *cols);
                if new_own
                    || cols
                        .iter()
                        .any(|&c| matches!(values[c], Value::Null | Value::UnchangedToast))
                {
                    continue;
                }
                if let Ok(key) = key_of(&plan, cols, &values) {
                    t.prefetch_key(*label, &key, false);
                    ends.push((End::Key(*label, key), dir, removal));
                }
            }
        }
        Some(values)
    }
}
