//! pgoutput messages (protocol versions 1 to 4) and their decoding from bytes.
//!
//! The layout of each message follows PostgreSQL's `src/backend/replication/logical/proto.c`.
//! Decoding is stateful only in one respect: inside a Stream Start … Stream Stop block, row,
//! Relation, Type and transactional Message messages carry the streamed transaction's xid.

use crate::reader::Reader;
use crate::relation::{Column, Relation, ReplicaIdentity};
use crate::time::PgTimestamp;
use crate::{DecodeError, Lsn};
use bytes::Bytes;
use std::sync::Arc;

pub use crate::tuple::{ColumnData, ColumnRef, Columns, TupleData};

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Start of a committed (non-streamed) transaction.
    Begin(Begin),
    /// End of a transaction started by [`Message::Begin`].
    Commit(Commit),
    /// The transaction originated at a replication origin.
    Origin(Origin),
    /// Describes a relation; replaces any earlier description of the same id.
    Relation(Arc<Relation>),
    /// Describes a non-built-in type.
    Type(TypeInfo),
    /// A row was inserted.
    Insert(Insert),
    /// A row was updated.
    Update(Update),
    /// A row was deleted.
    Delete(Delete),
    /// Relations were truncated.
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage(LogicalMessage),
    /// A block of a streamed in-progress transaction starts (protocol v2+).
    StreamStart(StreamStart),
    /// The current stream block ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit(StreamCommit),
    /// A streamed transaction (or one of its subtransactions) aborted.
    StreamAbort(StreamAbort),
    /// Start of a prepared transaction (two-phase, protocol v3+).
    BeginPrepare(PrepareInfo),
    /// A transaction was prepared.
    Prepare(PrepareInfo),
    /// A prepared transaction committed.
    CommitPrepared(CommitPrepared),
    /// A prepared transaction rolled back.
    RollbackPrepared(RollbackPrepared),
    /// A streamed transaction was prepared.
    StreamPrepare(PrepareInfo),
}

/// `B`: Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: the position to confirm once it is applied.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// `O`: Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub origin_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// `Y`: Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// Type OID.
    pub type_oid: u32,
    /// Namespace (`pg_catalog` when the server sent an empty name).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// Which old tuple an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity key columns are meaningful (others are null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// `I`: Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// Relation OID.
    pub relation_id: u32,
    /// The new row.
    pub new: TupleData,
}

/// `U`: Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// Relation OID.
    pub relation_id: u32,
    /// The old key or row, when the key changed or the identity is FULL.
    pub old: Option<Box<(OldKind, TupleData)>>,
    /// The new row.
    pub new: TupleData,
}

/// `D`: Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// Relation OID.
    pub relation_id: u32,
    /// Which old tuple follows.
    pub old_kind: OldKind,
    /// The old key or row.
    pub old: TupleData,
}

/// `T`: Truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_identity: bool,
    /// Truncated relation OIDs.
    pub relation_ids: Vec<u32>,
}

/// `M`: a logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Streamed transaction id, inside a stream block.
    pub xid: Option<u32>,
    /// Emitted inside a transaction (delivered at commit) or not.
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// Raw content.
    pub content: Bytes,
}

/// `S`: Stream Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// Streamed transaction id.
    pub xid: u32,
    /// First block of this transaction.
    pub first_segment: bool,
}

/// `c`: Stream Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// Transaction id.
    pub xid: u32,
    /// Flags (currently 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// `A`: Stream Abort. `subxid == xid` aborts the whole transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// Aborted (sub)transaction id.
    pub subxid: u32,
    /// Abort LSN and time (protocol v4 with parallel streaming only).
    pub abort: Option<(Lsn, PgTimestamp)>,
}

/// `b` Begin Prepare, `P` Prepare and `p` Stream Prepare share this layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareInfo {
    /// Flags (Prepare and Stream Prepare; 0 for Begin Prepare).
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction id given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// `K`: Commit Prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Flags (currently 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction id.
    pub gid: String,
}

/// `r`: Rollback Prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags (currently 0).
    pub flags: u8,
    /// End LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the rollback.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Rollback time.
    pub rollback_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
    /// Global transaction id.
    pub gid: String,
}

