//! Subgraph diffs (`Txn::take_diff`) against an oracle: a client that holds a scope's subgraph
//! (the whole graph, or one tenant's) and applies each transaction's changes must hold exactly
//! the subgraph computed from the graph after that transaction — with nodes moving between
//! tenants, deleted and restored, edges to nodes that do not exist yet, parallel edges, and
//! several source transactions per graph transaction.

use graph::diff::{Change, Scoped};
use graph::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    Upsert { key: i64, tenant: Option<i64>, prop: i64 },
    Delete(i64),
    AddEdge(i64, i64, u8, u8),
    RemoveEdge(i64, i64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i64..8, proptest::option::of(0i64..3), 0i64..2)
            .prop_map(|(key, tenant, prop)| Op::Upsert { key, tenant, prop }),
        1 => (0i64..8).prop_map(Op::Delete),
        4 => (0i64..8, 0i64..8, 0u8..2, 0u8..2).prop_map(|(s, t, l, w)| Op::AddEdge(s, t, l, w)),
        2 => (0i64..8, 0i64..8, 0u8..2).prop_map(|(s, t, l)| Op::RemoveEdge(s, t, l)),
    ]
}

fn apply(t: &mut Txn<'_>, op: &Op) {
    let label = NodeLabel(0);
    match *op {
        Op::Upsert { key, tenant, prop } => {
            let mut d = NodeData::bare(label, NodeKey::Int(key));
            d.tenant = tenant.map(NodeKey::Int);
            d.properties = vec![(Arc::from("p"), PropValue::Int(prop))].into();
            t.upsert_node(d);
        }
        Op::Delete(key) => {
            t.delete_node(label, &NodeKey::Int(key));
        }
        Op::AddEdge(s, d, l, w) => {
            let (s, d) = (t.node_id(label, &NodeKey::Int(s)), t.node_id(label, &NodeKey::Int(d)));
            t.add_edge(EdgeInput {
                source: s,
                target: d,
                label: EdgeLabel(l),
                weight: f64::from(w),
            })
            .unwrap();
        }
        Op::RemoveEdge(s, d, l) => {
            let (Some(s), Some(d)) = (t.resolve(label, &NodeKey::Int(s)), t.resolve(label, &NodeKey::Int(d))) else {
                return;
            };
            if let Some(e) = t.find_edge(s, d, EdgeLabel(l)) {
                t.remove_edge(e).unwrap();
            }
        }
    }
}

type EdgeKey = (u32, u32, u8, u64);

#[derive(Debug, Default, Clone, PartialEq)]
struct Sub {
    nodes: BTreeMap<u32, NodeData>,
    edges: BTreeMap<EdgeKey, u32>,
}

fn ekey(e: &EdgeInput) -> EdgeKey {
    (e.source.0, e.target.0, e.label.0, e.weight.to_bits())
}

/// The scope's subgraph read from a view: `None` is the whole graph.
fn subgraph(v: &GraphView, scope: Option<i64>) -> Sub {
    let inside = |n: NodeId| {
        v.node(n)
            .filter(|d| v.is_visible(n) && (scope.is_none() || d.tenant == scope.map(NodeKey::Int)))
    };
    let mut s = Sub::default();
    for n in 0..v.node_count() {
        let Some(d) = inside(NodeId(n)) else { continue };
        s.nodes.insert(n, (*d).clone());
        v.for_each_edge(NodeId(n), Direction::Out, |m, label, weight| {
            if inside(m).is_some() {
                let e = EdgeInput {
                    source: NodeId(n),
                    target: m,
                    label,
                    weight,
                };
                *s.edges.entry(ekey(&e)).or_default() += 1;
            }
        });
    }
    s
}

