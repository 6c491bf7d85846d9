//! Versioned graph views: an immutable CSR base plus copy-on-write overlays, published
//! atomically per transaction.
//!
//! A [`GraphView`] is immutable and shared (`Arc`); readers keep one for as long as a query
//! runs and never block the writer. [`Graph::apply`] (or [`Graph::begin`] … [`Txn::commit`])
//! builds the next view from the current one and publishes it with a pointer swap, so readers
//! see whole transactions or nothing.
//!
//! Where things live:
//! - `table`: per changed node a chain of versions of its overlay state (edges, tombstone),
//!   shared by every view of one base; a view reads the newest version at or below its
//!   sequence number. A transaction installs one version per node it touched.
//! - `delta`: a node's overlay edges per direction — a few inline, the rest in a shared
//!   append-only buffer (`append`), deletions as positions — so a transaction costs O(its
//!   changes), never O(a node's degree).
//! - `txn`: mutations and the transaction builder; `graph`: the single writer, publishing and
//!   compaction.
//!
//! Not for: node keys and data (`nodes`), queries (`query`), files (`snapshot`).

mod append;
mod delta;
mod graph;
mod table;
mod txn;

pub use graph::{BulkError, Compacted, CompactionJob, CompactionPolicy, Graph, GraphReader};
pub use txn::{diff, Ahead, ApplyError, Mutation, Txn};

use crate::nodes::{FilterId, FilterValueId, NodeData, NodeKey, NodeLabel, NodeStore, Overrides, Slot, TenantId};
use crate::query::{Direction, Topology};
use crate::{Csr, EdgeInput, EdgeLabel, NodeId};
use delta::{NodeDelta, Row};
use std::sync::Arc;
use table::{Guard, Mark, NodeState, Table, Version, RESTORED, TOMBSTONE};

