//! The bulk build's node ids by (label, key). Integer keys (most primary keys) live in an
//! open-addressing table with the key inline, one 16-byte slot per node: finding one reads a
//! single cache line, which the copy's loading thread requests rows ahead
//! ([`IdTable::prefetch`]). In a hash map of (label, key) pairs, the lookups of a large copy
//! were a third of its CPU, nearly all of it cache misses. Other keys stay in such a map.
//!
//! Not for the graph's own key index (`graph::nodes`, which snapshots store).

use graph::{NodeKey, NodeLabel};

/// A free slot's id.
const EMPTY: u32 = u32::MAX;
/// Slots when the first key arrives.
const FIRST: usize = 1 << 12;

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    key: i64,
    id: u32,
    label: u16,
}

const FREE: Slot = Slot {
    key: 0,
    id: EMPTY,
    label: 0,
};

/// Node ids by (label, key).
#[derive(Default)]
pub(super) struct IdTable {
    /// Integer keys, linear probing; a power of two long (or empty).
    slots: Vec<Slot>,
    ints: usize,
    /// Every other key.
    other: foldhash::HashMap<(NodeLabel, NodeKey), u32>,
}

impl std::fmt::Debug for IdTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTable")
            .field("ints", &self.ints)
            .field("other", &self.other.len())
            .finish_non_exhaustive()
    }
}

impl IdTable {
    /// The first slot to probe for (label, key): the high bits of one multiplication.
    #[inline]
    fn home(&self, label: NodeLabel, key: i64) -> usize {
        let h = (key as u64 ^ (u64::from(label.0) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    /// The id of (label, key), if it has one.
    #[inline]
    pub(super) fn get(&self, label: NodeLabel, key: &NodeKey) -> Option<u32> {
        let NodeKey::Int(k) = *key else {
            return self.other.get(&(label, key.clone())).copied();
        };
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(label, k);
        loop {
            let s = self.slots[i];
            if s.id == EMPTY {
                return None;
            }
            if s.key == k && s.label == label.0 {
                return Some(s.id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Gives (label, key), which has no id yet, the id `id`.
    pub(super) fn insert(&mut self, label: NodeLabel, key: &NodeKey, id: u32) {
        let NodeKey::Int(k) = *key else {
            self.other.insert((label, key.clone()), id);
            return;
        };
        // Grown past seven tenths full: probes stay short.
        if (self.ints + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        self.place(Slot {
            key: k,
            id,
            label: label.0,
        });
        self.ints += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(NodeLabel(slot.label), slot.key);
        while self.slots[i].id != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(FIRST);
        let old = std::mem::replace(&mut self.slots, vec![FREE; len]);
        for s in old.into_iter().filter(|s| s.id != EMPTY) {
            self.place(s);
        }
    }

    /// Starts loading the slot where (label, integer key)'s search begins, so that a lookup a
    /// few rows later finds it in cache.
    #[inline]
    pub(super) fn prefetch(&self, label: NodeLabel, key: i64) {
        if !self.slots.is_empty() {
            graph::query::prefetch_ptr(&self.slots[self.home(label, key)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The table answers as a plain map does, for integer keys (colliding ones included:
        /// few distinct values, several labels) and others, across growth.
        #[test]
        fn answers_as_a_map(ops in proptest::collection::vec(
            (0u16..3, prop_oneof![-50i64..50, any::<i64>()], any::<bool>(), any::<bool>()),
            0..8_000,
        )) {
            let mut t = IdTable::default();
            let mut want: HashMap<(NodeLabel, NodeKey), u32> = HashMap::new();
            for (label, k, text, look) in ops {
                let label = NodeLabel(label);
                let key = if text { NodeKey::Text(k.to_string().into()) } else { NodeKey::Int(k) };
                let got = t.get(label, &key);
                prop_assert_eq!(got, want.get(&(label, key.clone())).copied());
                if !look && got.is_none() {
                    let id = want.len() as u32;
                    t.insert(label, &key, id);
                    want.insert((label, key), id);
                }
            }
            for ((label, key), id) in &want {
                if let NodeKey::Int(k) = key {
                    t.prefetch(*label, *k);
                }
                prop_assert_eq!(t.get(*label, key), Some(*id));
            }
        }
    }
}
