//! Self-delimiting binary encoding of keys and property values, used by the node base's
//! arenas (and so by snapshots). Decoding checks every length against the bytes left.

use super::*;

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

fn put_str(out: &mut Vec<u8>, s: &str) {
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
pub(crate) fn read_key(bytes: &[u8]) -> Result<NodeKey, String> {
    Reader(bytes).key(0)
}

/// The key encoded at the start of `bytes`, and the bytes its encoding took.
pub(crate) fn read_key_prefix(bytes: &[u8]) -> Result<(NodeKey, usize), String> {
    let mut r = Reader(bytes);
    let k = r.key(0)?;
    Ok((k, bytes.len() - r.0.len()))
}

/// Properties encoded as (name id, value) pairs.
pub(crate) fn read_props(bytes: &[u8], names: &[Arc<str>]) -> Vec<(Arc<str>, PropValue)> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let Ok(id) = r.take(2).map(|b| u16::from_le_bytes([b[0], b[1]])) else {
            break;
        };
        let Ok(v) = r.prop() else { break };
        out.push((names.get(usize::from(id)).cloned().unwrap_or_else(|| Arc::from("?")), v));
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("node data ends early".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "short")?))
    }
    fn u64(&mut self) -> Result<[u8; 8], String> {
        self.take(8)?.try_into().map_err(|_| "short".into())
    }
    fn str(&mut self) -> Result<Arc<str>, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Arc::from)
            .map_err(|_| "node text is not UTF-8".into())
    }
    fn prop(&mut self) -> Result<PropValue, String> {
        Ok(match self.u8()? {
            0 => PropValue::Null,
            1 => PropValue::Bool(self.u8()? != 0),
            2 => PropValue::Int(i64::from_le_bytes(self.u64()?)),
            3 => PropValue::Float(f64::from_le_bytes(self.u64()?)),
            4 => PropValue::Text(self.str()?),
            t => return Err(format!("unknown property tag {t}")),
        })
    }

    fn key(&mut self, depth: u32) -> Result<NodeKey, String> {
        if depth > 16 {
            return Err("composite key nested too deep".into());
        }
        Ok(match self.u8()? {
            0 => NodeKey::Int(i64::from_le_bytes(self.u64()?)),
            1 => NodeKey::Uuid(self.take(16)?.try_into().map_err(|_| "short uuid")?),
            2 => NodeKey::Text(self.str()?),
            3 => {
                let n = self.u32()? as usize;
                if n > self.0.len() {
                    return Err("composite key count does not fit".into());
                }
                NodeKey::Composite(
                    (0..n)
                        .map(|_| self.key(depth + 1))
                        .collect::<Result<Vec<_>, _>>()?
                        .into(),
                )
            }
            t => return Err(format!("unknown key tag {t}")),
        })
    }
}
