//! What one change-log record holds: the graph changes of one applied batch of transactions
//! (with where each transaction ends, so readers see transaction boundaries), or a bare
//! position (WAL that changed nothing mapped). The bytes go into a segment frame
//! (`segment`); this module knows nothing of files.
//!
//! Payload format, version 2 (integers little-endian):
//!
//! ```text
//! version u8 = 2
//! kind    u8: 1 = changes, 2 = position (nothing follows; the frame's LSN is the new position)
//! changes:
//!   txn count u32, then per transaction in commit order:
//!     end LSN u64, commit time i64 (µs since 1970-01-01 UTC),
//!     mutation count u32, row-index change count u32, subgraph change count u32
//!   node count before the batch u32 (the id the first new node gets)
//!   every transaction's graph mutations, in order (graph::wire)
//!   every transaction's row-index changes, in order:
//!     1 insert: edge mapping u16, row identity (key), source u32, target u32, label u8, weight f64
//!     2 remove: edge mapping u16, row identity (key)
//!     3 drain (truncate): edge mapping u16
//!   every transaction's subgraph changes, in order (graph::wire; what the change feed sends)
//! ```
//!
//! Version 1 is version 2 without the subgraph change counts and changes; it is still read
//! (replay needs nothing else), but the change feed cannot serve its transactions.
//!
//! Records are deterministic per transaction: replaying after a crash may batch transactions
//! differently, but each transaction's mutations and row-index changes are the same bytes.
//!
//! Not for: framing, checksums, files (`segment`, `writer`), or applying records (`replay`).

use crate::mapper::Applied;
use crate::row_index::IndexOp;
use graph::bytes::{ByteReader, Corrupt};
use graph::wire::{self, Logged, LoggedChange};
use graph::{EdgeInput, EdgeLabel, NodeId, NodeKey};
use pgoutput::Lsn;

/// The payload format version this build writes (it reads this one and version 1).
pub const RECORD_VERSION: u8 = 2;

const KIND_CHANGES: u8 = 1;
const KIND_POSITION: u8 = 2;

/// One transaction of a changes record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnEnd {
    /// The transaction's end LSN.
    pub lsn: Lsn,
    /// Its commit time, µs since 1970-01-01 UTC.
    pub commit_unix_micros: i64,
    /// Its graph mutations.
    pub mutations: u32,
    /// Its row-index changes.
    pub index_ops: u32,
    /// Its subgraph changes (0 in a version 1 record).
    pub changes: u32,
}

/// A decoded record payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The changes of a batch of transactions.
    Changes {
        /// The transactions, in commit order.
        txns: Vec<TxnEnd>,
        /// The node count before the batch.
        node_count_before: u32,
        /// Every transaction's mutations, in order, with the nodes they name.
        mutations: Vec<Logged>,
        /// Every transaction's row-index changes, in order.
        index_ops: Vec<IndexOp>,
        /// Every transaction's subgraph changes, in order; `None` when not decoded (see
        /// [`decode_with`]) or not recorded (a version 1 record).
        changes: Option<Vec<LoggedChange>>,
    },
    /// WAL up to the frame's LSN changed nothing mapped.
    Position,
}

/// A position record: WAL up to the frame's LSN changed nothing mapped (the publisher sends
/// one when the replica's position moves past its last record, so followers' positions follow).
pub fn encode_position() -> Vec<u8> {
    vec![RECORD_VERSION, KIND_POSITION]
}

/// Encodes the changes of `applied`; `txns` gives each transaction's (end LSN, commit time)
/// and must match `applied.ends` one to one.
pub fn encode_changes(applied: &Applied, txns: &[(Lsn, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + txns.len() * 24 + applied.mutations.len() * 24);
    out.push(RECORD_VERSION);
    out.push(KIND_CHANGES);
    out.extend_from_slice(&(txns.len() as u32).to_le_bytes());
    let mut before = (0usize, 0usize, 0usize);
    for (&(lsn, time), &end) in txns.iter().zip(&applied.ends) {
        out.extend_from_slice(&lsn.0.to_le_bytes());
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&((end.0 - before.0) as u32).to_le_bytes());
        out.extend_from_slice(&((end.1 - before.1) as u32).to_le_bytes());
        out.extend_from_slice(&((end.2 - before.2) as u32).to_le_bytes());
        before = end;
    }
    out.extend_from_slice(&applied.node_count_before.to_le_bytes());
    wire::encode_mutations(&applied.view, &applied.mutations, &mut out);
    for op in &applied.index_ops {
        encode_index_op(op, &mut out);
    }
    wire::encode_changes(&applied.view, &applied.changes, &mut out);
    out
}

