//! The immutable base graph: compressed sparse rows, forward and reverse.
//!
//! Each direction is `offsets` (one `u32` per node, plus one) and, per edge, the other endpoint
//! (`u32`) and the edge label (`u8`): 5 bytes per edge and direction, 10 for both, plus 8 more
//! per edge and direction when the graph is weighted. Built in O(V + E) by a counting sort that
//! keeps, per node, the order edges were given in.

use crate::{EdgeLabel, NodeId};
use std::sync::Arc;

/// An array owned in memory or borrowed from a memory-mapped snapshot, read as a slice.
pub(crate) enum Buf<T: 'static> {
    Owned(Vec<T>),
    Mapped {
        /// Keeps the mapping alive (and so `ptr` valid) for as long as this buffer exists.
        _map: Arc<memmap2::Mmap>,
        ptr: *const T,
        len: usize,
    },
}

// SAFETY: a `Mapped` buffer points into a read-only mapping that nothing writes and that its
// `Arc` keeps alive; sharing or sending it across threads is as safe as for `&[T]`.
unsafe impl<T: Sync> Send for Buf<T> {}
// SAFETY: see `Send`.
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T> Buf<T> {
    /// Borrows `len` elements at `ptr` inside `map`.
    ///
    /// # Safety
    /// `ptr` must be aligned for `T`, and `ptr..ptr + len` must lie inside `map` and hold valid
    /// `T`s (checked by the snapshot loader before calling).
    pub(crate) unsafe fn mapped(map: Arc<memmap2::Mmap>, ptr: *const T, len: usize) -> Self {
        Buf::Mapped { _map: map, ptr, len }
    }

    /// Whether the data lives in a mapped file.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, Buf::Mapped { .. })
    }

    /// Heap bytes owned (0 for mapped data).
    fn heap_bytes(&self) -> usize {
        match self {
            Buf::Owned(v) => v.capacity() * std::mem::size_of::<T>(),
            Buf::Mapped { .. } => 0,
        }
    }
}

impl<T> std::ops::Deref for Buf<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            // SAFETY: established by `Buf::mapped`'s contract; the mapping outlives `self`.
            Buf::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T: Clone> Clone for Buf<T> {
    fn clone(&self) -> Self {
        match self {
            Buf::Owned(v) => Buf::Owned(v.clone()),
            Buf::Mapped { _map, ptr, len } => Buf::Mapped {
                _map: _map.clone(),
                ptr: *ptr,
                len: *len,
            },
        }
    }
}

impl<T: PartialEq> PartialEq for Buf<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T> Default for Buf<T> {
    fn default() -> Self {
        Buf::Owned(Vec::new())
    }
}

impl<T> std::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{} elements{}]",
            self.len(),
            if self.is_mapped() { ", mapped" } else { "" }
        )
    }
}

/// One edge of a bulk build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeInput {
    /// Source node.
    pub source: NodeId,
    /// Target node.
    pub target: NodeId,
    /// Edge label.
    pub label: EdgeLabel,
    /// Weight, for weighted path queries (1.0 when the edge table has none).
    pub weight: f64,
}

/// Why a CSR cannot be built or is not internally consistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// An edge names a node outside `0..node_count`.
    #[error("edge {index} refers to node {node}, but the graph has {node_count} nodes")]
    NodeOutOfRange {
        /// Edge position.
        index: usize,
        /// Offending node id.
        node: u32,
        /// Number of nodes.
        node_count: u32,
    },
    /// More edges than a `u32` offset can address.
    #[error("{0} edges exceed the CSR limit of 2^32 - 1")]
    TooManyEdges(usize),
    /// The arrays do not form a valid CSR (checked before trusting loaded data).
    #[error("invalid CSR: {0}")]
    Invalid(String),
}

/// One direction of adjacency.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adjacency {
    pub(crate) offsets: Buf<u32>,
    pub(crate) nodes: Buf<u32>,
    pub(crate) labels: Buf<EdgeLabel>,
    pub(crate) weights: Option<Buf<f64>>,
}

impl Adjacency {
    /// Edges of `n`: other endpoints, labels, and weights when the graph is weighted.
    #[inline]
    pub fn edges(&self, n: NodeId) -> (&[u32], &[EdgeLabel], Option<&[f64]>) {
        let (a, b) = (self.offsets[n.index()] as usize, self.offsets[n.index() + 1] as usize);
        (
            &self.nodes[a..b],
            &self.labels[a..b],
            self.weights.as_ref().map(|w| &w[a..b]),
        )
    }

