//! Node writes per transaction as the graph grows: 5-node transactions (new nodes, or updates
//! of existing ones chosen at random, each transaction committed and published alone) on
//! graphs of 1 M and 4 M nodes, without a tenant and with 1,000 tenants (each node in
//! `key % 1000`, so every tenant's members span the whole id range). A transaction's cost should follow its changes, not the graph's size: compare the
//! two sizes of one row. `GRAPHSYNC_BENCH_NODES` sets the sizes (comma-separated),
//! `GRAPHSYNC_BENCH_ONLY` runs only the rows whose name contains it.
//! `cargo bench -p graph --bench nodes` prints µs per transaction.

use graph::*;
use std::sync::Arc;
use std::time::Instant;

const TXNS: i64 = 20_000;
const WARM_UP: i64 = 2_000;

fn data(key: i64, tenants: Option<i64>, version: i64) -> NodeData {
    let mut d = NodeData::bare(NodeLabel(0), NodeKey::Int(key));
    d.tenant = tenants.map(|t| NodeKey::Int(key % t));
    d.properties = Arc::from(vec![(Arc::from("v"), PropValue::Int(version))]);
    d
}

/// µs per 5-node transaction on a graph of `n` nodes built in bulk: new nodes, or (`update`)
/// new data for existing ones.
fn run(n: i64, tenants: Option<i64>, update: bool) -> f64 {
    let nodes = (0..n).map(|k| Some(data(k, tenants, 0))).collect();
    let policy = CompactionPolicy {
        soft_limit: usize::MAX,
        hard_limit: usize::MAX,
    };
    let mut g = Graph::bulk(nodes, &[], false, 1, policy).expect("bulk build");
    let mut next = n;
    let mut lsn = 1;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut txn = |g: &mut Graph| {
        lsn += 1;
        let mut t = g.begin(lsn).expect("begin");
        for _ in 0..5 {
            if update {
                t.upsert_node(data(rng.i64(0..n), tenants, lsn as i64));
            } else {
                t.upsert_node(data(next, tenants, 0));
                next += 1;
            }
        }
        t.commit().expect("commit");
    };
    (0..WARM_UP).for_each(|_| txn(&mut g));
    let started = Instant::now();
    (0..TXNS).for_each(|_| txn(&mut g));
    started.elapsed().as_secs_f64() * 1e6 / TXNS as f64
}

fn main() {
    let sizes: Vec<i64> = std::env::var("GRAPHSYNC_BENCH_NODES")
        .unwrap_or_else(|_| "1000000,4000000".into())
        .split(',')
        .map(|s| match s.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("GRAPHSYNC_BENCH_NODES must be node counts separated by commas, not {s:?}"),
        })
        .collect();
    for (what, update) in [("new nodes", false), ("updates", true)] {
        for (name, tenants) in [("no tenant", None), ("1,000 tenants", Some(1_000))] {
            for &n in &sizes {
                let row = format!("5 {what:<9} per txn, {name:<14}");
                if std::env::var("GRAPHSYNC_BENCH_ONLY").is_ok_and(|only| !row.contains(&only)) {
                    continue;
                }
                let us = run(n, tenants, update);
                println!("{row} {n:>10} nodes  {us:>8.2} us/txn");
            }
        }
    }
}
