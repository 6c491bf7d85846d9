//! Versioned graph views: an immutable CSR base plus copy-on-write overlays, published
//! atomically per transaction.
//!
//! A [`GraphView`] is immutable and shared (`Arc`); readers keep one for as long as a query
//! runs and never block the writer. [`Graph::apply`] builds the next view from the current one
//! — cloning only the overlay chunks the transaction touches — and publishes it with a pointer
//! swap, so readers see whole transactions or nothing.
//!
//! The overlay is a two-level radix tree of copy-on-write chunks: groups of 64 chunks of 256
//! node ids. A chunk holds, for its nodes, the edges added since the base was built, the base
//! edges deleted since (by CSR position), and tombstones. A transaction clones the top array
//! (one pointer per 16,384 nodes) and only the groups and chunks it touches, so its cost does
//! not grow with the overlay. A traversal follows two pointers per node to learn "nothing
//! changed here"; only nodes marked dirty in their chunk pay for the merge.

use crate::nodes::{FilterId, FilterValueId, NodeData, NodeKey, NodeLabel, NodeStore, TenantId};
use crate::query::{Direction, Topology};
use crate::{Csr, EdgeInput, EdgeLabel, NodeId};
use std::sync::{Arc, RwLock};

const CHUNK_SHIFT: u32 = 6;
const CHUNK_NODES: usize = 1 << CHUNK_SHIFT;
const CHUNK_WORDS: usize = CHUNK_NODES / 64;
const GROUP_SHIFT: u32 = 14;
const GROUP_NODES: usize = 1 << GROUP_SHIFT;
const GROUP_CHUNKS: usize = GROUP_NODES / CHUNK_NODES;

/// 256 chunks, and which of their nodes have overlay edges at all (kept here, densely, so a
/// traversal learns "nothing changed at this node" from one load in a small, hot array).
/// Cloned on write like the chunks themselves.
#[derive(Debug, Clone)]
struct Group {
    chunks: [Option<Arc<Chunk>>; GROUP_CHUNKS],
    /// Nodes with overlay edges, per direction (`[outgoing, incoming]`), so a traversal in one
    /// direction takes the slow path only for nodes changed in that direction.
    dirty: [[u64; GROUP_NODES / 64]; 2],
    /// Nodes whose data (label, key, tenant, properties) changed since the base.
    changed: [u64; GROUP_NODES / 64],
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

/// Whether node `n`'s data changed since the base.
#[inline]
fn is_changed(groups: &Groups, n: u32) -> bool {
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
fn is_dirty(groups: &Groups, n: u32, dir: Direction) -> bool {
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

/// The top level of the overlay tree.
type Groups = Vec<Option<Arc<Group>>>;

/// Which nodes exist: ids below `node_count`, minus those deleted at the last compaction (a
/// dense bitset, one load per check) unless restored since, minus those deleted since. The
/// overlay tree is consulted only when it holds deletions or restorations at all, so a
/// traversal of a graph without recent deletions pays one bit load per edge.
struct Liveness<'a> {
    node_count: u32,
    base_deleted: Option<&'a [u64]>,
    deleted: usize,
    restored: usize,
    groups: &'a Groups,
}

impl Liveness<'_> {
    #[inline]
    fn is_live(&self, n: u32) -> bool {
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

#[inline]
fn lookup(groups: &Groups, n: u32) -> Option<&Chunk> {
    let g = groups.get((n >> GROUP_SHIFT) as usize)?.as_deref()?;
    g.chunks[(n >> CHUNK_SHIFT) as usize & (GROUP_CHUNKS - 1)].as_deref()
}

/// An edge held in an overlay.
#[derive(Debug, Clone, Copy, PartialEq)]
struct EdgeRec {
    other: u32,
    label: EdgeLabel,
    weight: f64,
}

/// Per-node overlay state for one direction.
#[derive(Debug, Clone, Default)]
struct NodeDelta {
    /// Edges added since the base; the first two live inline, saving a cache miss per changed
    /// node on the traversal path.
    added: smallvec::SmallVec<[EdgeRec; 2]>,
    /// Base CSR positions (in this direction's arrays) deleted since the base, sorted.
    deleted: smallvec::SmallVec<[u32; 2]>,
}

/// A node's overlay edges, `[outgoing, incoming]`.
#[derive(Debug, Clone, Default)]
struct NodeDeltas([NodeDelta; 2]);

const _: () = assert!(std::mem::size_of::<NodeDelta>() <= 64);

/// Overlay state of 64 consecutive node ids.
#[derive(Debug, Clone)]
struct Chunk {
    /// Deleted nodes.
    tombstones: [u64; CHUNK_WORDS],
    /// Nodes deleted in the base's dense bitset and restored since.
    restored: [u64; CHUNK_WORDS],
    /// Overlay edges of each node, if it has any: one load from the chunk to the entry (no
    /// hashing, no second indirection on the traversal path). Each entry is shared between
    /// views until written: a transaction that touches one node clones that node's edges, and
    /// this chunk's 64 pointers, not the other nodes' edges.
    deltas: [Option<Arc<NodeDeltas>>; CHUNK_NODES],
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
    fn entry(&self, n: u32) -> Option<&Arc<NodeDeltas>> {
        self.deltas[n as usize & (CHUNK_NODES - 1)].as_ref()
    }

    #[inline]
    fn delta(&self, n: u32, dir: Direction) -> Option<&NodeDelta> {
        Some(&self.entry(n)?.0[usize::from(dir == Direction::In)])
    }

    fn delta_mut(&mut self, n: u32, dir: Direction) -> &mut NodeDelta {
        let d = self.deltas[n as usize & (CHUNK_NODES - 1)].get_or_insert_with(Default::default);
        &mut Arc::make_mut(d).0[usize::from(dir == Direction::In)]
    }
}

#[inline]
fn bit(words: &[u64; CHUNK_WORDS], n: u32) -> bool {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] & (1 << (i & 63)) != 0
}

#[inline]
fn clear_bit(words: &mut [u64; CHUNK_WORDS], n: u32) {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] &= !(1 << (i & 63));
}

#[inline]
fn set_bit(words: &mut [u64; CHUNK_WORDS], n: u32) {
    let i = n as usize & (CHUNK_NODES - 1);
    words[i >> 6] |= 1 << (i & 63);
}

/// Why a transaction could not be applied. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// A mutation names a node that does not exist or was deleted.
    #[error("node {0} does not exist")]
    NoSuchNode(u32),
    /// [`Mutation::RestoreNode`] of a node that is not deleted.
    #[error("node {0} is not deleted")]
    NotDeleted(u32),
    /// A removal names an edge that does not exist.
    #[error("no edge {from} -> {target} with label {label} and weight {weight}")]
    NoSuchEdge {
        /// Source node.
        from: u32,
        /// Target node.
        target: u32,
        /// Edge label.
        label: u8,
        /// Weight.
        weight: f64,
    },
    /// Overlays reached the hard limit before compaction caught up; the graph refuses changes
    /// until a compaction finishes.
    #[error("graph is read-only: {reason}")]
    ReadOnly {
        /// Why.
        reason: String,
    },
    /// A compaction result from a job that a later compaction superseded.
    #[error("compaction result is stale: another compaction began after it")]
    StaleCompaction,
    /// The transaction's LSN is not after the current view's.
    #[error("transaction LSN {lsn} is not after the view's LSN {current}")]
    StaleLsn {
        /// The transaction's LSN.
        lsn: u64,
        /// The current view's LSN.
        current: u64,
    },
}

