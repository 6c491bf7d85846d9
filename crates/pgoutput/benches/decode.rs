//! Decode throughput: `cargo bench -p pgoutput` prints a table of row changes/s and MB/s on one
//! core, for the captured fixture streams and for a synthetic stream of 1 M inserts of a
//! 6-column row (text and binary encodings). "Decode" means bytes → Message → typed values.

use bytes::Bytes;
use pgoutput::encode::encode_message;
use pgoutput::value::oid;
use pgoutput::*;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

struct Stream {
    name: String,
    messages: Vec<Bytes>,
}

fn fixtures() -> Vec<Stream> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pgoutput");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| Stream {
            name: format!("fixture {}", p.file_stem().unwrap().to_string_lossy()),
            messages: std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(|l| {
                    let hex = l.split_once('|').unwrap().1;
                    Bytes::from(
                        (0..hex.len() / 2)
                            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                            .collect::<Vec<u8>>(),
                    )
                })
                .collect::<Vec<_>>(),
        })
        .map(|s| Stream {
            name: s.name,
            messages: shared(s.messages),
        })
        .collect()
}

fn synthetic(n: usize, binary: bool) -> Stream {
    let types = [
        oid::INT8,
        oid::INT4,
        oid::TEXT,
        oid::FLOAT8,
        oid::BOOL,
        oid::TIMESTAMPTZ,
    ];
    let names = ["id", "org_id", "name", "score", "active", "created_at"];
    let rel = Relation {
        xid: None,
        id: 16384,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: names
            .iter()
            .zip(types)
            .map(|(n, t)| Column {
                name: n.to_string(),
                type_oid: t,
                type_modifier: -1,
                is_key: *n == "id",
            })
            .collect(),
    };
    let mut messages = vec![Bytes::from(encode_message(&Message::Relation(Arc::new(rel))))];
    for i in 0..n as i64 {
        let columns = if binary {
            vec![
                ColumnData::Binary(Bytes::copy_from_slice(&i.to_be_bytes())),
                ColumnData::Binary(Bytes::copy_from_slice(&((i % 1000) as i32).to_be_bytes())),
                ColumnData::Binary(Bytes::from(format!("user number {i}"))),
                ColumnData::Binary(Bytes::copy_from_slice(&(i as f64 * 0.25).to_be_bytes())),
                ColumnData::Binary(Bytes::from_static(&[1])),
                ColumnData::Binary(Bytes::copy_from_slice(&(i * 1_000_000).to_be_bytes())),
            ]
        } else {
            vec![
                ColumnData::Text(Bytes::from(i.to_string())),
                ColumnData::Text(Bytes::from((i % 1000).to_string())),
                ColumnData::Text(Bytes::from(format!("user number {i}"))),
                ColumnData::Text(Bytes::from((i as f64 * 0.25).to_string())),
                ColumnData::Text(Bytes::from_static(b"t")),
                ColumnData::Text(Bytes::from_static(b"2026-11-23 12:34:56.789+00")),
            ]
        };
        let m = Message::Insert(Insert {
            xid: None,
            relation_id: 16384,
            new: TupleData::from_columns(columns),
        });
        messages.push(Bytes::from(encode_message(&m)));
    }
    Stream {
        name: format!(
            "synthetic 1M inserts, 6 cols, {}",
            if binary { "binary" } else { "text" }
        ),
        messages: shared(messages),
    }
}

/// Re-slices messages out of one shared buffer, as the replication connection delivers them
/// (each XLogData payload is a slice of the connection's read buffer).
fn shared(messages: Vec<Bytes>) -> Vec<Bytes> {
    let mut all = Vec::with_capacity(messages.iter().map(|m| m.len()).sum());
    let mut ranges = Vec::with_capacity(messages.len());
    for m in &messages {
        ranges.push(all.len()..all.len() + m.len());
        all.extend_from_slice(m);
    }
    let all = Bytes::from(all);
    ranges.into_iter().map(|r| all.slice(r)).collect()
}

/// Decodes the whole stream once; returns the number of row changes.
fn run(s: &Stream) -> usize {
    let mut dec = Decoder::new();
    let mut rows = 0;
    let mut values = Vec::new();
    for m in &s.messages {
        let msg = dec.decode(m).expect("decode");
        let (id, tuples): (u32, [Option<&TupleData>; 2]) = match &msg {
            Message::Insert(i) => (i.relation_id, [Some(&i.new), None]),
            Message::Update(u) => (u.relation_id, [Some(&u.new), u.old.as_ref().map(|o| &o.1)]),
            Message::Delete(d) => (d.relation_id, [Some(&d.old), None]),
            _ => continue,
        };
        let rel = dec.relation("row", id).expect("relation");
        for t in tuples.into_iter().flatten() {
            rel.typed_values_into(t, "row", &mut values).expect("typed");
            black_box(&values);
        }
        rows += 1;
    }
    rows
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let mut streams = fixtures();
    streams.push(synthetic(1_000_000, false));
    streams.push(synthetic(1_000_000, true));
    println!(
        "{:<44} {:>10} {:>10} {:>14} {:>10}",
        "stream", "rows", "MB", "rows/s", "MB/s"
    );
    for s in streams
        .iter()
        .filter(|s| filter.as_ref().is_none_or(|f| s.name.contains(f.as_str())))
    {
        let bytes: usize = s.messages.iter().map(|m| m.len()).sum();
        // Repeat small streams so each measurement covers at least ~0.5 s.
        let rows = run(s);
        let reps = 2_000_000usize.checked_div(rows).unwrap_or(1).clamp(1, 2000);
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..reps {
                black_box(run(s));
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "{:<44} {:>10} {:>10.2} {:>14.0} {:>10.1}",
            s.name,
            rows,
            bytes as f64 / 1e6,
            rows as f64 / best,
            bytes as f64 / 1e6 / best
        );
    }
}
