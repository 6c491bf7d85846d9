//! Mapper + graph apply throughput without a server: synthetic committed transactions of
//! 1,000 rows (edge inserts between existing nodes; node inserts with a foreign key), applied
//! in batches as the replicator does. `cargo bench -p sync` prints rows/s.
//!
//! Then hub-heavy streaming (issue 11): 5-row transactions (4 edge inserts + 1 delete of an
//! earlier edge), half of the edges on 10 hub nodes, each transaction applied and published on
//! its own (`Mapper::apply`), without compaction so the hubs' overlay lists keep growing; a
//! uniform row of the same shape for comparison. `GRAPHSYNC_BENCH_HUB_CHANGES` sets the edge
//! changes per row (default 4,000,000: each hub then holds ~120,000 live overlay edges),
//! `GRAPHSYNC_BENCH_HUB_SECS` the applying time after which a row stops early (default 15),
//! `GRAPHSYNC_BENCH_NODES` the graph's nodes (default 100,000, at least 1,000).
//! `GRAPHSYNC_BENCH_ONLY` runs only the rows whose name contains it (for profiling one row).

use bytes::Bytes;
use fastrand::Rng;
use graph::CompactionPolicy;
use pgoutput::{Column, ColumnData, Lsn, PgTimestamp, Relation, ReplicaIdentity, TupleData};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::change::RowChange;
use sync::committed::CommittedTxn;
use sync::config::MappingConfig;
use sync::mapper::{BulkLoad, Mapper};

const CONFIG: &str = r#"
[[nodes]]
table = "public.n"
key = "id"
label = "N"

[[nodes]]
table = "public.w"
key = "id"
label = "W"

[[edges]]
table = "public.e"
label = "E"
source = { column = "a", node = "N" }
target = { column = "b", node = "N" }

[[edges]]
table = "public.w"
label = "WA"
source = { column = "id", node = "W" }
target = { column = "a", node = "N" }

[[edges]]
table = "public.h"
label = "H"
source = { column = "a", node = "N" }
target = { column = "b", node = "N" }
"#;

/// Node keys of `N` rows: 0..nodes(), `GRAPHSYNC_BENCH_NODES` (default 100,000; the e2e
/// bench's graph has 1.78 M).
fn nodes() -> u32 {
    static N: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("GRAPHSYNC_BENCH_NODES")
            .ok()
            .map(|v| match v.parse() {
                Ok(n) if n >= 1_000 => n,
                _ => panic!("GRAPHSYNC_BENCH_NODES must be a whole number of at least 1000, not {v:?}"),
            })
            .unwrap_or(100_000)
    })
}

/// Hubs: ten node keys spread over the key space (not all in one chunk of node ids).
const HUBS: usize = 10;

fn hub(i: usize) -> u32 {
    11 + (i as u64 * 9_973 * u64::from(nodes()) / 100_000) as u32
}

fn rel(id: u32, name: &str, cols: &[(&str, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        xid: None,
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .map(|(n, k)| Column {
                name: (*n).into(),
                type_oid: 23,
                type_modifier: -1,
                is_key: *k,
            })
            .collect(),
    })
}

fn tuple(v: &[i64]) -> TupleData {
    TupleData::from_columns(v.iter().map(|x| ColumnData::Text(Bytes::from(x.to_string()))))
}

/// A mapper and a graph holding the 100,000 `N` nodes (no edges) and an empty row index.
fn setup(policy: CompactionPolicy) -> (Mapper, graph::Graph, sync::mapper::RowIndex) {
    let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("bench.toml")).unwrap());
    let mut mapper = Mapper::new(config);
    let index = mapper.index_for(|t| match t {
        "public.e" => Some(vec!["a".into(), "b".into()]),
        _ => Some(vec!["id".into()]),
    });
    let n = rel(1, "n", &[("id", true)]);
    let mut bulk = BulkLoad::new(index);
    for i in 0..i64::from(nodes()) {
        bulk.insert(&mut mapper, &n, &n.typed_values(&tuple(&[i]), "COPY").unwrap())
            .unwrap();
    }
    let (graph, index) = bulk.finish(1, policy).unwrap();
    (mapper, graph, index)
}