fn encode_index_op(op: &IndexOp, out: &mut Vec<u8>) {
    match op {
        IndexOp::Insert { mapping, row, edge } => {
            out.push(1);
            out.extend_from_slice(&mapping.to_le_bytes());
            row.encode(out);
            out.extend_from_slice(&edge.source.0.to_le_bytes());
            out.extend_from_slice(&edge.target.0.to_le_bytes());
            out.push(edge.label.0);
            out.extend_from_slice(&edge.weight.to_le_bytes());
        }
        IndexOp::Remove { mapping, row } => {
            out.push(2);
            out.extend_from_slice(&mapping.to_le_bytes());
            row.encode(out);
        }
        IndexOp::Drain { mapping } => {
            out.push(3);
            out.extend_from_slice(&mapping.to_le_bytes());
        }
    }
}

fn key(r: &mut ByteReader<'_>) -> Result<NodeKey, Corrupt> {
    let at = r.offset();
    let (k, used) = NodeKey::decode(r.rest()).map_err(|e| Corrupt {
        what: e.what,
        offset: at + e.offset,
    })?;
    r.skip(used, "row identity")?;
    Ok(k)
}

fn decode_index_op(r: &mut ByteReader<'_>) -> Result<IndexOp, Corrupt> {
    let tag = r.u8("row-index change tag")?;
    let mapping = u16::from_le_bytes(r.array("edge mapping")?);
    Ok(match tag {
        1 => {
            let row = key(r)?;
            let edge = EdgeInput {
                source: NodeId(r.u32("edge source")?),
                target: NodeId(r.u32("edge target")?),
                label: EdgeLabel(r.u8("edge label")?),
                weight: r.f64("edge weight")?,
            };
            IndexOp::Insert { mapping, row, edge }
        }
        2 => IndexOp::Remove { mapping, row: key(r)? },
        3 => IndexOp::Drain { mapping },
        _ => return Err(r.corrupt("an unknown row-index change tag")),
    })
}

/// Decodes a payload written by [`encode_changes`] (or a position record, which this version
/// no longer writes). Every count is
/// checked against the bytes left; trailing bytes are an error.
pub fn decode(payload: &[u8], decoder: &mut wire::Decoder) -> Result<Record, Corrupt> {
    decode_with(payload, decoder, true)
}

