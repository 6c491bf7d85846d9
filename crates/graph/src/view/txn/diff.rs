//! The change of a transaction to the graph's *visible subgraphs*, for the change feed: the
//! whole graph's (every visible node, every edge with both ends visible) and each tenant's
//! (its visible nodes, the edges with both ends in it).
//!
//! A client that holds a subgraph and applies a transaction's [`Scoped`] changes in order
//! — node deletes, node upserts, edge removes, edge adds — holds the subgraph after it, under
//! one rule: a node delete also drops every edge of that node. So a node that leaves a scope
//! (deleted, or moved to another tenant) needs one change, and a node that enters one (new,
//! restored with its stored edges, or moved in) brings an edge add for each of its edges
//! whose other end is in the scope.
//!
//! Cost: O(the transaction's mutations + the degree of the nodes that enter a scope).
//!
//! Not for: encoding (`crate::wire`), filtering by scope or delivery (the sync crate's feed).

use super::Builder;
use crate::nodes::{NodeData, NodeKey};
use crate::query::Direction;
use crate::view::Mutation;
use crate::{EdgeInput, NodeId};
use std::collections::HashMap;
use std::sync::Arc;

/// One change and the subgraphs it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoped {
    /// Whether it is a change of the whole graph's subgraph.
    pub global: bool,
    /// The tenant whose subgraph it changes, if any.
    pub tenant: Option<NodeKey>,
    /// The change.
    pub change: Change,
}

/// A change to a visible subgraph.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The node entered the subgraph, or its data changed: its data after the transaction.
    NodeUpsert {
        /// The node.
        id: NodeId,
        /// Its data.
        data: Arc<NodeData>,
    },
    /// The node left the subgraph, and every edge of it with it.
    NodeDelete {
        /// The node.
        id: NodeId,
    },
    /// One edge entered the subgraph.
    EdgeAdd(EdgeInput),
    /// One edge left it (its ends stay).
    EdgeRemove(EdgeInput),
}

/// What a transaction records while a diff is captured: each touched node's visible data
/// before its first change since the last [`Capture::take`].
#[derive(Debug, Default)]
pub(in crate::view) struct Capture {
    from: usize,
    before: HashMap<u32, Option<Arc<NodeData>>>,
}

/// A node's data if it is visible in the builder's state.
fn visible_data(b: &Builder, n: u32) -> Option<Arc<NodeData>> {
    visible(b, n).then(|| b.view.nodes.data(n, b)).flatten()
}

/// A node's tenant if it is visible and has data (as [`visible_data`], allocating nothing).
fn visible_tenant(b: &Builder, n: u32) -> Option<Option<&NodeKey>> {
    visible(b, n).then(|| b.view.nodes.tenant_key(n, b)).flatten()
}

/// Whether node `n` exists and is visible in the builder's state.
fn visible(b: &Builder, n: u32) -> bool {
    n < b.view.node_count && b.visible(NodeId(n))
}

/// Which scopes a node entered: (whole graph, its tenant).
type Entered = (bool, bool);

impl Capture {
    pub(in crate::view) fn new(from: usize) -> Self {
        Capture {
            from,
            before: HashMap::new(),
        }
    }

    /// Notes the state `m` is about to change (call before applying it).
    pub(in crate::view) fn note(&mut self, b: &Builder, m: &Mutation) {
        let n = match m {
            Mutation::AddNode => {
                self.before.entry(b.view.node_count).or_insert(None);
                return;
            }
            Mutation::RemoveNode(id) | Mutation::RestoreNode(id) | Mutation::SetNode { id, .. } => id.0,
            Mutation::AddEdge(_) | Mutation::RemoveEdge(_) => return,
        };
        self.before.entry(n).or_insert_with(|| visible_data(b, n));
    }

