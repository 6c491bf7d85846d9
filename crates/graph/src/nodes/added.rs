//! Node data changed since the base, per view, and the key index of nodes added since.
//!
//! A changed node's data is a [`Slot`]. A node known only by its label and key (a placeholder
//! for an edge endpoint not seen yet, or a row with no tenant, filters or properties) is held
//! inline in 32 bytes with no allocation; other nodes share an `Arc<NodeData>`. The first
//! data of nodes added since the base sit in a persistent vector (dense ids from the base's
//! length on), so adding one appends instead of copying a path; data set later is kept in the
//! node's overlay versions (`view::table`).
//!
//! [`AddedKeys`] resolves the keys of added nodes: 8 bytes per entry (32 bits of the label and
//! key's hash, the one the base's index uses, and the node id), shared by every view of one base and only ever appended
//! to. A view sees only the nodes it holds data for, so every hit is checked against the
//! view's own data.
//!
//! Not for: the base's columns (`base`), tenants and filters (`mod`).

use super::{NodeData, NodeKey, NodeLabel};
use std::sync::Arc;

/// What a view holds of a changed node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Slot {
    /// No data (cleared, or an id below one that was given data).
    Gone,
    /// Label and key only: no tenant, filters or properties.
    Bare(NodeLabel, NodeKey),
    /// Anything else.
    Full(Arc<NodeData>),
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 32);

impl Slot {
    pub(crate) fn of(data: Option<Arc<NodeData>>) -> Slot {
        match data {
            None => Slot::Gone,
            Some(d) if d.tenant.is_none() && d.filters.is_empty() && d.properties.is_empty() => {
                Slot::Bare(d.label, d.key.clone())
            }
            Some(d) => Slot::Full(d),
        }
    }

    pub(crate) fn data(&self) -> Option<Arc<NodeData>> {
        match self {
            Slot::Gone => None,
            Slot::Bare(label, key) => Some(Arc::new(NodeData::bare(*label, key.clone()))),
            Slot::Full(d) => Some(d.clone()),
        }
    }

    pub(crate) fn label_key(&self) -> Option<(NodeLabel, &NodeKey)> {
        match self {
            Slot::Gone => None,
            Slot::Bare(label, key) => Some((*label, key)),
            Slot::Full(d) => Some((d.label, &d.key)),
        }
    }

    pub(crate) fn tenant(&self) -> Option<&NodeKey> {
        match self {
            Slot::Full(d) => d.tenant.as_ref(),
            _ => None,
        }
    }
}

/// The first data of each node added since the base, in a persistent vector (dense ids from
/// the base's length on), so adding a node appends instead of copying a path. Data set on a
/// node after its first is the view's (`Overrides`), not kept here.
#[derive(Debug, Clone, Default)]
pub(super) struct Changed {
    added: imbl::Vector<Slot>,
}

impl Changed {
    /// `n`'s first data if it was added since a base of `base_len` nodes and given any.
    pub(super) fn get(&self, base_len: u32, n: u32) -> Option<&Slot> {
        n.checked_sub(base_len).and_then(|i| self.added.get(i as usize))
    }

    /// Keeps `slot` as `n`'s first data if `n` was added since the base and has none yet
    /// (ids skipped on the way hold none); else hands it back.
    pub(super) fn push_first(&mut self, base_len: u32, n: u32, slot: Slot) -> Result<(), Slot> {
        let Some(i) = n.checked_sub(base_len).map(|i| i as usize) else {
            return Err(slot);
        };
        if i < self.added.len() {
            return Err(slot);
        }
        while self.added.len() < i {
            self.added.push_back(Slot::Gone);
        }
        self.added.push_back(slot);
        Ok(())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty()
    }

    /// The first data of the added nodes, in id order from the base's length.
    pub(super) fn added(&self) -> impl Iterator<Item = &Slot> {
        self.added.iter()
    }
}