/// Why a bulk build failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BulkError {
    /// Two nodes share a label and key.
    #[error("two nodes have label {label:?} and key {key:?}")]
    DuplicateKey {
        /// The label.
        label: NodeLabel,
        /// The key.
        key: NodeKey,
    },
    /// More nodes than ids.
    #[error("{0} nodes exceed the limit of 2^32 - 1")]
    TooManyNodes(usize),
    /// The edges do not fit the nodes.
    #[error(transparent)]
    Csr(#[from] crate::CsrError),
}

/// One change of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Allocates the next node id.
    AddNode,
    /// Deletes a node: it and its edges become invisible. The edges stay stored (they are
    /// rows of their own tables) and reappear if the node is restored.
    RemoveNode(NodeId),
    /// Brings a deleted node back, with every edge still stored for it.
    RestoreNode(NodeId),
    /// Sets (or with `None` clears) a node's data: label, key, tenant, properties. The
    /// (label, key) index and tenant bitmaps follow.
    SetNode {
        /// The node.
        id: NodeId,
        /// Its new data.
        data: Option<Arc<NodeData>>,
    },
    /// Adds an edge (parallel edges are kept). Its endpoints need not be visible: an edge to a
    /// node that does not exist (yet) is kept and becomes visible with the node.
    AddEdge(EdgeInput),
    /// Removes one edge with exactly this source, target, label and weight.
    RemoveEdge(EdgeInput),
}

/// An immutable version of the graph, at the LSN of the last transaction applied to it.
#[derive(Debug, Clone)]
pub struct GraphView {
    base: Arc<Csr>,
    chunks: Arc<Groups>,
    /// Nodes deleted when the base was compacted (absent: none).
    base_deleted: Option<Arc<Vec<u64>>>,
    /// Tombstone bits in the overlay tree.
    deleted: usize,
    /// Restored bits in the overlay tree.
    restored: usize,
    nodes: NodeStore,
    node_count: u32,
    edge_count: usize,
    overlay_edges: usize,
    lsn: u64,
}

impl GraphView {
    /// A view of `base` with no changes, at `lsn`.
    pub fn new(base: Csr, lsn: u64) -> Self {
        let node_count = base.node_count();
        let edge_count = base.edge_count();
        GraphView {
            base: Arc::new(base),
            chunks: Arc::new(vec![None; (node_count as usize).div_ceil(GROUP_NODES)]),
            base_deleted: None,
            deleted: 0,
            restored: 0,
            nodes: NodeStore::default(),
            node_count,
            edge_count,
            overlay_edges: 0,
            lsn,
        }
    }

    /// Folds every overlay into a fresh CSR over the same node ids: removed edges go, every
    /// stored edge stays (including those of deleted nodes, which may be restored). O(V + E).
    /// Weights are kept when any edge is not 1.0.
    pub(crate) fn compact_edges(&self) -> Csr {
        let mut edges = Vec::with_capacity(self.edge_count);
        let mut weighted = self.base.is_weighted();
        for u in 0..self.node_count {
            self.side(NodeId(u), Direction::Out, &mut |m, label, weight| {
                weighted |= weight != 1.0;
                edges.push(EdgeInput {
                    source: NodeId(u),
                    target: m,
                    label,
                    weight,
                });
            });
        }
        // Node ids and edge counts fit: they came from a valid view.
        Csr::build(self.node_count, &edges, weighted).unwrap_or_default()
    }

