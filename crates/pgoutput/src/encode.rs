//! Encoding messages back into pgoutput bytes: the inverse of [`crate::decode_message`].
//!
//! Used by property tests (encode → decode round-trips), benchmarks (synthetic streams) and
//! anyone who needs to fabricate a stream. A message with `xid: Some(_)` is encoded as it
//! appears inside a stream block.

use crate::message::*;
use crate::relation::Relation;

/// Encodes `msg` in the wire format.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(64));
    match msg {
        Message::Begin(m) => {
            e.u8(b'B').u64(m.final_lsn.0).i64(m.commit_time.0).u32(m.xid);
        }
        Message::Commit(m) => {
            e.u8(b'C')
                .u8(m.flags)
                .u64(m.commit_lsn.0)
                .u64(m.end_lsn.0)
                .i64(m.commit_time.0);
        }
        Message::Origin(m) => {
            e.u8(b'O').u64(m.origin_lsn.0).cstr(&m.name);
        }
        Message::Relation(r) => encode_relation(&mut e, r),
        Message::Type(t) => {
            e.u8(b'Y')
                .xid(t.xid)
                .u32(t.type_oid)
                .namespace(&t.namespace)
                .cstr(&t.name);
        }
        Message::Insert(m) => {
            e.u8(b'I').xid(m.xid).u32(m.relation_id).u8(b'N').tuple(&m.new);
        }
        Message::Update(m) => {
            e.u8(b'U').xid(m.xid).u32(m.relation_id);
            if let Some((kind, old)) = m.old.as_deref() {
                e.u8(old_tag(*kind)).tuple(old);
            }
            e.u8(b'N').tuple(&m.new);
        }
        Message::Delete(m) => {
            e.u8(b'D')
                .xid(m.xid)
                .u32(m.relation_id)
                .u8(old_tag(m.old_kind))
                .tuple(&m.old);
        }
        Message::Truncate(m) => {
            e.u8(b'T').xid(m.xid).u32(m.relation_ids.len() as u32);
            e.u8(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
            for id in &m.relation_ids {
                e.u32(*id);
            }
        }
        Message::LogicalMessage(m) => {
            e.u8(b'M')
                .xid(m.xid)
                .u8(u8::from(m.transactional))
                .u64(m.lsn.0)
                .cstr(&m.prefix);
            e.u32(m.content.len() as u32).raw(&m.content);
        }
        Message::StreamStart(m) => {
            e.u8(b'S').u32(m.xid).u8(u8::from(m.first_segment));
        }
        Message::StreamStop => {
            e.u8(b'E');
        }
        Message::StreamCommit(m) => {
            e.u8(b'c')
                .u32(m.xid)
                .u8(m.flags)
                .u64(m.commit_lsn.0)
                .u64(m.end_lsn.0)
                .i64(m.commit_time.0);
        }
        Message::StreamAbort(m) => {
            e.u8(b'A').u32(m.xid).u32(m.subxid);
            if let Some((lsn, t)) = m.abort {
                e.u64(lsn.0).i64(t.0);
            }
        }
        Message::BeginPrepare(p) => {
            e.u8(b'b')
                .u64(p.prepare_lsn.0)
                .u64(p.end_lsn.0)
                .i64(p.prepare_time.0)
                .u32(p.xid)
                .cstr(&p.gid);
        }
        Message::Prepare(p) | Message::StreamPrepare(p) => {
            let tag = if matches!(msg, Message::Prepare(_)) { b'P' } else { b'p' };
            e.u8(tag)
                .u8(p.flags)
                .u64(p.prepare_lsn.0)
                .u64(p.end_lsn.0)
                .i64(p.prepare_time.0)
                .u32(p.xid);
            e.cstr(&p.gid);
        }
        Message::CommitPrepared(m) => {
            e.u8(b'K')
                .u8(m.flags)
                .u64(m.commit_lsn.0)
                .u64(m.end_lsn.0)
                .i64(m.commit_time.0)
                .u32(m.xid);
            e.cstr(&m.gid);
        }
        Message::RollbackPrepared(m) => {
            e.u8(b'r')
                .u8(m.flags)
                .u64(m.prepare_end_lsn.0)
                .u64(m.rollback_end_lsn.0);
            e.i64(m.prepare_time.0).i64(m.rollback_time.0).u32(m.xid).cstr(&m.gid);
        }
    }
    e.0
}

fn old_tag(k: OldKind) -> u8 {
    match k {
        OldKind::Key => b'K',
        OldKind::Full => b'O',
    }
}

fn encode_relation(e: &mut Enc, r: &Relation) {
    e.u8(b'R')
        .xid(r.xid)
        .u32(r.id)
        .namespace(&r.namespace)
        .cstr(&r.name)
        .u8(r.replica_identity.as_byte());
    e.u16(r.columns.len() as u16);
    for c in &r.columns {
        e.u8(u8::from(c.is_key))
            .cstr(&c.name)
            .u32(c.type_oid)
            .u32(c.type_modifier as u32);
    }
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn cstr(&mut self, s: &str) -> &mut Self {
        self.raw(s.as_bytes()).u8(0)
    }
    fn namespace(&mut self, s: &str) -> &mut Self {
        self.cstr(if s == "pg_catalog" { "" } else { s })
    }
    fn xid(&mut self, xid: Option<u32>) -> &mut Self {
        if let Some(x) = xid {
            self.u32(x);
        }
        self
    }
    fn tuple(&mut self, t: &TupleData) -> &mut Self {
        self.u16(t.len() as u16);
        for c in t.columns() {
            match c {
                ColumnRef::Null => {
                    self.u8(b'n');
                }
                ColumnRef::UnchangedToast => {
                    self.u8(b'u');
                }
                ColumnRef::Text(b) => {
                    self.u8(b't').u32(b.len() as u32).raw(b);
                }
                ColumnRef::Binary(b) => {
                    self.u8(b'b').u32(b.len() as u32).raw(b);
                }
            }
        }
        self
    }
}
