//! Hub-heavy overlays against a plain oracle: most edge changes touch a few hub nodes (base
//! rows and overlay lists long enough for the shared append-only buffers, the persistent
//! deletion sets and the writer's edge index), mixed with removals of existing and missing
//! edges, node deletions and restorations, dropped transactions (whose appends are never
//! published), compactions in the foreground and in the background, and readers holding
//! old views (released at random, so the versions only they reach are freed while others
//! are still read). After every transaction the new view equals the oracle, and at the end every
//! view kept along the way still answers exactly what it answered when it was published.

use graph::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::sync::Arc;

const HUBS: u32 = 3;

/// Stored edges (source, target, label, weight bits), a multiset.
#[derive(Debug, Clone, Default)]
struct Oracle {
    visible: Vec<bool>,
    edges: Vec<(u32, u32, u8, u64)>,
}

impl Oracle {
    fn find(&self, s: u32, t: u32, l: u8, w: Option<u64>) -> Option<usize> {
        self.edges
            .iter()
            .position(|&(a, b, c, d)| a == s && b == t && c == l && w.is_none_or(|w| w == d))
    }

    /// Every stored edge of `n` per direction, sorted (what the view must hold).
    fn sides(&self, n: u32) -> [Vec<(u32, u8, u64)>; 2] {
        let mut out = Vec::new();
        let mut inc = Vec::new();
        for &(s, t, l, w) in &self.edges {
            if s == n {
                out.push((t, l, w));
            }
            if t == n {
                inc.push((s, l, w));
            }
        }
        out.sort();
        inc.sort();
        [out, inc]
    }

    fn visible_edges(&self) -> usize {
        self.edges
            .iter()
            .filter(|e| self.visible[e.0 as usize] && self.visible[e.1 as usize])
            .count()
    }
}

fn sides(v: &GraphView, n: u32) -> [Vec<(u32, u8, u64)>; 2] {
    let mut r = [Vec::new(), Vec::new()];
    for (i, dir) in [Direction::Out, Direction::In].into_iter().enumerate() {
        v.for_each_edge(NodeId(n), dir, |m, l, w| r[i].push((m.0, l.0, w.to_bits())));
        r[i].sort();
    }
    r
}

/// What a view answers: per node, stored edges both ways and visibility; the visible edge count.
type Answers = (Vec<[Vec<(u32, u8, u64)>; 2]>, Vec<bool>, usize);

fn answers(v: &GraphView) -> Answers {
    let n = v.node_count();
    (
        (0..n).map(|i| sides(v, i)).collect(),
        (0..n).map(|i| v.is_visible(NodeId(i))).collect(),
        v.edge_count(),
    )
}

/// Panics naming the first difference.
fn same(got: &Answers, want: &Answers, what: &str) {
    for n in 0..want.0.len().max(got.0.len()) {
        assert_eq!(got.0.get(n), want.0.get(n), "{what}: edges of node {n} (out, in)");
    }
    assert_eq!(got.1, want.1, "{what}: visibility");
    assert_eq!(got.2, want.2, "{what}: visible edge count");
}

fn expected(o: &Oracle) -> Answers {
    let n = o.visible.len() as u32;
    (
        (0..n).map(|i| o.sides(i)).collect(),
        o.visible.clone(),
        o.visible_edges(),
    )
}

