//! Graph queries over any [`Topology`]: neighbours, k-hop traversal, shortest paths and weakly
//! connected components, each optionally restricted to one edge label.
//!
//! Traversals keep their visited set in a dense bitset ([`Scratch`]): "seen?" is one load from
//! a cache-resident array — faster than a hash set, a roaring bitmap or a word per node in the
//! hot loop.

use crate::{Csr, EdgeLabel, NodeId};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Which edges of a node to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Outgoing edges.
    Out,
    /// Incoming edges.
    In,
    /// Both, as if the graph were undirected.
    Both,
}

/// Restricts which edges a query follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeFilter {
    /// Only edges with this label.
    pub label: Option<EdgeLabel>,
    /// Only nodes of this tenant (the start node included).
    pub tenant: Option<crate::TenantId>,
    /// Only nodes holding this filter value (the start node included).
    pub value: Option<crate::FilterValueId>,
}

impl EdgeFilter {
    #[inline]
    fn accepts(&self, l: EdgeLabel) -> bool {
        self.label.is_none_or(|x| x == l)
    }
}

/// Whether a query with `filter` may visit `n`: it exists, is not deleted, and belongs to the
/// filter's tenant.
#[inline]
fn admits<G: Topology>(g: &G, filter: &EdgeFilter, n: NodeId) -> bool {
    g.is_visible(n)
        && filter.tenant.is_none_or(|t| g.tenant_of(n) == Some(t))
        && filter.value.is_none_or(|v| g.has_filter_value(n, v))
}

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// A node id outside the graph.
    #[error("node {0} does not exist")]
    NoSuchNode(u32),
    /// The node is not in the tenant the query is restricted to.
    #[error("node {node} is not in tenant {tenant}")]
    NotInTenant {
        /// The node.
        node: u32,
        /// The tenant.
        tenant: u32,
    },
    /// The node does not hold the filter value the query is restricted to.
    #[error("node {node} does not have filter value {value}")]
    FilteredOut {
        /// The node.
        node: u32,
        /// The filter value.
        value: u32,
    },
    /// Dijkstra met an edge with a negative (or NaN) weight.
    #[error("edge {from} -> {to} has weight {weight}; weighted shortest paths need non-negative weights")]
    NegativeWeight {
        /// Source of the edge.
        from: u32,
        /// Target of the edge.
        to: u32,
        /// The weight.
        weight: f64,
    },
}

/// What a query can read of a graph. The CSR base implements it; the overlay view will too.
pub trait Topology {
    /// Node ids are `0..node_count`.
    fn node_count(&self) -> u32;

    /// Whether `n` exists and is not deleted.
    fn is_visible(&self, n: NodeId) -> bool {
        n.0 < self.node_count()
    }

    /// Whether every id below `node_count` is visible (no deletions anywhere): lets a traversal
    /// skip the per-edge visibility check.
    #[inline]
    fn all_visible(&self) -> bool {
        true
    }

    /// Whether `n` holds filter value `v`.
    #[inline]
    fn has_filter_value(&self, _n: NodeId, _v: crate::FilterValueId) -> bool {
        false
    }

    /// The tenant of `n`, if it has one.
    #[inline]
    fn tenant_of(&self, _n: NodeId) -> Option<crate::TenantId> {
        None
    }

    /// Calls `f(other endpoint, label, weight)` for each edge of `n` in `dir`.
    fn for_each_edge(&self, n: NodeId, dir: Direction, f: impl FnMut(NodeId, EdgeLabel, f64));

    /// Calls `f(other endpoint)` for each edge of `n` in `dir`; a traversal without a label
    /// filter uses this to read nothing but the endpoints.
    #[inline]
    fn for_each_neighbor(&self, n: NodeId, dir: Direction, mut f: impl FnMut(NodeId)) {
        self.for_each_edge(n, dir, |m, _, _| f(m));
    }

    /// What the first look at a node ([`Topology::prefetch_index`]) tells the later stages of
    /// a traversal about it, so they need not look it up again (for a view: whether the node
    /// has overlay edges in the direction). The default knows nothing.
    type Ahead: Copy + Default;

    /// First stage of prefetching, for a node some places ahead in a BFS queue: loads what
    /// locating `n`'s edges needs and returns what it learnt for the later stages.
    #[inline]
    fn prefetch_index(&self, _n: NodeId, _dir: Direction) -> Self::Ahead {
        Default::default()
    }