    #[inline]
    fn liveness(&self) -> Liveness<'_> {
        Liveness {
            node_count: self.node_count,
            base_deleted: self.base_deleted.as_deref().map(|v| v.as_slice()),
            deleted: self.deleted,
            restored: self.restored,
            groups: &self.chunks,
        }
    }

    /// Dense bitset of the nodes that are not visible.
    pub(crate) fn deleted_bits(&self) -> Vec<u64> {
        let live = self.liveness();
        let mut bits = vec![0u64; (self.node_count as usize).div_ceil(64)];
        for n in 0..self.node_count {
            if !live.is_live(n) {
                bits[(n >> 6) as usize] |= 1 << (n & 63);
            }
        }
        bits
    }

    /// The data of node `n`, if it has any.
    pub fn node(&self, n: NodeId) -> Option<Arc<NodeData>> {
        self.nodes.data(n.0)
    }

    /// Heap bytes of the node store's base columns and index.
    pub fn node_base_bytes(&self) -> usize {
        self.nodes.base_heap_bytes()
    }

    /// The node with this label and key, visible or not.
    pub fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<NodeId> {
        self.nodes.resolve(label, key).map(NodeId)
    }

    /// The id of a tenant value (`None` if no node ever had it).
    pub fn tenant(&self, value: &NodeKey) -> Option<TenantId> {
        self.nodes.tenant_id(value)
    }

    /// The value of a tenant id.
    pub fn tenant_value(&self, t: TenantId) -> Option<&NodeKey> {
        self.nodes.tenant_value(t)
    }

    /// The id of a filter value (`None` if no node ever had it).
    pub fn filter_value(&self, filter: FilterId, value: &NodeKey) -> Option<FilterValueId> {
        self.nodes.filter_value_id(filter, value)
    }

    /// Visible nodes holding filter value `v`, in id order.
    pub fn filter_members(&self, v: FilterValueId) -> Vec<NodeId> {
        self.nodes.filter_members(v).map_or_else(Vec::new, |b| {
            b.iter().map(NodeId).filter(|&n| self.is_visible(n)).collect()
        })
    }

    /// Visible members of tenant `t`, in id order.
    pub fn tenant_members(&self, t: TenantId) -> Vec<NodeId> {
        self.nodes.members(t).map_or_else(Vec::new, |b| {
            b.iter().map(NodeId).filter(|&n| self.is_visible(n)).collect()
        })
    }

    /// Node data as the snapshot stores it.
    pub(crate) fn node_columns(&self) -> crate::nodes::NodeColumns {
        self.nodes.to_columns(self.node_count)
    }

    /// Whether anything changed since the base was built (nodes added, edges, deletions or
    /// restorations).
    pub fn has_overlay(&self) -> bool {
        self.overlay_edges > 0 || self.deleted > 0 || self.restored > 0 || self.node_count != self.base.node_count()
    }

    /// A view of a base with a dense deleted-node bitset and a known visible edge count.
    pub(crate) fn from_parts(
        base: Csr,
        deleted: Option<Vec<u64>>,
        nodes: NodeStore,
        visible_edges: usize,
        lsn: u64,
    ) -> Self {
        let mut v = GraphView::new(base, lsn);
        v.nodes = nodes;
        v.base_deleted = deleted.filter(|d| d.iter().any(|&w| w != 0)).map(Arc::new);
        v.edge_count = visible_edges;
        v
    }

    /// Neighbours of a node with overlay edges in `dir` (or added since the base), given its
    /// overlay chunk and, if already located, its entry: base minus deleted positions plus
    /// added edges. Kept out of line so the common path stays small.
    #[inline(never)]
    fn changed_neighbors(
        &self,
        n: NodeId,
        dir: Direction,
        chunk: Option<&Chunk>,
        entry: Option<&Arc<NodeDeltas>>,
        mut f: impl FnMut(NodeId),
    ) {
        let mut one = |d: Direction| {
            // Endpoints only: no labels or weights read.
            let delta = match entry {
                Some(e) => Some(&e.0[usize::from(d == Direction::In)]),
                None => chunk.and_then(|c| c.delta(n.0, d)),
            };
            if n.0 < self.base.node_count() {
                let adj = if d == Direction::In {
                    self.base.reverse()
                } else {
                    self.base.forward()
                };
                let targets = adj.targets(n);
                match delta.map(|x| x.deleted.as_slice()).filter(|x| !x.is_empty()) {
                    None => targets.iter().for_each(|&m| f(NodeId(m))),
                    Some(deleted) => {
                        let start = adj.range(n).start as u32;
                        for (i, &m) in targets.iter().enumerate() {
                            if deleted.binary_search(&(start + i as u32)).is_err() {
                                f(NodeId(m));
                            }
                        }
                    }
                }
            }
            if let Some(x) = delta {
                x.added.iter().for_each(|e| f(NodeId(e.other)));
            }
        };
        match dir {
            Direction::Both => {
                one(Direction::Out);
                one(Direction::In);
            }
            d => one(d),
        }
    }

    /// The LSN this view reflects.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Visible edges (both endpoints exist and are not deleted).
    pub fn edge_count(&self) -> usize {
        self.edge_count
    }

    /// Edge additions and deletions held in overlays (what compaction would fold).
    pub fn overlay_edges(&self) -> usize {
        self.overlay_edges
    }

    /// The immutable base.
    pub fn base(&self) -> &Csr {
        &self.base
    }

    #[inline]
    fn chunk(&self, n: u32) -> Option<&Chunk> {
        lookup(&self.chunks, n)
    }

    fn delta(&self, n: NodeId, dir: Direction) -> Option<&NodeDelta> {
        if !is_dirty(&self.chunks, n.0, dir) {
            return None;
        }
        let c = self.chunk(n.0)?;
        c.delta(n.0, dir)
    }

    /// Edges of `n` in one direction (Out or In), base minus deletions plus additions.
    #[inline]
    fn side(&self, n: NodeId, dir: Direction, f: &mut impl FnMut(NodeId, EdgeLabel, f64)) {
        edges_of(&self.base, self.delta(n, dir), n, dir, f)
    }
}