    /// The changes of everything applied since the last call (`log` is the transaction's
    /// whole mutation log), and a fresh start.
    pub(in crate::view) fn take(&mut self, b: &Builder, log: &[Mutation]) -> Vec<Scoped> {
        let before = std::mem::take(&mut self.before);
        let from = std::mem::replace(&mut self.from, log.len());
        let mut ids: Vec<u32> = before.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::new();
        let mut entered: HashMap<u32, Entered> = HashMap::new();
        // Nodes that leave a scope.
        for &n in &ids {
            let Some(was) = &before[&n] else { continue };
            let now = visible_data(b, n);
            let global = now.is_none();
            let left_tenant = was.tenant.is_some() && now.as_ref().is_none_or(|d| d.tenant != was.tenant);
            if global || left_tenant {
                out.push(Scoped {
                    global,
                    tenant: if left_tenant { was.tenant.clone() } else { None },
                    change: Change::NodeDelete { id: NodeId(n) },
                });
            }
        }
        // Nodes that enter a scope or change in it.
        for &n in &ids {
            let Some(now) = visible_data(b, n) else { continue };
            let was = &before[&n];
            let changed = was.as_ref().is_none_or(|w| !Arc::ptr_eq(w, &now) && **w != *now);
            if !changed {
                continue;
            }
            let e: Entered = (
                was.is_none(),
                now.tenant.is_some() && was.as_ref().is_none_or(|w| w.tenant != now.tenant),
            );
            if e.0 || e.1 {
                entered.insert(n, e);
            }
            out.push(Scoped {
                global: true,
                tenant: now.tenant.clone(),
                change: Change::NodeUpsert {
                    id: NodeId(n),
                    data: now,
                },
            });
        }
        // The transaction's own edge changes, netted per exact edge, where both ends were and
        // stay in the scope (an entering end's edges are listed below, a leaving end's go
        // with its delete).
        let mut adds = Vec::new();
        for (at, c) in net_edge_changes(&log[from..]) {
            let (Mutation::AddEdge(e) | Mutation::RemoveEdge(e)) = log[from + at as usize] else {
                continue;
            };
            let (Some(s), Some(t)) = (visible_tenant(b, e.source.0), visible_tenant(b, e.target.0)) else {
                continue;
            };
            let (es, et) = (ent(&entered, e.source.0), ent(&entered, e.target.0));
            let global = !(es.0 || et.0);
            let tenant = (s.is_some() && s == t && !(es.1 || et.1)).then(|| s.cloned());
            let tenant = tenant.flatten();
            if !global && tenant.is_none() {
                continue;
            }
            for _ in 0..c.unsigned_abs() {
                let change = if c > 0 {
                    Change::EdgeAdd(e)
                } else {
                    Change::EdgeRemove(e)
                };
                let s = Scoped {
                    global,
                    tenant: tenant.clone(),
                    change,
                };
                if c > 0 {
                    adds.push(s);
                } else {
                    out.push(s);
                }
            }
        }
        // Every stored edge of an entering node whose other end is in the scope after.
        let mut listed: Vec<(EdgeInput, bool, Option<NodeKey>)> = Vec::new();
        let mut entering: Vec<u32> = entered.keys().copied().collect();
        entering.sort_unstable();
        for &n in &entering {
            let me = entered[&n];
            let Some(nd) = visible_data(b, n) else { continue };
            for dir in [Direction::Out, Direction::In] {
                b.side(NodeId(n), dir, &mut |m, label, weight| {
                    // An in-edge from an entering node (or a self-loop) is listed as that
                    // node's out-edge.
                    if dir == Direction::In && (m == n || entered.contains_key(&m)) {
                        return;
                    }
                    let Some(mt) = visible_tenant(b, m) else { return };
                    let other = ent(&entered, m);
                    let global = me.0 || other.0;
                    let tenant = nd.tenant.is_some() && mt == nd.tenant.as_ref() && (me.1 || other.1);
                    if !global && !tenant {
                        return;
                    }
                    let (source, target) = if dir == Direction::Out { (n, m) } else { (m, n) };
                    let e = EdgeInput {
                        source: NodeId(source),
                        target: NodeId(target),
                        label,
                        weight,
                    };
                    listed.push((e, global, if tenant { nd.tenant.clone() } else { None }));
                });
            }
        }
        // The order a node's stored edges are visited in depends on compaction; sort so the
        // same transaction always gives the same changes.
        listed.sort_by(|a, b| {
            (a.0.source.0, a.0.target.0, a.0.label.0, a.0.weight.to_bits()).cmp(&(
                b.0.source.0,
                b.0.target.0,
                b.0.label.0,
                b.0.weight.to_bits(),
            ))
        });
        adds.extend(listed.into_iter().map(|(e, global, tenant)| Scoped {
            global,
            tenant,
            change: Change::EdgeAdd(e),
        }));
        out.extend(adds);
        out
    }
}

/// The edge changes of `log` netted per exact edge (source, target, label, weight bits): for
/// each edge whose changes do not cancel out, the position of its first change in `log` and
/// the net count, in `log` order. Sorting, not hashing: a transaction's few edges cost no hash
/// table, and a huge one about 48 bytes per edge change at the peak.
fn net_edge_changes(log: &[Mutation]) -> Vec<(u32, i64)> {
    /// An exact edge: source, target, label, weight bits.
    type Key = (u32, u32, u8, u64);
    let key = |e: &EdgeInput| (e.source.0, e.target.0, e.label.0, e.weight.to_bits());
    // (edge, position, +1 or -1): sorted by edge, then position.
    let mut all: Vec<(Key, u32, i8)> = log
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match m {
            Mutation::AddEdge(e) => Some((key(e), i as u32, 1)),
            Mutation::RemoveEdge(e) => Some((key(e), i as u32, -1)),
            _ => None,
        })
        .collect();
    all.sort_unstable();
    let mut netted: Vec<(u32, i64)> = Vec::new();
    for run in all.chunk_by(|a, b| a.0 == b.0) {
        let c: i64 = run.iter().map(|x| i64::from(x.2)).sum();
        if c != 0 {
            netted.push((run[0].1, c));
        }
    }
    drop(all);
    netted.sort_unstable();
    netted
}

fn ent(entered: &HashMap<u32, Entered>, n: u32) -> Entered {
    entered.get(&n).copied().unwrap_or((false, false))
}
