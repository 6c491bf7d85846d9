//! Transaction assembly: pgoutput messages in, whole committed transactions out.
//!
//! - `Begin` … `Commit`: one transaction.
//! - Streamed in-progress transactions (protocol v2+): changes arrive in `Stream Start` …
//!   `Stream Stop` blocks, interleaved with other transactions, each row tagged with the
//!   (sub)transaction that made it. They are buffered per top-level xid and released at
//!   `Stream Commit`; `Stream Abort` drops the whole transaction or only the aborted
//!   subtransaction's rows.
//! - Two-phase (protocol v3+, when enabled): `Begin Prepare` … `Prepare` (or a streamed
//!   transaction ended by `Stream Prepare`) are held by GID and released at `Commit Prepared`,
//!   dropped at `Rollback Prepared`.
//!
//! No clock, and no I/O but one: buffered transactions are held in memory (their tuples are
//! zero-copy slices of the received messages) until the streamed ones together pass the spill
//! threshold ([`TxnAssembler::with_spill`]); then the transaction being added to moves to a
//! temporary [`SpillFile`], so memory stays bounded whatever the transaction's size.

use crate::change::RowChange;
use crate::committed::CommittedTxn;
use crate::spill::{SpillError, SpillFile};
use pgoutput::{DecodeError, Decoder, Message};
use std::collections::HashMap;
use std::path::PathBuf;

/// A protocol sequence the assembler cannot make sense of (a bug on one side or a corrupted
/// stream): the caller must stop and reconnect from its durable position.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// A message needs a relation the stream never described.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A large transaction could not be spilled to disk.
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// A message arrived where the protocol does not allow it.
    #[error("unexpected {kind} message {context}")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
        /// Where it arrived.
        context: &'static str,
    },
}

#[derive(Debug)]
struct Open {
    xid: u32,
    changes: Vec<RowChange>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Streamed {
    /// Each change with the (sub)transaction that made it.
    changes: Vec<(u32, RowChange)>,
    bytes: usize,
    /// Earlier changes, on disk.
    spill: Option<SpillFile>,
}

/// Assembles committed transactions from decoded pgoutput messages.
#[derive(Debug, Default)]
pub struct TxnAssembler {
    open: Option<Open>,
    /// The xid of the open Stream Start block.
    stream_block: Option<u32>,
    streams: HashMap<u32, Streamed>,
    prepared: HashMap<String, (u32, Vec<RowChange>, usize, Option<SpillFile>)>,
    buffered: usize,
    spill_dir: Option<PathBuf>,
    spill_threshold: usize,
    spilled_bytes: u64,
}

fn tuple_bytes(c: &RowChange) -> usize {
    64 + match c {
        RowChange::Insert { new, .. } => new.buffer().len(),
        RowChange::Update { old, new, .. } => new.buffer().len() + old.as_ref().map_or(0, |(_, t)| t.buffer().len()),
        RowChange::Delete { old, .. } => old.buffer().len(),
        RowChange::Truncate { rels } => 8 * rels.len(),
    }
}

impl TxnAssembler {
    /// An assembler with nothing buffered that holds everything in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An assembler that spills a streamed transaction to a temporary file in `dir` once the
    /// streamed transactions buffered in memory pass `threshold` bytes.
    pub fn with_spill(dir: PathBuf, threshold: usize) -> Self {
        TxnAssembler {
            spill_dir: Some(dir),
            spill_threshold: threshold,
            ..Self::default()
        }
    }

    /// Bytes written to spill files so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// Bytes of changes held for transactions not yet committed (streamed, open or prepared).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered + self.open.as_ref().map_or(0, |o| o.bytes)
    }

    /// Whether no transaction is open or buffered: every change received so far was either
    /// released in a committed transaction or dropped.
    pub fn is_idle(&self) -> bool {
        self.open.is_none() && self.stream_block.is_none() && self.streams.is_empty() && self.prepared.is_empty()
    }

    /// Forgets every buffered transaction (after a reconnect the server resends them).
    pub fn reset(&mut self) {
        *self = TxnAssembler {
            spill_dir: self.spill_dir.take(),
            spill_threshold: self.spill_threshold,
            ..Self::default()
        };
    }

    fn begin(&mut self, kind: &'static str, xid: u32) -> Result<Option<CommittedTxn>, AssemblyError> {
        if self.open.is_some() || self.stream_block.is_some() {
            return Err(unexpected(kind, "inside another transaction"));
        }
        self.open = Some(Open {
            xid,
            changes: Vec::new(),
            bytes: 0,
        });
        Ok(None)
    }

