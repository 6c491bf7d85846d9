//! The row index: per edge mapping, how the edge a row made is found again when the row is
//! updated or deleted, and for mappings that need it the row identity → edge map. Part of the
//! replica's durable state (written with every checkpoint, see [`crate::checkpoint`]).
//!
//! Not for mapping rows (`crate::mapper`) or files.

use graph::bytes::ByteReader;
use graph::{EdgeInput, EdgeLabel, NodeId, NodeKey};
use std::collections::HashMap;

/// The edge one row made, and how many identical rows (REPLICA IDENTITY FULL) share it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct IndexedEdge {
    pub(crate) edge: EdgeInput,
    /// Identical rows beyond the first that share the edge.
    pub(crate) extra: u32,
}

/// How the mapper finds the edge an edge mapping's row made, when the row is updated or
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeLookup {
    /// Through the [`RowIndex`] (row identity → edge). Works for every table; costs memory and
    /// checkpoint size per edge.
    Rows,
    /// The row identity is exactly the endpoint columns and the label belongs to this mapping
    /// alone: the edge is the one out-edge of the source with this label to the target.
    Endpoints,
    /// A foreign key in a node table whose source is the row's own node, the label belonging to
    /// this mapping alone: the edge is the source's one out-edge with this label.
    OwnNode,
}

impl EdgeLookup {
    pub(crate) fn byte(self) -> u8 {
        match self {
            EdgeLookup::Rows => 0,
            EdgeLookup::Endpoints => 1,
            EdgeLookup::OwnNode => 2,
        }
    }
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => EdgeLookup::Rows,
            1 => EdgeLookup::Endpoints,
            2 => EdgeLookup::OwnNode,
            _ => return None,
        })
    }
}

/// Per edge mapping, how its edges are found, and for [`EdgeLookup::Rows`] mappings the row
/// identity → edge map. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct RowIndex {
    modes: Vec<EdgeLookup>,
    maps: Vec<HashMap<NodeKey, IndexedEdge>>,
    /// Changes since [`RowIndex::start_journal`], for the change log (`None`: not kept).
    journal: Option<Vec<IndexOp>>,
    /// While journaling: each changed entry's value before the change, newest last, so
    /// [`RowIndex::rollback`] can restore the index a failed transaction half changed.
    undo: Vec<Undo>,
}

/// What an entry held before one change.
#[derive(Debug, Clone)]
enum Undo {
    Entry(usize, NodeKey, Option<IndexedEdge>),
    Map(usize, HashMap<NodeKey, IndexedEdge>),
}

impl PartialEq for RowIndex {
    fn eq(&self, other: &Self) -> bool {
        self.modes == other.modes && self.maps == other.maps
    }
}

/// One change of the row index, as the change log keeps it; [`RowIndex::apply_op`] replays it.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    /// A row of edge mapping `mapping` made `edge`.
    Insert {
        /// The edge mapping.
        mapping: u16,
        /// The row's identity.
        row: NodeKey,
        /// The edge.
        edge: EdgeInput,
    },
    /// The row is gone (one of its identical copies, for REPLICA IDENTITY FULL).
    Remove {
        /// The edge mapping.
        mapping: u16,
        /// The row's identity.
        row: NodeKey,
    },
    /// Every row of the mapping is gone (a TRUNCATE).
    Drain {
        /// The edge mapping.
        mapping: u16,
    },
}

impl RowIndex {
    /// Forgets every row of edge mapping `mapping` and returns their edges (a TRUNCATE).
    pub(crate) fn drain_mapping(&mut self, mapping: usize) -> Vec<IndexedEdge> {
        if let Some(j) = self.journal.as_mut() {
            j.push(IndexOp::Drain {
                mapping: mapping as u16,
            });
            let old = self.maps[mapping].clone();
            self.undo.push(Undo::Map(mapping, old));
        }
        self.maps[mapping].drain().map(|(_, e)| e).collect()
    }

    /// Starts keeping every change (dropping what was kept).
    pub fn start_journal(&mut self) {
        self.journal = Some(Vec::new());
        self.undo.clear();
    }

    /// The changes kept since [`RowIndex::start_journal`]; keeps recording.
    pub fn journal(&self) -> &[IndexOp] {
        self.journal.as_deref().unwrap_or(&[])
    }

    /// Takes the kept changes and stops keeping them.
    pub fn take_journal(&mut self) -> Vec<IndexOp> {
        self.undo.clear();
        self.journal.take().unwrap_or_default()
    }