/// A hash map keyed by node ids (already well spread), hashed with one multiplication: the
/// writer's own maps, whose keys no client chooses freely enough to matter.
type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`].
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high half depends on every bit of the id: it picks the bucket (ids
        // that share their low bits would share buckets otherwise).
        self.0.rotate_left(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Synchronisation types of the append-only buffer (loom's in its model test).
mod shim {
    pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
    pub(crate) use std::sync::Arc;

    /// One slot of an append-only buffer.
    #[repr(transparent)]
    pub(crate) struct Slot<T>(std::cell::UnsafeCell<std::mem::MaybeUninit<T>>);

    impl<T: Copy> Slot<T> {
        pub(crate) fn empty() -> Self {
            Slot(std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()))
        }

        pub(crate) fn full(v: T) -> Self {
            Slot(std::cell::UnsafeCell::new(std::mem::MaybeUninit::new(v)))
        }

        /// # Safety
        /// Nothing reads or writes this slot meanwhile.
        pub(crate) unsafe fn write(&self, v: T) {
            // SAFETY: exclusive access, by the caller's contract.
            unsafe { (*self.0.get()).write(v) };
        }

        /// # Safety
        /// The slot was written, and is not written meanwhile.
        pub(crate) unsafe fn read(&self) -> T {
            // SAFETY: initialised and not written concurrently, by the caller's contract.
            unsafe { (*self.0.get()).assume_init() }
        }
    }

    /// The first `len` slots as values.
    ///
    /// # Safety
    /// Those slots were written and are not written while the slice lives.
    pub(crate) unsafe fn initialized<T>(slots: &[Slot<T>], len: usize) -> &[T] {
        debug_assert!(len <= slots.len());
        // SAFETY: `Slot<T>` is `repr(transparent)` over `UnsafeCell<MaybeUninit<T>>`, both
        // `repr(transparent)` over `T`; the first `len` are initialised and not mutated while
        // the borrow lives (caller's contract).
        unsafe { std::slice::from_raw_parts(slots.as_ptr() as *const T, len) }
    }
}

/// An immutable version of the graph, at the LSN of the last transaction applied to it.
#[derive(Debug, Clone)]
pub struct GraphView {
    base: Arc<Csr>,
    /// Overlay versions of every view of this base.
    table: Arc<Table>,
    /// This view reads versions at or below this sequence number.
    seq: u64,
    /// Keeps `seq` registered as live while the view exists.
    guard: Arc<Guard>,
    /// Nodes deleted when the base was compacted (absent: none).
    base_deleted: Option<Arc<Vec<u64>>>,
    /// Nodes deleted since the base (tombstones in the table).
    deleted: usize,
    /// Nodes of `base_deleted`, or added absent, restored since.
    restored: usize,
    /// Nodes added absent since the base (placeholders: [`Mark::Absent`], no version).
    absent: usize,
    /// Nodes whose versions hold data set after their first (`NodeState::data`).
    overridden: usize,
    nodes: NodeStore,
    pub(crate) node_count: u32,
    edge_count: usize,
    overlay_edges: usize,
    lsn: u64,
}

impl GraphView {
    /// A view of `base` with no changes, at `lsn`.
    pub fn new(base: Csr, lsn: u64) -> Self {
        let node_count = base.node_count();
        let edge_count = base.edge_count();
        let table = Table::new();
        GraphView {
            base: Arc::new(base),
            guard: table.register(0),
            table,
            seq: 0,
            base_deleted: None,
            deleted: 0,
            restored: 0,
            absent: 0,
            overridden: 0,
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
    pub(crate) fn compact_edges(&self) -> Result<Csr, crate::CsrError> {
        let mut edges = Vec::with_capacity(self.edge_count);
        let mut weighted = self.base.is_weighted();
        for u in 0..self.node_count {
            self.side(NodeId(u), Direction::Out, &mut |m, label, weight| {
                weighted |= weight != 1.0;
                edges.push(EdgeInput {
                    source: NodeId(u),
                    target: NodeId(m),
                    label,
                    weight,
                });
            });
        }
        Csr::build(self.node_count, &edges, weighted)
    }

    /// This view on a table of its own (every changed node's state copied as one version),
    /// for a second writer: a table has one writer, and only its newest view can be written
    /// on. O(node ids + changed nodes); shared edge buffers stay shared (their slots are
    /// claimed atomically, so two writers never write one slot).
    pub(crate) fn rebased(&self) -> GraphView {
        let table = Table::new();
        for n in 0..self.node_count {
            let marks = table::MARKS
                .into_iter()
                .filter(|&m| self.table.marked(n, m))
                .fold(0u8, |acc, m| acc | m.bit());
            match self.state(n) {
                Some(state) => table.install(n, 1, state.clone(), marks, 0),
                None if marks != 0 => table.mark(n, marks),
                None => {}
            }
        }
        table.installed(1);
        GraphView {
            guard: table.register(1),
            table,
            seq: 1,
            ..self.clone()
        }
    }

    /// `n`'s overlay state in this view, if it has one.
    #[inline]
    fn state(&self, n: u32) -> Option<&NodeState> {
        self.table.state(n, self.seq)
    }

    /// Whether `n` exists and is not deleted, given its overlay flags if it has any
    /// (`flags` is asked only when the counts say deletions or restorations exist).
    #[inline]
    fn live_with(&self, n: u32, flags: impl FnOnce() -> u8) -> bool {
        if n >= self.node_count {
            return false;
        }
        if self.deleted == 0 && self.restored == 0 {
            return !self.hidden_bit(n);
        }
        let f = flags();
        if self.hidden_bit(n) && f & RESTORED == 0 {
            return false;
        }
        f & TOMBSTONE == 0
    }

    /// Whether `n` is hidden unless a version restores it: deleted in the base's bitset, or
    /// added absent.
    #[inline]
    fn hidden_bit(&self, n: u32) -> bool {
        self.base_deleted_bit(n) || (self.absent > 0 && self.table.marked(n, Mark::Absent))
    }

    #[inline]
    fn base_deleted_bit(&self, n: u32) -> bool {
        self.base_deleted
            .as_deref()
            .is_some_and(|b| b.get((n >> 6) as usize).is_some_and(|w| w & (1 << (n & 63)) != 0))
    }

    #[inline]
    fn live(&self, n: u32) -> bool {
        self.live_with(n, || {
            if self.table.marked(n, Mark::Liveness) {
                self.state(n).map_or(0, |s| s.flags)
            } else {
                0
            }
        })
    }

    /// Dense bitset of the nodes that are not visible.
    pub(crate) fn deleted_bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; (self.node_count as usize).div_ceil(64)];
        for n in 0..self.node_count {
            if !self.live(n) {
                bits[(n >> 6) as usize] |= 1 << (n & 63);
            }
        }
        bits
    }

    /// The data of node `n`, if it has any.
    pub fn node(&self, n: NodeId) -> Option<Arc<NodeData>> {
        self.nodes.data(n.0, self)
    }

    /// Visible nodes per label: `counts[label]`, as long as the highest label with a visible
    /// node. O(nodes) over the base's label column, without building any node's data.
    pub fn visible_nodes_per_label(&self) -> Vec<u64> {
        self.nodes.count_labels(self.node_count, |n| self.live(n), self)
    }

    /// The label and key of node `n` (visible or not), if it has data.
    pub fn node_key(&self, n: NodeId) -> Option<(NodeLabel, NodeKey)> {
        self.nodes.label_key(n.0, self)
    }

    /// Heap bytes of the node store's base columns and index.
    pub fn node_base_bytes(&self) -> usize {
        self.nodes.base_heap_bytes()
    }

    /// The node with this label and key, visible or not.
    pub fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<NodeId> {
        self.nodes.resolve(label, key, self).map(NodeId)
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
        self.nodes.to_columns(self.node_count, self, self.overridden > 0)
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
        v.base_deleted = deleted
            .map(|d| mask_to(d, v.node_count))
            .filter(|d| d.iter().any(|&w| w != 0))
            .map(Arc::new);
        v.edge_count = visible_edges;
        v
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

    /// `n`'s base row in one direction (Out or In); empty for nodes added since the base.
    #[inline]
    fn row(&self, n: NodeId, dir: Direction) -> Row<'_> {
        base_row(&self.base, n, dir)
    }

    /// Edges of `n` in one direction (Out or In), base minus deletions plus additions.
    #[inline]
    fn side(&self, n: NodeId, dir: Direction, f: &mut impl FnMut(u32, EdgeLabel, f64)) {
        delta::for_each_edge(self.row(n, dir), self.delta(n.0, dir), f)
    }

    /// `n`'s overlay edges in `dir` (Out or In), if it has any.
    #[inline]
    fn delta(&self, n: u32, dir: Direction) -> Option<&NodeDelta> {
        if !self.table.marked_dir(n, dir) {
            return None;
        }
        Some(self.state(n)?.side(dir))
    }

    /// Neighbours of a node with overlay edges in `dir` (or added since the base), given its
    /// state in this view. Kept out of line so the common path stays small.
    #[inline(never)]
    fn changed_neighbors(&self, n: NodeId, dir: Direction, state: Option<&NodeState>, mut f: impl FnMut(NodeId)) {
        let mut one = |d: Direction| {
            delta::for_each_neighbor(self.row(n, d).nodes, state.map(|s| s.side(d)), &mut |m| f(NodeId(m)));
        };
        match dir {
            Direction::Both => {
                one(Direction::Out);
                one(Direction::In);
            }
            d => one(d),
        }
    }
}

/// `bits` without any bit at or past `node_count` (a node added later must not start
/// deleted because a file said so).
pub(crate) fn mask_to(mut bits: Vec<u64>, node_count: u32) -> Vec<u64> {
    let words = (node_count as usize).div_ceil(64);
    bits.truncate(words);
    if node_count & 63 != 0 {
        if let Some(last) = bits.get_mut(words - 1) {
            *last &= (1u64 << (node_count % 64)) - 1;
        }
    }
    bits
}

/// `n`'s row of `base` in `dir` (Out or In); empty past the base's nodes.
#[inline]
fn base_row(base: &Csr, n: NodeId, dir: Direction) -> Row<'_> {
    if n.0 >= base.node_count() {
        return Row::default();
    }
    let (nodes, labels, weights) = base_adjacency(base, dir).edges(n);
    Row { nodes, labels, weights }
}

/// The adjacency of `base` that `dir` (Out or In) reads.
#[inline]
fn base_adjacency(base: &Csr, dir: Direction) -> &crate::Adjacency {
    if dir == Direction::In {
        base.reverse()
    } else {
        base.forward()
    }
}

impl Overrides for GraphView {
    #[inline]
    fn slot(&self, n: u32) -> Option<&Slot> {
        if self.overridden == 0 || !self.table.marked(n, Mark::Data) {
            return None;
        }
        self.state(n)?.data.as_deref()
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
        self.base_deleted.is_none() && self.deleted == 0 && self.absent == 0
    }

    #[inline]
    fn tenant_of(&self, n: NodeId) -> Option<TenantId> {
        self.nodes.tenant_of(n.0, self.table.marked(n.0, Mark::Data), self)
    }

    #[inline]
    fn is_visible(&self, n: NodeId) -> bool {
        self.live(n.0)
    }

    #[inline]
    fn for_each_edge(&self, n: NodeId, dir: Direction, mut f: impl FnMut(NodeId, EdgeLabel, f64)) {
        let mut g = |m: u32, l: EdgeLabel, w: f64| f(NodeId(m), l, w);
        match dir {
            Direction::Both => {
                self.side(n, Direction::Out, &mut g);
                self.side(n, Direction::In, &mut g);
            }
            d => self.side(n, d, &mut g),
        }
    }

    #[inline(always)]
    fn for_each_neighbor(&self, n: NodeId, dir: Direction, f: impl FnMut(NodeId)) {
        self.for_each_neighbor_ahead(n, dir, OverlayAhead::Unknown, f);
    }

    type Ahead = OverlayAhead;

    #[inline(always)]
    fn for_each_neighbor_ahead(&self, n: NodeId, dir: Direction, ahead: OverlayAhead, mut f: impl FnMut(NodeId)) {
        // The common node of a traversal: unchanged in `dir`, found so by the prefetch stages
        // (a base row, so a `Base` of another node past the base is not trusted).
        let in_base = n.0 < self.base.node_count();
        if ahead == OverlayAhead::Base && in_base {
            self.base.for_each_neighbor(n, dir, f);
            return;
        }
        let slot = self.table.marked_slot(n.0, dir);
        if in_base && slot.is_none() {
            self.base.for_each_neighbor(n, dir, f);
            return;
        }
        let head = match slot {
            Some(slot) => Table::load(slot),
            None => self.table.head(n.0),
        };
        let state = table::walk(head, self.seq).map(|v| &v.state);
        // The common change, edges added and none deleted: the base's own loop, then the
        // additions (inline, or a shared buffer's prefix), with no check per edge.
        if let (true, Some(s), Direction::Out | Direction::In) = (in_base, state, dir) {
            let delta = s.side(dir);
            if delta.deleted.is_none() {
                self.base.for_each_neighbor(n, dir, &mut f);
                delta.added.as_slice().iter().for_each(|e| f(NodeId(e.other)));
                return;
            }
        }
        if in_base && state.is_none() {
            // Marked by a later version only.
            self.base.for_each_neighbor(n, dir, f);
            return;
        }
        self.changed_neighbors(n, dir, state, f);
    }

    #[inline(always)]
    fn prefetch(&self, n: NodeId, dir: Direction, ahead: OverlayAhead) -> OverlayAhead {
        let in_base = n.0 < self.base.node_count();
        if in_base {
            self.base.prefetch(n, dir, ());
        }
        if ahead == OverlayAhead::Base {
            return ahead;
        }
        // Second stage for changed nodes: their newest version (the slot pointing to it was
        // prefetched by the first); the walk to this view's version happens when it is read.
        let head = self.table.marked_slot(n.0, dir).and_then(Table::load);
        if let Some(v) = head {
            // Both directions' edges lie within the version's first 112 bytes.
            let p = v as *const Version as *const u8;
            crate::query::prefetch_ptr(p);
            crate::query::prefetch_ptr(p.wrapping_add(64));
        }
        OverlayAhead::of(in_base, head.is_some())
    }

    #[inline(always)]
    fn prefetch_index(&self, n: NodeId, dir: Direction) -> OverlayAhead {
        let in_base = n.0 < self.base.node_count();
        if in_base {
            self.base.prefetch_index(n, dir);
        }
        // The slot pointing to the node's newest version, if it has overlay edges in `dir`
        // in any version; read by the next stage.
        let slot = self.table.marked_slot(n.0, dir);
        if let Some(s) = slot {
            crate::query::prefetch_ptr(s);
        }
        OverlayAhead::of(in_base, slot.is_some())
    }
}

/// What the prefetch stages of a traversal learnt about a node of a [`GraphView`] in one
/// direction (one byte, so a traversal's ring of them stays in a cache line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverlayAhead {
    /// Nothing: look it up.
    #[default]
    Unknown,
    /// No overlay edges in the direction in any version: the base row is all there is.
    Base,
    /// Overlay edges in some version, or a node past the base: read through the table.
    Changed,
}

impl OverlayAhead {
    /// A node inside the base (`in_base`) with or without overlay edges in the direction.
    #[inline(always)]
    fn of(in_base: bool, marked: bool) -> OverlayAhead {
        if in_base && !marked {
            OverlayAhead::Base
        } else {
            OverlayAhead::Changed
        }
    }
}
