//! Readers on other threads run traversals on views while the writer applies 100,000 mutations
//! and two compactions (one of them on a background thread); every view a reader sees is
//! consistent: its edge count is exactly what the transactions up to its LSN imply, and a full
//! scan of its adjacency finds exactly that many edges.

use graph::query::k_hop;
use graph::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const NODES: u32 = 2_000;
const TXNS: u64 = 20_000;
const PER_TXN: u64 = 5;

/// Transaction `i` (LSN i + 2) adds 4 edges and removes 1 (from transaction i - 1 onwards);
/// the expected count after LSN `lsn` follows.
fn expected_edges(lsn: u64) -> usize {
    if lsn < 2 {
        return 0;
    }
    let txns = lsn - 1;
    (txns * 4 - (txns - 1)) as usize
}

fn edge(i: u64, k: u64) -> EdgeInput {
    let s = ((i * 7 + k * 13) % u64::from(NODES)) as u32;
    let t = ((i * 11 + k * 17 + 1) % u64::from(NODES)) as u32;
    EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: EdgeLabel((k % 2) as u8),
        weight: 1.0,
    }
}

#[test]
fn readers_always_see_whole_transactions() {
    let mut g = Graph::new(Csr::build(NODES, &[], false).unwrap(), 1);
    let reader = g.reader();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for r in 0..2 {
        let reader = reader.clone();
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            let mut scratch = Scratch::default();
            let mut checked = 0u64;
            let mut last_lsn = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = reader.view();
                assert!(v.lsn() >= last_lsn, "views never go back in time");
                last_lsn = v.lsn();
                assert_eq!(v.edge_count(), expected_edges(v.lsn()), "reader {r} at LSN {}", v.lsn());
                let mut scanned = 0;
                for n in 0..NODES {
                    v.for_each_edge(NodeId(n), Direction::Out, |_, _, _| scanned += 1);
                }
                assert_eq!(
                    scanned,
                    v.edge_count(),
                    "adjacency agrees with the count at LSN {}",
                    v.lsn()
                );
                let reached = k_hop(
                    &*v,
                    &mut scratch,
                    NodeId(0),
                    Direction::Both,
                    EdgeFilter::default(),
                    4,
                    10_000,
                )
                .unwrap();
                assert!(!reached.is_empty());
                checked += 1;
            }
            checked
        }));
    }

    let mut background: Option<std::thread::JoinHandle<Compacted>> = None;
    for i in 0..TXNS {
        let lsn = i + 2;
        let mut txn: Vec<Mutation> = (0..4).map(|k| Mutation::AddEdge(edge(i, k))).collect();
        if i >= 1 {
            txn.push(Mutation::RemoveEdge(edge(i - 1, 3)));
        }
        assert_eq!(txn.len() as u64, if i == 0 { PER_TXN - 1 } else { PER_TXN });
        g.apply(lsn, &txn).unwrap();
        if i == TXNS / 3 {
            g.compact().unwrap();
        }
        if i == TXNS / 2 {
            let job = g.begin_compaction();
            background = Some(std::thread::spawn(move || job.build()));
        }
        if i == TXNS / 2 + 2_000 {
            let done = background.take().unwrap().join().unwrap();
            let v = g.finish_compaction(done).unwrap();
            assert_eq!(v.lsn(), lsn, "carried-over transactions are replayed up to the newest");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let checks: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(checks > 0);
    let v = g.view();
    assert_eq!(v.edge_count(), expected_edges(TXNS + 1));
    assert_eq!(TXNS * PER_TXN - 1, 99_999, "100k mutations");
}