    /// Undoes every change since [`RowIndex::start_journal`] (a transaction that failed half
    /// way) and stops keeping changes.
    pub fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Entry(m, row, Some(e)) => {
                    self.maps[m].insert(row, e);
                }
                Undo::Entry(m, row, None) => {
                    self.maps[m].remove(&row);
                }
                Undo::Map(m, map) => self.maps[m] = map,
            }
        }
        self.journal = None;
    }

    /// Replays one change (from the change log). A mapping this index does not have is an
    /// error naming it.
    pub fn apply_op(&mut self, op: IndexOp) -> Result<(), String> {
        let mapping = match &op {
            IndexOp::Insert { mapping, .. } | IndexOp::Remove { mapping, .. } | IndexOp::Drain { mapping } => {
                usize::from(*mapping)
            }
        };
        if mapping >= self.maps.len() {
            return Err(format!(
                "a row index change names edge mapping {mapping}; the index has {}",
                self.maps.len()
            ));
        }
        match op {
            IndexOp::Insert { row, edge, .. } => self.insert(mapping, row, edge),
            IndexOp::Remove { row, .. } => {
                self.remove(mapping, &row);
            }
            IndexOp::Drain { .. } => {
                self.drain_mapping(mapping);
            }
        }
        Ok(())
    }
}

pub(crate) const INDEX_MAGIC: &[u8; 8] = b"GSROWIX2";

impl RowIndex {
    /// An index for edge mappings looked up as `modes` say.
    pub fn new(modes: Vec<EdgeLookup>) -> Self {
        RowIndex {
            maps: vec![HashMap::new(); modes.len()],
            modes,
            journal: None,
            undo: Vec::new(),
        }
    }

    /// This index for a mapping with more edge mappings (appended): `empty`'s modes, the rows
    /// kept for the mappings both have.
    pub fn extended(mut self, empty: RowIndex) -> RowIndex {
        let mut maps = std::mem::take(&mut self.maps);
        maps.resize_with(empty.modes.len(), HashMap::new);
        RowIndex {
            modes: empty.modes,
            maps,
            journal: None,
            undo: Vec::new(),
        }
    }

    /// Edge mappings the index has.
    pub fn len_mappings(&self) -> usize {
        self.modes.len()
    }

    /// How mapping `i`'s edges are found.
    pub fn mode(&self, i: usize) -> EdgeLookup {
        self.modes.get(i).copied().unwrap_or(EdgeLookup::Rows)
    }

    /// Rows indexed, over all mappings.
    pub fn len(&self) -> usize {
        self.maps
            .iter()
            .map(|m| m.values().map(|e| 1 + e.extra as usize).sum::<usize>())
            .sum()
    }