/// Edges of `n` in one direction: the base CSR's minus the deleted positions, plus the added
/// ones of its overlay entry `delta`.
#[inline]
fn edges_of(
    base: &Csr,
    delta: Option<&NodeDelta>,
    n: NodeId,
    dir: Direction,
    f: &mut impl FnMut(NodeId, EdgeLabel, f64),
) {
    if n.0 < base.node_count() {
        let adj = if dir == Direction::In {
            base.reverse()
        } else {
            base.forward()
        };
        let (nodes, labels, weights) = adj.edges(n);
        let start = adj.range(n).start as u32;
        let deleted: &[u32] = delta.map_or(&[], |d| &d.deleted);
        for i in 0..nodes.len() {
            if !deleted.is_empty() && deleted.binary_search(&(start + i as u32)).is_ok() {
                continue;
            }
            f(NodeId(nodes[i]), labels[i], weights.map_or(1.0, |w| w[i]));
        }
    }
    if let Some(d) = delta {
        for e in &d.added {
            f(NodeId(e.other), e.label, e.weight);
        }
    }
}

impl Topology for GraphView {
    fn node_count(&self) -> u32 {
        self.node_count
    }

    #[inline]
    fn has_filter_value(&self, n: NodeId, v: FilterValueId) -> bool {
        self.nodes.filter_members(v).is_some_and(|b| b.contains(n.0))
    }

    #[inline]
    fn all_visible(&self) -> bool {
        self.base_deleted.is_none() && self.deleted == 0
    }

    #[inline]
    fn tenant_of(&self, n: NodeId) -> Option<TenantId> {
        self.nodes.tenant_of(n.0, is_changed(&self.chunks, n.0))
    }

    #[inline]
    fn is_visible(&self, n: NodeId) -> bool {
        self.liveness().is_live(n.0)
    }

    #[inline]
    fn for_each_edge(&self, n: NodeId, dir: Direction, mut f: impl FnMut(NodeId, EdgeLabel, f64)) {
        match dir {
            Direction::Both => {
                self.side(n, Direction::Out, &mut f);
                self.side(n, Direction::In, &mut f);
            }
            d => self.side(n, d, &mut f),
        }
    }

    #[inline(always)]
    fn for_each_neighbor(&self, n: NodeId, dir: Direction, f: impl FnMut(NodeId)) {
        if n.0 < self.base.node_count() && !is_dirty(&self.chunks, n.0, dir) {
            self.base.for_each_neighbor(n, dir, f);
        } else {
            self.changed_neighbors(n, dir, self.chunk(n.0), None, f);
        }
    }

    type Ahead<'a> = OverlayAhead<'a>;

    #[inline(always)]
    fn for_each_neighbor_ahead<'a>(
        &'a self,
        n: NodeId,
        dir: Direction,
        ahead: OverlayAhead<'a>,
        mut f: impl FnMut(NodeId),
    ) {
        let in_base = n.0 < self.base.node_count();
        if in_base && ahead.chunk.is_none() {
            self.base.for_each_neighbor(n, dir, f);
            return;
        }
        // The common change, edges added and none deleted: the base's own loop, then the
        // additions.
        if let (true, Some(e), Direction::Out | Direction::In) = (in_base, ahead.entry, dir) {
            let delta = &e.0[usize::from(dir == Direction::In)];
            if delta.deleted.is_empty() {
                self.base.for_each_neighbor(n, dir, &mut f);
                delta.added.iter().for_each(|e| f(NodeId(e.other)));
                return;
            }
        }
        self.changed_neighbors(n, dir, ahead.chunk, ahead.entry, f);
    }

    #[inline(always)]
    fn prefetch<'a>(&'a self, n: NodeId, dir: Direction, mut ahead: OverlayAhead<'a>) -> OverlayAhead<'a> {
        if n.0 < self.base.node_count() {
            self.base.prefetch(n, dir, ());
        }
        // Second stage for changed nodes: their overlay entry (the pointer to it was
        // prefetched by the first).
        if let Some(d) = ahead.chunk.and_then(|c| c.entry(n.0)) {
            // A direction's 64 bytes span two cache lines unless aligned (aligned allocations
            // cost the writer more than the second prefetch costs here).
            let line = |x: &NodeDelta| {
                let p = x as *const NodeDelta as *const u8;
                crate::query::prefetch_ptr(p);
                crate::query::prefetch_ptr(p.wrapping_add(63));
            };
            if dir != Direction::In {
                line(&d.0[0]);
            }
            if dir != Direction::Out {
                line(&d.0[1]);
            }
            ahead.entry = Some(d);
        }
        ahead
    }

    #[inline(always)]
    fn prefetch_index(&self, n: NodeId, dir: Direction) -> OverlayAhead<'_> {
        if n.0 < self.base.node_count() {
            self.base.prefetch_index(n, dir);
        }
        if !is_dirty(&self.chunks, n.0, dir) {
            return OverlayAhead::default();
        }
        let chunk = self.chunk(n.0);
        if let Some(c) = chunk {
            // The pointer to the node's overlay entry, read by the next stage.
            crate::query::prefetch_ptr(&c.deltas[n.index() & (CHUNK_NODES - 1)]);
        }
        OverlayAhead { chunk, entry: None }
    }
}

/// What the first prefetch stage of a traversal learnt about a node of a [`GraphView`]: its
/// overlay chunk if it has overlay edges in the direction (none: unchanged there).
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayAhead<'a> {
    chunk: Option<&'a Chunk>,
    /// Located by the second stage.
    entry: Option<&'a Arc<NodeDeltas>>,
}

/// One transaction being built on top of the current view; see [`Graph::begin`].
///
/// Every call applies at once to the transaction's own state (later calls see earlier ones);
/// nothing is visible to readers until [`Txn::commit`]. An error leaves the transaction as it
/// was before the failing call; dropping the transaction discards it.
pub struct Txn<'g> {
    graph: &'g mut Graph,
    b: Builder,
    log: Vec<Mutation>,
    lsn: u64,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("lsn", &self.lsn)
            .field("mutations", &self.log.len())
            .finish()
    }
}