/// Whether the row `name` runs: `GRAPHSYNC_BENCH_ONLY` unset, or a part of `name`.
fn selected(name: &str) -> bool {
    std::env::var("GRAPHSYNC_BENCH_ONLY").map_or(true, |only| name.contains(&only))
}

fn run(name: &str, rows: u64, batch: usize, make: impl Fn(u64) -> RowChange) {
    if !selected(name) {
        return;
    }
    let (mut mapper, mut graph, mut index) = setup(Default::default());
    let txns: Vec<CommittedTxn> = (0..rows / 1000)
        .map(|t| CommittedTxn {
            xid: t as u32,
            commit_lsn: Lsn(10 + t),
            end_lsn: Lsn(11 + t * 10),
            commit_time: PgTimestamp(0),
            changes: (0..1000).map(|i| make(t * 1000 + i)).collect(),
            spilled: None,
        })
        .collect();
    let started = Instant::now();
    for chunk in txns.chunks(batch) {
        mapper.apply_many(&mut graph, &mut index, chunk).unwrap();
        if graph.needs_compaction() {
            graph.compact().unwrap();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<44} {rows:>9} rows  {:>10.0} rows/s  ({:.2} us/row)",
        rows as f64 / secs,
        secs * 1e6 / rows as f64
    );
}

/// The live edge rows of the streaming workload: `(row id, a, b)`, node keys `a` → `b`.
struct Workload {
    rng: Rng,
    /// Percent of new edges with a hub endpoint.
    hub_percent: u32,
    next_id: u64,
    live: Vec<(u64, u32, u32)>,
    pairs: HashSet<(u32, u32)>,
    /// Live edges per hub (as source or target).
    hub_edges: [u64; HUBS],
}

impl Workload {
    fn new(hub_percent: u32) -> Self {
        Workload {
            rng: Rng::with_seed(0x9E37_79B9_7F4A_7C15),
            hub_percent,
            next_id: 0,
            live: Vec::new(),
            pairs: HashSet::new(),
            hub_edges: [0; HUBS],
        }
    }

    fn count(&mut self, a: u32, b: u32, delta: i64) {
        for i in 0..HUBS {
            let h = hub(i);
            if a == h || b == h {
                self.hub_edges[i] = self.hub_edges[i].wrapping_add_signed(delta);
            }
        }
    }

    /// A new edge (no (a, b) pair twice while live, as under a primary key on (a, b)): with
    /// `hub_percent` % a hub at one end (the target 3 times in 4, else the source) and a
    /// uniform node at the other, else two uniform nodes.
    fn insert(&mut self) -> (u64, u32, u32) {
        loop {
            let r = &mut self.rng;
            let (a, b) = if r.u32(..100) < self.hub_percent {
                let h = hub(r.usize(..HUBS));
                let u = r.u32(..nodes());
                if r.u32(..4) == 0 {
                    (h, u)
                } else {
                    (u, h)
                }
            } else {
                (r.u32(..nodes()), r.u32(..nodes()))
            };
            if a != b && self.pairs.insert((a, b)) {
                let e = (self.next_id, a, b);
                self.next_id += 1;
                self.live.push(e);
                self.count(a, b, 1);
                return e;
            }
        }
    }

    /// A uniformly chosen live edge, forgotten.
    fn delete(&mut self) -> Option<(u64, u32, u32)> {
        if self.live.is_empty() {
            return None;
        }
        let e = self.live.swap_remove(self.rng.u32(..self.live.len() as u32) as usize);
        self.pairs.remove(&(e.1, e.2));
        self.count(e.1, e.2, -1);
        Some(e)
    }
}

