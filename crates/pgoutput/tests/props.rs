//! Property tests: every message kind round-trips through encode → decode; typed values
//! round-trip through their PostgreSQL text forms; and arbitrary or mutated bytes (real
//! captured streams with flipped, dropped and inserted bytes) never make the decoder panic.

use bytes::Bytes;
use pgoutput::encode::encode_message;
use pgoutput::value::{oid, typed_value};
use pgoutput::*;
use proptest::collection::vec;
use proptest::prelude::*;
use std::sync::Arc;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_ é\"]{0,12}"
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn column() -> impl Strategy<Value = ColumnData> {
    prop_oneof![
        Just(ColumnData::Null),
        Just(ColumnData::UnchangedToast),
        vec(any::<u8>(), 0..40).prop_map(|b| ColumnData::Text(Bytes::from(b))),
        vec(any::<u8>(), 0..40).prop_map(|b| ColumnData::Binary(Bytes::from(b))),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    vec(column(), 0..8).prop_map(TupleData::from_columns)
}

fn old_kind() -> impl Strategy<Value = OldKind> {
    prop_oneof![Just(OldKind::Key), Just(OldKind::Full)]
}

fn identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index)
    ]
}

fn prepare() -> impl Strategy<Value = PrepareInfo> {
    (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(|(flags, p, e, t, xid, gid)| PrepareInfo {
        flags,
        prepare_lsn: p,
        end_lsn: e,
        prepare_time: t,
        xid,
        gid,
    })
}

fn message() -> impl Strategy<Value = Message> {
    let xid = proptest::option::of(any::<u32>());
    prop_oneof![
        (lsn(), ts(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| Message::Begin(Begin {
            final_lsn,
            commit_time,
            xid
        })),
        (any::<u8>(), lsn(), lsn(), ts()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(
            Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            }
        )),
        (lsn(), name()).prop_map(|(origin_lsn, name)| Message::Origin(Origin { origin_lsn, name })),
        (
            xid.clone(),
            any::<u32>(),
            name(),
            name(),
            identity(),
            vec((name(), any::<u32>(), any::<i32>(), any::<bool>()), 0..6)
        )
            .prop_map(|(xid, id, namespace, name, replica_identity, cols)| {
                Message::Relation(Arc::new(Relation {
                    xid,
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns: cols
                        .into_iter()
                        .map(|(name, type_oid, type_modifier, is_key)| Column {
                            name,
                            type_oid,
                            type_modifier,
                            is_key,
                        })
                        .collect(),
                }))
            }),
        (xid.clone(), any::<u32>(), name(), name()).prop_map(|(xid, type_oid, namespace, name)| Message::Type(
            TypeInfo {
                xid,
                type_oid,
                namespace,
                name
            }
        )),
        (xid.clone(), any::<u32>(), tuple()).prop_map(|(xid, relation_id, new)| Message::Insert(Insert {
            xid,
            relation_id,
            new
        })),
        (
            xid.clone(),
            any::<u32>(),
            proptest::option::of((old_kind(), tuple()).prop_map(Box::new)),
            tuple()
        )
            .prop_map(|(xid, relation_id, old, new)| Message::Update(Update {
                xid,
                relation_id,
                old,
                new
            })),
        (xid.clone(), any::<u32>(), old_kind(), tuple()).prop_map(|(xid, relation_id, old_kind, old)| Message::Delete(
            Delete {
                xid,
                relation_id,
                old_kind,
                old
            }
        )),
        (xid.clone(), any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..5)).prop_map(
            |(xid, cascade, restart_identity, relation_ids)| Message::Truncate(Truncate {
                xid,
                cascade,
                restart_identity,
                relation_ids
            })
        ),
        (xid, any::<bool>(), lsn(), name(), vec(any::<u8>(), 0..30)).prop_map(
            |(xid, transactional, lsn, prefix, content)| Message::LogicalMessage(LogicalMessage {
                xid,
                transactional,
                lsn,
                prefix,
                content: Bytes::from(content)
            })
        ),
        (any::<u32>(), any::<bool>())
            .prop_map(|(xid, first_segment)| Message::StreamStart(StreamStart { xid, first_segment })),
        Just(Message::StreamStop),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), ts()).prop_map(|(xid, flags, commit_lsn, end_lsn, commit_time)| {
            Message::StreamCommit(StreamCommit {
                xid,
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        }),
        (any::<u32>(), any::<u32>(), proptest::option::of((lsn(), ts())))
            .prop_map(|(xid, subxid, abort)| Message::StreamAbort(StreamAbort { xid, subxid, abort })),
        prepare().prop_map(|p| Message::BeginPrepare(PrepareInfo { flags: 0, ..p })),
        prepare().prop_map(Message::Prepare),
        prepare().prop_map(Message::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), name()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| Message::CommitPrepared(CommitPrepared {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
                xid,
                gid
            })
        ),
        (any::<u8>(), lsn(), lsn(), ts(), ts(), any::<u32>(), name()).prop_map(|(flags, p, r, pt, rt, xid, gid)| {
            Message::RollbackPrepared(RollbackPrepared {
                flags,
                prepare_end_lsn: p,
                rollback_end_lsn: r,
                prepare_time: pt,
                rollback_time: rt,
                xid,
                gid,
            })
        }),
    ]
}