impl Txn<'_> {
    /// Applies one low-level mutation.
    pub fn push(&mut self, m: Mutation) -> Result<(), ApplyError> {
        // Mutations either fail before changing anything or succeed whole.
        self.b.apply(&m)?;
        self.log.push(m);
        Ok(())
    }

    /// The id of the node with this label and key. A node never seen gets a new id, absent
    /// (invisible) until [`Txn::upsert_node`] gives it data: edges may point at it meanwhile.
    pub fn node_id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        if let Some(n) = self.b.view.nodes.resolve(label, key) {
            return NodeId(n);
        }
        let id = NodeId(self.b.view.node_count);
        let data = NodeData {
            label,
            key: key.clone(),
            tenant: None,
            filters: Arc::from(Vec::new()),
            properties: Arc::from(Vec::new()),
        };
        for m in [
            Mutation::AddNode,
            Mutation::RemoveNode(id),
            Mutation::SetNode {
                id,
                data: Some(Arc::new(data)),
            },
        ] {
            // Cannot fail: the id was just allocated and is visible until removed.
            let _ = self.push(m);
        }
        id
    }

    /// Inserts or updates the node `data.label` / `data.key` and makes it visible.
    pub fn upsert_node(&mut self, data: NodeData) -> NodeId {
        let Some(id) = self.b.view.nodes.resolve(data.label, &data.key).map(NodeId) else {
            // A node never seen: a fresh id is visible from the start, so it needs no
            // placeholder and no restore, just its data.
            let id = NodeId(self.b.view.node_count);
            for m in [
                Mutation::AddNode,
                Mutation::SetNode {
                    id,
                    data: Some(Arc::new(data)),
                },
            ] {
                // Cannot fail: the id was just allocated.
                let _ = self.push(m);
            }
            return id;
        };
        if !self.b.visible(id) {
            let _ = self.push(Mutation::RestoreNode(id));
        }
        let _ = self.push(Mutation::SetNode {
            id,
            data: Some(Arc::new(data)),
        });
        id
    }

    /// Deletes the node with this label and key (it keeps its id and edges, invisible, and
    /// comes back with them if upserted again). Returns its id, or `None` if it was not there.
    pub fn delete_node(&mut self, label: NodeLabel, key: &NodeKey) -> Option<NodeId> {
        let id = NodeId(self.b.view.nodes.resolve(label, key)?);
        if !self.b.visible(id) {
            return None;
        }
        self.push(Mutation::RemoveNode(id)).ok()?;
        Some(id)
    }

    /// The node with this label and key in the transaction's state, visible or not.
    pub fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<NodeId> {
        self.b.view.nodes.resolve(label, key).map(NodeId)
    }

    /// The data of node `id` in the transaction's state, if it is visible.
    pub fn node(&self, id: NodeId) -> Option<Arc<NodeData>> {
        if id.0 >= self.b.view.node_count || !self.b.visible(id) {
            return None;
        }
        self.b.view.nodes.data(id.0)
    }

    /// Every stored out-edge of `n` in the transaction's state, including edges to nodes that
    /// are not visible (they are rows of their own tables).
    pub fn out_edges(&self, n: NodeId) -> Vec<EdgeInput> {
        let mut out = Vec::new();
        self.b.side(n, Direction::Out, &mut |m, label, weight| {
            out.push(EdgeInput {
                source: n,
                target: m,
                label,
                weight,
            })
        });
        out
    }

    /// The first stored out-edge of `n` that `pred` accepts (no allocation).
    pub fn find_out_edge(&self, n: NodeId, mut pred: impl FnMut(&EdgeInput) -> bool) -> Option<EdgeInput> {
        let mut found = None;
        self.b.side(n, Direction::Out, &mut |m, label, weight| {
            let e = EdgeInput {
                source: n,
                target: m,
                label,
                weight,
            };
            if found.is_none() && pred(&e) {
                found = Some(e);
            }
        });
        found
    }

    /// Number of node ids in the transaction's state.
    pub fn node_count(&self) -> u32 {
        self.b.view.node_count
    }

    /// Adds an edge.
    pub fn add_edge(&mut self, e: EdgeInput) -> Result<(), ApplyError> {
        self.push(Mutation::AddEdge(e))
    }

    /// Removes one edge with exactly this source, target, label and weight.
    pub fn remove_edge(&mut self, e: EdgeInput) -> Result<(), ApplyError> {
        self.push(Mutation::RemoveEdge(e))
    }

    /// The state built so far (for reads inside the transaction).
    pub fn view(&self) -> GraphView {
        self.b.current_view()
    }

    /// Publishes the transaction as the graph's new view.
    pub fn commit(self) -> Result<Arc<GraphView>, ApplyError> {
        let Txn { graph, b, log, lsn } = self;
        let view = Arc::new(b.finish(lsn));
        if let Some((_, pending)) = graph.since_compaction.as_mut() {
            pending.push((lsn, log));
        }
        graph.publish(view.clone());
        Ok(view)
    }
}

/// Builds the next view from a base one; chunks are cloned on first write.
struct Builder {
    view: GraphView,
    chunks: Groups,
}

impl Builder {
    fn finish(self, lsn: u64) -> GraphView {
        let mut view = self.view;
        view.chunks = Arc::new(self.chunks);
        view.lsn = lsn;
        view
    }