/// Edge changes in 5-row transactions (4 inserts + 1 delete of an edge inserted by an earlier
/// transaction), each applied as one published view, no compaction. `id_key`: the table has
/// its own row id (row index lookup) instead of the (a, b) primary key (endpoint lookup).
/// Transactions are generated in chunks outside the timed part; stops after `cap`.
fn run_stream(name: &str, changes: u64, cap: Duration, hub_percent: u32, id_key: bool) {
    if !selected(name) {
        return;
    }
    let policy = CompactionPolicy {
        soft_limit: usize::MAX,
        hard_limit: usize::MAX,
    };
    let (mut mapper, mut graph, mut index) = setup(policy);
    let e = rel(2, "e", &[("a", true), ("b", true)]);
    let h = rel(4, "h", &[("id", true), ("a", false), ("b", false)]);
    let row = |(id, a, b): (u64, u32, u32)| {
        if id_key {
            (h.clone(), tuple(&[id as i64, i64::from(a), i64::from(b)]))
        } else {
            (e.clone(), tuple(&[i64::from(a), i64::from(b)]))
        }
    };
    let mut w = Workload::new(hub_percent);
    let mut done = 0u64;
    let mut txns = 0u64;
    let mut timed = Duration::ZERO;
    while done < changes && timed < cap {
        let chunk: Vec<CommittedTxn> = (0..2_000)
            .map(|_| {
                let mut c: Vec<RowChange> = Vec::with_capacity(5);
                // The delete is chosen among edges of earlier transactions.
                let del = w.delete();
                for _ in 0..4 {
                    let (rel, new) = row(w.insert());
                    c.push(RowChange::Insert { rel, new });
                }
                if let Some(d) = del {
                    let (rel, old) = row(d);
                    c.insert(2, RowChange::Delete { rel, old });
                }
                txns += 1;
                CommittedTxn {
                    xid: txns as u32,
                    commit_lsn: Lsn(10 + txns * 10),
                    end_lsn: Lsn(11 + txns * 10),
                    commit_time: PgTimestamp(0),
                    changes: c,
                    spilled: None,
                }
            })
            .collect();
        let started = Instant::now();
        for txn in &chunk {
            mapper.apply(&mut graph, &mut index, txn).unwrap();
        }
        timed += started.elapsed();
        done += chunk.iter().map(|t| t.changes.len() as u64).sum::<u64>();
    }
    let secs = timed.as_secs_f64();
    println!(
        "{name:<44} {done:>9} rows  {:>10.0} rows/s  ({:.2} us/row)",
        done as f64 / secs,
        secs * 1e6 / done as f64
    );
    let on_hubs: u64 = w.hub_edges.iter().sum();
    println!(
        "    {txns} txns/views; {} overlay edge changes, {} live edges, {} on hubs (per hub {}..{}){}",
        graph.view().overlay_edges(),
        w.live.len(),
        on_hubs,
        w.hub_edges.iter().min().unwrap(),
        w.hub_edges.iter().max().unwrap(),
        if done < changes {
            format!("; stopped after {:.0} s of applying", secs)
        } else {
            String::new()
        }
    );
}

fn main() {
    let rows: u64 = std::env::var("GRAPHSYNC_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let e = rel(2, "e", &[("a", true), ("b", true)]);
    let w = rel(3, "w", &[("id", true), ("a", false)]);
    for batch in [1, 10] {
        let e = e.clone();
        run(
            &format!("edge inserts, {batch} txn(s) per graph txn"),
            rows,
            batch,
            move |i| RowChange::Insert {
                rel: e.clone(),
                new: tuple(&[
                    (i / 10) as i64 % i64::from(nodes()),
                    (i * 7919 % u64::from(nodes())) as i64,
                ]),
            },
        );
        let w = w.clone();
        run(
            &format!("node + FK inserts, {batch} txn(s) per graph txn"),
            rows,
            batch,
            move |i| RowChange::Insert {
                rel: w.clone(),
                new: tuple(&[i as i64, (i % u64::from(nodes())) as i64]),
            },
        );
    }
    let changes: u64 = std::env::var("GRAPHSYNC_BENCH_HUB_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let cap = Duration::from_secs_f64(
        std::env::var("GRAPHSYNC_BENCH_HUB_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15.0),
    );
    // Edge changes per second; one row per edge change.
    for (name, hub_percent, id_key) in [
        ("uniform edges, 5-row txns, 1 view each", 0, false),
        ("hub edges, 5-row txns, 1 view each", 50, false),
        ("hub edges, id key, 5-row txns, 1 view each", 50, true),
    ] {
        run_stream(name, changes, cap, hub_percent, id_key);
    }
}