impl Message {
    /// The message kind as printed by `graphsync decode` (`insert`, `stream_commit`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Begin(_) => "begin",
            Message::Commit(_) => "commit",
            Message::Origin(_) => "origin",
            Message::Relation(_) => "relation",
            Message::Type(_) => "type",
            Message::Insert(_) => "insert",
            Message::Update(_) => "update",
            Message::Delete(_) => "delete",
            Message::Truncate(_) => "truncate",
            Message::LogicalMessage(_) => "message",
            Message::StreamStart(_) => "stream_start",
            Message::StreamStop => "stream_stop",
            Message::StreamCommit(_) => "stream_commit",
            Message::StreamAbort(_) => "stream_abort",
            Message::BeginPrepare(_) => "begin_prepare",
            Message::Prepare(_) => "prepare",
            Message::CommitPrepared(_) => "commit_prepared",
            Message::RollbackPrepared(_) => "rollback_prepared",
            Message::StreamPrepare(_) => "stream_prepare",
        }
    }
}

/// The kind name for a message type byte, for error messages.
fn kind_of(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "begin",
        b'C' => "commit",
        b'O' => "origin",
        b'R' => "relation",
        b'Y' => "type",
        b'I' => "insert",
        b'U' => "update",
        b'D' => "delete",
        b'T' => "truncate",
        b'M' => "message",
        b'S' => "stream_start",
        b'E' => "stream_stop",
        b'c' => "stream_commit",
        b'A' => "stream_abort",
        b'b' => "begin_prepare",
        b'P' => "prepare",
        b'K' => "commit_prepared",
        b'r' => "rollback_prepared",
        b'p' => "stream_prepare",
        _ => return None,
    })
}

/// Decodes one message. `in_stream` says whether a Stream Start block is open, in which case
/// row, Relation, Type and transactional Message messages carry an xid.
///
/// Stateless: use [`crate::Decoder`] to track stream blocks and cache relations.
pub fn decode_message(buf: &Bytes, in_stream: bool) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let kind = kind_of(tag).ok_or(DecodeError::UnknownMessageType { byte: tag })?;
    let mut r = Reader::new(buf, 1, kind);
    let xid = |r: &mut Reader| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32().map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: PgTimestamp(r.i64()?),
            xid: r.u32()?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: PgTimestamp(r.i64()?),
        }),
        b'O' => Message::Origin(Origin {
            origin_lsn: Lsn(r.u64()?),
            name: r.cstring()?,
        }),
        b'R' => Message::Relation(Arc::new(decode_relation(&mut r, in_stream)?)),
        b'Y' => {
            let xid = xid(&mut r)?;
            let type_oid = r.u32()?;
            let namespace = namespace(r.cstring()?);
            Message::Type(TypeInfo {
                xid,
                type_oid,
                namespace,
                name: r.cstring()?,
            })
        }
        b'I' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            let at = r.offset();
            match r.u8()? {
                b'N' => {}
                other => return Err(r.invalid(at, format!("expected 'N' (new tuple), got {}", show_byte(other)))),
            }
            Message::Insert(Insert {
                xid,
                relation_id,
                new: decode_tuple(&mut r)?,
            })
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            let at = r.offset();
            let mut action = r.u8()?;
            let old = match action {
                b'K' | b'O' => {
                    let kind = if action == b'K' { OldKind::Key } else { OldKind::Full };
                    let t = decode_tuple(&mut r)?;
                    action = r.u8()?;
                    Some(Box::new((kind, t)))
                }
                _ => None,
            };
            if action != b'N' {
                return Err(r.invalid(at, format!("expected 'K', 'O' or 'N', got {}", show_byte(action))));
            }
            Message::Update(Update {
                xid,
                relation_id,
                old,
                new: decode_tuple(&mut r)?,
            })
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            let at = r.offset();
            let old_kind = match r.u8()? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Full,
                other => return Err(r.invalid(at, format!("expected 'K' or 'O', got {}", show_byte(other)))),
            };
            Message::Delete(Delete {
                xid,
                relation_id,
                old_kind,
                old: decode_tuple(&mut r)?,
            })
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let at = r.offset();
            let n = r.i32()?;
            let flags = r.u8()?;
            if n < 0 || (n as usize).saturating_mul(4) > r.remaining() {
                return Err(r.invalid(at, format!("relation count {n} does not fit the message")));
            }
            let mut relation_ids = Vec::with_capacity(n as usize);
            for _ in 0..n {
                relation_ids.push(r.u32()?);
            }
            Message::Truncate(Truncate {
                xid,
                cascade: flags & 1 != 0,
                restart_identity: flags & 2 != 0,
                relation_ids,
            })
        }
        b'M' => {
            // Only transactional messages inside a stream block carry an xid; the flags byte
            // comes after it, so a non-transactional one cannot appear inside a block.
            let xid = xid(&mut r)?;
            let flags = r.u8()?;
            let lsn = Lsn(r.u64()?);
            let prefix = r.cstring()?;
            let at = r.offset();
            let len = r.i32()?;
            if len < 0 {
                return Err(r.invalid(at, format!("negative content length {len}")));
            }
            let content = r.bytes(len as usize)?;
            Message::LogicalMessage(LogicalMessage {
                xid,
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            })
        }
        b'S' => Message::StreamStart(StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? == 1,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: PgTimestamp(r.i64()?),
        }),
        b'A' => {
            let xid = r.u32()?;
            let subxid = r.u32()?;
            // Protocol v4 with parallel streaming appends the abort LSN and time.
            let abort = if r.remaining() > 0 {
                Some((Lsn(r.u64()?), PgTimestamp(r.i64()?)))
            } else {
                None
            };
            Message::StreamAbort(StreamAbort { xid, subxid, abort })
        }
        b'b' => Message::BeginPrepare(PrepareInfo {
            flags: 0,
            prepare_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            prepare_time: PgTimestamp(r.i64()?),
            xid: r.u32()?,
            gid: r.cstring()?,
        }),
        b'P' | b'p' => {
            let info = PrepareInfo {
                flags: r.u8()?,
                prepare_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                prepare_time: PgTimestamp(r.i64()?),
                xid: r.u32()?,
                gid: r.cstring()?,
            };
            if tag == b'P' {
                Message::Prepare(info)
            } else {
                Message::StreamPrepare(info)
            }
        }
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: r.u8()?,
            commit_lsn: Lsn(r.u64()?),
            end_lsn: Lsn(r.u64()?),
            commit_time: PgTimestamp(r.i64()?),
            xid: r.u32()?,
            gid: r.cstring()?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8()?,
            prepare_end_lsn: Lsn(r.u64()?),
            rollback_end_lsn: Lsn(r.u64()?),
            prepare_time: PgTimestamp(r.i64()?),
            rollback_time: PgTimestamp(r.i64()?),
            xid: r.u32()?,
            gid: r.cstring()?,
        }),
        _ => unreachable!("kind_of accepted only the tags matched above"),
    };
    r.finish()?;
    Ok(msg)
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

