//! Self-delimiting binary encoding of keys and property values, used by the node base's
//! arenas (and so by snapshots). Decoding checks every length against the bytes left.

use super::*;
use crate::bytes::{ByteReader, Corrupt};

pub(crate) fn put_key(out: &mut Vec<u8>, k: &NodeKey) {
    match k {
        NodeKey::Int(v) => {
            out.push(0);
            out.extend_from_slice(&v.to_le_bytes());
        }
        NodeKey::Uuid(u) => {
            out.push(1);
            out.extend_from_slice(u);
        }
        NodeKey::Text(t) => {
            out.push(2);
            put_str(out, t);
        }
        NodeKey::Composite(parts) => {
            out.push(3);
            out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
            for p in parts.iter() {
                put_key(out, p);
            }
        }
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_prop(out: &mut Vec<u8>, v: &PropValue) {
    match v {
        PropValue::Null => out.push(0),
        PropValue::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        PropValue::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        PropValue::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_le_bytes());
        }
        PropValue::Text(t) => {
            out.push(4);
            put_str(out, t);
        }
    }
}

/// Length of `k`'s encoding.
pub(crate) fn key_len(k: &NodeKey) -> usize {
    let mut v = Vec::new();
    put_key(&mut v, k);
    v.len()
}

/// The key encoded at the start of `bytes`.
pub(crate) fn read_key(bytes: &[u8]) -> Result<NodeKey, Corrupt> {
    Reader(&mut ByteReader::new(bytes)).key(0)
}

/// The key encoded at the start of `bytes`, and the bytes its encoding took.
pub(crate) fn read_key_prefix(bytes: &[u8]) -> Result<(NodeKey, usize), Corrupt> {
    let mut br = ByteReader::new(bytes);
    let k = Reader(&mut br).key(0)?;
    Ok((k, br.offset()))
}

/// Properties encoded as (name id, value) pairs; a corrupt tail is dropped.
pub(crate) fn read_props(bytes: &[u8], names: &[Arc<str>]) -> Vec<(Arc<str>, PropValue)> {
    let mut br = ByteReader::new(bytes);
    let mut r = Reader(&mut br);
    let mut out = Vec::new();
    while r.0.remaining() > 0 {
        let Ok(id) = r.0.array::<2>("property name id").map(u16::from_le_bytes) else {
            break;
        };
        let Ok(v) = r.prop() else { break };
        out.push((names.get(usize::from(id)).cloned().unwrap_or_else(|| Arc::from("?")), v));
    }
    out
}

/// Reads keys, texts and property values off a [`ByteReader`] (the inverse of `put_*`).
pub(crate) struct Reader<'a, 'b>(pub(crate) &'b mut ByteReader<'a>);

impl Reader<'_, '_> {
    pub(crate) fn str(&mut self) -> Result<Arc<str>, Corrupt> {
        let n = self.0.u32("text length")? as usize;
        let at = self.0.offset();
        let b = self.0.take(n, "text")?;
        std::str::from_utf8(b).map(Arc::from).map_err(|_| Corrupt {
            what: "text that is not UTF-8",
            offset: at,
        })
    }

    pub(crate) fn prop(&mut self) -> Result<PropValue, Corrupt> {
        Ok(match self.0.u8("property tag")? {
            0 => PropValue::Null,
            1 => PropValue::Bool(self.0.u8("boolean")? != 0),
            2 => PropValue::Int(self.0.i64("integer")?),
            3 => PropValue::Float(self.0.f64("float")?),
            4 => PropValue::Text(self.str()?),
            _ => return Err(self.0.corrupt("an unknown property tag")),
        })
    }

    pub(crate) fn key(&mut self, depth: u32) -> Result<NodeKey, Corrupt> {
        if depth > 16 {
            return Err(self.0.corrupt("a composite key nested too deep"));
        }
        Ok(match self.0.u8("key tag")? {
            0 => NodeKey::Int(self.0.i64("integer key")?),
            1 => NodeKey::Uuid(self.0.array("uuid key")?),
            2 => NodeKey::Text(self.str()?),
            3 => {
                let n = self.0.u32("composite key length")? as usize;
                if n > self.0.remaining() {
                    return Err(self.0.corrupt("a composite key count larger than the data"));
                }
                NodeKey::Composite(
                    (0..n)
                        .map(|_| self.key(depth + 1))
                        .collect::<Result<Vec<_>, _>>()?
                        .into(),
                )
            }
            _ => return Err(self.0.corrupt("an unknown key tag")),
        })
    }
}