    /// Second stage: `n`'s edges in `dir` will be read soon (memory latency overlaps with
    /// work). `ahead` is what [`Topology::prefetch_index`] returned for `n` and `dir`, or the
    /// default if that stage did not run; returns it, refined for the later stages.
    #[inline]
    fn prefetch(&self, _n: NodeId, _dir: Direction, ahead: Self::Ahead) -> Self::Ahead {
        ahead
    }

    /// As [`Topology::for_each_neighbor`], given what this graph's prefetch stages returned
    /// for `n` and `dir` (or the default, which knows nothing): an `ahead` of another node,
    /// direction or graph may give wrong neighbours (never unsafety, nor a panic).
    #[inline]
    fn for_each_neighbor_ahead(&self, n: NodeId, dir: Direction, _ahead: Self::Ahead, f: impl FnMut(NodeId)) {
        self.for_each_neighbor(n, dir, f);
    }
}

/// Asks the CPU to start loading the cache line at `p`.
#[inline(always)]
pub fn prefetch_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The adjacency (or two, for [`Direction::Both`]) that `dir` reads.
#[inline]
fn sides(g: &Csr, dir: Direction) -> (&crate::Adjacency, Option<&crate::Adjacency>) {
    match dir {
        Direction::Out => (g.forward(), None),
        Direction::In => (g.reverse(), None),
        Direction::Both => (g.forward(), Some(g.reverse())),
    }
}

impl Topology for Csr {
    fn node_count(&self) -> u32 {
        Csr::node_count(self)
    }

    #[inline]
    fn for_each_neighbor(&self, n: NodeId, dir: Direction, mut f: impl FnMut(NodeId)) {
        let mut side = |adj: &crate::Adjacency| {
            for &m in adj.targets(n) {
                f(NodeId(m));
            }
        };
        let (first, second) = sides(self, dir);
        side(first);
        if let Some(second) = second {
            side(second);
        }
    }

    type Ahead = ();

    #[inline]
    fn prefetch(&self, n: NodeId, dir: Direction, _: ()) {
        let adj = sides(self, dir).0;
        let r = adj.range(n);
        prefetch_ptr(adj.targets_ptr(r.start));
    }

    #[inline]
    fn prefetch_index(&self, n: NodeId, dir: Direction) {
        let adj = sides(self, dir).0;
        prefetch_ptr(adj.offsets_ptr(n));
    }

    #[inline]
    fn for_each_edge(&self, n: NodeId, dir: Direction, mut f: impl FnMut(NodeId, EdgeLabel, f64)) {
        let mut side = |adj: &crate::Adjacency| {
            let (nodes, labels, weights) = adj.edges(n);
            match weights {
                Some(w) => {
                    for i in 0..nodes.len() {
                        f(NodeId(nodes[i]), labels[i], w[i]);
                    }
                }
                None => {
                    for i in 0..nodes.len() {
                        f(NodeId(nodes[i]), labels[i], 1.0);
                    }
                }
            }
        };
        let (first, second) = sides(self, dir);
        side(first);
        if let Some(second) = second {
            side(second);
        }
    }
}

/// Reusable per-query memory, sized to the graph: a visited bitset, parents and a queue.
///
/// The bitset (one bit per node: 125 KB for a million nodes) stays in cache where a byte or
/// word per node would not. After a query only the bits it set are cleared, so a small query
/// on a huge graph costs nothing for its size.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    visited: Vec<u64>,
    dirty: bool,
    forward: Side,
    backward: Side,
}

impl Scratch {
    /// Starts a traversal over `n` nodes: everything becomes unvisited.
    fn reset(&mut self, n: u32) {
        let words = (n as usize).div_ceil(64);
        if self.visited.len() < words {
            self.visited.resize(words, 0);
        }
        if self.dirty {
            // The previous query did not clean up (it returned early or panicked).
            self.visited.iter_mut().for_each(|w| *w = 0);
        }
        self.dirty = true;
    }

    /// Marks `n` visited; returns whether it was unvisited.
    #[inline]
    fn visit(&mut self, n: NodeId) -> bool {
        visit(&mut self.visited, n)
    }