fn namespace(s: String) -> String {
    if s.is_empty() {
        "pg_catalog".to_owned()
    } else {
        s
    }
}

fn decode_relation(r: &mut Reader, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = if in_stream { Some(r.u32()?) } else { None };
    let id = r.u32()?;
    let namespace = namespace(r.cstring()?);
    let name = r.cstring()?;
    let at = r.offset();
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(r.invalid(at, format!("unknown replica identity {}", show_byte(other)))),
    };
    let at = r.offset();
    let natts = r.u16()? as usize;
    // Each column takes at least 10 bytes (flags, empty name, type oid, typmod).
    if natts.saturating_mul(10) > r.remaining() {
        return Err(r.invalid(at, format!("column count {natts} does not fit the message")));
    }
    let mut columns = Vec::with_capacity(natts);
    for _ in 0..natts {
        let flags = r.u8()?;
        let name = r.cstring()?;
        let type_oid = r.u32()?;
        let type_modifier = r.i32()?;
        columns.push(Column {
            name,
            type_oid,
            type_modifier,
            is_key: flags & 1 != 0,
        });
    }
    Ok(Relation {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let natts = r.u16()?;
    let start = r.offset();
    for _ in 0..natts {
        let at = r.offset();
        match r.u8()? {
            b'n' | b'u' => {}
            b't' | b'b' => {
                let len_at = r.offset();
                let len = r.i32()?;
                if len < 0 {
                    return Err(r.invalid(len_at, format!("negative column length {len}")));
                }
                r.skip(len as usize)?;
            }
            other => return Err(r.invalid(at, format!("unknown column kind {}", show_byte(other)))),
        }
    }
    Ok(TupleData {
        buf: r.buffer().slice(start..r.offset()),
        natts,
    })
}
