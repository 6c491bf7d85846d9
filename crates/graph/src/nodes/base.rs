//! The immutable base of the node store: flat columns (labels, keys, tenants, filters,
//! properties) and an open-addressing (label, key) → id index, rebuilt by compaction.

#[allow(unused_imports)]
use super::*;

pub(super) const NO_TENANT: u32 = u32::MAX;
pub(super) const NO_LABEL: u16 = u16::MAX;
/// Top bit of a base label: the key is encoded in the arena, not an integer.
pub(super) const ARENA_KEY: u16 = 0x8000;
/// Most node labels the columnar base can hold (the top bit is taken).
pub const MAX_NODE_LABELS: usize = 0x7FFF;
pub(super) const EMPTY: u32 = u32::MAX;

/// The immutable part, rebuilt by compaction: flat columns, no allocation per node.
///
/// Integer keys live in `keys` itself; other keys are encoded (see [`codec`]) into
/// `key_arena`, with `keys` holding their offset and the label's top bit set. Filter values and properties are
/// variable-length, stored CSR-style. The (label, key) index is an open-addressing table of
/// node ids hashed from the columns.
#[derive(Debug, Default)]
pub(super) struct NodeBase {
    /// Label, with [`ARENA_KEY`] set when the key is in the arena; [`NO_LABEL`] for no data.
    pub(super) labels: Vec<u16>,
    pub(super) keys: Vec<u64>,
    pub(super) key_arena: Vec<u8>,
    pub(super) tenant: Vec<u32>,
    pub(super) filter_offsets: Vec<u32>,
    pub(super) filter_values: Vec<u32>,
    pub(super) prop_offsets: Vec<u32>,
    pub(super) prop_arena: Vec<u8>,
    pub(super) prop_names: Vec<Arc<str>>,
    pub(super) index: Vec<u32>,
}

/// A (label, key) as the key indexes hash it: the label then the key's encoding (as snapshots
/// encode keys; on the stack for integer and uuid keys, the common ones), and the xxh3 hash of
/// those bytes. The base's index stores positions from this hash in snapshots: it never
/// changes.
pub(super) struct KeyHash {
    enc: Enc,
    pub(super) hash: u64,
}

enum Enc {
    Short([u8; 19], u8),
    Long(Vec<u8>),
}

impl KeyHash {
    pub(super) fn new(label: NodeLabel, key: &NodeKey) -> KeyHash {
        let mut buf = [0u8; 19];
        buf[..2].copy_from_slice(&label.0.to_le_bytes());
        let enc = match key {
            // The encodings of `codec::put_key`: a tag byte, then the value.
            NodeKey::Int(v) => {
                buf[3..11].copy_from_slice(&v.to_le_bytes());
                Enc::Short(buf, 11)
            }
            NodeKey::Uuid(u) => {
                buf[2] = 1;
                buf[3..19].copy_from_slice(u);
                Enc::Short(buf, 19)
            }
            _ => {
                let mut out = Vec::with_capacity(32);
                out.extend_from_slice(&label.0.to_le_bytes());
                codec::put_key(&mut out, key);
                Enc::Long(out)
            }
        };
        let bytes = match &enc {
            Enc::Short(b, len) => &b[..*len as usize],
            Enc::Long(v) => &v[..],
        };
        KeyHash {
            hash: xxhash_rust::xxh3::xxh3_64(bytes),
            enc,
        }
    }

    /// The key's encoding, after the label.
    fn key_bytes(&self) -> &[u8] {
        match &self.enc {
            Enc::Short(b, len) => &b[2..*len as usize],
            Enc::Long(v) => &v[2..],
        }
    }
}

impl NodeBase {
    pub(super) fn len(&self) -> usize {
        self.labels.len()
    }

    pub(super) fn has(&self, n: u32) -> bool {
        self.labels.get(n as usize).is_some_and(|&l| l != NO_LABEL)
    }

    pub(super) fn key_is_int(&self, n: usize) -> bool {
        self.labels[n] & ARENA_KEY == 0
    }

    pub(super) fn label(&self, n: usize) -> NodeLabel {
        NodeLabel(self.labels[n] & !ARENA_KEY)
    }

    pub(super) fn key(&self, n: usize) -> NodeKey {
        if self.key_is_int(n) {
            NodeKey::Int(self.keys[n] as i64)
        } else {
            // Written by `push`; decoding cannot fail on bytes this store encoded.
            codec::read_key(&self.key_arena[self.keys[n] as usize..]).unwrap_or(NodeKey::Int(0))
        }
    }

    /// Whether node `n` has `label` and the key whose encoding (after the label) is `enc`.
    pub(super) fn matches(&self, n: usize, label: NodeLabel, key: &NodeKey, enc: &[u8]) -> bool {
        if self.labels[n] == NO_LABEL || self.label(n) != label {
            return false;
        }
        match key {
            NodeKey::Int(v) => self.key_is_int(n) && self.keys[n] as i64 == *v,
            _ => {
                !self.key_is_int(n)
                    && self
                        .key_arena
                        .get(self.keys[n] as usize..)
                        .is_some_and(|a| a.starts_with(enc))
            }
        }
    }