/// Applies the changes of `scope` the way a feed client does.
fn follow(s: &mut Sub, changes: &[Scoped], scope: Option<i64>) -> Result<(), String> {
    for c in changes {
        let mine = match scope {
            None => c.global,
            Some(t) => c.tenant == Some(NodeKey::Int(t)),
        };
        if !mine {
            continue;
        }
        match &c.change {
            Change::NodeDelete { id } => {
                if s.nodes.remove(&id.0).is_none() {
                    return Err(format!("delete of absent node {id:?}"));
                }
                s.edges.retain(|k, _| k.0 != id.0 && k.1 != id.0);
            }
            Change::NodeUpsert { id, data } => {
                s.nodes.insert(id.0, (**data).clone());
            }
            Change::EdgeAdd(e) => {
                if !s.nodes.contains_key(&e.source.0) || !s.nodes.contains_key(&e.target.0) {
                    return Err(format!("edge add {e:?} with an end outside"));
                }
                *s.edges.entry(ekey(e)).or_default() += 1;
            }
            Change::EdgeRemove(e) => {
                let k = ekey(e);
                match s.edges.get_mut(&k) {
                    Some(c) if *c > 1 => *c -= 1,
                    Some(_) => {
                        s.edges.remove(&k);
                    }
                    None => return Err(format!("edge remove {e:?} of an absent edge")),
                }
            }
        }
    }
    Ok(())
}

const SCOPES: [Option<i64>; 4] = [None, Some(0), Some(1), Some(2)];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_client_following_the_diffs_holds_the_subgraph(
        txns in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 1..25),
        batch in 1usize..4,
    ) {
        // `g` applies `batch` source transactions per graph transaction and takes a diff at
        // each source transaction's end; `o` commits every source transaction (the oracle's
        // views).
        let empty = || Graph::new(Csr::build(0, &[], true).unwrap(), 1);
        let (mut g, mut o) = (empty(), empty());
        let mut clients: Vec<Sub> = SCOPES.iter().map(|_| Sub::default()).collect();
        let mut lsn = 1;
        for chunk in txns.chunks(batch) {
            let mut t = g.begin(lsn + chunk.len() as u64).unwrap();
            t.start_diff();
            for ops in chunk {
                lsn += 1;
                let mut ot = o.begin(lsn).unwrap();
                for op in ops {
                    apply(&mut t, op);
                    apply(&mut ot, op);
                }
                let after = ot.commit().unwrap();
                let diff = t.take_diff();
                for (i, scope) in SCOPES.iter().enumerate() {
                    follow(&mut clients[i], &diff, *scope).map_err(|e| TestCaseError::fail(format!("{scope:?}: {e}")))?;
                    prop_assert_eq!(&clients[i], &subgraph(&after, *scope), "scope {:?} after {:?}", scope, ops);
                }
            }
            t.commit().unwrap();
        }
    }
}

#[test]
fn a_node_moving_tenants_leaves_one_feed_and_enters_the_other_with_its_edges() {
    let mut g = Graph::new(Csr::build(0, &[], true).unwrap(), 1);
    let mut t = g.begin(2).unwrap();
    for (key, tenant) in [(1, 0), (2, 0), (3, 1)] {
        apply(
            &mut t,
            &Op::Upsert {
                key,
                tenant: Some(tenant),
                prop: 0,
            },
        );
    }
    apply(&mut t, &Op::AddEdge(1, 2, 0, 1));
    apply(&mut t, &Op::AddEdge(3, 1, 0, 1));
    t.commit().unwrap();
    let mut t = g.begin(3).unwrap();
    t.start_diff();
    apply(
        &mut t,
        &Op::Upsert {
            key: 1,
            tenant: Some(1),
            prop: 0,
        },
    );
    let d = t.take_diff();
    let ops: Vec<(bool, Option<NodeKey>, &'static str)> = d
        .iter()
        .map(|s| {
            let op = match s.change {
                Change::NodeUpsert { .. } => "upsert",
                Change::NodeDelete { .. } => "delete",
                Change::EdgeAdd(_) => "add",
                Change::EdgeRemove(_) => "remove",
            };
            (s.global, s.tenant.clone(), op)
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            (false, Some(NodeKey::Int(0)), "delete"),
            (true, Some(NodeKey::Int(1)), "upsert"),
            (false, Some(NodeKey::Int(1)), "add"),
        ]
    );
}