/// Tables the key index is split into, by the top bits of the kept hash. Each grows on its
/// own, so a growth rehashes 1/256 of the entries: in a loop of 2.5 M inserts the slowest took
/// 35–38 ms in one table (a doubling, holding the writer and readers resolving keys; 73 ms
/// in the e2e bench), 0.23 ms in 256, for 2–4 % more in all.
const SHARDS: usize = 256;

/// The key index of nodes added since the base: (label, key) → the nodes that ever held it.
pub(super) struct AddedKeys {
    /// Per shard: (the high half of the key's hash, node id).
    shards: Box<[hashbrown::HashTable<(u32, u32)>]>,
}

impl Default for AddedKeys {
    fn default() -> Self {
        AddedKeys {
            shards: (0..SHARDS).map(|_| hashbrown::HashTable::new()).collect(),
        }
    }
}

impl std::fmt::Debug for AddedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddedKeys").field("entries", &self.len()).finish()
    }
}

/// The table's hash of an entry, from the 32 bits it keeps (spread over 64 for the bucket
/// index and the control byte alike).
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The shard of a kept hash.
fn shard(h: u32) -> usize {
    (h >> 24) as usize % SHARDS
}

impl AddedKeys {
    /// The node that ever held the label and key of hash `hash` and for which `holds` says it
    /// still does.
    pub(super) fn find(&self, hash: u64, holds: impl Fn(u32) -> bool) -> Option<u32> {
        let h = (hash >> 32) as u32;
        self.shards[shard(h)]
            .find(spread(h), |&(eh, n)| eh == h && holds(n))
            .map(|&(_, n)| n)
    }

    /// Records that node `n` holds the label and key of hash `hash` (once per pair).
    pub(super) fn insert(&mut self, hash: u64, n: u32) {
        let h = (hash >> 32) as u32;
        let table = &mut self.shards[shard(h)];
        if table.find(spread(h), |&e| e == (h, n)).is_none() {
            table.insert_unique(spread(h), (h, n), |&(eh, _)| spread(eh));
        }
    }

    /// Entries (node, key) recorded.
    fn len(&self) -> usize {
        self.shards.iter().map(hashbrown::HashTable::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_to_the_node_that_holds_them() {
        let mut keys = AddedKeys::default();
        // Hashes of three keys; the third collides with the first in the bits kept.
        let (a, b, c) = (0x1111_0000_0000_0007, 0x2222_0000_0000_0008, 0x1111_0000_0000_0009);
        keys.insert(a, 10);
        keys.insert(a, 10);
        keys.insert(b, 12);
        keys.insert(c, 11);
        // Node 10 gave up key a, node 13 took it.
        keys.insert(a, 13);
        assert_eq!(keys.len(), 4);
        assert_eq!(keys.find(a, |n| n == 13), Some(13));
        assert_eq!(keys.find(a, |n| n == 10), Some(10));
        // What holds a key is the caller's to say: a colliding hash finds both.
        assert_eq!(keys.find(c, |n| n == 11), Some(11));
        assert_eq!(keys.find(b, |_| true), Some(12));
        assert_eq!(keys.find(0x3333_0000_0000_0000, |_| true), None);
    }

    #[test]
    fn bare_nodes_are_held_inline() {
        let bare = Arc::new(NodeData::bare(NodeLabel(3), NodeKey::Int(5)));
        let slot = Slot::of(Some(bare.clone()));
        assert_eq!(slot, Slot::Bare(NodeLabel(3), NodeKey::Int(5)));
        assert_eq!(slot.data().as_deref(), Some(&*bare));
        let mut full = NodeData::bare(NodeLabel(3), NodeKey::Int(5));
        full.tenant = Some(NodeKey::Int(1));
        assert!(matches!(Slot::of(Some(Arc::new(full))), Slot::Full(_)));
        assert_eq!(Slot::of(None), Slot::Gone);
    }
}
