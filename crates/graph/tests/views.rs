//! Views with overlays against a plain oracle: random transactions of node additions and
//! deletions, edge additions and removals (base and overlay edges, parallel edges), some of them
//! invalid (rejected whole); after every transaction every query on the new view equals the
//! oracle, and the previous view still shows the previous state.

use graph::query::{components, k_hop, neighbors, shortest_path, weighted_shortest_path};
use graph::*;
use proptest::prelude::*;

#[derive(Debug, Clone, Default)]
struct Oracle {
    visible: Vec<bool>,
    edges: Vec<(u32, u32, u8, f64)>,
}

impl Oracle {
    fn apply(&self, txn: &[Mutation]) -> Option<Oracle> {
        let mut o = self.clone();
        for m in txn {
            match *m {
                Mutation::SetNode { .. } => unreachable!("not generated here"),
                Mutation::AddNode => o.visible.push(true),
                Mutation::RemoveNode(n) => {
                    if !o.visible.get(n.index()).copied().unwrap_or(false) {
                        return None;
                    }
                    o.visible[n.index()] = false;
                }
                Mutation::RestoreNode(n) => {
                    if o.visible.get(n.index()).copied().unwrap_or(true) {
                        return None;
                    }
                    o.visible[n.index()] = true;
                }
                Mutation::AddEdge(e) => {
                    if ![e.source, e.target].iter().all(|n| n.index() < o.visible.len()) {
                        return None;
                    }
                    o.edges.push((e.source.0, e.target.0, e.label.0, e.weight));
                }
                Mutation::RemoveEdge(e) => {
                    let i = o.edges.iter().position(|&(s, t, l, w)| {
                        s == e.source.0 && t == e.target.0 && l == e.label.0 && w == e.weight
                    })?;
                    o.edges.swap_remove(i);
                }
            }
        }
        Some(o)
    }

    fn neighbours(&self, n: u32, dir: Direction) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        for &(s, t, l, _) in &self.edges {
            if !self.visible[s as usize] || !self.visible[t as usize] {
                continue;
            }
            if matches!(dir, Direction::Out | Direction::Both) && s == n {
                out.push((t, l));
            }
            if matches!(dir, Direction::In | Direction::Both) && t == n {
                out.push((s, l));
            }
        }
        out.sort();
        out
    }
}

#[derive(Debug, Clone)]
enum Op {
    AddNode,
    RemoveNode(prop::sample::Index),
    RestoreNode(prop::sample::Index),
    AddEdge(prop::sample::Index, prop::sample::Index, u8, u8),
    RemoveExisting(prop::sample::Index),
    RemoveRandom(prop::sample::Index, prop::sample::Index, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::AddNode),
        1 => any::<prop::sample::Index>().prop_map(Op::RemoveNode),
        1 => any::<prop::sample::Index>().prop_map(Op::RestoreNode),
        5 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..2, 0u8..3).prop_map(|(a, b, l, w)| Op::AddEdge(a, b, l, w)),
        3 => any::<prop::sample::Index>().prop_map(Op::RemoveExisting),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..2).prop_map(|(a, b, l)| Op::RemoveRandom(a, b, l)),
    ]
}

fn edge(s: u32, t: u32, l: u8, w: f64) -> EdgeInput {
    EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: EdgeLabel(l),
        weight: w,
    }
}

/// Hop counts and least costs from `s` over visible nodes (Bellman-Ford style relaxation).
fn oracle_distances(o: &Oracle, s: u32) -> (Vec<Option<u32>>, Vec<Option<f64>>) {
    let n = o.visible.len();
    let mut dist = vec![None; n];
    let mut cost: Vec<Option<f64>> = vec![None; n];
    dist[s as usize] = Some(0);
    cost[s as usize] = Some(0.0);
    let live: Vec<_> = o
        .edges
        .iter()
        .filter(|e| o.visible[e.0 as usize] && o.visible[e.1 as usize])
        .collect();
    for _ in 0..n {
        for &&(a, b, _, w) in &live {
            if let Some(d) = dist[a as usize] {
                if dist[b as usize].is_none_or(|x| d + 1 < x) {
                    dist[b as usize] = Some(d + 1);
                }
            }
            if let Some(c) = cost[a as usize] {
                if cost[b as usize].is_none_or(|x| c + w < x) {
                    cost[b as usize] = Some(c + w);
                }
            }
        }
    }
    (dist, cost)
}

