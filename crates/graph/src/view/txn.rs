//! Transactions: the mutations a transaction is made of, and the builder that turns the
//! current view plus mutations into the next view.
//!
//! Not for: publishing or compaction (`graph`), or the layout of overlay edges (`delta`).

use super::delta::{EdgeIndex, EdgeRec, Found, NodeDelta};
use super::table::{Mark, NodeState, RESTORED, TOMBSTONE};
use super::{base_row, delta, GraphView};
use crate::nodes::{NodeData, NodeKey, NodeLabel, Overrides, Slot};
use crate::query::Direction;
use crate::{EdgeInput, EdgeLabel, NodeId};
use std::sync::Arc;

pub mod diff;
mod touched;

use touched::{Pending, Touched};

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
    /// Compaction could not build a CSR of the view (an invariant broke; the current view is
    /// kept).
    #[error("compaction failed: {0}")]
    Compaction(String),
    /// Every node id (2^32 - 1 of them) is taken.
    #[error("the graph has no node id left (2^32 - 1 nodes)")]
    TooManyNodes,
    /// The transaction's LSN is not after the current view's.
    #[error("transaction LSN {lsn} is not after the view's LSN {current}")]
    StaleLsn {
        /// The transaction's LSN.
        lsn: u64,
        /// The current view's LSN.
        current: u64,
    },
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

/// The stages of [`Txn::prefetch_node`], in the order they run for one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// The node's overlay slot and its copy in this transaction.
    Node,
    /// Its newest overlay version (and base row, for a removal).
    State,
}