#[derive(Debug, Clone)]
enum Op {
    /// An edge with a hub at one end (which end, which hub, the other end, label, weight).
    HubEdge(bool, u32, prop::sample::Index, u8, u8),
    /// An edge between any two nodes.
    Edge(prop::sample::Index, prop::sample::Index, u8, u8),
    /// Removes a stored edge, found by exact weight or through `Txn::find_edge`.
    RemoveExisting(prop::sample::Index, bool),
    /// Removes an edge that may not exist (the transaction fails and is dropped).
    RemoveRandom(u32, prop::sample::Index, u8),
    RemoveNode(prop::sample::Index),
    RestoreNode(prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        8 => (any::<bool>(), 0..HUBS, idx(), 0u8..2, 0u8..3).prop_map(|(o, h, m, l, w)| Op::HubEdge(o, h, m, l, w)),
        2 => (idx(), idx(), 0u8..2, 0u8..3).prop_map(|(a, b, l, w)| Op::Edge(a, b, l, w)),
        4 => (idx(), any::<bool>()).prop_map(|(i, f)| Op::RemoveExisting(i, f)),
        1 => (0..HUBS, idx(), 0u8..2).prop_map(|(h, m, l)| Op::RemoveRandom(h, m, l)),
        1 => idx().prop_map(Op::RemoveNode),
        1 => idx().prop_map(Op::RestoreNode),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    /// A transaction; dropped instead of committed when `abort`.
    Txn {
        ops: Vec<Op>,
        abort: bool,
    },
    Compact,
    BeginCompaction,
    FinishCompaction,
    /// Checks one kept view and lets it go (its versions may then be freed).
    Release(prop::sample::Index),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => (prop::collection::vec(op(), 1..8), prop::bool::weighted(0.15)).prop_map(|(ops, abort)| Step::Txn { ops, abort }),
        1 => Just(Step::Compact),
        1 => Just(Step::BeginCompaction),
        1 => Just(Step::FinishCompaction),
        6 => any::<prop::sample::Index>().prop_map(Step::Release),
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

fn weight(w: u8) -> f64 {
    [1.0, 2.5, -0.0][w as usize]
}

/// Applies `ops` to the transaction and the oracle; `false` if a mutation was refused (the
/// caller drops the transaction and keeps the oracle it had).
fn run_ops(t: &mut Txn<'_>, o: &mut Oracle, ops: &[Op]) -> bool {
    let n = o.visible.len();
    for op in ops {
        match *op {
            Op::HubEdge(out, h, ref m, l, w) => {
                let m = m.index(n) as u32;
                let (s, d) = if out { (h, m) } else { (m, h) };
                t.add_edge(edge(s, d, l, weight(w))).unwrap();
                o.edges.push((s, d, l, weight(w).to_bits()));
            }
            Op::Edge(ref a, ref b, l, w) => {
                let (s, d) = (a.index(n) as u32, b.index(n) as u32);
                t.add_edge(edge(s, d, l, weight(w))).unwrap();
                o.edges.push((s, d, l, weight(w).to_bits()));
            }
            Op::RemoveExisting(ref i, by_find) => {
                if o.edges.is_empty() {
                    continue;
                }
                let (s, d, l, w) = o.edges[i.index(o.edges.len())];
                let e = if by_find {
                    let e = t
                        .find_edge(NodeId(s), NodeId(d), EdgeLabel(l))
                        .expect("find_edge misses a stored edge");
                    assert!(
                        o.find(s, d, l, Some(e.weight.to_bits())).is_some(),
                        "find_edge invented a weight"
                    );
                    e
                } else {
                    edge(s, d, l, f64::from_bits(w))
                };
                t.remove_edge(e).unwrap();
                let at = o.find(s, d, l, Some(e.weight.to_bits())).unwrap();
                o.edges.swap_remove(at);
            }
            Op::RemoveRandom(h, ref m, l) => {
                let m = m.index(n) as u32;
                let r = t.remove_edge(edge(h, m, l, 1.0));
                match o.find(h, m, l, Some(1f64.to_bits())) {
                    Some(at) => {
                        r.unwrap();
                        o.edges.swap_remove(at);
                    }
                    None => {
                        assert!(r.is_err(), "removed an edge that is not stored");
                        return false;
                    }
                }
            }
            Op::RemoveNode(ref i) => {
                let x = i.index(n);
                let r = t.push(Mutation::RemoveNode(NodeId(x as u32)));
                assert_eq!(r.is_ok(), o.visible[x]);
                if r.is_err() {
                    return false;
                }
                o.visible[x] = false;
            }
            Op::RestoreNode(ref i) => {
                let x = i.index(n);
                let r = t.push(Mutation::RestoreNode(NodeId(x as u32)));
                assert_eq!(r.is_ok(), !o.visible[x]);
                if r.is_err() {
                    return false;
                }
                o.visible[x] = true;
            }
        }
    }
    true
}

fn run(base_hub_edges: usize, steps: &[Step]) {
    const NODES: u32 = 120;
    // A base whose hubs already have long rows (past the writer index's threshold).
    let mut o = Oracle {
        visible: vec![true; NODES as usize],
        edges: Vec::new(),
    };
    let mut base = Vec::new();
    for i in 0..base_hub_edges {
        let (h, m) = ((i as u32) % HUBS, (i as u32 * 7 + 3) % NODES);
        let (s, d) = if i % 2 == 0 { (h, m) } else { (m, h) };
        base.push(edge(s, d, (i % 2) as u8, weight((i % 3) as u8)));
        o.edges.push((s, d, (i % 2) as u8, weight((i % 3) as u8).to_bits()));
    }
    let csr = Csr::build(NODES, &base, true).unwrap();
    let mut g = Graph::new(csr, 1);
    let mut kept: Vec<(Arc<GraphView>, Answers)> = vec![(g.view(), expected(&o))];
    let mut job: Option<CompactionJob> = None;
    let mut lsn = 1;
    for s in steps {
        match s {
            Step::Txn { ops, abort } => {
                lsn += 1;
                let mut t = g.begin(lsn).unwrap();
                let mut next = o.clone();
                let ok = run_ops(&mut t, &mut next, ops);
                if ok && !abort {
                    let v = t.commit().unwrap();
                    o = next;
                    let want = expected(&o);
                    same(&answers(&v), &want, "view after a transaction");
                    kept.push((v, want));
                }
            }
            Step::Compact => {
                job = None;
                let v = g.compact().unwrap();
                same(&answers(&v), &expected(&o), "after compaction");
                kept.push((v, expected(&o)));
            }
            Step::BeginCompaction => job = Some(g.begin_compaction()),
            Step::Release(i) => {
                if !kept.is_empty() {
                    let (v, want) = kept.swap_remove(i.index(kept.len()));
                    same(&answers(&v), &want, &format!("released view (lsn {})", v.lsn()));
                }
            }
            Step::FinishCompaction => {
                if let Some(j) = job.take() {
                    let v = g.finish_compaction(j.build()).unwrap();
                    same(&answers(&v), &expected(&o), "after background compaction + replay");
                    kept.push((v, expected(&o)));
                }
            }
        }
    }
    for (i, (v, want)) in kept.iter().enumerate() {
        assert_eq!(
            &answers(v),
            want,
            "view {i} (lsn {}) changed after it was published",
            v.lsn()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hub_heavy_views_equal_the_oracle(base in prop_oneof![Just(0usize), Just(40), Just(400)], steps in prop::collection::vec(step(), 1..120)) {
        run(base, &steps);
    }
}

/// Long runs: hubs with thousands of overlay edges and hundreds of deletions each (the
/// persistent deletion set), with old views checked at the end.
#[test]
fn long_hub_runs() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..4 {
        let steps = prop::collection::vec(step(), 600..800)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        run(400, &steps);
    }
}

/// A second graph started from a view another graph still writes to gets a table of its own:
/// both go on independently, and every view keeps answering what it did.
#[test]
fn two_graphs_from_one_view_do_not_share_versions() {
    let base = Csr::build(10, &[edge(0, 1, 0, 1.0)], false).unwrap();
    let mut g1 = Graph::new(base, 1);
    g1.apply(2, &[Mutation::AddEdge(edge(0, 2, 0, 1.0))]).unwrap();
    let v = g1.view();
    let mut g2 = Graph::from_view((*v).clone(), CompactionPolicy::default());
    let before = sides(&v, 0);
    for i in 0..50u32 {
        g1.apply(3 + u64::from(i), &[Mutation::AddEdge(edge(0, 3 + i % 7, 0, 1.0))])
            .unwrap();
        g2.apply(3 + u64::from(i), &[Mutation::AddEdge(edge(0, 4 + i % 5, 1, 2.5))])
            .unwrap();
    }
    assert_eq!(sides(&v, 0), before, "the shared view changed");
    let (a, b) = (g1.view(), g2.view());
    let out = |x: &GraphView| sides(x, 0)[0].clone();
    assert_eq!(out(&a).len(), 52);
    assert_eq!(out(&b).len(), 52);
    assert!(out(&a).iter().all(|e| e.1 == 0), "g1 sees g2's edges: {:?}", out(&a));
    assert_eq!(out(&b).iter().filter(|e| e.1 == 1).count(), 50);
    // A traversal handed nothing by the prefetch stages (a default) still sees the overlay.
    let mut got = Vec::new();
    b.for_each_neighbor_ahead(NodeId(0), Direction::Out, Default::default(), |m| got.push(m.0));
    assert_eq!(got.len(), 52);
}
