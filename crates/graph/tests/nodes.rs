//! The node store through transactions: nodes resolved by (label, key), edges to nodes that
//! do not exist yet, deletions and re-insertions keeping ids and edges, tenant changes, and
//! compactions at random points; after every transaction the view equals an oracle keyed by
//! (label, key), including each node's data, tenant and filter membership, tenant-restricted
//! neighbours and k-hop, and the visible nodes per label. Every view published stays held and
//! still equals the oracle of its time at the end; some transactions are dropped (nothing of
//! them may show).

use graph::query::{k_hop, neighbors};
use graph::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

type Key = (u16, i64);

#[derive(Debug, Clone, Default)]
struct Oracle {
    /// Present nodes and their tenant.
    nodes: BTreeMap<Key, Option<i64>>,
    /// The transaction that last upserted each node (a property, so updates change data).
    versions: BTreeMap<Key, i64>,
    edges: Vec<(Key, Key, u8)>,
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(Key, Option<i64>),
    Delete(Key),
    AddEdge(Key, Key, u8),
    RemoveEdge(prop::sample::Index),
}

fn key() -> impl Strategy<Value = Key> {
    (0u16..2, 0i64..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), proptest::option::of(0i64..3)).prop_map(|(k, t)| Op::Upsert(k, t)),
        1 => key().prop_map(Op::Delete),
        4 => (key(), key(), 0u8..2).prop_map(|(a, b, l)| Op::AddEdge(a, b, l)),
        2 => any::<prop::sample::Index>().prop_map(Op::RemoveEdge),
    ]
}

/// Changes with the tenant, so upserts move nodes between filter bitmaps.
fn filter_value(k: Key, tenant: Option<i64>) -> i64 {
    (k.1 + tenant.unwrap_or(5)) % 2
}

fn data(k: Key, tenant: Option<i64>, version: i64) -> NodeData {
    NodeData {
        label: NodeLabel(k.0),
        key: NodeKey::Int(k.1),
        tenant: tenant.map(NodeKey::Int),
        filters: Arc::from(vec![(FilterId(0), NodeKey::Int(filter_value(k, tenant)))]),
        properties: Arc::from(vec![
            (Arc::from("k"), PropValue::Int(k.1)),
            (Arc::from("v"), PropValue::Int(version)),
        ]),
    }
}

