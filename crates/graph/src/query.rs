//! Graph queries over any [`Topology`]: neighbours, k-hop traversal, shortest paths and weakly
//! connected components, each optionally restricted to one edge label.
//!
//! Traversals keep their visited set in an epoch-stamped array ([`Scratch`]): resetting it is
//! one increment, and "seen?" is one load — faster than a hash set or a roaring bitmap in the
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
}

impl EdgeFilter {
    #[inline]
    fn accepts(&self, l: EdgeLabel) -> bool {
        self.label.is_none_or(|x| x == l)
    }
}

/// Why a query cannot be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// A node id outside the graph.
    #[error("node {0} does not exist")]
    NoSuchNode(u32),
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

    /// Calls `f(other endpoint, label, weight)` for each edge of `n` in `dir`.
    fn for_each_edge(&self, n: NodeId, dir: Direction, f: impl FnMut(NodeId, EdgeLabel, f64));
}

impl Topology for Csr {
    fn node_count(&self) -> u32 {
        Csr::node_count(self)
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
        match dir {
            Direction::Out => side(self.forward()),
            Direction::In => side(self.reverse()),
            Direction::Both => {
                side(self.forward());
                side(self.reverse());
            }
        }
    }
}

/// Reusable per-query memory, sized to the graph: visited stamps, parents and a queue.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    stamps: Vec<u32>,
    epoch: u32,
    parents: Vec<u32>,
    queue: Vec<u32>,
}

impl Scratch {
    /// Starts a traversal over `n` nodes: everything becomes unvisited.
    fn reset(&mut self, n: u32) {
        if self.stamps.len() < n as usize {
            self.stamps.resize(n as usize, 0);
            self.parents.resize(n as usize, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.epoch = 1;
        }
        self.queue.clear();
    }

    /// Marks `n` visited; returns whether it was unvisited.
    #[inline]
    fn visit(&mut self, n: NodeId) -> bool {
        let s = &mut self.stamps[n.index()];
        if *s == self.epoch {
            false
        } else {
            *s = self.epoch;
            true
        }
    }
}

fn check<G: Topology>(g: &G, n: NodeId) -> Result<(), QueryError> {
    if g.is_visible(n) {
        Ok(())
    } else {
        Err(QueryError::NoSuchNode(n.0))
    }
}

/// Neighbours of `n` in `dir` (with repeats for parallel edges), in storage order.
pub fn neighbors<G: Topology>(
    g: &G,
    n: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Vec<(NodeId, EdgeLabel)>, QueryError> {
    check(g, n)?;
    let mut out = Vec::new();
    g.for_each_edge(n, dir, |m, l, _| {
        if filter.accepts(l) && g.is_visible(m) {
            out.push((m, l));
        }
    });
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
    check(g, start)?;
    scratch.reset(g.node_count());
    let mut out = Vec::new();
    if max_nodes == 0 {
        return Ok(out);
    }
    scratch.visit(start);
    out.push((start, 0));
    let mut head = 0;
    let mut depth = 0;
    // Level by level: `out[head..level_end]` is the current frontier.
    while head < out.len() && depth < max_depth {
        let level_end = out.len();
        depth += 1;
        while head < level_end {
            let n = out[head].0;
            head += 1;
            let mut full = false;
            g.for_each_edge(n, dir, |m, l, _| {
                if !full && filter.accepts(l) && g.is_visible(m) && scratch.visit(m) {
                    out.push((m, depth));
                    full = out.len() >= max_nodes;
                }
            });
            if full {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Fewest-hops path from `from` to `to` (both included), or `None` if unreachable.
pub fn shortest_path<G: Topology>(
    g: &G,
    scratch: &mut Scratch,
    from: NodeId,
    to: NodeId,
    dir: Direction,
    filter: EdgeFilter,
) -> Result<Option<Vec<NodeId>>, QueryError> {
    check(g, from)?;
    check(g, to)?;
    scratch.reset(g.node_count());
    scratch.visit(from);
    scratch.queue.push(from.0);
    let mut head = 0;
    let mut found = from == to;
    while !found && head < scratch.queue.len() {
        let n = NodeId(scratch.queue[head]);
        head += 1;
        let Scratch {
            stamps,
            epoch,
            parents,
            queue,
        } = scratch;
        g.for_each_edge(n, dir, |m, l, _| {
            if found || !filter.accepts(l) || !g.is_visible(m) || stamps[m.index()] == *epoch {
                return;
            }
            stamps[m.index()] = *epoch;
            parents[m.index()] = n.0;
            queue.push(m.0);
            found = m == to;
        });
    }
    if !found {
        return Ok(None);
    }
    let mut path = vec![to];
    let mut cur = to;
    while cur != from {
        cur = NodeId(scratch.parents[cur.index()]);
        path.push(cur);
    }
    path.reverse();
    Ok(Some(path))
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
    check(g, from)?;
    check(g, to)?;
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
            if bad.is_some() || !filter.accepts(l) || !g.is_visible(m) {
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
        if !g.is_visible(NodeId(u)) {
            continue;
        }
        g.for_each_edge(NodeId(u), Direction::Out, |m, l, _| {
            if filter.accepts(l) && g.is_visible(m) {
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
        if !g.is_visible(NodeId(u)) {
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