/// One transaction being built on top of the current view; see [`super::Graph::begin`].
///
/// Every call applies at once to the transaction's own state (later calls see earlier ones);
/// nothing is visible to readers until [`Txn::commit`]. An error leaves the transaction as it
/// was before the failing call; dropping the transaction discards it.
pub struct Txn<'g> {
    pub(super) graph: &'g mut super::Graph,
    pub(super) b: Builder,
    pub(super) log: Vec<Mutation>,
    pub(super) lsn: u64,
    pub(super) capture: Option<diff::Capture>,
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
        // An edge change reads both endpoints' overlay state: their loads start together, so
        // the two cache misses overlap.
        self.b.prefetch(&m, false);
        self.b.prefetch(&m, true);
        self.push_one(m)
    }

    fn push_one(&mut self, m: Mutation) -> Result<(), ApplyError> {
        // Mutations either fail before changing anything or succeed whole.
        if let Some(c) = &mut self.capture {
            c.note(&self.b, &m);
        }
        self.b.apply(&m, &mut self.graph.index)?;
        self.log.push(m);
        Ok(())
    }

    /// Applies `ms` in order, as [`Txn::push`] each (an error leaves those before the failing
    /// one applied). For many mutations at once (a restart's replay): what each edge change
    /// reads is prefetched a few mutations ahead, so the cache misses of random endpoints
    /// overlap instead of adding up.
    pub fn push_all(&mut self, ms: &mut Vec<Mutation>) -> Result<(), ApplyError> {
        const FAR: usize = 16;
        const NEAR: usize = 8;
        for i in 0..ms.len() {
            // The mutations themselves: written by another thread (a replay's reader), their
            // lines are not in this core's cache.
            crate::query::prefetch_ptr(ms.as_ptr().wrapping_add(i + 2 * FAR));
            if let Some(m) = ms.get(i + FAR) {
                self.b.prefetch(m, false);
            }
            if let Some(m) = ms.get(i + NEAR) {
                self.b.prefetch(m, true);
            }
            self.push_one(std::mem::replace(&mut ms[i], Mutation::AddNode))?;
        }
        ms.clear();
        Ok(())
    }

    /// A hint for resolving (`label`, `key`) a little later: starts loading its key index
    /// slot (`node: false`); or reads that slot, loaded by an earlier call, starts loading the
    /// columns of the node it names and returns it (`node: true`; the node the key probably
    /// names, for [`Txn::prefetch_node`]). Changes nothing; a key of a node added since the
    /// base is not looked for.
    pub fn prefetch_key(&self, label: NodeLabel, key: &NodeKey, node: bool) -> Option<NodeId> {
        self.b.view.nodes.prefetch_key(label, key, node).map(NodeId)
    }

    /// A hint for a change applied a little later: starts loading what changing `n`'s edges
    /// in `dir` reads (`removal`: an edge removed, whose base row is scanned). Call
    /// [`Ahead`]'s stages in order for a change, a little apart (each reads what the one
    /// before loaded), so the cache misses of several changes overlap instead of adding up.
    /// Changes nothing.
    pub fn prefetch_node(&self, n: NodeId, dir: Direction, removal: bool, stage: Ahead) {
        self.b.prefetch_end(n, dir, stage, removal);
    }

    /// Moves the LSN the transaction commits at forward to `lsn` (never back): a replay that
    /// keeps one transaction open across many logged ones commits at the last one's.
    pub fn advance_lsn(&mut self, lsn: u64) {
        self.lsn = self.lsn.max(lsn);
    }

    /// The id of the node with this label and key. A node never seen gets a new id, absent
    /// (invisible) until [`Txn::upsert_node`] gives it data: edges may point at it meanwhile.
    pub fn node_id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        if let Some(n) = self.b.view.nodes.resolve(label, key, &self.b) {
            return NodeId(n);
        }
        let id = NodeId(self.b.view.node_count);
        let data = NodeData::bare(label, key.clone());
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
        let Some(id) = self.b.view.nodes.resolve(data.label, &data.key, &self.b).map(NodeId) else {
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
        let id = NodeId(self.b.view.nodes.resolve(label, key, &self.b)?);
        if !self.b.visible(id) {
            return None;
        }
        self.push(Mutation::RemoveNode(id)).ok()?;
        Some(id)
    }

    /// The node with this label and key in the transaction's state, visible or not.
    pub fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<NodeId> {
        self.b.view.nodes.resolve(label, key, &self.b).map(NodeId)
    }

    /// The data of node `id` in the transaction's state, if it is visible.
    pub fn node(&self, id: NodeId) -> Option<Arc<NodeData>> {
        if id.0 >= self.b.view.node_count || !self.b.visible(id) {
            return None;
        }
        self.b.view.nodes.data(id.0, &self.b)
    }

    /// Every stored out-edge of `n` in the transaction's state, including edges to nodes that
    /// are not visible (they are rows of their own tables).
    pub fn out_edges(&self, n: NodeId) -> Vec<EdgeInput> {
        let mut out = Vec::new();
        self.b.side(n, Direction::Out, &mut |m, label, weight| {
            out.push(EdgeInput {
                source: n,
                target: NodeId(m),
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
                target: NodeId(m),
                label,
                weight,
            };
            if found.is_none() && pred(&e) {
                found = Some(e);
            }
        });
        found
    }

    /// A stored edge `source → target` with this label (any weight), found without scanning
    /// long edge lists: the shorter of the two endpoints' lists is searched (through the
    /// writer's index when it is long).
    pub fn find_edge(&mut self, source: NodeId, target: NodeId, label: EdgeLabel) -> Option<EdgeInput> {
        let count = self.b.view.node_count;
        if source.0 >= count || target.0 >= count {
            return None;
        }
        let found = self.b.find_any_weight(source, target, label, &mut self.graph.index)?;
        Some(EdgeInput {
            source,
            target,
            label,
            weight: found,
        })
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

    /// Starts recording what the transaction changes in the visible subgraphs (see
    /// [`diff`]); [`Txn::take_diff`] then returns the changes since the last call.
    pub fn start_diff(&mut self) {
        self.capture = Some(diff::Capture::new(self.log.len()));
    }

    /// The changes to the visible subgraphs since [`Txn::start_diff`] or the last call
    /// (nothing if no diff was started): call at each source transaction's end.
    pub fn take_diff(&mut self) -> Vec<diff::Scoped> {
        match &mut self.capture {
            Some(c) => c.take(&self.b, &self.log),
            None => Vec::new(),
        }
    }

    /// The mutations applied so far, in order (what [`crate::wire`] logs).
    pub fn mutations(&self) -> &[Mutation] {
        &self.log
    }

    /// Publishes the transaction as the graph's new view.
    pub fn commit(self) -> Result<Arc<GraphView>, ApplyError> {
        self.commit_logged().map(|(view, _)| view)
    }

    /// As [`Txn::commit`], also returning the transaction's mutations (for the change log).
    pub fn commit_logged(self) -> Result<(Arc<GraphView>, Vec<Mutation>), ApplyError> {
        let Txn { graph, b, log, lsn, .. } = self;
        let view = Arc::new(b.finish(lsn));
        // The previous view's versions stay for those who hold it.
        if let Some(backlog) = &graph.since_compaction {
            backlog.push(lsn, log.clone());
        }
        graph.publish(view.clone());
        Ok((view, log))
    }
}

/// The builder's state: a node's pending copy, else the base view's version.
impl Overrides for Builder {
    #[inline]
    fn slot(&self, n: u32) -> Option<&Slot> {
        // The count includes this transaction's overrides: none anywhere is the common case.
        if self.view.overridden == 0 || n >= self.view.node_count {
            return None;
        }
        match self.pending.get(n) {
            Some(p) => p.state.data.as_deref(),
            None => self.view.slot(n),
        }
    }
}

/// Builds the next view from the current one: the nodes it touches get a private copy of
/// their state, installed as new versions by [`Builder::finish`] (nothing is shared before,
/// so dropping the builder discards everything).
pub(super) struct Builder {
    pub(super) view: GraphView,
    pending: Touched,
    /// Nodes whose data this transaction set: marked at the end, with no version of their own.
    data_set: Vec<u32>,
    /// The first node id this transaction added.
    first_added: u32,
}

impl Builder {
    pub(super) fn new(from: &GraphView) -> Self {
        Builder {
            view: from.clone(),
            pending: Touched::default(),
            data_set: Vec::new(),
            first_added: from.node_count,
        }
    }

    /// Installs the touched nodes' states as versions and returns the new view at `lsn`.
    pub(super) fn finish(self, lsn: u64) -> GraphView {
        let Builder {
            mut view,
            pending,
            data_set,
            ..
        } = self;
        let seq = view.seq + 1;
        for n in data_set {
            view.table.mark(n, Mark::Data.bit());
        }
        // Versions no live view (this builder's own base view included) reaches are freed.
        let min_live = view.table.min_live().unwrap_or(view.seq).min(view.seq);
        // What each install frees is loaded a few installs ahead (misses overlap).
        const AHEAD: usize = 8;
        let mut states = pending.into_states();
        for &(n, _) in states.iter().take(AHEAD) {
            view.table.prefetch_prunable(n);
        }
        for i in 0..states.len() {
            if let Some(&(m, _)) = states.get(i + AHEAD) {
                view.table.prefetch_prunable(m);
            }
            let (n, p) = &mut states[i];
            view.table
                .install(*n, seq, std::mem::take(&mut p.state), p.marks, min_live);
        }
        view.table.installed(seq);
        view.guard = view.table.register(seq);
        view.seq = seq;
        view.lsn = lsn;
        view
    }

    /// `n`'s state in the builder: its pending copy, or the base view's version.
    fn state(&self, n: u32) -> Option<&NodeState> {
        match self.pending.get(n) {
            Some(p) => Some(&p.state),
            None => self.view.state(n),
        }
    }

    /// Starts loading what applying edge change `m` reads of its endpoints: their CSR offsets,
    /// overlay head slots and entries in the touched nodes' index, and with `near` (a few
    /// mutations later, once those are in cache) their base rows, newest versions and the
    /// copies this transaction made.
    fn prefetch(&self, m: &Mutation, near: bool) {
        let (removal, e) = match m {
            Mutation::AddEdge(e) => (false, e),
            Mutation::RemoveEdge(e) => (true, e),
            _ => return,
        };
        let stage = if near { Ahead::State } else { Ahead::Node };
        for (n, dir) in [(e.source, Direction::Out), (e.target, Direction::In)] {
            self.prefetch_end(n, dir, stage, removal);
        }
    }

    /// One [`Ahead`] stage for endpoint `n`, its edges in `dir`.
    fn prefetch_end(&self, n: NodeId, dir: Direction, stage: Ahead, removal: bool) {
        use crate::query::Topology;
        if n.0 >= self.view.node_count {
            return;
        }
        match stage {
            Ahead::Node => {
                self.view.prefetch_index(n, dir);
                self.pending.prefetch(n.0, false);
            }
            Ahead::State => {
                // Copied already: its version is not read again.
                if !self.pending.prefetch(n.0, true) {
                    self.view.prefetch(n, dir, Default::default());
                }
                // A removal scans the row, and reads label and weight where it matches.
                if removal && n.0 < self.view.base.node_count() {
                    super::base_adjacency(&self.view.base, dir).prefetch_row(n, true);
                }
            }
        }
    }

    /// `n`'s state made writable (copied into the builder on first write), with `marks` added.
    fn state_mut(&mut self, n: u32, marks: u8) -> &mut NodeState {
        let view = &self.view;
        let p = self.pending.get_or_insert_with(n, view.node_count, || Pending {
            state: view
                .state(n)
                .map(|s| {
                    s.deltas.0.iter().for_each(NodeDelta::prefetch_shared);
                    s.clone()
                })
                .unwrap_or_default(),
            marks: 0,
        });
        p.marks |= marks;
        &mut p.state
    }

    /// Calls `f(other, label, weight)` for each stored edge of `n` in `dir` (Out or In) in the
    /// builder's state, whatever the endpoints' visibility.
    fn side(&self, n: NodeId, dir: Direction, f: &mut impl FnMut(u32, EdgeLabel, f64)) {
        if n.0 >= self.view.node_count {
            return;
        }
        delta::for_each_edge(base_row(&self.view.base, n, dir), self.delta(n.0, dir), f)
    }

    /// `n`'s overlay edges in `dir` in the builder's state.
    fn delta(&self, n: u32, dir: Direction) -> Option<&NodeDelta> {
        Some(self.state(n)?.side(dir))
    }

    /// `n`'s tombstone and restoration flags in the builder's state.
    fn flags(&self, n: u32) -> u8 {
        self.state(n).map_or(0, |s| s.flags)
    }

    fn visible(&self, n: NodeId) -> bool {
        self.view.live_with(n.0, || self.flags(n.0))
    }

    /// Edges of `n` (a self-loop once) whose other end is visible.
    fn visible_incident(&self, n: NodeId) -> usize {
        let mut count = 0;
        self.side(n, Direction::Out, &mut |m, _, _| {
            if m == n.0 || self.visible(NodeId(m)) {
                count += 1;
            }
        });
        self.side(n, Direction::In, &mut |m, _, _| {
            if m != n.0 && self.visible(NodeId(m)) {
                count += 1;
            }
        });
        count
    }

    /// `n`'s overlay edges in `dir`, made writable and marked.
    fn delta_mut(&mut self, n: u32, dir: Direction) -> &mut NodeDelta {
        self.state_mut(n, Mark::of(dir).bit()).deltas.side_mut(dir)
    }

    fn add_edge(&mut self, e: EdgeInput, index: &mut EdgeIndex) -> Result<(), ApplyError> {
        for n in [e.source, e.target] {
            if n.0 >= self.view.node_count {
                return Err(ApplyError::NoSuchNode(n.0));
            }
        }
        if self.visible(e.source) && self.visible(e.target) {
            self.view.edge_count += 1;
        }
        for (n, other, dir) in [
            (e.source, e.target, Direction::Out),
            (e.target, e.source, Direction::In),
        ] {
            let degree = base_row(&self.view.base, n, dir).nodes.len();
            let rec = EdgeRec {
                other: other.0,
                label: e.label,
                weight: e.weight,
            };
            self.delta_mut(n.0, dir).add(rec, degree, index, (n.0, dir));
        }
        self.view.overlay_edges += 1;
        Ok(())
    }

    /// Where one stored edge `n → other` (in `dir`) with this label and weight is.
    fn find(
        &self,
        n: u32,
        other: u32,
        label: EdgeLabel,
        weight: f64,
        dir: Direction,
        index: &mut EdgeIndex,
    ) -> Option<Found> {
        index
            .find_by(
                (n, dir),
                base_row(&self.view.base, NodeId(n), dir),
                self.delta(n, dir),
                other,
                |e| e.same(other, label, weight),
            )
            .map(|(at, _)| at)
    }

    /// Number of stored edges of `n` in `dir`, an upper bound counting deletions.
    fn stored_len(&self, n: u32, dir: Direction) -> usize {
        base_row(&self.view.base, NodeId(n), dir).nodes.len()
            + self.delta(n, dir).map_or(0, |d| d.added.as_slice().len())
    }

    /// The weight of a stored edge `source → target` with `label`, any weight.
    fn find_any_weight(&self, source: NodeId, target: NodeId, label: EdgeLabel, index: &mut EdgeIndex) -> Option<f64> {
        // Search the shorter list; a weight is needed to name the edge, so walk the first
        // matching endpoint and label of the chosen side.
        let (n, other, dir) = if self.stored_len(source.0, Direction::Out) <= self.stored_len(target.0, Direction::In) {
            (source, target, Direction::Out)
        } else {
            (target, source, Direction::In)
        };
        index
            .find_by(
                (n.0, dir),
                base_row(&self.view.base, n, dir),
                self.delta(n.0, dir),
                other.0,
                |e| e.label == label,
            )
            .map(|(_, e)| e.weight)
    }

    fn remove_edge(&mut self, e: EdgeInput, index: &mut EdgeIndex) -> Result<(), ApplyError> {
        let missing = ApplyError::NoSuchEdge {
            from: e.source.0,
            target: e.target.0,
            label: e.label.0,
            weight: e.weight,
        };
        if e.source.0 >= self.view.node_count || e.target.0 >= self.view.node_count {
            return Err(missing);
        }
        // Found in both directions before changing either, so a failure changes nothing.
        let out = self.find(e.source.0, e.target.0, e.label, e.weight, Direction::Out, index);
        let inc = self.find(e.target.0, e.source.0, e.label, e.weight, Direction::In, index);
        let (Some(out), Some(inc)) = (out, inc) else {
            debug_assert!(out.is_none() && inc.is_none(), "forward and reverse overlays disagree");
            return Err(missing);
        };
        self.delta_mut(e.source.0, Direction::Out).remove(out);
        self.delta_mut(e.target.0, Direction::In).remove(inc);
        if self.visible(e.source) && self.visible(e.target) {
            self.view.edge_count = self.view.edge_count.saturating_sub(1);
        }
        self.view.overlay_edges += 1;
        Ok(())
    }

    pub(super) fn apply(&mut self, m: &Mutation, index: &mut EdgeIndex) -> Result<(), ApplyError> {
        match *m {
            Mutation::AddNode => {
                let id = self.view.node_count;
                self.view.node_count = id.checked_add(1).ok_or(ApplyError::TooManyNodes)?;
                self.view.table.unmark_unpublished(id);
                Ok(())
            }
            Mutation::RemoveNode(n) => {
                if !self.visible(n) {
                    return Err(ApplyError::NoSuchNode(n.0));
                }
                self.view.edge_count = self.view.edge_count.saturating_sub(self.visible_incident(n));
                if n.0 >= self.first_added && self.flags(n.0) == 0 {
                    // Added by this transaction and hidden in it (a placeholder): absent from
                    // birth, like a node of the base's deleted bitset, with a mark and no
                    // version. No published view holds the id yet, so marking it now is
                    // invisible to readers; a dropped transaction's mark is cleared when the
                    // id is added again.
                    self.view.table.mark(n.0, Mark::Absent.bit());
                    self.view.absent += 1;
                    return Ok(());
                }
                let st = self.state_mut(n.0, Mark::Liveness.bit());
                if st.flags & RESTORED != 0 {
                    st.flags &= !RESTORED;
                    self.view.restored -= 1;
                } else {
                    st.flags |= TOMBSTONE;
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
                let st = self.state_mut(n.0, Mark::Liveness.bit());
                if st.flags & TOMBSTONE != 0 {
                    st.flags &= !TOMBSTONE;
                    self.view.deleted -= 1;
                } else {
                    st.flags |= RESTORED;
                    self.view.restored += 1;
                }
                self.view.edge_count += self.visible_incident(n);
                Ok(())
            }
            Mutation::SetNode { id, ref data } => {
                if id.0 >= self.view.node_count {
                    return Err(ApplyError::NoSuchNode(id.0));
                }
                let current = self.slot(id.0).cloned();
                if let Some(slot) = self.view.nodes.set(id.0, current.as_ref(), data.clone()) {
                    if current.is_none() {
                        self.view.overridden += 1;
                    }
                    self.state_mut(id.0, Mark::Data.bit()).data = Some(Arc::new(slot));
                }
                self.data_set.push(id.0);
                Ok(())
            }
            Mutation::AddEdge(e) => self.add_edge(e, index),
            Mutation::RemoveEdge(e) => self.remove_edge(e, index),
        }
    }
}