fn check(v: &GraphView, o: &Oracle) -> Result<(), TestCaseError> {
    let id = |k: &Key| v.resolve(NodeLabel(k.0), &NodeKey::Int(k.1));
    let mut scratch = Scratch::default();
    for (k, tenant) in &o.nodes {
        let n = id(k).expect("present nodes resolve");
        prop_assert!(v.is_visible(n));
        let d = v.node(n).unwrap();
        prop_assert_eq!(&d.key, &NodeKey::Int(k.1));
        prop_assert_eq!(&*d.properties, &data(*k, *tenant, o.versions[k]).properties[..]);
        let f = v.filter_value(FilterId(0), &NodeKey::Int(filter_value(*k, *tenant)));
        prop_assert!(f.is_some_and(|f| v.filter_members(f).contains(&n)));
        prop_assert_eq!(d.tenant.clone(), tenant.map(NodeKey::Int));
        prop_assert_eq!(v.tenant_of(n), tenant.and_then(|t| v.tenant(&NodeKey::Int(t))));
    }
    // Tenant membership and tenant-restricted queries.
    for t in 0..3i64 {
        let want: BTreeSet<Key> = o
            .nodes
            .iter()
            .filter(|(_, tt)| **tt == Some(t))
            .map(|(k, _)| *k)
            .collect();
        let Some(tid) = v.tenant(&NodeKey::Int(t)) else {
            prop_assert!(want.is_empty());
            continue;
        };
        let got: BTreeSet<NodeId> = v.tenant_members(tid).into_iter().collect();
        prop_assert_eq!(got, want.iter().map(|k| id(k).unwrap()).collect::<BTreeSet<_>>());
        let filter = EdgeFilter {
            tenant: Some(tid),
            ..Default::default()
        };
        for k in &want {
            let n = id(k).unwrap();
            let mut got: Vec<NodeId> = neighbors(v, n, Direction::Out, filter)
                .unwrap()
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            let mut exp: Vec<NodeId> = o
                .edges
                .iter()
                .filter(|(a, b, _)| a == k && want.contains(b))
                .map(|(_, b, _)| id(b).unwrap())
                .collect();
            got.sort();
            exp.sort();
            prop_assert_eq!(got, exp);
            let reached: BTreeSet<NodeId> = k_hop(v, &mut scratch, n, Direction::Both, filter, u32::MAX, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            prop_assert!(
                reached.iter().all(|m| v.tenant_of(*m) == Some(tid)),
                "tenant-restricted traversal stays in the tenant"
            );
        }
        // A node of another tenant is refused as a start.
        if let Some((k, _)) = o.nodes.iter().find(|(_, tt)| **tt != Some(t)) {
            let refused = matches!(
                neighbors(v, id(k).unwrap(), Direction::Out, filter),
                Err(QueryError::NotInTenant { .. })
            );
            prop_assert!(refused, "a start node outside the tenant is refused");
        }
    }
    // Visible nodes per label, counted from the columns without building any node's data.
    let mut per_label = vec![0u64; 2];
    for k in o.nodes.keys() {
        per_label[k.0 as usize] += 1;
    }
    let mut got = v.visible_nodes_per_label();
    got.resize(2, 0);
    prop_assert_eq!(got, per_label);
    let visible = o
        .edges
        .iter()
        .filter(|(a, b, _)| o.nodes.contains_key(a) && o.nodes.contains_key(b))
        .count();
    prop_assert_eq!(v.edge_count(), visible);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn node_store_matches_the_oracle(txns in proptest::collection::vec((proptest::collection::vec(op(), 1..6), 0u8..6, 0u8..6), 1..20)) {
        let mut g = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
        let mut kept = Oracle::default();
        let mut held: Vec<(Arc<GraphView>, Oracle)> = Vec::new();
        let mut lsn = 1;
        for (i, (ops, compaction, dropped)) in txns.iter().enumerate() {
            lsn += 1;
            let mut txn = g.begin(lsn).unwrap();
            // A dropped transaction's changes go to a copy of the oracle, thrown away with it.
            let mut scratch = kept.clone();
            let o = if *dropped == 0 { &mut scratch } else { &mut kept };
            for op in ops {
                match op {
                    Op::Upsert(k, t) => {
                        txn.upsert_node(data(*k, *t, i as i64));
                        o.nodes.insert(*k, *t);
                        o.versions.insert(*k, i as i64);
                    }
                    Op::Delete(k) => {
                        let got = txn.delete_node(NodeLabel(k.0), &NodeKey::Int(k.1));
                        prop_assert_eq!(got.is_some(), o.nodes.remove(k).is_some());
                    }
                    Op::AddEdge(a, b, l) => {
                        let s = txn.node_id(NodeLabel(a.0), &NodeKey::Int(a.1));
                        let t = txn.node_id(NodeLabel(b.0), &NodeKey::Int(b.1));
                        txn.add_edge(EdgeInput { source: s, target: t, label: EdgeLabel(*l), weight: 1.0 }).unwrap();
                        o.edges.push((*a, *b, *l));
                    }
                    Op::RemoveEdge(x) => {
                        if o.edges.is_empty() { continue; }
                        let (a, b, l) = o.edges.swap_remove(x.index(o.edges.len()));
                        let s = txn.node_id(NodeLabel(a.0), &NodeKey::Int(a.1));
                        let t = txn.node_id(NodeLabel(b.0), &NodeKey::Int(b.1));
                        txn.remove_edge(EdgeInput { source: s, target: t, label: EdgeLabel(l), weight: 1.0 }).unwrap();
                    }
                }
            }
            if *dropped == 0 {
                drop(txn);
                lsn -= 1;
            } else {
                txn.commit().unwrap();
            }
            check(&g.view(), &kept)?;
            held.push((g.view(), kept.clone()));
            if *compaction == 0 {
                g.compact().unwrap();
                check(&g.view(), &kept)?;
            }
        }
        for (v, o) in &held {
            check(v, o)?;
        }
    }
}