fn check(view: &GraphView, o: &Oracle) -> Result<(), TestCaseError> {
    prop_assert_eq!(view.node_count() as usize, o.visible.len());
    let visible_edges = o
        .edges
        .iter()
        .filter(|e| o.visible[e.0 as usize] && o.visible[e.1 as usize])
        .count();
    prop_assert_eq!(
        view.edge_count(),
        visible_edges,
        "view lsn {} oracle {:?}",
        view.lsn(),
        o
    );
    let mut scratch = Scratch::default();
    for n in 0..o.visible.len() as u32 {
        prop_assert_eq!(view.is_visible(NodeId(n)), o.visible[n as usize]);
        if !o.visible[n as usize] {
            prop_assert!(neighbors(view, NodeId(n), Direction::Out, EdgeFilter::default()).is_err());
            continue;
        }
        for dir in [Direction::Out, Direction::In, Direction::Both] {
            let mut got: Vec<(u32, u8)> = neighbors(view, NodeId(n), dir, EdgeFilter::default())
                .unwrap()
                .into_iter()
                .map(|(m, l)| (m.0, l.0))
                .collect();
            got.sort();
            prop_assert_eq!(got, o.neighbours(n, dir), "node {} {:?}", n, dir);
        }
        // k-hop levels equal the oracle's BFS, in every direction, to depth 3 and unbounded
        // (long queues run the traversal's prefetch stages over changed nodes too).
        for dir in [Direction::Out, Direction::In, Direction::Both] {
            for max_depth in [3, u32::MAX] {
                let got: std::collections::BTreeMap<u32, u32> = k_hop(
                    view,
                    &mut scratch,
                    NodeId(n),
                    dir,
                    EdgeFilter::default(),
                    max_depth,
                    usize::MAX,
                )
                .unwrap()
                .into_iter()
                .map(|(m, d)| (m.0, d))
                .collect();
                let mut want = std::collections::BTreeMap::from([(n, 0)]);
                let mut frontier = vec![n];
                let mut depth = 0;
                while !frontier.is_empty() && depth < max_depth {
                    depth += 1;
                    let mut next = Vec::new();
                    for &f in &frontier {
                        for (m, _) in o.neighbours(f, dir) {
                            if let std::collections::btree_map::Entry::Vacant(e) = want.entry(m) {
                                e.insert(depth);
                                next.push(m);
                            }
                        }
                    }
                    frontier = next;
                }
                prop_assert_eq!(got, want, "k-hop from {} {:?} depth {}", n, dir, max_depth);
            }
        }
    }
    // Shortest paths (BFS and Dijkstra) from node 0 to every node, against the oracle.
    if o.visible.first() == Some(&true) {
        let (dist, cost) = oracle_distances(o, 0);
        for t in 0..o.visible.len() as u32 {
            if !o.visible[t as usize] {
                continue;
            }
            let p = shortest_path(
                view,
                &mut scratch,
                NodeId(0),
                NodeId(t),
                Direction::Out,
                EdgeFilter::default(),
            )
            .unwrap();
            prop_assert_eq!(
                p.as_ref().map(|p| p.len() as u32 - 1),
                dist[t as usize],
                "hops to {}",
                t
            );
            let w = weighted_shortest_path(view, NodeId(0), NodeId(t), Direction::Out, EdgeFilter::default()).unwrap();
            prop_assert_eq!(w.map(|(c, _)| c), cost[t as usize], "cost to {}", t);
        }
    }
    // Component count over visible nodes.
    let mut uf: Vec<u32> = (0..o.visible.len() as u32).collect();
    fn find(p: &mut [u32], x: u32) -> u32 {
        if p[x as usize] != x {
            let r = find(p, p[x as usize]);
            p[x as usize] = r;
        }
        p[x as usize]
    }
    for &(s, t, _, _) in &o.edges {
        if o.visible[s as usize] && o.visible[t as usize] {
            let (a, b) = (find(&mut uf, s), find(&mut uf, t));
            uf[a as usize] = b;
        }
    }
    let roots: std::collections::BTreeSet<u32> = (0..o.visible.len() as u32)
        .filter(|&n| o.visible[n as usize])
        .map(|n| find(&mut uf, n))
        .collect();
    prop_assert_eq!(components(view, EdgeFilter::default()).count as usize, roots.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn views_match_the_oracle_after_every_transaction(
        n in 1u32..30,
        base_edges in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..2, 0u8..3), 0..60),
        txns in proptest::collection::vec((proptest::collection::vec(op(), 1..6), 0u8..8), 1..25),
    ) {
        let base: Vec<EdgeInput> = base_edges.iter().map(|(a, b, l, w)| edge(a.index(n as usize) as u32, b.index(n as usize) as u32, *l, f64::from(*w))).collect();
        let mut o = Oracle { visible: vec![true; n as usize], edges: base.iter().map(|e| (e.source.0, e.target.0, e.label.0, e.weight)).collect() };
        let mut g = Graph::new(Csr::build(n, &base, true).unwrap(), 1);
        check(&g.view(), &o)?;
        let mut job: Option<Compacted> = None;
        for (i, (ops, compaction)) in txns.iter().enumerate() {
            // Compactions at random points: now, or begun here and finished a few transactions
            // later (transactions in between are carried over).
            match compaction {
                0 => { g.compact().unwrap(); check(&g.view(), &o)?; }
                1 if job.is_none() => job = Some(g.begin_compaction().build()),
                // Snapshot → load → the loaded view answers like the oracle, and the graph
                // continues from it.
                3 => {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("v.snap");
                    graph::snapshot::write(&g.view(), &path, 7, 0).unwrap();
                    let loaded = graph::snapshot::load(&path).unwrap();
                    check(&loaded.view, &o)?;
                    if job.is_none() {
                        g = Graph::from_view(loaded.view, CompactionPolicy::default());
                    }
                }
                2 => if let Some(done) = job.take() {
                    let before = g.view();
                    match g.finish_compaction(done) {
                        Ok(_) => {}
                        // A compaction begun later superseded this job: nothing changes.
                        Err(ApplyError::StaleCompaction) => prop_assert!(std::sync::Arc::ptr_eq(&before, &g.view())),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                    check(&g.view(), &o)?;
                },
                _ => {}
            }
            let count = o.visible.len() + ops.iter().filter(|op| matches!(op, Op::AddNode)).count();
            let txn: Vec<Mutation> = ops.iter().map(|op| match op {
                Op::AddNode => Mutation::AddNode,
                Op::RemoveNode(x) => Mutation::RemoveNode(NodeId(x.index(count) as u32)),
                Op::RestoreNode(x) => Mutation::RestoreNode(NodeId(x.index(count) as u32)),
                Op::AddEdge(a, b, l, w) => Mutation::AddEdge(edge(a.index(count) as u32, b.index(count) as u32, *l, f64::from(*w))),
                Op::RemoveExisting(x) if !o.edges.is_empty() => {
                    let (s, t, l, w) = o.edges[x.index(o.edges.len())];
                    Mutation::RemoveEdge(edge(s, t, l, w))
                }
                Op::RemoveExisting(_) => Mutation::AddNode,
                Op::RemoveRandom(a, b, l) => Mutation::RemoveEdge(edge(a.index(count) as u32, b.index(count) as u32, *l, 1.0)),
            }).collect();
            let before = g.view();
            let prev = o.clone();
            let lsn = 2 + i as u64;
            match (o.apply(&txn), g.apply(lsn, &txn)) {
                (Some(next), Ok(view)) => {
                    prop_assert_eq!(view.lsn(), lsn);
                    check(&view, &next)?;
                    o = next;
                }
                (None, Err(_)) => {
                    // Rejected whole: the current view is still the one before.
                    prop_assert!(std::sync::Arc::ptr_eq(&before, &g.view()));
                }
                (want, got) => prop_assert!(false, "oracle {:?} vs graph {:?} on {:?}", want.is_some(), got, txn),
            }
            // The view taken before the transaction is unchanged.
            check(&before, &prev)?;
        }
        if let Some(done) = job.take() {
            let _ = g.finish_compaction(done);
            check(&g.view(), &o)?;
        }
        g.compact().unwrap();
        prop_assert_eq!(g.view().overlay_edges(), 0);
        check(&g.view(), &o)?;
        prop_assert!(g.apply(1, &[]).is_err(), "stale LSN refused");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Node ids spread over many chunks and groups of the overlay tree.
    #[test]
    fn overlays_spread_over_many_chunks(
        ops in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<bool>(), 0u8..4), 1..200),
    ) {
        const N: u32 = 70_000;
        let active: Vec<u32> = (0..24u32).map(|i| (i * 7_919 + i * i * 31) % N).collect();
        let mut g = Graph::new(Csr::build(N, &[edge(active[0], active[1], 0, 1.0)], false).unwrap(), 1);
        let mut edges: Vec<(u32, u32)> = vec![(active[0], active[1])];
        for (i, (a, b, add, chunk_txn)) in ops.iter().enumerate() {
            let (s, t) = (active[a.index(active.len())], active[b.index(active.len())]);
            let lsn = 2 + i as u64;
            if *add || edges.is_empty() {
                g.apply(lsn, &[Mutation::AddEdge(edge(s, t, 0, 1.0))]).unwrap();
                edges.push((s, t));
            } else {
                let (s, t) = edges.swap_remove(a.index(edges.len()));
                g.apply(lsn, &[Mutation::RemoveEdge(edge(s, t, 0, 1.0))]).unwrap();
            }
            if *chunk_txn == 0 && i % 16 == 0 {
                g.compact().unwrap();
            }
            let v = g.view();
            prop_assert_eq!(v.edge_count(), edges.len());
            for &n in &active {
                let mut got: Vec<u32> = neighbors(&*v, NodeId(n), Direction::Out, EdgeFilter::default()).unwrap().iter().map(|(m, _)| m.0).collect();
                let mut want: Vec<u32> = edges.iter().filter(|e| e.0 == n).map(|e| e.1).collect();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }
    }
}