    /// Clears the bits of `nodes` (every node the query visited) and marks the bitset clean.
    fn finish(&mut self, nodes: impl Iterator<Item = u32>) {
        for n in nodes {
            self.visited[n as usize >> 6] = 0;
        }
        self.dirty = false;
    }
}

#[inline]
fn visit(bits: &mut [u64], n: NodeId) -> bool {
    let (w, m) = (n.index() >> 6, 1u64 << (n.0 & 63));
    let was = bits[w] & m;
    bits[w] |= m;
    was == 0
}

fn check<G: Topology>(g: &G, filter: &EdgeFilter, n: NodeId) -> Result<(), QueryError> {
    if !g.is_visible(n) {
        return Err(QueryError::NoSuchNode(n.0));
    }
    if let Some(t) = filter.tenant.filter(|&t| g.tenant_of(n) != Some(t)) {
        return Err(QueryError::NotInTenant { node: n.0, tenant: t.0 });
    }
    if let Some(v) = filter.value.filter(|&v| !g.has_filter_value(n, v)) {
        return Err(QueryError::FilteredOut { node: n.0, value: v.0 });
    }
    Ok(())
}

/// Neighbours of `n` in `dir` (with repeats for parallel edges), in storage order.
pub fn neighbors<G: Topology>(
    g: &G,
    n: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Vec<(NodeId, EdgeLabel)>, QueryError> {
    Ok(neighbor_edges(g, n, dir, filter)?
        .into_iter()
        .map(|e| (e.node, e.label))
        .collect())
}

/// One edge of a node as [`neighbor_edges`] lists it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// The other end.
    pub node: NodeId,
    /// The edge's label.
    pub label: EdgeLabel,
    /// The edge's weight.
    pub weight: f64,
    /// [`Direction::Out`] for an edge from the node, [`Direction::In`] for one to it.
    pub direction: Direction,
}

