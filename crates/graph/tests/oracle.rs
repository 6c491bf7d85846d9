//! Queries on the CSR against petgraph as oracle, on random multigraphs with labels and weights.

use graph::query::{component_of, components, k_hop, neighbors, shortest_path, weighted_shortest_path};
use graph::*;
use petgraph::graph::{DiGraph, NodeIndex};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Case {
    n: u32,
    edges: Vec<(u32, u32, u8, f64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (1u32..40).prop_flat_map(|n| {
        proptest::collection::vec(
            (0..n, 0..n, 0u8..3, (0u32..20).prop_map(|w| f64::from(w) / 2.0)),
            0..150,
        )
        .prop_map(move |edges| Case { n, edges })
    })
}

fn csr(c: &Case) -> Csr {
    let edges: Vec<EdgeInput> = c
        .edges
        .iter()
        .map(|&(s, t, l, w)| EdgeInput {
            source: NodeId(s),
            target: NodeId(t),
            label: EdgeLabel(l),
            weight: w,
        })
        .collect();
    let g = Csr::build(c.n, &edges, true).unwrap();
    g.validate().unwrap();
    g
}

/// petgraph graph of the edges that `dir` and `label` let a query follow, as directed edges
/// from the query's point of view.
fn oracle(c: &Case, dir: Direction, label: Option<u8>) -> DiGraph<(), f64> {
    let mut g = DiGraph::new();
    for _ in 0..c.n {
        g.add_node(());
    }
    for &(s, t, l, w) in &c.edges {
        if label.is_some_and(|x| x != l) {
            continue;
        }
        let (s, t) = (NodeIndex::new(s as usize), NodeIndex::new(t as usize));
        match dir {
            Direction::Out => {
                g.add_edge(s, t, w);
            }
            Direction::In => {
                g.add_edge(t, s, w);
            }
            Direction::Both => {
                g.add_edge(s, t, w);
                g.add_edge(t, s, w);
            }
        }
    }
    g
}

fn dirs() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Out), Just(Direction::In), Just(Direction::Both)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn neighbours_match(c in case(), dir in dirs(), label in proptest::option::of(0u8..3)) {
        let g = csr(&c);
        let o = oracle(&c, dir, label);
        let filter = EdgeFilter { label: label.map(EdgeLabel), ..Default::default() };
        for n in 0..c.n {
            let mut got: Vec<u32> = neighbors(&g, NodeId(n), dir, filter).unwrap().iter().map(|(m, _)| m.0).collect();
            let mut want: Vec<u32> = o.neighbors(NodeIndex::new(n as usize)).map(|m| m.index() as u32).collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want, "node {}", n);
        }
    }

    #[test]
    fn k_hop_depths_match_unit_dijkstra(c in case(), dir in dirs(), label in proptest::option::of(0u8..3),
                                        start in any::<prop::sample::Index>(), max_depth in 0u32..6) {
        let g = csr(&c);
        let o = oracle(&c, dir, label);
        let start = start.index(c.n as usize) as u32;
        let mut scratch = Scratch::default();
        let got = k_hop(&g, &mut scratch, NodeId(start), dir, EdgeFilter { label: label.map(EdgeLabel), ..Default::default() }, max_depth, usize::MAX).unwrap();
        let want: HashMap<u32, u32> = petgraph::algo::dijkstra(&o, NodeIndex::new(start as usize), None, |_| 1u32)
            .into_iter().filter(|(_, d)| *d <= max_depth).map(|(k, d)| (k.index() as u32, d)).collect();
        let got_map: HashMap<u32, u32> = got.iter().map(|(n, d)| (n.0, *d)).collect();
        prop_assert_eq!(got.len(), got_map.len(), "no node twice");
        prop_assert_eq!(got_map, want);
        prop_assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "BFS order");
        // max_nodes truncates the same order.
        let cut = k_hop(&g, &mut scratch, NodeId(start), dir, EdgeFilter { label: label.map(EdgeLabel), ..Default::default() }, max_depth, 3).unwrap();
        prop_assert_eq!(&cut[..], &got[..got.len().min(3)]);
    }

    #[test]
    fn shortest_paths_match(c in case(), dir in dirs(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let g = csr(&c);
        let o = oracle(&c, dir, None);
        let (a, b) = (a.index(c.n as usize) as u32, b.index(c.n as usize) as u32);
        let mut scratch = Scratch::default();
        let hops = petgraph::algo::dijkstra(&o, NodeIndex::new(a as usize), Some(NodeIndex::new(b as usize)), |_| 1u32)
            .get(&NodeIndex::new(b as usize)).copied();
        let path = shortest_path(&g, &mut scratch, NodeId(a), NodeId(b), dir, EdgeFilter::default()).unwrap();
        prop_assert_eq!(path.as_ref().map(|p| p.len() as u32 - 1), hops);
        if let Some(p) = &path {
            prop_assert_eq!(p[0].0, a);
            prop_assert_eq!(p.last().unwrap().0, b);
            for w in p.windows(2) {
                prop_assert!(o.find_edge(NodeIndex::new(w[0].index()), NodeIndex::new(w[1].index())).is_some());
            }
        }
        let cost = petgraph::algo::dijkstra(&o, NodeIndex::new(a as usize), Some(NodeIndex::new(b as usize)), |e| *e.weight())
            .get(&NodeIndex::new(b as usize)).copied();
        let got = weighted_shortest_path(&g, NodeId(a), NodeId(b), dir, EdgeFilter::default()).unwrap();
        prop_assert_eq!(got.as_ref().map(|(c, _)| *c), cost);
        if let Some((total, p)) = got {
            // The path's edges add up to its cost (cheapest parallel edge for each hop).
            let sum: f64 = p.windows(2).map(|w| {
                o.edges_connecting(NodeIndex::new(w[0].index()), NodeIndex::new(w[1].index()))
                    .map(|e| *e.weight()).fold(f64::INFINITY, f64::min)
            }).sum();
            prop_assert!((sum - total).abs() < 1e-9);
        }
    }

    #[test]
    fn components_match(c in case(), label in proptest::option::of(0u8..3)) {
        let g = csr(&c);
        let o = oracle(&c, Direction::Out, label);
        let comps = components(&g, EdgeFilter { label: label.map(EdgeLabel), ..Default::default() });
        prop_assert_eq!(comps.count as usize, petgraph::algo::connected_components(&o));
        // Same partition as union-find over petgraph's edges.
        let mut uf = petgraph::unionfind::UnionFind::new(c.n as usize);
        for e in o.raw_edges() { uf.union(e.source().index(), e.target().index()); }
        let mut scratch = Scratch::default();
        for x in 0..c.n as usize {
            for y in 0..c.n as usize {
                prop_assert_eq!(comps.component[x] == comps.component[y], uf.equiv(x, y));
            }
            let mine: std::collections::BTreeSet<usize> = component_of(&g, &mut scratch, NodeId(x as u32), EdgeFilter { label: label.map(EdgeLabel), ..Default::default() })
                .unwrap().into_iter().map(|m| m.index()).collect();
            let want: std::collections::BTreeSet<usize> = (0..c.n as usize).filter(|&y| uf.equiv(x, y)).collect();
            prop_assert_eq!(mine, want);
        }
    }
}

#[test]
fn negative_weights_are_rejected() {
    let e = |s, t, w| EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: EdgeLabel(0),
        weight: w,
    };
    let g = Csr::build(3, &[e(0, 1, 1.0), e(1, 2, -1.0)], true).unwrap();
    let err = weighted_shortest_path(&g, NodeId(0), NodeId(2), Direction::Out, EdgeFilter::default()).unwrap_err();
    assert_eq!(
        err,
        QueryError::NegativeWeight {
            from: 1,
            to: 2,
            weight: -1.0
        }
    );
    assert_eq!(
        neighbors(&g, NodeId(7), Direction::Out, EdgeFilter::default()).unwrap_err(),
        QueryError::NoSuchNode(7)
    );
}