/// A placeholder (a node added and hidden by one transaction) is marks only; a transaction
/// that made one and was dropped leaves nothing behind: the id it took is visible when the
/// next transaction adds it as a node, and the placeholder made after is hidden.
#[test]
fn a_dropped_transactions_placeholder_leaves_no_trace() {
    let mut g = Graph::new(Csr::build(2, &[], false).unwrap(), 1);
    let key = |i: i64| NodeKey::Int(i);
    {
        let mut txn = g.begin(2).unwrap();
        let p = txn.node_id(NodeLabel(0), &key(100));
        assert_eq!(p, NodeId(2));
        assert!(txn.node(p).is_none(), "a placeholder is hidden");
        // Dropped: nothing is published.
    }
    let view = g.view();
    assert_eq!(view.node_count(), 2);
    let mut txn = g.begin(3).unwrap();
    let n = txn.upsert_node(NodeData::bare(NodeLabel(0), key(200)));
    assert_eq!(n, NodeId(2), "the dropped transaction's id is taken again");
    let p = txn.node_id(NodeLabel(0), &key(100));
    txn.add_edge(EdgeInput {
        source: NodeId(0),
        target: p,
        label: EdgeLabel(0),
        weight: 1.0,
    })
    .unwrap();
    let v3 = txn.commit().unwrap();
    assert!(
        v3.is_visible(n),
        "a node added over a dropped placeholder's id is visible"
    );
    assert!(!v3.is_visible(p), "a placeholder is hidden");
    assert!(!v3.all_visible());
    assert_eq!(v3.edge_count(), 0, "an edge to a placeholder is not visible");
    assert_eq!(v3.resolve(NodeLabel(0), &key(100)), Some(p));
    assert_eq!(v3.node(p).map(|d| d.key.clone()), Some(key(100)));
    // The placeholder becomes a node: visible with its edge, in the new view only.
    let mut txn = g.begin(4).unwrap();
    assert_eq!(txn.upsert_node(NodeData::bare(NodeLabel(0), key(100))), p);
    let v4 = txn.commit().unwrap();
    assert!(v4.is_visible(p));
    assert_eq!(v4.edge_count(), 1);
    assert!(!v3.is_visible(p), "the older view still hides it");
    // Hidden again, then folded into a base by compaction: still hidden there.
    let mut txn = g.begin(5).unwrap();
    assert_eq!(txn.delete_node(NodeLabel(0), &key(100)), Some(p));
    txn.commit().unwrap();
    g.compact().unwrap();
    let v = g.view();
    assert!(!v.is_visible(p) && v.is_visible(n));
    assert_eq!(v.edge_count(), 0);
    assert_eq!(v.resolve(NodeLabel(0), &key(100)), Some(p));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, ..ProptestConfig::default() })]

    /// `Txn::push_all` (a restart's replay: prefetching mutations ahead, one transaction over
    /// many chunks with `advance_lsn`) builds the same view as pushing one mutation at a time.
    #[test]
    fn push_all_equals_push_one_at_a_time(
        base_edges in proptest::collection::vec((0u32..40, 0u32..40), 0..120),
        ops in proptest::collection::vec((0u32..40, 0u32..40, any::<prop::sample::Index>(), 0u8..3), 1..400),
        chunk in 1usize..64,
    ) {
        let base: Vec<EdgeInput> = base_edges.iter().map(|&(a, b)| edge(a, b, 0, 1.0)).collect();
        let mut live: Vec<(u32, u32, f64)> = base.iter().map(|e| (e.source.0, e.target.0, e.weight)).collect();
        let mut ms = Vec::new();
        for &(a, b, x, kind) in &ops {
            if kind == 0 && !live.is_empty() {
                let (s, t, w) = live.swap_remove(x.index(live.len()));
                ms.push(Mutation::RemoveEdge(edge(s, t, 0, w)));
            } else {
                let w = f64::from(kind);
                live.push((a, b, w));
                ms.push(Mutation::AddEdge(edge(a, b, 0, w)));
            }
        }
        let csr = || Csr::build(40, &base, true).unwrap();
        let mut one = Graph::new(csr(), 1);
        let mut t = one.begin(2).unwrap();
        for m in &ms {
            t.push(m.clone()).unwrap();
        }
        let want = t.commit().unwrap();
        let mut all = Graph::new(csr(), 1);
        let mut t = all.begin(2).unwrap();
        for (i, c) in ms.chunks(chunk).enumerate() {
            t.push_all(&mut c.to_vec()).unwrap();
            t.advance_lsn(2 + i as u64);
        }
        t.advance_lsn(1);
        let got = t.commit().unwrap();
        prop_assert_eq!(got.lsn(), 1 + ms.len().div_ceil(chunk) as u64);
        prop_assert_eq!(got.edge_count(), live.len());
        prop_assert_eq!(want.edge_count(), live.len());
        for n in 0..40 {
            for dir in [Direction::Out, Direction::In] {
                let list = |v: &GraphView| {
                    let mut l: Vec<(u32, u64)> = Vec::new();
                    v.for_each_edge(NodeId(n), dir, |m, _, w| l.push((m.0, w.to_bits())));
                    l.sort();
                    l
                };
                prop_assert_eq!(list(&got), list(&want));
            }
        }
    }
}

