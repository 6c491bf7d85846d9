//! Snapshots: write → load gives the same answers as the view written (arrays read in place
//! from the mapping); every one of 1,000 single flipped bytes and random truncations is refused
//! with a typed error, never a panic; wrong magic and version are named.

use fastrand::Rng;
use graph::query::{components, neighbors};
use graph::snapshot::{self, SnapshotError};
use graph::*;

fn sample_graph() -> Graph {
    let mut r = Rng::with_seed(0x9E37_79B9);
    let n = 300u32;
    let edges: Vec<EdgeInput> = (0..2_000)
        .map(|_| EdgeInput {
            source: NodeId((r.u64(..) % u64::from(n)) as u32),
            target: NodeId((r.u64(..) % u64::from(n)) as u32),
            label: EdgeLabel((r.u64(..) % 3) as u8),
            weight: (r.u64(..) % 10) as f64 / 4.0,
        })
        .collect();
    let mut g = Graph::new(Csr::build(n, &edges, true).unwrap(), 10);
    // Overlays on top: additions, removals, deletions, a restoration.
    g.apply(
        11,
        &[
            Mutation::AddEdge(EdgeInput {
                source: NodeId(1),
                target: NodeId(2),
                label: EdgeLabel(0),
                weight: 7.0,
            }),
            Mutation::RemoveEdge(edges[0]),
            Mutation::RemoveNode(NodeId(5)),
            Mutation::RemoveNode(NodeId(6)),
            Mutation::AddNode,
        ],
    )
    .unwrap();
    g.apply(12, &[Mutation::RestoreNode(NodeId(6))]).unwrap();
    // Nodes with keys, tenants and properties; an edge to a node that does not exist yet.
    let mut txn = g.begin(13).unwrap();
    for i in 0..50i64 {
        let key = if i % 3 == 0 {
            NodeKey::Text(format!("user-{i}").into())
        } else {
            NodeKey::Int(i)
        };
        txn.upsert_node(NodeData {
            label: NodeLabel((i % 2) as u16),
            key,
            tenant: Some(NodeKey::Int(i % 4)),
            filters: std::sync::Arc::from(vec![(FilterId(3), NodeKey::Text("active".into()))]),
            properties: std::sync::Arc::from(vec![
                (std::sync::Arc::from("name"), PropValue::Text(format!("n{i}").into())),
                (std::sync::Arc::from("score"), PropValue::Float(i as f64 / 3.0)),
            ]),
        });
    }
    let a = txn.node_id(NodeLabel(1), &NodeKey::Int(1));
    let ghost = txn.node_id(
        NodeLabel(0),
        &NodeKey::Composite(vec![NodeKey::Int(7), NodeKey::Uuid([9; 16])].into()),
    );
    txn.add_edge(EdgeInput {
        source: a,
        target: ghost,
        label: EdgeLabel(1),
        weight: 1.0,
    })
    .unwrap();
    txn.commit().unwrap();
    g
}

fn same_nodes(a: &GraphView, b: &GraphView) {
    for n in 0..a.node_count() {
        let (x, y) = (a.node(NodeId(n)), b.node(NodeId(n)));
        assert_eq!(x, y, "node {n}");
        if let Some(d) = x {
            assert_eq!(b.resolve(d.label, &d.key), Some(NodeId(n)));
            let tv = |v: &GraphView| v.tenant_of(NodeId(n)).and_then(|t| v.tenant_value(t).cloned());
            assert_eq!(tv(a), tv(b));
        }
    }
    for t in 0..4 {
        let members = |v: &GraphView| v.tenant(&NodeKey::Int(t)).map(|id| v.tenant_members(id));
        assert_eq!(members(a), members(b));
    }
}

fn same_answers(a: &GraphView, b: &GraphView) {
    assert_eq!(a.node_count(), b.node_count());
    assert_eq!(a.edge_count(), b.edge_count());
    assert_eq!(a.lsn(), b.lsn());
    for n in 0..a.node_count() {
        assert_eq!(a.is_visible(NodeId(n)), b.is_visible(NodeId(n)), "node {n}");
        for dir in [Direction::Out, Direction::In] {
            let mut x: Vec<_> = Vec::new();
            a.for_each_edge(NodeId(n), dir, |m, l, w| x.push((m.0, l.0, w.to_bits())));
            let mut y: Vec<_> = Vec::new();
            b.for_each_edge(NodeId(n), dir, |m, l, w| y.push((m.0, l.0, w.to_bits())));
            x.sort();
            y.sort();
            assert_eq!(x, y, "node {n} {dir:?}");
            if a.is_visible(NodeId(n)) {
                assert_eq!(
                    neighbors(a, NodeId(n), dir, EdgeFilter::default()).unwrap().len(),
                    neighbors(b, NodeId(n), dir, EdgeFilter::default()).unwrap().len()
                );
            }
        }
    }
    assert_eq!(
        components(a, EdgeFilter::default()),
        components(b, EdgeFilter::default())
    );
}

