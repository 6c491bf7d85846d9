//! One JSON object per message: the output format of `graphsync decode`.
//!
//! Row values follow the column types: integers and finite floats as numbers, NaN and
//! infinities as strings, `bool` as a boolean, `numeric` as an exact string, `json`/`jsonb`
//! embedded as JSON, arrays as arrays, everything else as PostgreSQL's text form. An unchanged
//! TOAST column is `{"unchanged_toast":true}`; a key-only old tuple shows only key columns.

use crate::message::{Message, OldKind, TupleData};
use crate::relation::{Relation, RelationCache};
use crate::value::{bytea_hex, Value};
use crate::{DecodeError, Lsn};
use std::fmt::Write;

/// Renders one decoded message as a single-line JSON object. `relations` must already hold the
/// relation of a row message (a [`crate::Decoder`] does that as it decodes).
pub fn message_to_json(lsn: Lsn, msg: &Message, relations: &RelationCache) -> Result<String, DecodeError> {
    let mut o = Obj::new();
    o.str("lsn", &lsn.to_string());
    o.str("type", msg.kind());
    let relation = |id: u32| {
        relations.get(id).ok_or(DecodeError::UnknownRelation {
            kind: msg.kind(),
            relation_id: id,
        })
    };
    match msg {
        Message::Begin(m) => {
            o.num("xid", m.xid);
            o.str("final_lsn", &m.final_lsn.to_string());
            o.str("commit_time", &m.commit_time.to_rfc3339());
        }
        Message::Commit(m) => {
            o.num("flags", m.flags);
            o.str("commit_lsn", &m.commit_lsn.to_string());
            o.str("end_lsn", &m.end_lsn.to_string());
            o.str("commit_time", &m.commit_time.to_rfc3339());
        }
        Message::Origin(m) => {
            o.str("origin_lsn", &m.origin_lsn.to_string());
            o.str("name", &m.name);
        }
        Message::Relation(r) => {
            o.opt_xid(r.xid);
            o.num("relation_id", r.id);
            o.str("relation", &r.qualified_name());
            o.str("replica_identity", r.replica_identity.as_str());
            o.key("columns");
            o.buf.push('[');
            for (i, c) in r.columns.iter().enumerate() {
                if i > 0 {
                    o.buf.push(',');
                }
                let mut co = Obj::new();
                co.str("name", &c.name);
                co.num("type_oid", c.type_oid);
                co.num("type_modifier", c.type_modifier);
                co.raw("key", if c.is_key { "true" } else { "false" });
                o.buf.push_str(&co.finish());
            }
            o.buf.push(']');
        }
        Message::Type(t) => {
            o.opt_xid(t.xid);
            o.num("type_oid", t.type_oid);
            o.str("namespace", &t.namespace);
            o.str("name", &t.name);
        }
        Message::Insert(m) => {
            let rel = relation(m.relation_id)?;
            o.opt_xid(m.xid);
            o.str("relation", &rel.qualified_name());
            o.tuple("new", rel, &m.new, false, msg.kind())?;
        }
        Message::Update(m) => {
            let rel = relation(m.relation_id)?;
            o.opt_xid(m.xid);
            o.str("relation", &rel.qualified_name());
            if let Some((kind, old)) = m.old.as_deref() {
                o.old(rel, *kind, old, msg.kind())?;
            }
            o.tuple("new", rel, &m.new, false, msg.kind())?;
        }
        Message::Delete(m) => {
            let rel = relation(m.relation_id)?;
            o.opt_xid(m.xid);
            o.str("relation", &rel.qualified_name());
            o.old(rel, m.old_kind, &m.old, msg.kind())?;
        }
        Message::Truncate(m) => {
            o.opt_xid(m.xid);
            o.key("relations");
            o.buf.push('[');
            for (i, id) in m.relation_ids.iter().enumerate() {
                if i > 0 {
                    o.buf.push(',');
                }
                push_json_str(&mut o.buf, &relation(*id)?.qualified_name());
            }
            o.buf.push(']');
            o.raw("cascade", bool_str(m.cascade));
            o.raw("restart_identity", bool_str(m.restart_identity));
        }
        Message::LogicalMessage(m) => {
            o.opt_xid(m.xid);
            o.raw("transactional", bool_str(m.transactional));
            o.str("message_lsn", &m.lsn.to_string());
            o.str("prefix", &m.prefix);
            match std::str::from_utf8(&m.content) {
                Ok(s) => o.str("content", s),
                Err(_) => o.str("content_hex", &bytea_hex(&m.content)),
            }
        }
        Message::StreamStart(m) => {
            o.num("xid", m.xid);
            o.raw("first_segment", bool_str(m.first_segment));
        }
        Message::StreamStop => {}
        Message::StreamCommit(m) => {
            o.num("xid", m.xid);
            o.num("flags", m.flags);
            o.str("commit_lsn", &m.commit_lsn.to_string());
            o.str("end_lsn", &m.end_lsn.to_string());
            o.str("commit_time", &m.commit_time.to_rfc3339());
        }
        Message::StreamAbort(m) => {
            o.num("xid", m.xid);
            o.num("subxid", m.subxid);
            if let Some((lsn, t)) = m.abort {
                o.str("abort_lsn", &lsn.to_string());
                o.str("abort_time", &t.to_rfc3339());
            }
        }
        Message::BeginPrepare(p) | Message::Prepare(p) | Message::StreamPrepare(p) => {
            o.num("xid", p.xid);
            o.str("gid", &p.gid);
            o.str("prepare_lsn", &p.prepare_lsn.to_string());
            o.str("end_lsn", &p.end_lsn.to_string());
            o.str("prepare_time", &p.prepare_time.to_rfc3339());
        }
        Message::CommitPrepared(m) => {
            o.num("xid", m.xid);
            o.str("gid", &m.gid);
            o.str("commit_lsn", &m.commit_lsn.to_string());
            o.str("end_lsn", &m.end_lsn.to_string());
            o.str("commit_time", &m.commit_time.to_rfc3339());
        }
        Message::RollbackPrepared(m) => {
            o.num("xid", m.xid);
            o.str("gid", &m.gid);
            o.str("prepare_end_lsn", &m.prepare_end_lsn.to_string());
            o.str("rollback_end_lsn", &m.rollback_end_lsn.to_string());
            o.str("prepare_time", &m.prepare_time.to_rfc3339());
            o.str("rollback_time", &m.rollback_time.to_rfc3339());
        }
    }
    Ok(o.finish())
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

struct Obj {
    buf: String,
    first: bool,
}

impl Obj {
    fn new() -> Self {
        Obj {
            buf: String::from("{"),
            first: true,
        }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(',');
        }
        self.first = false;
        push_json_str(&mut self.buf, k);
        self.buf.push(':');
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_json_str(&mut self.buf, v);
    }
    fn num(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        let _ = write!(self.buf, "{v}");
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.buf.push_str(v);
    }
    fn opt_xid(&mut self, xid: Option<u32>) {
        if let Some(x) = xid {
            self.num("xid", x);
        }
    }
    fn old(&mut self, rel: &Relation, kind: OldKind, t: &TupleData, msg: &'static str) -> Result<(), DecodeError> {
        self.str("old_kind", if kind == OldKind::Key { "key" } else { "full" });
        self.tuple("old", rel, t, kind == OldKind::Key, msg)
    }
    fn tuple(
        &mut self,
        k: &str,
        rel: &Relation,
        t: &TupleData,
        keys_only: bool,
        msg: &'static str,
    ) -> Result<(), DecodeError> {
        let values = rel.typed_values(t, msg)?;
        self.key(k);
        let mut inner = Obj::new();
        for (col, v) in rel.columns.iter().zip(&values) {
            if keys_only && !col.is_key {
                continue;
            }
            inner.key(&col.name);
            push_value(&mut inner.buf, v);
        }
        self.buf.push_str(&inner.finish());
        Ok(())
    }
    fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_float(out: &mut String, v: f64, shortest: String) {
    if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else {
        out.push_str(&shortest);
    }
}

/// Appends the JSON form of a typed value.
pub fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::UnchangedToast => out.push_str("{\"unchanged_toast\":true}"),
        Value::Bool(b) => out.push_str(bool_str(*b)),
        Value::Int2(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Int4(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Int8(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float4(f) => push_float(out, f64::from(*f), serde_json::to_string(f).unwrap_or_default()),
        Value::Float8(f) => push_float(out, *f, serde_json::to_string(f).unwrap_or_default()),
        Value::Numeric(t)
        | Value::Text(t)
        | Value::Date(t)
        | Value::Timestamp(t)
        | Value::TimestampTz(t)
        | Value::Other { text: t, .. } => push_json_str(out, t.as_str()),
        Value::Uuid(u) => push_json_str(out, &Value::format_uuid(u)),
        Value::Json(t) | Value::Jsonb(t) => push_embedded_json(out, t.as_str()),
        Value::Bytea(b) | Value::OtherBinary { data: b, .. } => push_json_str(out, &bytea_hex(b)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
    }
}

/// Embeds JSON text as JSON, minified onto one line with numbers and strings untouched. Text
/// that is not valid JSON is embedded as a string instead.
fn push_embedded_json(out: &mut String, text: &str) {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        push_json_str(out, text);
        return;
    }
    let (mut in_str, mut esc) = (false, false);
    for c in text.chars() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let mut s = String::new();
        push_value(&mut s, &Value::Float4(2.71));
        assert_eq!(s, "2.71");
        s.clear();
        push_value(&mut s, &Value::Float8(f64::NEG_INFINITY));
        assert_eq!(s, "\"-Infinity\"");
        s.clear();
        push_value(&mut s, &Value::Jsonb("{\"a b\": [1, 2.50]}".into()));
        assert_eq!(s, "{\"a b\":[1,2.50]}");
        s.clear();
        push_value(&mut s, &Value::Text("a\"\n".into()));
        assert_eq!(s, "\"a\\\"\\n\"");
    }
}