/// A commit touching most of a large graph (the touched nodes' dense index, as in a restart's
/// replay): every node reads its own new state, an older view still held reads what it read,
/// and a later big commit (pruning what no view reaches) keeps both true.
#[test]
fn commits_touching_most_of_the_graph_install_every_node() {
    const N: u32 = 150_000;
    let mut g = Graph::new(Csr::build(N, &[], false).unwrap(), 1);
    let out = |v: &GraphView, n: u32| {
        let mut l: Vec<u32> = Vec::new();
        v.for_each_edge(NodeId(n), Direction::Out, |m, _, _| l.push(m.0));
        l.sort();
        l
    };
    let mut t = g.begin(2).unwrap();
    for i in 0..N {
        t.add_edge(edge(i, (i + 1) % N, 0, 1.0)).unwrap();
    }
    let v1 = t.commit().unwrap();
    let mut t = g.begin(3).unwrap();
    for i in (0..N).step_by(2) {
        t.push(Mutation::RemoveEdge(edge(i, (i + 1) % N, 0, 1.0))).unwrap();
        t.add_edge(edge(i, (i + 7) % N, 0, 1.0)).unwrap();
    }
    let v2 = t.commit().unwrap();
    for i in 0..N {
        assert_eq!(out(&v1, i), vec![(i + 1) % N], "old view, node {i}");
        let want = if i % 2 == 0 { (i + 7) % N } else { (i + 1) % N };
        assert_eq!(out(&v2, i), vec![want], "new view, node {i}");
    }
    drop(v1);
    let mut t = g.begin(4).unwrap();
    for i in 0..N {
        t.add_edge(edge(i, (i + 3) % N, 0, 1.0)).unwrap();
    }
    let v3 = t.commit().unwrap();
    assert_eq!(v3.edge_count(), 2 * N as usize);
    for i in (0..N).step_by(997) {
        let first = if i % 2 == 0 { (i + 7) % N } else { (i + 1) % N };
        let mut want = vec![first, (i + 3) % N];
        want.sort();
        assert_eq!(out(&v3, i), want, "node {i}");
        assert_eq!(out(&v2, i), vec![first], "held view, node {i}");
    }
}