#[test]
fn write_then_load_gives_the_same_graph_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.snap");
    let g = sample_graph();
    let written = snapshot::write(&g.view(), &path, 0xC0FFEE, 1_700_000_000_000).unwrap();
    assert_eq!(written.file_bytes, std::fs::metadata(&path).unwrap().len());
    let loaded = snapshot::load(&path).unwrap();
    assert_eq!(loaded.meta, written);
    assert_eq!(loaded.meta.config_hash, 0xC0FFEE);
    assert_eq!(loaded.meta.lsn, 13);
    assert!(
        loaded.view.base().is_mapped(),
        "arrays are read from the mapping, not copied"
    );
    assert_eq!(loaded.view.base().heap_bytes(), 0);
    same_answers(&g.view(), &loaded.view);
    same_nodes(&g.view(), &loaded.view);
    // The loaded graph keeps working: changes on top, compaction, and a second snapshot.
    let mut g2 = Graph::from_view(loaded.view, CompactionPolicy::default());
    g2.apply(14, &[Mutation::RestoreNode(NodeId(5))]).unwrap();
    g2.compact().unwrap();
    snapshot::write(&g2.view(), &path, 0xC0FFEE, 0).unwrap();
    let again = snapshot::load(&path).unwrap();
    same_answers(&g2.view(), &again.view);
    same_nodes(&g2.view(), &again.view);
    assert!(
        !dir.path().join(".graph.snap.tmp").exists(),
        "no temporary file left behind"
    );
}

#[test]
fn every_flipped_byte_and_truncation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.snap");
    snapshot::write(&sample_graph().view(), &path, 1, 2).unwrap();
    let good = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.snap");
    let mut r = Rng::with_seed(42);
    for i in 0..1_000 {
        let mut bytes = good.clone();
        // The header every few rounds, anywhere in the file otherwise.
        let at = if i % 10 == 0 {
            (r.u64(..) % 64) as usize
        } else {
            (r.u64(..) % bytes.len() as u64) as usize
        };
        bytes[at] ^= 1 << (r.u64(..) % 8);
        std::fs::write(&bad, &bytes).unwrap();
        let err = snapshot::load(&bad).expect_err(&format!("flip at byte {at} was accepted"));
        assert!(!matches!(err, SnapshotError::Io { .. }), "{err}");
    }
    for _ in 0..200 {
        let cut = (r.u64(..) % good.len() as u64) as usize;
        std::fs::write(&bad, &good[..cut]).unwrap();
        let err = snapshot::load(&bad).expect_err(&format!("truncation at {cut} was accepted"));
        assert!(
            matches!(err, SnapshotError::Truncated { .. } | SnapshotError::BadMagic),
            "cut {cut}: {err}"
        );
    }
    // Named errors for the cases an operator will meet.
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    std::fs::write(&bad, &wrong_magic).unwrap();
    assert!(matches!(snapshot::load(&bad), Err(SnapshotError::BadMagic)));
    let mut newer = good.clone();
    newer[8] = 2;
    let sum = xxhash_of_header(&newer);
    newer[32..40].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&bad, &newer).unwrap();
    let err = snapshot::load(&bad).unwrap_err();
    assert!(
        matches!(err, SnapshotError::UnsupportedVersion { found: 2, supported: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains("rebuild"), "{err}");
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&bad, &longer).unwrap();
    assert!(matches!(
        snapshot::load(&bad),
        Err(SnapshotError::TrailingBytes { extra: 1 })
    ));
    let missing = snapshot::load(&dir.path().join("nope.snap")).unwrap_err();
    assert!(matches!(missing, SnapshotError::Io { .. }) && missing.to_string().contains("nope.snap"));
}

fn xxhash_of_header(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&bytes[0..32])
}

/// Writes the sample graph's snapshot to `$GRAPHSYNC_FUZZ_SEED` (the fuzz corpus seed):
/// `GRAPHSYNC_FUZZ_SEED=fuzz/corpus/snapshot/sample.snap cargo test -p graph --test snapshot -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seed() {
    let Some(path) = std::env::var_os("GRAPHSYNC_FUZZ_SEED") else {
        return;
    };
    let g = sample_graph();
    snapshot::write(&g.view(), std::path::Path::new(&path), 7, 0).unwrap();
}

/// The snapshot fuzz corpus (`fuzz/corpus/snapshot`) loads or is refused, never panics, on
/// stable, in CI; the seed itself loads.
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/snapshot");
    let mut loaded = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz corpus") {
        if snapshot::load(&e.unwrap().path()).is_ok() {
            loaded += 1;
        }
    }
    assert!(
        loaded >= 1,
        "the seed snapshot no longer loads (format changed? regenerate it)"
    );
}