/// The edges of `n` in `dir` with their other ends, labels, weights and directions (outgoing
/// first for [`Direction::Both`]; repeats for parallel edges), in storage order, restricted
/// by `filter` — whose tenant and filter value `n` itself must satisfy.
pub fn neighbor_edges<G: Topology>(
    g: &G,
    n: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Vec<Neighbor>, QueryError> {
    check(g, &filter, n)?;
    let dirs: &[Direction] = match dir {
        Direction::Both => &[Direction::Out, Direction::In],
        Direction::Out => &[Direction::Out],
        Direction::In => &[Direction::In],
    };
    let mut out = Vec::new();
    for &direction in dirs {
        g.for_each_edge(n, direction, |m, label, weight| {
            if filter.accepts(label) && admits(g, &filter, m) {
                out.push(Neighbor {
                    node: m,
                    label,
                    weight,
                    direction,
                });
            }
        });
    }
    Ok(out)
}

/// Breadth-first traversal from `start`: every node within `max_depth` hops with its depth,
/// in BFS order, `start` first at depth 0, at most `max_nodes` of them.
pub fn k_hop<G: Topology>(
    g: &G,
    scratch: &mut Scratch,
    start: NodeId,
    dir: Direction,
    filter: EdgeFilter,
    max_depth: u32,
    max_nodes: usize,
) -> Result<Vec<(NodeId, u32)>, QueryError> {
    check(g, &filter, start)?;
    scratch.reset(g.node_count());
    let mut out = Vec::new();
    if max_nodes == 0 {
        scratch.finish(std::iter::empty());
        return Ok(out);
    }
    scratch.visit(start);
    out.push((start, 0));
    let mut head = 0;
    let mut depth = 0;
    // Level by level: `out[head..level_end]` is the current frontier.
    const AHEAD: usize = 8;
    // What the prefetch stages learnt about queue position `p`, at `p % RING`; taken (reset
    // to the default, "nothing known") when `p` is read, so a position pushed after its
    // stages would have run finds nothing stale.
    const RING: usize = 4 * AHEAD;
    let mut ring = [G::Ahead::default(); RING];
    let unrestricted = filter.tenant.is_none() && filter.value.is_none() && g.all_visible();
    while head < out.len() && depth < max_depth {
        let level_end = out.len();
        depth += 1;
        while head < level_end {
            let n = out[head].0;
            if let Some(&(ahead, _)) = out.get(head + AHEAD) {
                let slot = &mut ring[(head + AHEAD) % RING];
                *slot = g.prefetch(ahead, dir, *slot);
            }
            if let Some(&(ahead, _)) = out.get(head + 2 * AHEAD) {
                ring[(head + 2 * AHEAD) % RING] = g.prefetch_index(ahead, dir);
            }
            let here = std::mem::take(&mut ring[head % RING]);
            head += 1;
            let mut full = false;
            if filter.label.is_none() {
                g.for_each_neighbor_ahead(n, dir, here, |m| {
                    if !full && (unrestricted || admits(g, &filter, m)) && scratch.visit(m) {
                        out.push((m, depth));
                        full = out.len() >= max_nodes;
                    }
                });
            } else {
                g.for_each_edge(n, dir, |m, l, _| {
                    if !full && filter.accepts(l) && admits(g, &filter, m) && scratch.visit(m) {
                        out.push((m, depth));
                        full = out.len() >= max_nodes;
                    }
                });
            }
            if full {
                scratch.finish(out.iter().map(|(n, _)| n.0));
                return Ok(out);
            }
        }
    }
    scratch.finish(out.iter().map(|(n, _)| n.0));
    Ok(out)
}

/// One side of a bidirectional search: its own visited bitset, parents and frontier.
#[derive(Debug, Default, Clone)]
struct Side {
    visited: Vec<u64>,
    parents: Vec<u32>,
    seen: Vec<u32>,
    frontier: Vec<u32>,
}

impl Side {
    fn start(&mut self, n: u32, at: NodeId) {
        let words = (n as usize).div_ceil(64);
        if self.visited.len() < words {
            self.visited.resize(words, 0);
        }
        if self.parents.len() < n as usize {
            self.parents.resize(n as usize, 0);
        }
        for &v in &self.seen {
            self.visited[v as usize >> 6] = 0;
        }
        self.seen.clear();
        self.frontier.clear();
        visit(&mut self.visited, at);
        self.seen.push(at.0);
        self.frontier.push(at.0);
    }

    #[inline]
    fn has(&self, n: NodeId) -> bool {
        self.visited[n.index() >> 6] & (1 << (n.0 & 63)) != 0
    }

    /// Nodes from `n` back to this side's start, `n` first.
    fn trail(&self, start: NodeId, mut n: NodeId) -> Vec<NodeId> {
        let mut out = vec![n];
        while n != start {
            n = NodeId(self.parents[n.index()]);
            out.push(n);
        }
        out
    }
}

/// Fewest-hops path from `from` to `to` (both included), or `None` if unreachable.
///
/// Bidirectional BFS: both ends expand level by level, always the smaller frontier, and stop
/// where they meet — on large graphs this visits a tiny fraction of what a one-sided search
/// does.
pub fn shortest_path<G: Topology>(
    g: &G,
    scratch: &mut Scratch,
    from: NodeId,
    to: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Option<Vec<NodeId>>, QueryError> {
    check(g, &filter, from)?;
    check(g, &filter, to)?;
    if from == to {
        return Ok(Some(vec![from]));
    }
    let back = match dir {
        Direction::Out => Direction::In,
        Direction::In => Direction::Out,
        Direction::Both => Direction::Both,
    };
    let (fwd, bwd) = (&mut scratch.forward, &mut scratch.backward);
    fwd.start(g.node_count(), from);
    bwd.start(g.node_count(), to);
    let mut next = Vec::new();
    loop {
        if fwd.frontier.is_empty() || bwd.frontier.is_empty() {
            return Ok(None);
        }
        // Expand the smaller frontier by one level.
        let forward = fwd.frontier.len() <= bwd.frontier.len();
        let (this, other, d) = if forward {
            (&mut *fwd, &*bwd, dir)
        } else {
            (&mut *bwd, &*fwd, back)
        };
        next.clear();
        let mut meet = None;
        for i in 0..this.frontier.len() {
            let u = NodeId(this.frontier[i]);
            g.for_each_edge(u, d, |m, l, _| {
                if meet.is_some() || !filter.accepts(l) || !admits(g, &filter, m) || !visit(&mut this.visited, m) {
                    return;
                }
                this.parents[m.index()] = u.0;
                this.seen.push(m.0);
                next.push(m.0);
                if other.has(m) {
                    meet = Some(m);
                }
            });
            if meet.is_some() {
                break;
            }
        }
        std::mem::swap(&mut this.frontier, &mut next);
        if let Some(m) = meet {
            let mut path = fwd.trail(from, m);
            path.reverse();
            path.extend(bwd.trail(to, m).into_iter().skip(1));
            return Ok(Some(path));
        }
    }
}

#[derive(PartialEq)]
struct HeapItem(f64, u32);

impl Eq for HeapItem {}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on distance; distances are never NaN (rejected on relaxation).
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

/// Least-weight path (Dijkstra) from `from` to `to`: its total weight and nodes, or `None` if
/// unreachable. A negative or NaN weight met on the way is an error.
pub fn weighted_shortest_path<G: Topology>(
    g: &G,
    from: NodeId,
    to: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Option<(f64, Vec<NodeId>)>, QueryError> {
    check(g, &filter, from)?;
    check(g, &filter, to)?;
    let n = g.node_count() as usize;
    let mut dist = vec![f64::INFINITY; n];
    let mut parent = vec![u32::MAX; n];
    let mut done = vec![false; n];
    let mut heap = BinaryHeap::new();
    dist[from.index()] = 0.0;
    heap.push(HeapItem(0.0, from.0));
    let mut bad = None;
    while let Some(HeapItem(d, u)) = heap.pop() {
        let u = NodeId(u);
        if done[u.index()] {
            continue;
        }
        done[u.index()] = true;
        if u == to {
            break;
        }
        g.for_each_edge(u, dir, |m, l, w| {
            if bad.is_some() || !filter.accepts(l) || !admits(g, &filter, m) {
                return;
            }
            if w.is_nan() || w < 0.0 {
                bad = Some(QueryError::NegativeWeight {
                    from: u.0,
                    to: m.0,
                    weight: w,
                });
                return;
            }
            let nd = d + w;
            if nd < dist[m.index()] {
                dist[m.index()] = nd;
                parent[m.index()] = u.0;
                heap.push(HeapItem(nd, m.0));
            }
        });
        if let Some(e) = bad {
            return Err(e);
        }
    }
    if !done[to.index()] {
        return Ok(None);
    }
    let mut path = vec![to];
    let mut cur = to;
    while cur != from {
        cur = NodeId(parent[cur.index()]);
        path.push(cur);
    }
    path.reverse();
    Ok(Some((dist[to.index()], path)))
}

/// The weakly connected component of `n`: every node reachable ignoring direction, `n` first.
pub fn component_of<G: Topology>(
    g: &G,
    scratch: &mut Scratch,
    n: NodeId,
    filter: EdgeFilter,
) -> Result<Vec<NodeId>, QueryError> {
    Ok(k_hop(g, scratch, n, Direction::Both, filter, u32::MAX, usize::MAX)?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// Weakly connected components of the visible nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// Component number of each node (`u32::MAX` for invisible nodes), numbered from 0 in order
    /// of each component's smallest node id.
    pub component: Vec<u32>,
    /// Number of components.
    pub count: u32,
}

/// Weakly connected components by union-find over every edge, in O(E α(V)).
pub fn components<G: Topology>(g: &G, filter: EdgeFilter) -> Components {
    let n = g.node_count();
    let mut parent: Vec<u32> = (0..n).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            let up = p[p[x as usize] as usize];
            p[x as usize] = up;
            x = up;
        }
        x
    }
    for u in 0..n {
        if !admits(g, &filter, NodeId(u)) {
            continue;
        }
        g.for_each_edge(NodeId(u), Direction::Out, |m, l, _| {
            if filter.accepts(l) && admits(g, &filter, m) {
                let (a, b) = (find(&mut parent, u), find(&mut parent, m.0));
                if a != b {
                    parent[a.max(b) as usize] = a.min(b);
                }
            }
        });
    }
    let mut component = vec![u32::MAX; n as usize];
    let mut count = 0;
    for u in 0..n {
        if !admits(g, &filter, NodeId(u)) {
            continue;
        }
        let r = find(&mut parent, u);
        if component[r as usize] == u32::MAX {
            component[r as usize] = count;
            count += 1;
        }
        component[u as usize] = component[r as usize];
    }
    Components { component, count }
}