    /// Feeds one message (already passed through `decoder`, whose relation cache types the
    /// rows). Returns a transaction when one commits.
    pub fn feed(&mut self, msg: Message, decoder: &Decoder) -> Result<Option<CommittedTxn>, AssemblyError> {
        let change = match msg {
            Message::Begin(b) => return self.begin("Begin", b.xid),
            Message::BeginPrepare(p) => return self.begin("Begin Prepare", p.xid),
            Message::Commit(c) => {
                let open = self.open.take().ok_or(unexpected("Commit", "outside a transaction"))?;
                return Ok(Some(CommittedTxn {
                    xid: open.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_time,
                    changes: open.changes,
                    spilled: None,
                }));
            }
            Message::Prepare(p) => {
                let open = self.open.take().ok_or(unexpected("Prepare", "outside a transaction"))?;
                self.buffered += open.bytes;
                self.prepared.insert(p.gid, (open.xid, open.changes, open.bytes, None));
                return Ok(None);
            }
            Message::CommitPrepared(c) => {
                let Some((xid, changes, bytes, spilled)) = self.prepared.remove(&c.gid) else {
                    // Prepared before our start position and already applied, or an empty
                    // transaction: nothing held, nothing to apply.
                    return Ok(Some(CommittedTxn {
                        xid: c.xid,
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_time: c.commit_time,
                        changes: Vec::new(),
                        spilled: None,
                    }));
                };
                self.buffered -= bytes;
                return Ok(Some(CommittedTxn {
                    xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_time,
                    changes,
                    spilled,
                }));
            }
            Message::RollbackPrepared(r) => {
                if let Some((_, _, bytes, _)) = self.prepared.remove(&r.gid) {
                    self.buffered -= bytes;
                }
                return Ok(None);
            }
            Message::StreamStart(s) => {
                if self.stream_block.is_some() || self.open.is_some() {
                    return Err(unexpected("Stream Start", "inside another block or transaction"));
                }
                self.stream_block = Some(s.xid);
                self.streams.entry(s.xid).or_default();
                return Ok(None);
            }
            Message::StreamStop => {
                if self.stream_block.take().is_none() {
                    return Err(unexpected("Stream Stop", "outside a stream block"));
                }
                return Ok(None);
            }
            Message::StreamCommit(c) => {
                let mut s = self.streams.remove(&c.xid).unwrap_or_default();
                self.buffered -= s.bytes;
                if let Some(f) = s.spill.as_mut() {
                    f.finish()?;
                }
                return Ok(Some(CommittedTxn {
                    xid: c.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_time: c.commit_time,
                    changes: s.changes.into_iter().map(|(_, c)| c).collect(),
                    spilled: s.spill,
                }));
            }
            Message::StreamAbort(a) => {
                if a.subxid == a.xid {
                    if let Some(s) = self.streams.remove(&a.xid) {
                        self.buffered -= s.bytes;
                    }
                } else if let Some(s) = self.streams.get_mut(&a.xid) {
                    if let Some(f) = s.spill.as_mut() {
                        f.abort_subxact(a.subxid);
                    }
                    let before = s.bytes;
                    s.changes.retain(|(sub, _)| *sub != a.subxid);
                    s.bytes = s.changes.iter().map(|(_, c)| tuple_bytes(c)).sum();
                    self.buffered -= before - s.bytes;
                }
                return Ok(None);
            }
            Message::StreamPrepare(p) => {
                let mut s = self.streams.remove(&p.xid).unwrap_or_default();
                if let Some(f) = s.spill.as_mut() {
                    f.finish()?;
                }
                self.prepared.insert(
                    p.gid,
                    (p.xid, s.changes.into_iter().map(|(_, c)| c).collect(), s.bytes, s.spill),
                );
                return Ok(None);
            }
            Message::Relation(_) | Message::Type(_) | Message::Origin(_) | Message::LogicalMessage(_) => {
                return Ok(None)
            }
            Message::Insert(i) => (
                i.xid,
                RowChange::Insert {
                    rel: decoder.relation("Insert", i.relation_id)?.clone(),
                    new: i.new,
                },
            ),
            Message::Update(u) => (
                u.xid,
                RowChange::Update {
                    rel: decoder.relation("Update", u.relation_id)?.clone(),
                    old: u.old.map(|b| *b),
                    new: u.new,
                },
            ),
            Message::Delete(d) => (
                d.xid,
                RowChange::Delete {
                    rel: decoder.relation("Delete", d.relation_id)?.clone(),
                    old: d.old,
                },
            ),
            Message::Truncate(t) => {
                let rels = t
                    .relation_ids
                    .iter()
                    .map(|&id| decoder.relation("Truncate", id).cloned())
                    .collect::<Result<Vec<_>, _>>()?;
                (t.xid, RowChange::Truncate { rels })
            }
        };
        let (xid, change) = change;
        let size = tuple_bytes(&change);
        if let Some(top) = self.stream_block {
            let s = self.streams.entry(top).or_default();
            // Kept until the commit, possibly long after later reads: a copy of its own, not
            // a slice pinning a network read buffer (each one up to 256 kB when the server
            // streams a live transaction a few rows at a time).
            s.changes.push((xid.unwrap_or(top), change.detached()));
            s.bytes += size;
            self.buffered += size;
            if let Some(dir) = &self.spill_dir {
                if self.buffered > self.spill_threshold {
                    let file = match s.spill.as_mut() {
                        Some(f) => f,
                        None => s.spill.insert(SpillFile::create(dir)?),
                    };
                    let before = file.bytes();
                    for (sub, c) in s.changes.drain(..) {
                        file.push(sub, &c)?;
                    }
                    self.spilled_bytes += file.bytes() - before;
                    self.buffered -= s.bytes;
                    s.bytes = 0;
                }
            }
        } else if let Some(open) = self.open.as_mut() {
            open.changes.push(change);
            open.bytes += size;
        } else {
            return Err(unexpected("row", "outside a transaction"));
        }
        Ok(None)
    }
}

