//! graphsync's in-memory graph engine (pure: no I/O, no clock).
//!
//! What it is for: holding the replica's graph in a compact, cache-friendly form and answering
//! graph queries on it: the immutable CSR base (forward and reverse, edge labels, optional
//! weights, built in O(V + E)) and the queries over any [`Topology`] — neighbours, k-hop BFS,
//! shortest paths (BFS and Dijkstra), weakly connected components.
//!
//! Live changes go through [`Graph::apply`], one transaction at a time, each publishing a new
//! immutable [`GraphView`] (CSR base + versioned overlays, O(changes) per transaction);
//! compaction folds overlays into
//! a fresh CSR; [`snapshot`] writes a compacted view to a file and maps it back without copying
//! the arrays.
//!
//! Nodes carry labels, keys, tenants, filters and properties (`nodes`), resolved by (label,
//! key). What it is not for: sockets, clocks, or any file but a snapshot (`snapshot`, written
//! through `fsio`).

#![warn(missing_docs)]

pub mod bytes;
mod csr;
pub mod fsio;
mod nodes;
mod par;
pub mod query;
pub mod snapshot;
mod view;
pub mod wire;

pub use csr::{Adjacency, Csr, CsrError, EdgeInput};
pub use nodes::{FilterId, FilterValueId, NodeData, NodeKey, NodeLabel, PropValue, TenantId, MAX_NODE_LABELS};
pub use query::{Direction, EdgeFilter, QueryError, Scratch, Topology};
pub use view::diff;
pub use view::{
    Ahead, ApplyError, BulkError, Compacted, CompactionJob, CompactionPolicy, Graph, GraphReader, GraphView, Mutation,
    Txn,
};

/// A dense node id, an index into the node arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

impl NodeId {
    /// As an array index.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An edge label: an index into the mapping's edge label names. One byte keeps the CSR at 5
/// bytes per edge and direction; a mapping may define at most 256 edge labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct EdgeLabel(pub u8);