/// As [`decode`]; with `with_changes` false the subgraph changes are neither decoded nor
/// checked (restart replays without them).
pub fn decode_with(payload: &[u8], decoder: &mut wire::Decoder, with_changes: bool) -> Result<Record, Corrupt> {
    let mut r = ByteReader::new(payload);
    let version = r.u8("record version")?;
    if version != RECORD_VERSION && version != 1 {
        return Err(Corrupt {
            what: "a record version this build does not read",
            offset: 0,
        });
    }
    let record = match r.u8("record kind")? {
        KIND_POSITION => Record::Position,
        KIND_CHANGES => {
            let n = r.u32("transaction count")? as usize;
            let v2 = version == 2;
            if n.saturating_mul(if v2 { 28 } else { 24 }) > r.remaining() {
                return Err(r.corrupt("a transaction count larger than the record"));
            }
            let mut txns = Vec::with_capacity(n);
            let (mut muts, mut ops, mut changes) = (0u64, 0u64, 0u64);
            for _ in 0..n {
                let t = TxnEnd {
                    lsn: Lsn(r.u64("transaction LSN")?),
                    commit_unix_micros: r.i64("commit time")?,
                    mutations: r.u32("mutation count")?,
                    index_ops: r.u32("row-index change count")?,
                    changes: if v2 { r.u32("subgraph change count")? } else { 0 },
                };
                muts += u64::from(t.mutations);
                ops += u64::from(t.index_ops);
                changes += u64::from(t.changes);
                txns.push(t);
            }
            let node_count_before = r.u32("node count")?;
            // Every mutation takes at least 5 bytes, every row-index change 3.
            if muts.saturating_mul(5).saturating_add(ops.saturating_mul(3)) > r.remaining() as u64 {
                return Err(r.corrupt("change counts larger than the record"));
            }
            let mut mutations = Vec::with_capacity(muts as usize);
            decoder.decode(&mut r, muts, node_count_before, |l| mutations.push(l))?;
            let mut index_ops = Vec::with_capacity(ops as usize);
            for _ in 0..ops {
                index_ops.push(decode_index_op(&mut r)?);
            }
            let changes = if !v2 || !with_changes {
                if v2 {
                    // Not decoded: not checked either.
                    r.skip(r.remaining(), "subgraph changes")?;
                }
                None
            } else {
                // Every subgraph change takes at least 7 bytes.
                if changes.saturating_mul(7) > r.remaining() as u64 {
                    return Err(r.corrupt("a subgraph change count larger than the record"));
                }
                let mut out = Vec::with_capacity(changes as usize);
                decoder.decode_changes(&mut r, changes, |c| out.push(c))?;
                Some(out)
            };
            Record::Changes {
                txns,
                node_count_before,
                mutations,
                index_ops,
                changes,
            }
        }
        _ => return Err(r.corrupt("an unknown record kind")),
    };
    if r.remaining() != 0 {
        return Err(r.corrupt("trailing bytes after the record"));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use graph::{Csr, FilterId, Graph, NodeData, NodeLabel, PropValue, Topology};
    use proptest::prelude::*;
    use std::sync::Arc;

    /// One random step of a transaction, in terms the graph's API takes.
    #[derive(Debug, Clone)]
    enum Step {
        Upsert(u16, i64, Option<i64>, Vec<(u8, i64)>, Vec<(u8, i64)>),
        Reference(u16, String),
        Delete(u16, i64),
        AddEdge(i64, i64, u8, u8),
        RemoveEdge(usize),
        Index(u16, i64, bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                0u16..3,
                0i64..20,
                proptest::option::of(0i64..3),
                proptest::collection::vec((0u8..3, -5i64..5), 0..3),
                proptest::collection::vec((0u8..5, any::<i64>()), 0..4)
            )
                .prop_map(|(l, k, t, f, p)| Step::Upsert(l, k, t, f, p)),
            (0u16..3, "[a-zé]{0,6}").prop_map(|(l, k)| Step::Reference(l, k)),
            (0u16..3, 0i64..20).prop_map(|(l, k)| Step::Delete(l, k)),
            (0i64..20, 0i64..20, 0u8..3, 0u8..4).prop_map(|(a, b, l, w)| Step::AddEdge(a, b, l, w)),
            any::<usize>().prop_map(Step::RemoveEdge),
            (0u16..2, -3i64..3, any::<bool>()).prop_map(|(m, r, i)| Step::Index(m, r, i)),
        ]
    }

    fn prop(kind: u8, v: i64) -> PropValue {
        match kind {
            0 => PropValue::Null,
            1 => PropValue::Bool(v % 2 == 0),
            2 => PropValue::Int(v),
            3 => PropValue::Float(v as f64 / 7.0),
            _ => PropValue::Text(format!("t{v}").into()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Random batches through the graph's API: the record decodes to exactly the mutations
        /// and row-index changes applied, with each transaction's boundary, and replaying the
        /// mutations on the starting graph gives the same nodes and edges.
        #[test]
        fn changes_round_trip(txns in proptest::collection::vec(proptest::collection::vec(step(), 0..12), 1..5)) {
            let mut g = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
            let mut index = crate::row_index::RowIndex::new(vec![crate::row_index::EdgeLookup::Rows; 2]);
            let start = g.view();
            index.start_journal();
            let mut t = g.begin(100).unwrap();
            t.start_diff();
            let mut ends = Vec::new();
            let mut edges = Vec::new();
            let mut changes = Vec::new();
            for steps in &txns {
                for s in steps {
                    match s.clone() {
                        Step::Upsert(l, k, tenant, filters, props) => {
                            let mut d = NodeData::bare(NodeLabel(l), NodeKey::Int(k));
                            d.tenant = tenant.map(NodeKey::Int);
                            d.filters = filters.into_iter().map(|(f, v)| (FilterId(f.into()), NodeKey::Int(v))).collect::<Vec<_>>().into();
                            d.properties = props.into_iter().enumerate().map(|(i, (kind, v))| (Arc::from(format!("p{i}")), prop(kind, v))).collect::<Vec<_>>().into();
                            t.upsert_node(d);
                        }
                        Step::Reference(l, k) => {
                            t.node_id(NodeLabel(l), &NodeKey::Text(k.into()));
                        }
                        Step::Delete(l, k) => {
                            t.delete_node(NodeLabel(l), &NodeKey::Int(k));
                        }
                        Step::AddEdge(a, b, l, w) => {
                            let e = EdgeInput {
                                source: t.node_id(NodeLabel(0), &NodeKey::Int(a)),
                                target: t.node_id(NodeLabel(1), &NodeKey::Int(b)),
                                label: EdgeLabel(l),
                                weight: f64::from(w),
                            };
                            t.add_edge(e).unwrap();
                            edges.push(e);
                        }
                        Step::RemoveEdge(i) => {
                            if !edges.is_empty() {
                                let e = edges.swap_remove(i % edges.len());
                                t.remove_edge(e).unwrap();
                            }
                        }
                        Step::Index(m, r, insert) => {
                            let row = NodeKey::Int(r);
                            if insert {
                                let e = EdgeInput { source: NodeId(0), target: NodeId(r as u32 & 7), label: EdgeLabel(1), weight: 2.5 };
                                index.insert(usize::from(m), row, e);
                            } else {
                                index.remove(usize::from(m), &row);
                            }
                        }
                    }
                }
                changes.extend(t.take_diff());
                ends.push((t.mutations().len(), index.journal().len(), changes.len()));
            }
            let (view, mutations) = t.commit_logged().unwrap();
            let applied = Applied {
                view: view.clone(),
                node_count_before: start.node_count(),
                mutations,
                index_ops: index.take_journal(),
                changes,
                ends,
            };
            let lsns: Vec<(Lsn, i64)> = (0..txns.len()).map(|i| (Lsn(10 + i as u64), 1_700_000_000_000_000 + i as i64)).collect();
            let bytes = encode_changes(&applied, &lsns);
            let rec = decode(&bytes, &mut graph::wire::Decoder::default()).unwrap();
            let Record::Changes { txns: got, node_count_before, mutations, index_ops, changes } = rec else {
                panic!("not a changes record");
            };
            let changes = changes.expect("a version 2 record has changes");
            prop_assert_eq!(changes.iter().map(|c| c.scoped.clone()).collect::<Vec<_>>(), applied.changes.clone());
            // Without changes, the rest decodes the same.
            let Record::Changes { mutations: m2, changes: none, .. } = decode_with(&bytes, &mut graph::wire::Decoder::default(), false).unwrap() else {
                panic!("not a changes record");
            };
            prop_assert_eq!(&m2, &mutations);
            prop_assert!(none.is_none());
            prop_assert_eq!(node_count_before, 0);
            prop_assert_eq!(got.len(), txns.len());
            let mut before = (0usize, 0usize, 0usize);
            for ((t, &(lsn, time)), &end) in got.iter().zip(&lsns).zip(&applied.ends) {
                prop_assert_eq!(t.lsn, lsn);
                prop_assert_eq!(t.commit_unix_micros, time);
                prop_assert_eq!(t.mutations as usize, end.0 - before.0);
                prop_assert_eq!(t.index_ops as usize, end.1 - before.1);
                prop_assert_eq!(t.changes as usize, end.2 - before.2);
                before = end;
            }
            let decoded: Vec<graph::Mutation> = mutations.iter().map(|l| l.mutation.clone()).collect();
            prop_assert_eq!(&decoded, &applied.mutations);
            prop_assert_eq!(&index_ops, &applied.index_ops);
            // Key terms: every edge names its endpoints as the view does.
            for l in &mutations {
                if let graph::Mutation::AddEdge(e) | graph::Mutation::RemoveEdge(e) = &l.mutation {
                    prop_assert_eq!(&l.node, &view.node_key(e.source));
                    prop_assert_eq!(&l.target, &view.node_key(e.target));
                }
            }
            // Replaying gives the same graph.
            let mut h = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
            h.apply(100, &decoded).unwrap();
            let hv = h.view();
            prop_assert_eq!(hv.node_count(), view.node_count());
            prop_assert_eq!(hv.edge_count(), view.edge_count());
            for n in 0..view.node_count() {
                prop_assert_eq!(hv.node(NodeId(n)), view.node(NodeId(n)));
                prop_assert_eq!(hv.is_visible(NodeId(n)), view.is_visible(NodeId(n)));
            }
            // Every cut of the bytes is an error, never a panic.
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut], &mut graph::wire::Decoder::default()).is_err());
            }
        }
    }

    #[test]
    fn position_round_trips_and_garbage_is_an_error() {
        let d = &mut graph::wire::Decoder::default();
        assert_eq!(decode(&[RECORD_VERSION, KIND_POSITION], d).unwrap(), Record::Position);
        assert!(decode(&[3, 2], d).is_err(), "an unknown version");
        assert_eq!(
            decode(&[1, KIND_POSITION], d).unwrap(),
            Record::Position,
            "version 1 is read"
        );
        assert!(decode(&[1, 9], d).is_err(), "an unknown kind");
        assert!(decode(&[2, 2, 0], d).is_err(), "trailing bytes");
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let n = rng.usize(0..64);
            let mut b: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            if !b.is_empty() {
                b[0] = 1 + (n % 2) as u8;
            }
            if b.len() > 1 {
                b[1] = 1;
            }
            let _ = decode(&b, d);
        }
    }
}