    fn chunk_mut(&mut self, n: u32) -> &mut Chunk {
        let gi = (n >> GROUP_SHIFT) as usize;
        if self.chunks.len() <= gi {
            self.chunks.resize(gi + 1, None);
        }
        let group = Arc::make_mut(self.chunks[gi].get_or_insert_with(Default::default));
        Arc::make_mut(
            group.chunks[(n >> CHUNK_SHIFT) as usize & (GROUP_CHUNKS - 1)].get_or_insert_with(Default::default),
        )
    }

    fn chunk(&self, n: u32) -> Option<&Chunk> {
        lookup(&self.chunks, n)
    }

    /// The state built so far, as a view (shares the chunks).
    fn current_view(&self) -> GraphView {
        GraphView {
            chunks: Arc::new(self.chunks.clone()),
            ..self.view.clone()
        }
    }

    /// Calls `f(other, label, weight)` for each stored edge of `n` in `dir` (Out or In) in the
    /// builder's state, whatever the endpoints' visibility.
    fn side(&self, n: NodeId, dir: Direction, f: &mut impl FnMut(NodeId, EdgeLabel, f64)) {
        if n.0 >= self.view.node_count {
            return;
        }
        let delta = if is_dirty(&self.chunks, n.0, dir) {
            lookup(&self.chunks, n.0).and_then(|c| c.delta(n.0, dir))
        } else {
            None
        };
        edges_of(&self.view.base, delta, n, dir, f)
    }

    fn visible(&self, n: NodeId) -> bool {
        Liveness {
            node_count: self.view.node_count,
            base_deleted: self.view.base_deleted.as_deref().map(|v| v.as_slice()),
            deleted: self.view.deleted,
            restored: self.view.restored,
            groups: &self.chunks,
        }
        .is_live(n.0)
    }

    /// Edges of `n` (a self-loop once) whose other end is visible.
    fn visible_incident(&self, n: NodeId) -> usize {
        let mut count = 0;
        self.side(n, Direction::Out, &mut |m, _, _| {
            if m == n || self.visible(m) {
                count += 1;
            }
        });
        self.side(n, Direction::In, &mut |m, _, _| {
            if m != n && self.visible(m) {
                count += 1;
            }
        });
        count
    }

    fn delta_mut(&mut self, n: u32, dir: Direction) -> &mut NodeDelta {
        self.chunk_mut(n);
        if let Some(g) = self.chunks[(n >> GROUP_SHIFT) as usize].as_mut() {
            let i = n as usize & (GROUP_NODES - 1);
            Arc::make_mut(g).dirty[usize::from(dir == Direction::In)][i >> 6] |= 1 << (i & 63);
        }
        let c = self.chunk_mut(n);
        c.delta_mut(n, dir)
    }

    fn add_edge(&mut self, e: EdgeInput) -> Result<(), ApplyError> {
        for n in [e.source, e.target] {
            if n.0 >= self.view.node_count {
                return Err(ApplyError::NoSuchNode(n.0));
            }
        }
        if self.visible(e.source) && self.visible(e.target) {
            self.view.edge_count += 1;
        }
        self.delta_mut(e.source.0, Direction::Out).added.push(EdgeRec {
            other: e.target.0,
            label: e.label,
            weight: e.weight,
        });
        self.delta_mut(e.target.0, Direction::In).added.push(EdgeRec {
            other: e.source.0,
            label: e.label,
            weight: e.weight,
        });
        self.view.overlay_edges += 1;
        Ok(())
    }

    /// Removes one matching edge from `n`'s side in `dir` (overlay additions first, then the
    /// base). Returns whether one was found.
    fn remove_side(&mut self, n: u32, other: u32, label: EdgeLabel, weight: f64, dir: Direction) -> bool {
        let matches = |e: &EdgeRec| e.other == other && e.label == label && e.weight.to_bits() == weight.to_bits();
        if let Some(d) = self
            .chunk(n)
            .filter(|_| is_dirty(&self.chunks, n, dir))
            .and_then(|c| c.delta(n, dir))
        {
            if let Some(i) = d.added.iter().position(matches) {
                self.delta_mut(n, dir).added.swap_remove(i);
                return true;
            }
        }
        if n >= self.view.base.node_count() {
            return false;
        }
        let base = self.view.base.clone();
        let adj = if dir == Direction::In {
            base.reverse()
        } else {
            base.forward()
        };
        let (nodes, labels, weights) = adj.edges(NodeId(n));
        let start = adj.range(NodeId(n)).start as u32;
        let deleted: Vec<u32> = self
            .chunk(n)
            .and_then(|c| c.delta(n, dir))
            .map(|d| d.deleted.to_vec())
            .unwrap_or_default();
        for i in 0..nodes.len() {
            let pos = start + i as u32;
            let w = weights.map_or(1.0, |w| w[i]);
            if nodes[i] == other && labels[i] == label && w.to_bits() == weight.to_bits() {
                if let Err(at) = deleted.binary_search(&pos) {
                    self.delta_mut(n, dir).deleted.insert(at, pos);
                    return true;
                }
            }
        }
        false
    }

    fn remove_edge(&mut self, e: EdgeInput) -> Result<(), ApplyError> {
        let missing = ApplyError::NoSuchEdge {
            from: e.source.0,
            target: e.target.0,
            label: e.label.0,
            weight: e.weight,
        };
        if e.source.0 >= self.view.node_count || e.target.0 >= self.view.node_count {
            return Err(missing);
        }
        if !self.remove_side(e.source.0, e.target.0, e.label, e.weight, Direction::Out) {
            return Err(missing);
        }
        let found = self.remove_side(e.target.0, e.source.0, e.label, e.weight, Direction::In);
        debug_assert!(found, "forward and reverse overlays disagree");
        if self.visible(e.source) && self.visible(e.target) {
            self.view.edge_count -= 1;
        }
        self.view.overlay_edges += 1;
        Ok(())
    }