    /// Other endpoints of `n`'s edges.
    #[inline]
    pub fn targets(&self, n: NodeId) -> &[u32] {
        &self.nodes[self.range(n)]
    }

    /// Address of edge slot `i`, for prefetching (never dereferenced here).
    #[inline]
    pub(crate) fn targets_ptr(&self, i: usize) -> *const u32 {
        self.nodes.as_ptr().wrapping_add(i)
    }

    /// Starts loading the start of `n`'s row: endpoints, and with `all` labels and weights
    /// too (a removal reads them where the endpoint matches). `n`'s offsets must be cached
    /// already (they are read).
    #[inline]
    pub(crate) fn prefetch_row(&self, n: NodeId, all: bool) {
        let a = self.offsets[n.index()] as usize;
        crate::query::prefetch_ptr(self.nodes.as_ptr().wrapping_add(a));
        if all {
            crate::query::prefetch_ptr(self.labels.as_ptr().wrapping_add(a));
            if let Some(w) = &self.weights {
                crate::query::prefetch_ptr(w.as_ptr().wrapping_add(a));
            }
        }
    }

    /// Address of `n`'s offset, for prefetching (never dereferenced here).
    #[inline]
    pub(crate) fn offsets_ptr(&self, n: NodeId) -> *const u32 {
        self.offsets.as_ptr().wrapping_add(n.index())
    }

    /// Number of edges of `n` in this direction.
    #[inline]
    pub fn degree(&self, n: NodeId) -> usize {
        (self.offsets[n.index() + 1] - self.offsets[n.index()]) as usize
    }

    /// Range of `n`'s edges in the edge arrays.
    #[inline]
    pub fn range(&self, n: NodeId) -> std::ops::Range<usize> {
        self.offsets[n.index()] as usize..self.offsets[n.index() + 1] as usize
    }

    fn build(node_count: u32, edges: &[EdgeInput], weighted: bool, reverse: bool) -> Adjacency {
        let n = node_count as usize;
        let ends = |e: &EdgeInput| {
            if reverse {
                (e.target, e.source)
            } else {
                (e.source, e.target)
            }
        };
        let mut offsets = vec![0u32; n + 1];
        for e in edges {
            offsets[ends(e).0.index() + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor: Vec<u32> = offsets[..n].to_vec();
        let mut nodes = vec![0u32; edges.len()];
        let mut labels = vec![EdgeLabel(0); edges.len()];
        let mut weights = weighted.then(|| vec![0f64; edges.len()]);
        for e in edges {
            let (f, t) = ends(e);
            let slot = cursor[f.index()] as usize;
            cursor[f.index()] += 1;
            nodes[slot] = t.0;
            labels[slot] = e.label;
            if let Some(w) = weights.as_mut() {
                w[slot] = e.weight;
            }
        }
        Adjacency {
            offsets: Buf::Owned(offsets),
            nodes: Buf::Owned(nodes),
            labels: Buf::Owned(labels),
            weights: weights.map(Buf::Owned),
        }
    }

    fn validate(&self, node_count: u32, edge_count: usize) -> Result<(), CsrError> {
        let bad = |s: String| Err(CsrError::Invalid(s));
        if self.offsets.len() != node_count as usize + 1 {
            return bad(format!("{} offsets for {node_count} nodes", self.offsets.len()));
        }
        if self.offsets.first() != Some(&0) || *self.offsets.last().unwrap_or(&0) as usize != edge_count {
            return bad("offsets do not start at 0 and end at the edge count".into());
        }
        if self.offsets.windows(2).any(|w| w[0] > w[1]) {
            return bad("offsets are not monotonic".into());
        }
        if self.nodes.len() != edge_count || self.labels.len() != edge_count {
            return bad("edge arrays differ in length".into());
        }
        if self.weights.as_ref().is_some_and(|w| w.len() != edge_count) {
            return bad("weight array differs in length".into());
        }
        if let Some(i) = self.nodes.iter().position(|&t| t >= node_count) {
            return bad(format!("edge {i} points at node {} of {node_count}", self.nodes[i]));
        }
        Ok(())
    }
}

/// The base graph: forward and reverse adjacency over dense node ids `0..node_count`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Csr {
    pub(crate) node_count: u32,
    pub(crate) forward: Adjacency,
    pub(crate) reverse: Adjacency,
}

impl Csr {
    /// Builds both directions from an edge list in O(V + E). `weighted` keeps the weights.
    pub fn build(node_count: u32, edges: &[EdgeInput], weighted: bool) -> Result<Csr, CsrError> {
        if edges.len() > u32::MAX as usize {
            return Err(CsrError::TooManyEdges(edges.len()));
        }
        for (index, e) in edges.iter().enumerate() {
            for node in [e.source.0, e.target.0] {
                if node >= node_count {
                    return Err(CsrError::NodeOutOfRange {
                        index,
                        node,
                        node_count,
                    });
                }
            }
        }
        // The two directions are independent: built side by side.
        let (forward, reverse) = crate::par::both(
            || Adjacency::build(node_count, edges, weighted, false),
            || Adjacency::build(node_count, edges, weighted, true),
        );
        Ok(Csr {
            node_count,
            forward,
            reverse,
        })
    }

