//! The node store as the flat columns a snapshot stores, and back.

#[allow(unused_imports)]
use super::*;
use crate::bytes::ByteReader;

/// The node base as flat arrays, as a snapshot stores it.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub(crate) struct NodeColumns {
    labels: Vec<u16>,
    keys: Vec<u64>,
    key_arena: Vec<u8>,
    tenant: Vec<u32>,
    filter_offsets: Vec<u32>,
    filter_values: Vec<u32>,
    prop_offsets: Vec<u32>,
    prop_arena: Vec<u8>,
    prop_names: Vec<String>,
    index: Vec<u32>,
    /// Tenant values in id order, each encoded as a key.
    tenant_names: Vec<u8>,
    /// Filter values in id order: filter id (u16) then the value encoded as a key.
    filter_names: Vec<u8>,
}

impl NodeStore {
    /// The store's data as columns (folding changes since the base first, if any: `any_override`
    /// says whether `ov` has any).
    pub(crate) fn to_columns(&self, node_count: u32, ov: &impl Overrides, any_override: bool) -> NodeColumns {
        let folded;
        let store = if !any_override && self.changed.is_empty() && self.base.len() == node_count as usize {
            self
        } else {
            folded = self.compacted(node_count, ov);
            &folded
        };
        let b = &store.base;
        let mut tenant_names = Vec::new();
        for t in store.tenant_names.iter() {
            codec::put_key(&mut tenant_names, t);
        }
        let mut filter_names = Vec::new();
        for (f, v) in store.filter_names.iter() {
            filter_names.extend_from_slice(&f.0.to_le_bytes());
            codec::put_key(&mut filter_names, v);
        }
        NodeColumns {
            labels: b.labels.clone(),
            keys: b.keys.clone(),
            key_arena: b.key_arena.clone(),
            tenant: b.tenant.clone(),
            filter_offsets: b.filter_offsets.clone(),
            filter_values: b.filter_values.clone(),
            prop_offsets: b.prop_offsets.clone(),
            prop_arena: b.prop_arena.clone(),
            prop_names: b.prop_names.iter().map(|n| n.to_string()).collect(),
            index: b.index.clone(),
            tenant_names,
            filter_names,
        }
    }

    /// Rebuilds a store from archived columns, checking that they fit together.
    pub(crate) fn from_archived(c: &ArchivedNodeColumns, node_count: u32) -> Result<NodeStore, String> {
        let n = node_count as usize;
        let base = NodeBase {
            labels: c.labels.iter().map(|v| v.to_native()).collect(),
            keys: c.keys.iter().map(|v| v.to_native()).collect(),
            key_arena: c.key_arena.as_slice().to_vec(),
            tenant: c.tenant.iter().map(|v| v.to_native()).collect(),
            filter_offsets: c.filter_offsets.iter().map(|v| v.to_native()).collect(),
            filter_values: c.filter_values.iter().map(|v| v.to_native()).collect(),
            prop_offsets: c.prop_offsets.iter().map(|v| v.to_native()).collect(),
            prop_arena: c.prop_arena.as_slice().to_vec(),
            prop_names: c.prop_names.iter().map(|p| Arc::from(p.as_str())).collect(),
            index: c.index.iter().map(|v| v.to_native()).collect(),
        };
        let mut store = NodeStore::default();
        let corrupt = |e: crate::bytes::Corrupt| format!("node columns: {e}");
        let mut r = ByteReader::new(&c.tenant_names[..]);
        while r.remaining() > 0 {
            let k = codec::read_key(r.rest()).map_err(corrupt)?;
            r.skip(codec::key_len(&k), "tenant value").map_err(corrupt)?;
            store.intern(&k);
        }
        let mut r = ByteReader::new(&c.filter_names[..]);
        while r.remaining() > 0 {
            let f = FilterId(u16::from_le_bytes(r.array("filter id").map_err(corrupt)?));
            let k = codec::read_key(r.rest()).map_err(corrupt)?;
            r.skip(codec::key_len(&k), "filter value").map_err(corrupt)?;
            store.intern_filter(f, &k);
        }
        let bad = |what: &str| Err(format!("node columns: {what}"));
        if base.labels.len() != n || base.keys.len() != n || base.tenant.len() != n {
            return Err(format!(
                "node columns: column lengths ({}, {}, {}) differ from the node count {n}",
                base.labels.len(),
                base.keys.len(),
                base.tenant.len()
            ));
        }
        for (offsets, values) in [
            (&base.filter_offsets, base.filter_values.len()),
            (&base.prop_offsets, base.prop_arena.len()),
        ] {
            if offsets.len() != n + 1
                || offsets.first() != Some(&0)
                || offsets.last().map(|&o| o as usize) != Some(values)
                || offsets.windows(2).any(|w| w[0] > w[1])
            {
                return bad("offsets are not a valid table");
            }
        }
        if !base.index.len().is_power_of_two() || base.index.iter().any(|&i| i != EMPTY && i as usize >= n) {
            return bad("index is malformed");
        }
        if base
            .tenant
            .iter()
            .any(|&t| t != NO_TENANT && t as usize >= store.tenant_names.len())
            || base
                .filter_values
                .iter()
                .any(|&v| v as usize >= store.filter_names.len())
        {
            return bad("tenant or filter id out of range");
        }
        for i in 0..n {
            if base.labels[i] != NO_LABEL
                && !base.key_is_int(i)
                && codec::read_key(base.key_arena.get(base.keys[i] as usize..).unwrap_or(&[])).is_err()
            {
                return bad("a key does not decode");
            }
        }
        store.rebuild_members(&base);
        store.base = Arc::new(base);
        Ok(store)
    }
}
