//! The single writer: holds the current view, publishes one per transaction, and folds
//! overlays into a fresh base (compaction) while transactions keep being applied.
//!
//! Not for: what a mutation does to a view (`txn`), or the overlay layout (`tree`, `delta`).

use super::delta::EdgeIndex;
use super::txn::{ApplyError, Builder, Mutation, Txn};
use super::GraphView;
use crate::nodes::{NodeData, NodeKey, NodeLabel, NodeStore};
use crate::{Csr, EdgeInput, NodeId};
use std::sync::{Arc, Mutex, RwLock};

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
    /// The transactions the writer applied since `view`, which the job replays onto its
    /// result (the writer appends, the job drains).
    backlog: Backlog,
}

/// Transactions applied while a compaction runs: the writer appends each one it commits, the
/// compaction's thread drains them in rounds, the writer replays what is left when it swaps
/// the result in.
#[derive(Debug, Default, Clone)]
pub(super) struct Backlog(Arc<Mutex<TxnLog>>);

impl Backlog {
    /// Appends a committed transaction.
    pub(super) fn push(&self, lsn: u64, mutations: Vec<Mutation>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((lsn, mutations));
    }

    /// Takes every transaction appended so far, oldest first.
    fn take(&self) -> TxnLog {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The compaction's thread stops catching up once a round replays fewer mutations than this:
/// the writer replays the rest when it swaps the result in, which then costs it about one
/// round's work, not all that was applied while the compaction ran.
const CATCH_UP_LEFT: usize = 20_000;

impl CompactionJob {
    /// Folds the job's view (the expensive part; no locks held), then replays onto the result
    /// what the writer applied meanwhile, in rounds, until little is left.
    pub fn build(self) -> Compacted {
        let folded = self.view.compact_edges().map_err(|e| e.to_string()).map(|csr| {
            let mut view = GraphView::new(csr, self.view.lsn);
            view.edge_count = self.view.edge_count;
            view.nodes = self.view.nodes.compacted(self.view.node_count, &*self.view);
            let deleted = self.view.deleted_bits();
            if deleted.iter().any(|&w| w != 0) {
                view.base_deleted = Some(Arc::new(deleted));
            }
            view
        });
        let mut index = EdgeIndex::default();
        let caught_up = folded.clone().map_err(ApplyError::Compaction).and_then(|base| {
            let claimed = base.table.claim(base.seq);
            debug_assert!(claimed, "a fresh table is free");
            let mut view = base;
            loop {
                let round = self.backlog.take();
                let replayed: usize = round.iter().map(|(_, m)| m.len()).sum();
                view = Graph::build_all(&view, &round, &mut index)?;
                if replayed < CATCH_UP_LEFT {
                    return Ok(view);
                }
            }
        });
        Compacted {
            base: folded,
            caught_up,
            index,
            generation: self.generation,
        }
    }
}

/// The result of [`CompactionJob::build`], to hand to [`Graph::finish_compaction`].
#[derive(Debug)]
pub struct Compacted {
    /// The fresh base at the compacted LSN (no overlay), or why it could not be built (an
    /// invariant broke).
    base: Result<GraphView, String>,
    /// The base with what was applied meanwhile replayed on it (most of it).
    caught_up: Result<GraphView, ApplyError>,
    /// Where edges sit in long lists of `caught_up`.
    index: EdgeIndex,
    generation: u64,
}

impl Compacted {
    /// The compacted view (at the LSN the compaction began), e.g. to write it as a snapshot
    /// before [`Graph::finish_compaction`]; `None` if the compaction failed.
    pub fn view(&self) -> Option<&GraphView> {
        self.base.as_ref().ok()
    }
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
    pub(super) since_compaction: Option<Backlog>,
    /// Incremented by every [`Graph::begin_compaction`]; only the newest job may finish.
    generation: u64,
    /// Where edges sit in long lists (the writer's own; cleared when the base changes).
    pub(super) index: EdgeIndex,
    /// The view the last compaction replaced, for the caller to free elsewhere.
    retired: Option<Arc<GraphView>>,
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
        // The node store and the CSR are independent: built side by side.
        let (csr, store) = crate::par::both(
            || Csr::build(node_count, edges, weighted),
            || NodeStore::from_nodes(nodes),
        );
        let store = store.map_err(|(label, key)| BulkError::DuplicateKey { label, key })?;
        let csr = csr?;
        let mut view = GraphView::new(csr, lsn);
        view.nodes = store;
        if hidden.iter().any(|&w| w != 0) {
            let is_hidden = |n: NodeId| hidden.get(n.index() >> 6).is_some_and(|w| w & (1 << (n.0 & 63)) != 0);
            view.edge_count = edges
                .iter()
                .filter(|e| !is_hidden(e.source) && !is_hidden(e.target))
                .count();
            view.base_deleted = Some(Arc::new(super::mask_to(hidden, node_count)));
        }
        Ok(Self::from_view(view, policy))
    }

    /// A graph starting from `view` (a loaded snapshot's, or any other: a view another
    /// `Graph` still writes to, or an older one, is first copied onto a table of its own).
    pub fn from_view(view: GraphView, policy: CompactionPolicy) -> Self {
        let view = if view.table.claim(view.seq) {
            view
        } else {
            let v = view.rebased();
            let claimed = v.table.claim(v.seq);
            debug_assert!(claimed, "a fresh table is free");
            v
        };
        Graph {
            current: GraphReader(Arc::new(RwLock::new(Arc::new(view)))),
            policy,
            since_compaction: None,
            generation: 0,
            index: EdgeIndex::default(),
            retired: None,
        }
    }

    /// As [`Graph::new`] with explicit compaction limits.
    pub fn with_policy(base: Csr, lsn: u64, policy: CompactionPolicy) -> Self {
        Self::from_view(GraphView::new(base, lsn), policy)
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

    pub(super) fn publish(&self, view: Arc<GraphView>) {
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
        txn.push_all(&mut mutations.to_vec())?;
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
        let b = Builder::new(&cur);
        Ok(Txn {
            graph: self,
            b,
            log: Vec::new(),
            lsn,
            capture: None,
        })
    }

    /// `txns` applied in order onto `cur` as one new view at the last one's LSN (`cur`
    /// itself when there are none).
    fn build_all(cur: &GraphView, txns: &TxnLog, index: &mut EdgeIndex) -> Result<GraphView, ApplyError> {
        let Some(&(lsn, _)) = txns.last() else {
            return Ok(cur.clone());
        };
        let mut b = Builder::new(cur);
        for m in txns.iter().flat_map(|(_, m)| m) {
            b.apply(m, index)?;
        }
        Ok(b.finish(lsn))
    }

    /// Starts a compaction of the current view; run [`CompactionJob::build`] anywhere, then
    /// [`Graph::finish_compaction`]. Transactions applied meanwhile are kept and replayed.
    pub fn begin_compaction(&mut self) -> CompactionJob {
        let view = self.view();
        let backlog = Backlog::default();
        self.since_compaction = Some(backlog.clone());
        self.generation += 1;
        CompactionJob {
            view,
            generation: self.generation,
            backlog,
        }
    }

    /// Swaps in a finished compaction: the fresh CSR with every transaction applied since the
    /// compaction began replayed in order (most by the compaction's thread, the rest here),
    /// published as one view at the current LSN.
    pub fn finish_compaction(&mut self, done: Compacted) -> Result<Arc<GraphView>, ApplyError> {
        if done.generation != self.generation {
            return Err(ApplyError::StaleCompaction);
        }
        let Some(backlog) = self.since_compaction.take() else {
            return Err(ApplyError::StaleCompaction);
        };
        let Compacted {
            caught_up, mut index, ..
        } = done;
        // Positions in the old base's rows mean nothing in the new one: the compaction's own
        // index, kept only if the replay succeeds (the old view stays current otherwise).
        let rest = backlog.take();
        let view = Self::build_all(&caught_up?, &rest, &mut index)?;
        self.index = index;
        let old = self.view();
        let view = Arc::new(view);
        self.publish(view.clone());
        old.table.release();
        // Freeing the old base and every overlay version took up to 0.4 s on the writer
        // under load: whoever swaps takes it (`take_retired`) and drops it elsewhere.
        self.retired = Some(old);
        Ok(view)
    }

    /// Compacts now, on this thread (the replaced view is freed here too).
    pub fn compact(&mut self) -> Result<Arc<GraphView>, ApplyError> {
        let done = self.begin_compaction().build();
        let view = self.finish_compaction(done);
        drop(self.take_retired());
        view
    }

    /// The view the last [`Graph::finish_compaction`] replaced (the old base and its overlay
    /// versions, unless readers still hold it). Dropping it costs time in proportion to what
    /// it holds: drop it off the writer's thread. Left here, it is freed at the next swap.
    pub fn take_retired(&mut self) -> Option<Arc<GraphView>> {
        self.retired.take()
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // Another graph may continue from the newest view.
        self.view().table.release();
    }
}
