//! The private copies of node states a transaction being built has touched, by node id.
//!
//! Up to [`LINEAR`] touched nodes (most transactions) they are found by a scan, with no
//! index to allocate; then by a hash map; past [`DENSE_AFTER`] touched nodes (and a
//! sixty-fourth of the graph) by a dense index by node id: a restart's replay runs
//! transactions of millions of mutations that touch most of the graph, where every map lookup
//! missed the cache; the dense index's entry, then the state it names, can be prefetched a
//! few mutations ahead.
//!
//! Not for: what a state holds (`table`), or what a mutation does to it (`txn`).

use super::super::table::NodeState;
use super::super::IdMap;

/// Touched nodes found by a scan, before a map is built.
const LINEAR: usize = 16;
/// Touched nodes before the dense index is considered.
const DENSE_AFTER: usize = 4096;

/// A node's state as this transaction leaves it, and which marks it needs.
pub(in crate::view) struct Pending {
    pub(in crate::view) state: NodeState,
    pub(in crate::view) marks: u8,
}

/// Touched nodes' states, in the order first touched.
pub(in crate::view) struct Touched {
    states: Vec<(u32, Pending)>,
    /// Node id → position in `states`, while sparse (empty up to [`LINEAR`] states).
    map: IdMap<u32, u32>,
    /// Node id → position in `states` + 1 (0: untouched), once dense; empty before.
    dense: Vec<u32>,
}

impl Default for Touched {
    fn default() -> Self {
        Touched {
            // Most transactions touch a few nodes: room for them up front (no regrowth).
            states: Vec::with_capacity(LINEAR),
            map: IdMap::default(),
            dense: Vec::new(),
        }
    }
}

impl Touched {
    #[inline]
    fn position(&self, n: u32) -> Option<usize> {
        if self.states.len() <= LINEAR {
            self.states.iter().position(|&(m, _)| m == n)
        } else if self.dense.is_empty() {
            self.map.get(&n).map(|&i| i as usize)
        } else {
            match self.dense.get(n as usize) {
                Some(&i) if i > 0 => Some(i as usize - 1),
                _ => None,
            }
        }
    }

    #[inline]
    pub(in crate::view) fn get(&self, n: u32) -> Option<&Pending> {
        self.position(n).map(|i| &self.states[i].1)
    }

    /// `n`'s entry, made by `make` if `n` was not touched yet. `node_count`: the graph's node
    /// ids so far (sizes the dense index).
    #[inline]
    pub(in crate::view) fn get_or_insert_with(
        &mut self,
        n: u32,
        node_count: u32,
        make: impl FnOnce() -> Pending,
    ) -> &mut Pending {
        let i = match self.position(n) {
            Some(i) => i,
            None => {
                let i = self.states.len();
                self.states.push((n, make()));
                self.index(n, i, node_count);
                i
            }
        };
        &mut self.states[i].1
    }

    fn index(&mut self, n: u32, i: usize, node_count: u32) {
        if self.states.len() <= LINEAR {
            return;
        }
        if self.dense.is_empty() {
            if self.map.is_empty() {
                // Past the scan: every state so far (this one included) goes in the map.
                self.map
                    .extend(self.states.iter().enumerate().map(|(j, (m, _))| (*m, j as u32)));
            } else {
                self.map.insert(n, i as u32);
            }
            if self.states.len() > DENSE_AFTER && self.states.len() > node_count as usize / 64 {
                self.dense = vec![0; node_count.max(n + 1) as usize];
                for (j, (m, _)) in self.states.iter().enumerate() {
                    self.dense[*m as usize] = j as u32 + 1;
                }
                self.map = IdMap::default();
            }
        } else {
            if n as usize >= self.dense.len() {
                self.dense.resize(node_count.max(n + 1) as usize, 0);
            }
            self.dense[n as usize] = i as u32 + 1;
        }
    }

    /// Starts loading `n`'s entry in the dense index (first stage), or with `near` the state
    /// it names (second stage, once the entry is in cache): `true` if `n` is touched and its
    /// state is being loaded. Nothing (and `false`) while sparse.
    #[inline]
    pub(in crate::view) fn prefetch(&self, n: u32, near: bool) -> bool {
        let Some(&i) = self.dense.get(n as usize) else {
            return false;
        };
        if !near {
            crate::query::prefetch_ptr(&self.dense[n as usize]);
            return false;
        }
        match self.states.get((i as usize).wrapping_sub(1)) {
            Some(s) => {
                crate::query::prefetch_ptr(s);
                true
            }
            None => false,
        }
    }

    /// Every touched node's state, in the order first touched.
    pub(in crate::view) fn into_states(self) -> Vec<(u32, Pending)> {
        self.states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sparse and dense answer alike, across the switch and for ids added after it.
    #[test]
    fn sparse_and_dense_agree() {
        let mut t = Touched::default();
        let node_count = 10_000;
        let ids: Vec<u32> = (0..6_000u32).map(|i| (i * 7_919) % node_count).collect();
        for (k, &n) in ids.iter().enumerate() {
            let p = t.get_or_insert_with(n, node_count, || Pending {
                state: NodeState::default(),
                marks: 0,
            });
            p.marks |= (k % 7) as u8;
        }
        assert!(!t.dense.is_empty(), "past the threshold the index is dense");
        // An id past the node count the index was sized for (a node this transaction added).
        t.get_or_insert_with(node_count + 5, node_count + 6, || Pending {
            state: NodeState::default(),
            marks: 9,
        });
        let mut want = std::collections::BTreeMap::new();
        for (k, &n) in ids.iter().enumerate() {
            *want.entry(n).or_insert(0u8) |= (k % 7) as u8;
        }
        want.insert(node_count + 5, 9);
        for n in 0..node_count + 10 {
            assert_eq!(t.get(n).map(|p| p.marks), want.get(&n).copied(), "node {n}");
            t.prefetch(n, false);
            t.prefetch(n, true);
        }
        let got: Vec<u32> = t.into_states().into_iter().map(|(n, _)| n).collect();
        assert_eq!(got.len(), want.len());
    }
}
