//! The overlay tree: which node ids changed since the base, and where their changes live.
//!
//! A two-level radix tree of copy-on-write nodes: the top array holds one [`Group`] per
//! 16,384 node ids; a group holds 256 [`Chunk`]s of 64 ids and dense "has overlay edges" /
//! "data changed" bits for its nodes; a chunk holds tombstones, restorations and one pointer
//! per node to its [`NodeDeltas`] entry. A transaction clones the top array and only the
//! groups, chunks and entries it touches, so its cost does not grow with the overlay.
//!
//! Not for: the edges themselves (see `delta`), or deciding what a mutation means (`txn`).

use super::delta::NodeDeltas;
use crate::query::Direction;
use std::sync::Arc;

pub(super) const CHUNK_SHIFT: u32 = 6;
pub(super) const CHUNK_NODES: usize = 1 << CHUNK_SHIFT;
const CHUNK_WORDS: usize = CHUNK_NODES / 64;
pub(super) const GROUP_SHIFT: u32 = 14;
pub(super) const GROUP_NODES: usize = 1 << GROUP_SHIFT;
pub(super) const GROUP_CHUNKS: usize = GROUP_NODES / CHUNK_NODES;

/// 256 chunks, and which of their nodes have overlay edges at all (kept here, densely, so a
/// traversal learns "nothing changed at this node" from one load in a small, hot array).
/// Cloned on write like the chunks themselves.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub(super) chunks: [Option<Arc<Chunk>>; GROUP_CHUNKS],
    /// Nodes with overlay edges, per direction (`[outgoing, incoming]`), so a traversal in one
    /// direction takes the slow path only for nodes changed in that direction.
    pub(super) dirty: [[u64; GROUP_NODES / 64]; 2],
    /// Nodes whose data (label, key, tenant, properties) changed since the base.
    pub(super) changed: [u64; GROUP_NODES / 64],
}

impl Default for Group {
    fn default() -> Self {
        Group {
            chunks: std::array::from_fn(|_| None),
            dirty: [[0; GROUP_NODES / 64]; 2],
            changed: [0; GROUP_NODES / 64],
        }
    }
}

/// The top level of the overlay tree.
pub(super) type Groups = Vec<Option<Arc<Group>>>;

/// Whether node `n`'s data changed since the base.
#[inline]
pub(super) fn is_changed(groups: &Groups, n: u32) -> bool {
    match groups.get((n >> GROUP_SHIFT) as usize).and_then(|g| g.as_deref()) {
        None => false,
        Some(g) => {
            let i = n as usize & (GROUP_NODES - 1);
            g.changed[i >> 6] & (1 << (i & 63)) != 0
        }
    }
}

/// Whether node `n` has overlay edges in `dir` (either direction for `Both`).
#[inline]
pub(super) fn is_dirty(groups: &Groups, n: u32, dir: Direction) -> bool {
    match groups.get((n >> GROUP_SHIFT) as usize).and_then(|g| g.as_deref()) {
        None => false,
        Some(g) => {
            let i = n as usize & (GROUP_NODES - 1);
            let (w, b) = (i >> 6, 1u64 << (i & 63));
            match dir {
                Direction::Out => g.dirty[0][w] & b != 0,
                Direction::In => g.dirty[1][w] & b != 0,
                Direction::Both => (g.dirty[0][w] | g.dirty[1][w]) & b != 0,
            }
        }
    }
}

#[inline]
pub(super) fn lookup(groups: &Groups, n: u32) -> Option<&Chunk> {
    let g = groups.get((n >> GROUP_SHIFT) as usize)?.as_deref()?;
    g.chunks[(n >> CHUNK_SHIFT) as usize & (GROUP_CHUNKS - 1)].as_deref()
}

/// Which nodes exist: ids below `node_count`, minus those deleted at the last compaction (a
/// dense bitset, one load per check) unless restored since, minus those deleted since. The
/// overlay tree is consulted only when it holds deletions or restorations at all, so a
/// traversal of a graph without recent deletions pays one bit load per edge.
pub(super) struct Liveness<'a> {
    pub(super) node_count: u32,
    pub(super) base_deleted: Option<&'a [u64]>,
    pub(super) deleted: usize,
    pub(super) restored: usize,
    pub(super) groups: &'a Groups,
}

impl Liveness<'_> {
    #[inline]
    pub(super) fn is_live(&self, n: u32) -> bool {
        if n >= self.node_count {
            return false;
        }
        if let Some(b) = self.base_deleted {
            let w = b.get((n >> 6) as usize).copied().unwrap_or(0);
            if w & (1 << (n & 63)) != 0
                && (self.restored == 0 || !lookup(self.groups, n).is_some_and(|c| bit(&c.restored, n)))
            {
                return false;
            }
        }
        self.deleted == 0 || !lookup(self.groups, n).is_some_and(|c| bit(&c.tombstones, n))
    }
}

/// Overlay state of 64 consecutive node ids.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    /// Deleted nodes.
    pub(super) tombstones: [u64; CHUNK_WORDS],
    /// Nodes deleted in the base's dense bitset and restored since.
    pub(super) restored: [u64; CHUNK_WORDS],
    /// Overlay edges of each node, if it has any: one load from the chunk to the entry (no
    /// hashing, no second indirection on the traversal path). Each entry is shared between
    /// views until written: a transaction that touches one node clones that node's entry (a
    /// few words: long edge lists live in shared append-only buffers) and this chunk's 64
    /// pointers, not the other nodes' entries.
    pub(super) deltas: [Option<Arc<NodeDeltas>>; CHUNK_NODES],
}

impl Default for Chunk {
    fn default() -> Self {
        Chunk {
            tombstones: [0; CHUNK_WORDS],
            restored: [0; CHUNK_WORDS],
            deltas: std::array::from_fn(|_| None),
        }
    }
}

impl Chunk {
    #[inline]
    pub(super) fn entry(&self, n: u32) -> Option<&Arc<NodeDeltas>> {
        self.deltas[n as usize & (CHUNK_NODES - 1)].as_ref()
    }

    #[inline]
    pub(super) fn entry_mut(&mut self, n: u32) -> &mut NodeDeltas {
        let d = self.deltas[n as usize & (CHUNK_NODES - 1)].get_or_insert_with(Default::default);
        Arc::make_mut(d)
    }
}

#[inline]
pub(super) fn bit(words: &[u64; CHUNK_WORDS], n: u32) -> bool {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] & (1 << (i & 63)) != 0
}

#[inline]
pub(super) fn clear_bit(words: &mut [u64; CHUNK_WORDS], n: u32) {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] &= !(1 << (i & 63));
}

#[inline]
pub(super) fn set_bit(words: &mut [u64; CHUNK_WORDS], n: u32) {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] |= 1 << (i & 63);
}