    fn apply(&mut self, m: &Mutation) -> Result<(), ApplyError> {
        match *m {
            Mutation::AddNode => {
                self.view.node_count += 1;
                let need = (self.view.node_count as usize).div_ceil(GROUP_NODES);
                if self.chunks.len() < need {
                    self.chunks.resize(need, None);
                }
                Ok(())
            }
            Mutation::RemoveNode(n) => {
                if !self.visible(n) {
                    return Err(ApplyError::NoSuchNode(n.0));
                }
                self.view.edge_count -= self.visible_incident(n);
                let c = self.chunk_mut(n.0);
                if bit(&c.restored, n.0) {
                    clear_bit(&mut c.restored, n.0);
                    self.view.restored -= 1;
                } else {
                    set_bit(&mut c.tombstones, n.0);
                    self.view.deleted += 1;
                }
                Ok(())
            }
            Mutation::RestoreNode(n) => {
                if n.0 >= self.view.node_count {
                    return Err(ApplyError::NoSuchNode(n.0));
                }
                if self.visible(n) {
                    return Err(ApplyError::NotDeleted(n.0));
                }
                let c = self.chunk_mut(n.0);
                if bit(&c.tombstones, n.0) {
                    clear_bit(&mut c.tombstones, n.0);
                    self.view.deleted -= 1;
                } else {
                    set_bit(&mut c.restored, n.0);
                    self.view.restored += 1;
                }
                self.view.edge_count += self.visible_incident(n);
                Ok(())
            }
            Mutation::SetNode { id, ref data } => {
                if id.0 >= self.view.node_count {
                    return Err(ApplyError::NoSuchNode(id.0));
                }
                self.view.nodes.set(id.0, data.clone());
                self.chunk_mut(id.0);
                if let Some(g) = self.chunks[(id.0 >> GROUP_SHIFT) as usize].as_mut() {
                    let i = id.index() & (GROUP_NODES - 1);
                    Arc::make_mut(g).changed[i >> 6] |= 1 << (i & 63);
                }
                Ok(())
            }
            Mutation::AddEdge(e) => self.add_edge(e),
            Mutation::RemoveEdge(e) => self.remove_edge(e),
        }
    }
}

/// When overlays are folded into a fresh CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// [`Graph::needs_compaction`] turns true at this many overlay edge changes.
    pub soft_limit: usize,
    /// Transactions are refused ([`ApplyError::ReadOnly`]) at this many.
    pub hard_limit: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            soft_limit: 1 << 20,
            hard_limit: 16 << 20,
        }
    }
}

/// A compaction in progress: the view it folds. [`CompactionJob::build`] may run on any
/// thread while the writer keeps applying transactions.
#[derive(Debug)]
pub struct CompactionJob {
    view: Arc<GraphView>,
    generation: u64,
}

impl CompactionJob {
    /// Folds the job's view (the expensive part; no locks held).
    pub fn build(self) -> Compacted {
        let csr = self.view.compact_edges();
        Compacted {
            nodes: self.view.nodes.compacted(self.view.node_count),
            csr,
            deleted: self.view.deleted_bits(),
            lsn: self.view.lsn,
            visible_edges: self.view.edge_count,
            generation: self.generation,
        }
    }
}

/// The result of [`CompactionJob::build`], to hand to [`Graph::finish_compaction`].
#[derive(Debug)]
pub struct Compacted {
    nodes: NodeStore,
    csr: Csr,
    /// Dense bitset of the nodes not visible at the compacted LSN.
    deleted: Vec<u64>,
    lsn: u64,
    /// Compaction changes storage, not what is visible.
    visible_edges: usize,
    generation: u64,
}

/// A cloneable, thread-safe handle to the latest published view of a [`Graph`]. Taking a view
/// holds a lock only for the time of cloning an `Arc`; the writer holds it only to swap one.
#[derive(Debug, Clone)]
pub struct GraphReader(Arc<RwLock<Arc<GraphView>>>);

impl GraphReader {
    /// The latest published view.
    pub fn view(&self) -> Arc<GraphView> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Transactions (LSN and mutations) in the order they were applied.
type TxnLog = Vec<(u64, Vec<Mutation>)>;

/// The writable graph: holds the current view and publishes a new one per transaction.
#[derive(Debug)]
pub struct Graph {
    current: GraphReader,
    policy: CompactionPolicy,
    /// Transactions applied since the running compaction's view, to replay on its result.
    since_compaction: Option<(u64, TxnLog)>,
    /// Incremented by every [`Graph::begin_compaction`]; only the newest job may finish.
    generation: u64,
}

impl Graph {
    /// A graph whose first view is `base` at `lsn`.
    pub fn new(base: Csr, lsn: u64) -> Self {
        Self::with_policy(base, lsn, CompactionPolicy::default())
    }

    /// Builds a graph in bulk (an initial copy): node `i` of `nodes` gets id `i` (`None` for
    /// an id that exists but has no data yet), edges go straight into the CSR. O(V + E).
    pub fn bulk(
        nodes: Vec<Option<NodeData>>,
        edges: &[EdgeInput],
        weighted: bool,
        lsn: u64,
        policy: CompactionPolicy,
    ) -> Result<Self, BulkError> {
        Self::bulk_with_hidden(nodes, Vec::new(), edges, weighted, lsn, policy)
    }