    /// Whether no row is indexed.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(HashMap::is_empty)
    }

    pub(crate) fn insert(&mut self, mapping: usize, row: NodeKey, edge: EdgeInput) {
        if let Some(j) = self.journal.as_mut() {
            j.push(IndexOp::Insert {
                mapping: mapping as u16,
                row: row.clone(),
                edge,
            });
            let old = self.maps[mapping].get(&row).copied();
            self.undo.push(Undo::Entry(mapping, row.clone(), old));
        }
        match self.maps[mapping].entry(row) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().edge == edge {
                    o.get_mut().extra += 1;
                } else {
                    o.insert(IndexedEdge { edge, extra: 0 });
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(IndexedEdge { edge, extra: 0 });
            }
        }
    }

    /// The edge the row `row` of `mapping` made, without removing it (nothing journaled).
    pub(crate) fn peek(&self, mapping: usize, row: &NodeKey) -> Option<EdgeInput> {
        self.maps.get(mapping)?.get(row).map(|e| e.edge)
    }

    pub(crate) fn remove(&mut self, mapping: usize, row: &NodeKey) -> Option<EdgeInput> {
        let e = self.maps[mapping].get_mut(row)?;
        if let Some(j) = self.journal.as_mut() {
            j.push(IndexOp::Remove {
                mapping: mapping as u16,
                row: row.clone(),
            });
            self.undo.push(Undo::Entry(mapping, row.clone(), Some(*e)));
        }
        if e.extra > 0 {
            e.extra -= 1;
            return Some(e.edge);
        }
        self.maps[mapping].remove(row).map(|e| e.edge)
    }

    /// Serialises the index (with a checksum) for a checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.len() * 40);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&(self.maps.len() as u32).to_le_bytes());
        for (i, m) in self.maps.iter().enumerate() {
            out.push(self.mode(i).byte());
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            for (k, e) in m {
                k.encode(&mut out);
                out.extend_from_slice(&e.edge.source.0.to_le_bytes());
                out.extend_from_slice(&e.edge.target.0.to_le_bytes());
                out.push(e.edge.label.0);
                out.extend_from_slice(&e.edge.weight.to_le_bytes());
                out.extend_from_slice(&e.extra.to_le_bytes());
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads an index written by [`RowIndex::encode`]; every length and the checksum are
    /// checked.
    pub fn decode(bytes: &[u8]) -> Result<RowIndex, String> {
        if bytes.len() < 20 || &bytes[..8] != INDEX_MAGIC {
            return Err("not a row index file (bad magic or too short)".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum.try_into().map_err(|_| "short")?) {
            return Err("row index checksum mismatch (the file is corrupt)".into());
        }
        let corrupt = |e: graph::bytes::Corrupt| format!("row index: {e}");
        let mut r = ByteReader::new(body);
        r.skip(8, "magic").map_err(corrupt)?;
        let n = r.u32("mapping count").map_err(corrupt)? as usize;
        let mut maps = Vec::with_capacity(n.min(1 << 16));
        let mut modes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let mode = r.u8("lookup mode").map_err(corrupt)?;
            modes.push(EdgeLookup::from_byte(mode).ok_or_else(|| corrupt(r.corrupt("an unknown lookup mode")))?);
            let count = r.u64("row count").map_err(corrupt)?;
            if count > r.remaining() as u64 {
                return Err(corrupt(r.corrupt("a row count larger than the file")));
            }
            let mut m = HashMap::with_capacity(count as usize);
            for _ in 0..count {
                let (k, used) = NodeKey::decode(r.rest()).map_err(|e| {
                    corrupt(graph::bytes::Corrupt {
                        what: e.what,
                        offset: r.offset() + e.offset,
                    })
                })?;
                r.skip(used, "row key").map_err(corrupt)?;
                let source = NodeId(r.u32("edge source").map_err(corrupt)?);
                let target = NodeId(r.u32("edge target").map_err(corrupt)?);
                let label = EdgeLabel(r.u8("edge label").map_err(corrupt)?);
                let weight = r.f64("edge weight").map_err(corrupt)?;
                let extra = r.u32("duplicate count").map_err(corrupt)?;
                m.insert(
                    k,
                    IndexedEdge {
                        edge: EdgeInput {
                            source,
                            target,
                            label,
                            weight,
                        },
                        extra,
                    },
                );
            }
            maps.push(m);
        }
        if r.remaining() != 0 {
            return Err(corrupt(r.corrupt("trailing bytes")));
        }
        Ok(RowIndex {
            modes,
            maps,
            journal: None,
            undo: Vec::new(),
        })
    }
}

impl RowIndex {
    /// Whether edges of `mapping` are kept by row identity (found by row on delete).
    pub(crate) fn keeps_rows(&self, mapping: usize) -> bool {
        self.mode(mapping) == EdgeLookup::Rows
    }

    /// Remembers the edge a row made (only [`EdgeLookup::Rows`] mappings keep anything).
    pub(crate) fn record(&mut self, mapping: usize, row: &NodeKey, edge: EdgeInput) {
        if self.keeps_rows(mapping) {
            self.insert(mapping, row.clone(), edge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::{EdgeLabel, NodeId};
    use proptest::prelude::*;

    fn edge(s: u32, t: u32) -> EdgeInput {
        EdgeInput {
            source: NodeId(s),
            target: NodeId(t),
            label: EdgeLabel(0),
            weight: 1.0,
        }
    }

    /// (op kind, mapping, row, edge target): insert, remove or drain.
    fn apply(ix: &mut RowIndex, ops: &[(u8, usize, i64, u32)]) {
        for &(kind, m, row, t) in ops {
            match kind % 5 {
                0 | 1 => ix.insert(m, NodeKey::Int(row), edge(row as u32, t % 2)),
                2 | 3 => {
                    ix.remove(m, &NodeKey::Int(row));
                }
                _ => {
                    ix.drain_mapping(m);
                }
            }
        }
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, usize, i64, u32)>> {
        proptest::collection::vec((any::<u8>(), 0..2usize, 0..6i64, 0..4u32), 0..40)
    }

    proptest! {
        /// A rolled-back transaction leaves the index exactly as it was; a committed one is
        /// what its journal replays to.
        #[test]
        fn rollback_restores_and_the_journal_replays(before in ops(), during in ops()) {
            let mut ix = RowIndex::new(vec![EdgeLookup::Rows; 2]);
            apply(&mut ix, &before);
            let saved = ix.clone();
            ix.start_journal();
            apply(&mut ix, &during);
            let after = ix.clone();
            ix.rollback();
            prop_assert_eq!(&ix, &saved);
            ix.start_journal();
            apply(&mut ix, &during);
            let journal = ix.take_journal();
            prop_assert_eq!(&ix, &after);
            let mut replayed = saved.clone();
            for op in journal {
                replayed.apply_op(op).unwrap();
            }
            prop_assert_eq!(&replayed, &after);
        }
    }
}