    pub(super) fn lookup(&self, label: NodeLabel, key: &NodeKey) -> Option<u32> {
        self.lookup_hashed(label, key, &KeyHash::new(label, key))
    }

    /// [`Self::lookup`] with the key's hash already computed.
    pub(super) fn lookup_hashed(&self, label: NodeLabel, key: &NodeKey, h: &KeyHash) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut i = h.hash as usize & mask;
        loop {
            let id = self.index[i];
            if id == EMPTY {
                return None;
            }
            if self.matches(id as usize, label, key, h.key_bytes()) {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// A hint for a lookup of `h` a little later: starts loading the index slot it hashes to
    /// (`node: false`); or reads that slot (loaded by an earlier call) and starts loading the
    /// columns of the node it names, returned (`node: true`). That node may not have the key:
    /// the lookup decides.
    pub(super) fn prefetch_hashed(&self, h: &KeyHash, node: bool) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let slot = &self.index[h.hash as usize & (self.index.len() - 1)];
        if !node {
            crate::query::prefetch_ptr(slot);
            return None;
        }
        let id = *slot;
        let n = id as usize;
        if id == EMPTY || n >= self.labels.len() {
            return None;
        }
        crate::query::prefetch_ptr(&self.labels[n]);
        crate::query::prefetch_ptr(&self.keys[n]);
        crate::query::prefetch_ptr(&self.tenant[n]);
        Some(id)
    }

    /// Appends node `data` (or an id without data) as the next id; interning through `store`.
    pub(super) fn push(&mut self, store: &mut NodeStore, data: Option<&NodeData>) {
        let Some(d) = data else {
            self.labels.push(NO_LABEL);
            self.keys.push(0);
            self.tenant.push(NO_TENANT);
            self.filter_offsets.push(self.filter_values.len() as u32);
            self.prop_offsets.push(self.prop_arena.len() as u32);
            return;
        };
        // Labels above MAX_NODE_LABELS are refused by the mapping config; mask defensively.
        let label = d.label.0 & !ARENA_KEY;
        match &d.key {
            NodeKey::Int(v) => {
                self.labels.push(label);
                self.keys.push(*v as u64);
            }
            k => {
                self.labels.push(label | ARENA_KEY);
                self.keys.push(self.key_arena.len() as u64);
                codec::put_key(&mut self.key_arena, k);
            }
        }
        self.tenant
            .push(d.tenant.as_ref().map_or(NO_TENANT, |t| store.intern(t).0));
        self.filter_offsets.push(self.filter_values.len() as u32);
        for (f, v) in d.filters.iter() {
            self.filter_values.push(store.intern_filter(*f, v).0);
        }
        self.prop_offsets.push(self.prop_arena.len() as u32);
        for (name, v) in d.properties.iter() {
            let id = match self.prop_names.iter().position(|p| p == name) {
                Some(i) => i,
                None => {
                    self.prop_names.push(name.clone());
                    self.prop_names.len() - 1
                }
            };
            self.prop_arena.extend_from_slice(&(id as u16).to_le_bytes());
            codec::put_prop(&mut self.prop_arena, v);
        }
    }

    /// Closes the CSR columns and builds the index. Fails on a duplicate (label, key).
    pub(super) fn finish(&mut self) -> Result<(), (NodeLabel, NodeKey)> {
        self.filter_offsets.push(self.filter_values.len() as u32);
        self.prop_offsets.push(self.prop_arena.len() as u32);
        let cap = (self.len() * 2).max(16).next_power_of_two();
        self.index = vec![EMPTY; cap];
        let mask = cap - 1;
        for n in 0..self.len() {
            if self.labels[n] == NO_LABEL {
                continue;
            }
            let (label, key) = (self.label(n), self.key(n));
            let h = KeyHash::new(label, &key);
            let mut i = h.hash as usize & mask;
            while self.index[i] != EMPTY {
                if self.matches(self.index[i] as usize, label, &key, h.key_bytes()) {
                    return Err((label, key));
                }
                i = (i + 1) & mask;
            }
            self.index[i] = n as u32;
        }
        Ok(())
    }

    /// Bytes held by the columns and the index.
    pub(super) fn heap_bytes(&self) -> usize {
        self.labels.capacity() * 2
            + self.keys.capacity() * 8
            + self.key_arena.capacity()
            + self.tenant.capacity() * 4
            + (self.filter_offsets.capacity() + self.filter_values.capacity() + self.prop_offsets.capacity()) * 4
            + self.prop_arena.capacity()
            + self.index.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_encode_keys_as_snapshots_do() {
        let keys = [
            NodeKey::Int(-3),
            NodeKey::Int(i64::MAX),
            NodeKey::Uuid([7; 16]),
            NodeKey::Text("a key".into()),
            NodeKey::Composite(Arc::from(vec![NodeKey::Int(1), NodeKey::Text("x".into())])),
        ];
        for key in keys {
            let label = NodeLabel(0x1234);
            let mut want = label.0.to_le_bytes().to_vec();
            codec::put_key(&mut want, &key);
            let h = KeyHash::new(label, &key);
            assert_eq!(h.key_bytes(), &want[2..], "{key:?}");
            assert_eq!(h.hash, xxhash_rust::xxh3::xxh3_64(&want), "{key:?}");
        }
    }
}