/// Whether the message carries an xid, i.e. was encoded as inside a stream block.
fn streamed(m: &Message) -> bool {
    match m {
        Message::Relation(r) => r.xid.is_some(),
        Message::Type(t) => t.xid.is_some(),
        Message::Insert(i) => i.xid.is_some(),
        Message::Update(u) => u.xid.is_some(),
        Message::Delete(d) => d.xid.is_some(),
        Message::Truncate(t) => t.xid.is_some(),
        Message::LogicalMessage(l) => l.xid.is_some(),
        _ => false,
    }
}

/// The captured fixture streams, as message bytes, one list per file.
fn fixture_files() -> Vec<Vec<Bytes>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pgoutput");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "txt")) {
        let mut file = Vec::new();
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let hex = line.split_once('|').unwrap().1;
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            file.push(Bytes::from(bytes));
        }
        out.push(file);
    }
    assert!(out.len() >= 8);
    out
}

fn fixtures() -> Vec<Bytes> {
    fixture_files()
        .into_iter()
        .flat_map(|f| f.into_iter().take(300))
        .collect()
}

fn fuzz_cases() -> u32 {
    std::env::var("GRAPHSYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Decodes and, for row messages with a known relation, types and renders: nothing may panic.
fn exercise(dec: &mut Decoder, data: &Bytes) {
    if let Ok(msg) = dec.decode(data) {
        let _ = json::message_to_json(Lsn(1), &msg, dec.relations());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn every_message_kind_round_trips(msg in message()) {
        let bytes = Bytes::from(encode_message(&msg));
        let back = decode_message(&bytes, streamed(&msg)).unwrap();
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn ints_round_trip_text_and_binary(v in any::<i64>(), w in any::<i32>(), h in any::<i16>()) {
        let text = |s: String| ColumnData::Text(Bytes::from(s));
        prop_assert_eq!(typed_value(&text(v.to_string()), oid::INT8).unwrap(), Value::Int8(v));
        prop_assert_eq!(typed_value(&text(w.to_string()), oid::INT4).unwrap(), Value::Int4(w));
        prop_assert_eq!(typed_value(&text(h.to_string()), oid::INT2).unwrap(), Value::Int2(h));
        let bin = ColumnData::Binary(Bytes::copy_from_slice(&v.to_be_bytes()));
        prop_assert_eq!(typed_value(&bin, oid::INT8).unwrap(), Value::Int8(v));
        let bad = text(format!("{}x", v));
        prop_assert!(typed_value(&bad, oid::INT8).is_err());
    }

    #[test]
    fn floats_round_trip(v in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let t = ColumnData::Text(Bytes::from(v.to_string()));
        prop_assert_eq!(typed_value(&t, oid::FLOAT8).unwrap(), Value::Float8(v));
    }

    #[test]
    fn text_arrays_round_trip(items in vec(proptest::option::of("[ -~é]{0,8}"), 0..6)) {
        // Quote every element the way PostgreSQL's array_out does when needed.
        let body: Vec<String> = items.iter().map(|i| match i {
            None => "NULL".to_string(),
            Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        }).collect();
        let literal = format!("{{{}}}", body.join(","));
        let v = typed_value(&ColumnData::Text(Bytes::from(literal)), oid::TEXT_ARRAY).unwrap();
        let expected = Value::Array(items.iter().map(|i| match i {
            None => Value::Null,
            Some(s) => Value::Text(PgText::from(s.clone())),
        }).collect());
        prop_assert_eq!(v, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..200), in_stream in any::<bool>()) {
        let b = Bytes::from(data);
        let _ = decode_message(&b, in_stream);
        let mut dec = Decoder::new();
        exercise(&mut dec, &b);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local!(static FIX: Vec<Bytes> = fixtures());
        FIX.with(|fix| {
            // Prime a decoder with every Relation message so row messages get typed and rendered.
            let mut dec = Decoder::new();
            for m in fix.iter().filter(|m| m.first() == Some(&b'R')) {
                let _ = dec.decode(m);
            }
            let mut data = fix[pick.index(fix.len())].to_vec();
            for (at, byte, op) in edits {
                if data.is_empty() { break; }
                let i = at.index(data.len());
                match op {
                    0 => data[i] ^= byte | 1,
                    1 => { data.remove(i); }
                    _ => data.insert(i, byte),
                }
            }
            if let Some(c) = cut { let n = c.index(data.len() + 1); data.truncate(n); }
            exercise(&mut dec, &Bytes::from(data));
        });
    }
}

#[test]
fn truncated_fixtures_are_errors_not_panics() {
    for file in fixture_files() {
        let mut dec = Decoder::new();
        for m in file.iter().take(300) {
            for cut in 0..m.len() {
                let r = decode_message(&m.slice(..cut), dec.in_stream());
                assert!(r.is_err(), "a message cut at {cut} of {} decoded", m.len());
            }
            dec.decode(m).expect("fixtures decode");
        }
    }
}

/// Every input of the cargo-fuzz corpus (`fuzz/corpus/decode`, where crash reproducers are
/// kept too) decodes, types and renders without a panic, on stable, in CI.
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz corpus") {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let Some((_, msg)) = data.split_first() else { continue };
        let mut d = Decoder::new();
        let b = Bytes::copy_from_slice(msg);
        if let Ok(m) = d.decode(&b) {
            let _ = json::message_to_json(Lsn(1), &m, d.relations());
        }
        n += 1;
    }
    assert!(n >= 100, "only {n} corpus inputs");
}