    /// As [`Graph::bulk`], with some nodes present but not visible: bit `i` of `hidden` set
    /// means node `i` exists (resolvable by label and key, its edges stored) but is invisible
    /// until a transaction upserts it, like a node an edge pointed at before its row arrived.
    pub fn bulk_with_hidden(
        nodes: Vec<Option<NodeData>>,
        hidden: Vec<u64>,
        edges: &[EdgeInput],
        weighted: bool,
        lsn: u64,
        policy: CompactionPolicy,
    ) -> Result<Self, BulkError> {
        let node_count = u32::try_from(nodes.len()).map_err(|_| BulkError::TooManyNodes(nodes.len()))?;
        let store = NodeStore::from_nodes(nodes).map_err(|(label, key)| BulkError::DuplicateKey { label, key })?;
        let csr = Csr::build(node_count, edges, weighted)?;
        let mut view = GraphView::new(csr, lsn);
        view.nodes = store;
        if hidden.iter().any(|&w| w != 0) {
            let is_hidden = |n: NodeId| hidden.get(n.index() >> 6).is_some_and(|w| w & (1 << (n.0 & 63)) != 0);
            view.edge_count = edges
                .iter()
                .filter(|e| !is_hidden(e.source) && !is_hidden(e.target))
                .count();
            view.base_deleted = Some(Arc::new(hidden));
        }
        Ok(Self::from_view(view, policy))
    }

    /// A graph starting from a loaded snapshot's view.
    pub fn from_view(view: GraphView, policy: CompactionPolicy) -> Self {
        Graph {
            current: GraphReader(Arc::new(RwLock::new(Arc::new(view)))),
            policy,
            since_compaction: None,
            generation: 0,
        }
    }

    /// As [`Graph::new`] with explicit compaction limits.
    pub fn with_policy(base: Csr, lsn: u64, policy: CompactionPolicy) -> Self {
        Graph {
            current: GraphReader(Arc::new(RwLock::new(Arc::new(GraphView::new(base, lsn))))),
            policy,
            since_compaction: None,
            generation: 0,
        }
    }

    /// Changes the compaction limits.
    pub fn set_policy(&mut self, policy: CompactionPolicy) {
        self.policy = policy;
    }

    /// The current view. Cheap (one reference count); hold it for a whole query.
    pub fn view(&self) -> Arc<GraphView> {
        self.current.view()
    }

    /// A handle for readers on other threads: it always yields the latest published view.
    pub fn reader(&self) -> GraphReader {
        self.current.clone()
    }

    fn publish(&self, view: Arc<GraphView>) {
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Whether overlays passed the soft limit and a compaction should start.
    pub fn needs_compaction(&self) -> bool {
        self.since_compaction.is_none() && self.view().overlay_edges >= self.policy.soft_limit
    }

    /// Why the graph refuses changes, if it does.
    pub fn read_only_reason(&self) -> Option<String> {
        let pending = self.view().overlay_edges;
        (pending >= self.policy.hard_limit).then(|| {
            format!(
                "{pending} overlay edge changes reached the hard limit of {} before compaction caught up",
                self.policy.hard_limit
            )
        })
    }

    /// Applies one transaction atomically and publishes the resulting view at `lsn`. On error
    /// nothing is applied. Only one writer may call this at a time (it takes `&mut self`).
    pub fn apply(&mut self, lsn: u64, mutations: &[Mutation]) -> Result<Arc<GraphView>, ApplyError> {
        let mut txn = self.begin(lsn)?;
        for m in mutations {
            txn.push(m.clone())?;
        }
        txn.commit()
    }

    /// Starts a transaction that will be published at `lsn`. Dropping it without
    /// [`Txn::commit`] discards it.
    pub fn begin(&mut self, lsn: u64) -> Result<Txn<'_>, ApplyError> {
        if let Some(reason) = self.read_only_reason() {
            return Err(ApplyError::ReadOnly { reason });
        }
        let cur = self.view();
        if lsn <= cur.lsn {
            return Err(ApplyError::StaleLsn { lsn, current: cur.lsn });
        }
        let b = Builder {
            chunks: cur.chunks.as_ref().clone(),
            view: (*cur).clone(),
        };
        Ok(Txn {
            graph: self,
            b,
            log: Vec::new(),
            lsn,
        })
    }

    fn build(cur: &GraphView, lsn: u64, mutations: &[Mutation]) -> Result<GraphView, ApplyError> {
        let mut b = Builder {
            chunks: cur.chunks.as_ref().clone(),
            view: cur.clone(),
        };
        for m in mutations {
            b.apply(m)?;
        }
        Ok(b.finish(lsn))
    }

    /// Starts a compaction of the current view; run [`CompactionJob::build`] anywhere, then
    /// [`Graph::finish_compaction`]. Transactions applied meanwhile are kept and replayed.
    pub fn begin_compaction(&mut self) -> CompactionJob {
        let view = self.view();
        self.since_compaction = Some((view.lsn, Vec::new()));
        self.generation += 1;
        CompactionJob {
            view,
            generation: self.generation,
        }
    }

    /// Swaps in a finished compaction: the fresh CSR plus every transaction applied since the
    /// compaction began, replayed in order, published as one view at the current LSN.
    pub fn finish_compaction(&mut self, done: Compacted) -> Result<Arc<GraphView>, ApplyError> {
        if done.generation != self.generation || self.since_compaction.is_none() {
            return Err(ApplyError::StaleCompaction);
        }
        let (_, log) = self.since_compaction.take().unwrap_or_default();
        let mut view = GraphView::new(done.csr, done.lsn);
        view.edge_count = done.visible_edges;
        view.nodes = done.nodes;
        if done.deleted.iter().any(|&w| w != 0) {
            view.base_deleted = Some(Arc::new(done.deleted));
        }
        for (lsn, txn) in &log {
            view = Self::build(&view, *lsn, txn)?;
        }
        let view = Arc::new(view);
        self.publish(view.clone());
        Ok(view)
    }

    /// Compacts now, on this thread.
    pub fn compact(&mut self) -> Result<Arc<GraphView>, ApplyError> {
        let done = self.begin_compaction().build();
        self.finish_compaction(done)
    }
}