fn unexpected(kind: &'static str, context: &'static str) -> AssemblyError {
    AssemblyError::Unexpected { kind, context }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgoutput::encode::encode_message;
    use pgoutput::*;
    use std::sync::Arc;

    fn rel() -> Arc<Relation> {
        Arc::new(Relation {
            xid: None,
            id: 7,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![Column {
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
                is_key: true,
            }],
        })
    }

    fn insert(xid: Option<u32>, v: &str) -> Message {
        Message::Insert(Insert {
            xid,
            relation_id: 7,
            new: TupleData::from_columns([ColumnData::Text(Bytes::copy_from_slice(v.as_bytes()))]),
        })
    }

    /// Feeds messages through an encoder/decoder round trip, as the replicator does; once
    /// holding everything in memory, once spilling every streamed change to disk. Both must
    /// give the same transactions.
    fn run(msgs: Vec<Message>) -> Vec<(u32, Vec<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut results = Vec::new();
        for mut a in [
            TxnAssembler::new(),
            TxnAssembler::with_spill(dir.path().to_path_buf(), 1),
        ] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for m in &msgs {
                let bytes = Bytes::from(encode_message(m));
                let m = d.decode(&bytes).unwrap();
                if let Some(t) = a.feed(m, &d).unwrap() {
                    let mut rows = Vec::new();
                    t.for_each_change::<SpillError>(|c| {
                        rows.push(match c {
                            RowChange::Insert { new, .. } => match new.column(0) {
                                Some(ColumnRef::Text(b)) => String::from_utf8_lossy(b).into_owned(),
                                other => format!("{other:?}"),
                            },
                            other => format!("{other:?}"),
                        });
                        Ok(())
                    })
                    .unwrap();
                    assert_eq!(rows.len(), t.len());
                    out.push((t.xid, rows));
                }
            }
            assert!(a.is_idle(), "{a:?}");
            assert_eq!(a.buffered_bytes(), 0);
            results.push((out, a.spilled_bytes()));
        }
        assert_eq!(results[0].1, 0);
        assert!(results[1].1 > 0, "nothing spilled");
        assert_eq!(results[0].0, results[1].0, "spilling changed the result");
        results.remove(0).0
    }

    fn ts() -> PgTimestamp {
        PgTimestamp(0)
    }

    #[test]
    fn plain_streamed_and_prepared() {
        let stream_commit = |xid| {
            Message::StreamCommit(StreamCommit {
                xid,
                flags: 0,
                commit_lsn: Lsn(100 + u64::from(xid)),
                end_lsn: Lsn(101 + u64::from(xid)),
                commit_time: ts(),
            })
        };
        let got = run(vec![
            Message::Relation(rel()),
            // Streamed transaction 10 with subtransaction 11, interleaved with plain 20.
            Message::StreamStart(StreamStart {
                xid: 10,
                first_segment: true,
            }),
            Message::Relation(Arc::new(Relation {
                xid: Some(10),
                ..(*rel()).clone()
            })),
            insert(Some(10), "a"),
            insert(Some(11), "b-aborted"),
            Message::StreamStop,
            Message::Begin(Begin {
                final_lsn: Lsn(50),
                commit_time: ts(),
                xid: 20,
            }),
            insert(None, "plain"),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(50),
                end_lsn: Lsn(51),
                commit_time: ts(),
            }),
            Message::StreamStart(StreamStart {
                xid: 10,
                first_segment: false,
            }),
            insert(Some(12), "c"),
            Message::StreamStop,
            Message::StreamAbort(StreamAbort {
                xid: 10,
                subxid: 11,
                abort: None,
            }),
            stream_commit(10),
            // Streamed transaction 30, aborted whole.
            Message::StreamStart(StreamStart {
                xid: 30,
                first_segment: true,
            }),
            insert(Some(30), "gone"),
            Message::StreamStop,
            Message::StreamAbort(StreamAbort {
                xid: 30,
                subxid: 30,
                abort: None,
            }),
            // Two-phase: one committed, one rolled back.
            Message::BeginPrepare(PrepareInfo {
                flags: 0,
                prepare_lsn: Lsn(200),
                end_lsn: Lsn(201),
                prepare_time: ts(),
                xid: 40,
                gid: "g1".into(),
            }),
            insert(None, "prepared"),
            Message::Prepare(PrepareInfo {
                flags: 0,
                prepare_lsn: Lsn(200),
                end_lsn: Lsn(201),
                prepare_time: ts(),
                xid: 40,
                gid: "g1".into(),
            }),
            Message::BeginPrepare(PrepareInfo {
                flags: 0,
                prepare_lsn: Lsn(210),
                end_lsn: Lsn(211),
                prepare_time: ts(),
                xid: 41,
                gid: "g2".into(),
            }),
            insert(None, "rolled back"),
            Message::Prepare(PrepareInfo {
                flags: 0,
                prepare_lsn: Lsn(210),
                end_lsn: Lsn(211),
                prepare_time: ts(),
                xid: 41,
                gid: "g2".into(),
            }),
            Message::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(211),
                rollback_end_lsn: Lsn(220),
                prepare_time: ts(),
                rollback_time: ts(),
                xid: 41,
                gid: "g2".into(),
            }),
            Message::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(230),
                end_lsn: Lsn(231),
                commit_time: ts(),
                xid: 40,
                gid: "g1".into(),
            }),
        ]);
        assert_eq!(
            got,
            vec![
                (20, vec!["plain".to_string()]),
                (10, vec!["a".to_string(), "c".to_string()]),
                (40, vec!["prepared".to_string()]),
            ]
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let d = Decoder::new();
        let mut a = TxnAssembler::new();
        assert!(matches!(
            a.feed(
                Message::Commit(Commit {
                    flags: 0,
                    commit_lsn: Lsn(1),
                    end_lsn: Lsn(2),
                    commit_time: ts()
                }),
                &d
            ),
            Err(AssemblyError::Unexpected { .. })
        ));
        a.feed(
            Message::Begin(Begin {
                final_lsn: Lsn(1),
                commit_time: ts(),
                xid: 1,
            }),
            &d,
        )
        .unwrap();
        // A row of a relation never described.
        assert!(matches!(a.feed(insert(None, "x"), &d), Err(AssemblyError::Decode(_))));
    }
    /// A streamed change kept in memory until its commit owns its bytes: it does not pin the
    /// (much larger) buffer its message was read into.
    #[test]
    fn buffered_streamed_changes_do_not_pin_the_read_buffer() {
        let mut a = TxnAssembler::new();
        let mut d = Decoder::new();
        let mut feed = |a: &mut TxnAssembler, m: Message, pad: usize| {
            // The message at the start of a big buffer, as a network read leaves it.
            let mut buf = encode_message(&m);
            let len = buf.len();
            buf.resize(len + pad, 0);
            let whole = Bytes::from(buf);
            let m = d.decode(&whole.slice(..len)).unwrap();
            (a.feed(m, &d).unwrap(), whole)
        };
        feed(&mut a, Message::Relation(rel()), 0);
        feed(
            &mut a,
            Message::StreamStart(StreamStart {
                xid: 5,
                first_segment: true,
            }),
            0,
        );
        let (_, read) = feed(&mut a, insert(Some(5), "kept"), 256 * 1024);
        feed(&mut a, Message::StreamStop, 0);
        let (txn, _) = feed(
            &mut a,
            Message::StreamCommit(StreamCommit {
                xid: 5,
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(11),
                commit_time: ts(),
            }),
            0,
        );
        let txn = txn.expect("committed");
        let RowChange::Insert { new, .. } = &txn.changes[0] else {
            panic!("{txn:?}")
        };
        let kept = new.buffer().as_ptr_range();
        let buffer = read.as_ptr_range();
        assert!(
            kept.end <= buffer.start || kept.start >= buffer.end,
            "the buffered change still points into the read buffer"
        );
        assert_eq!(new.column(0), Some(ColumnRef::Text(b"kept")));
    }
}