    /// Number of nodes (ids `0..node_count`).
    pub fn node_count(&self) -> u32 {
        self.node_count
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.forward.nodes.len()
    }

    /// Whether edges carry weights.
    pub fn is_weighted(&self) -> bool {
        self.forward.weights.is_some()
    }

    /// Outgoing adjacency.
    pub fn forward(&self) -> &Adjacency {
        &self.forward
    }

    /// Incoming adjacency.
    pub fn reverse(&self) -> &Adjacency {
        &self.reverse
    }

    /// Checks every structural invariant (offsets monotonic and in range, targets below the
    /// node count, both directions of equal size), as needed before trusting loaded bytes.
    pub fn validate(&self) -> Result<(), CsrError> {
        self.forward.validate(self.node_count, self.edge_count())?;
        self.reverse.validate(self.node_count, self.edge_count())?;
        if self.forward.weights.is_some() != self.reverse.weights.is_some() {
            return Err(CsrError::Invalid("only one direction is weighted".into()));
        }
        Ok(())
    }

    /// Whether the arrays are read in place from a memory-mapped snapshot.
    pub fn is_mapped(&self) -> bool {
        self.forward.nodes.is_mapped()
    }

    /// Bytes of the arrays (owned or mapped).
    pub fn array_bytes(&self) -> usize {
        let dir = |a: &Adjacency| {
            a.offsets.len() * 4 + a.nodes.len() * 4 + a.labels.len() + a.weights.as_ref().map_or(0, |w| w.len() * 8)
        };
        dir(&self.forward) + dir(&self.reverse)
    }

    /// Heap bytes held by the arrays.
    pub fn heap_bytes(&self) -> usize {
        let dir = |a: &Adjacency| {
            a.offsets.heap_bytes()
                + a.nodes.heap_bytes()
                + a.labels.heap_bytes()
                + a.weights.as_ref().map_or(0, |w| w.heap_bytes())
        };
        dir(&self.forward) + dir(&self.reverse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: u32, t: u32, l: u8) -> EdgeInput {
        EdgeInput {
            source: NodeId(s),
            target: NodeId(t),
            label: EdgeLabel(l),
            weight: 1.0,
        }
    }

    #[test]
    fn builds_both_directions_in_input_order() {
        let csr = Csr::build(4, &[e(0, 1, 0), e(2, 1, 1), e(0, 3, 2), e(0, 1, 0)], false).unwrap();
        assert_eq!(csr.edge_count(), 4);
        assert_eq!(csr.forward().edges(NodeId(0)).0, &[1, 3, 1]);
        assert_eq!(csr.reverse().edges(NodeId(1)).0, &[0, 2, 0]);
        assert_eq!(
            csr.reverse().edges(NodeId(1)).1,
            &[EdgeLabel(0), EdgeLabel(1), EdgeLabel(0)]
        );
        assert_eq!(csr.forward().degree(NodeId(3)), 0);
        csr.validate().unwrap();
        assert_eq!(csr.heap_bytes(), 2 * (5 * 4 + 4 * 5));
        assert!(matches!(
            Csr::build(2, &[e(0, 2, 0)], false),
            Err(CsrError::NodeOutOfRange { node: 2, .. })
        ));
    }
}
