//! Mapper + graph apply throughput without a server: synthetic committed transactions of
//! 1,000 rows (edge inserts between existing nodes; node inserts with a foreign key), applied
//! in batches as the replicator does. `cargo bench -p sync` prints rows/s.

use bytes::Bytes;
use pgoutput::{Column, ColumnData, Lsn, PgTimestamp, Relation, ReplicaIdentity, TupleData};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use sync::change::{CommittedTxn, RowChange};
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
"#;

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

fn run(name: &str, rows: u64, batch: usize, make: impl Fn(u64) -> RowChange) {
    let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("bench.toml")).unwrap());
    let mut mapper = Mapper::new(config);
    let index = mapper.index_for(|t| match t {
        "public.e" => Some(vec!["a".into(), "b".into()]),
        _ => Some(vec!["id".into()]),
    });
    let n = rel(1, "n", &[("id", true)]);
    let mut bulk = BulkLoad::new(index);
    for i in 0..100_000i64 {
        bulk.insert(&mut mapper, &n, &n.typed_values(&tuple(&[i]), "COPY").unwrap())
            .unwrap();
    }
    let (mut graph, mut index) = bulk.finish(1, Default::default()).unwrap();
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
                new: tuple(&[(i / 10) as i64 % 100_000, (i * 7919 % 100_000) as i64]),
            },
        );
        let w = w.clone();
        run(
            &format!("node + FK inserts, {batch} txn(s) per graph txn"),
            rows,
            batch,
            move |i| RowChange::Insert {
                rel: w.clone(),
                new: tuple(&[i as i64, (i % 100_000) as i64]),
            },
        );
    }
}
