//! The node store: each node's label, key, tenant and properties, the (label, key) → id
//! resolution index, and tenant membership bitmaps — versioned with the views.
//!
//! The base part (dense arrays and a hash index) is immutable and shared; what changed since
//! the last compaction lives in persistent maps (`imbl`, structurally shared between views, so
//! publishing a transaction copies nothing but the paths it touched). Tenant membership is a
//! roaring bitmap per tenant, and a change touches only the old and the new tenant's bitmap.
//! A dense per-node tenant token (base) makes "is this node in tenant T" one array load for
//! nodes not changed since compaction.

use roaring::RoaringBitmap;
use std::collections::HashMap;
use std::sync::Arc;

/// A node label (an index into the mapping's node label names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeLabel(pub u16);

/// A node's identity within its label: the source row's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKey {
    /// `int2`, `int4`, `int8` keys.
    Int(i64),
    /// `uuid` keys.
    Uuid([u8; 16]),
    /// `text` / `varchar` keys.
    Text(Arc<str>),
    /// Composite keys, in key-column order.
    Composite(Arc<[NodeKey]>),
}

/// A tenant, as interned by the graph from the tenant column's value. Ids are stable for the
/// life of a [`crate::Graph`] but not across snapshot reloads: persist tenant values, not ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u32);

/// A filter column (an index into the mapping's filter names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FilterId(pub u16);

/// One value of one filter column, as interned by the graph. Like [`TenantId`], stable for
/// the life of a [`crate::Graph`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilterValueId(pub u32);

/// A property value kept for the API.
#[derive(Debug, Clone, PartialEq)]
pub enum PropValue {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// Anything else, as text.
    Text(Arc<str>),
}

/// What the graph keeps of a node row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeData {
    /// Label.
    pub label: NodeLabel,
    /// Key within the label.
    pub key: NodeKey,
    /// Tenant value (interned by the graph), if the mapping has a tenant column.
    pub tenant: Option<NodeKey>,
    /// Filter values: for each filter column of the mapping, this node's value.
    pub filters: Arc<[(FilterId, NodeKey)]>,
    /// Kept properties, in mapping order.
    pub properties: Arc<[(Arc<str>, PropValue)]>,
}

const NO_TENANT: u32 = u32::MAX;

/// The immutable part, rebuilt by compaction.
#[derive(Debug, Default)]
struct NodeBase {
    data: Vec<Option<Arc<NodeData>>>,
    tenant: Vec<u32>,
    index: HashMap<(NodeLabel, NodeKey), u32>,
}

/// The node store of one view.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStore {
    base: Arc<NodeBase>,
    changed: imbl::HashMap<u32, Option<Arc<NodeData>>>,
    index_delta: imbl::HashMap<(NodeLabel, NodeKey), u32>,
    tenant_ids: imbl::HashMap<NodeKey, TenantId>,
    tenant_names: imbl::Vector<NodeKey>,
    members: imbl::HashMap<TenantId, Arc<RoaringBitmap>>,
    filter_ids: imbl::HashMap<(FilterId, NodeKey), FilterValueId>,
    filter_members: imbl::HashMap<FilterValueId, Arc<RoaringBitmap>>,
}

impl NodeStore {
    /// The data of node `n`, if it was ever given any.
    pub(crate) fn data(&self, n: u32) -> Option<&Arc<NodeData>> {
        match self.changed.get(&n) {
            Some(d) => d.as_ref(),
            None => self.base.data.get(n as usize).and_then(|d| d.as_ref()),
        }
    }

    /// Whether `n` changed since the base (its tenant must then be read from `changed`).
    pub(crate) fn tenant_of(&self, n: u32, changed: bool) -> Option<TenantId> {
        if changed {
            let t = self.data(n)?.tenant.as_ref()?;
            return self.tenant_ids.get(t).copied();
        }
        match self.base.tenant.get(n as usize) {
            Some(&t) if t != NO_TENANT => Some(TenantId(t)),
            _ => None,
        }
    }

    /// The node with this label and key.
    pub(crate) fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<u32> {
        let k = (label, key.clone());
        match self.index_delta.get(&k) {
            // `u32::MAX` shadows a base entry whose node took another key.
            Some(&n) => (n != u32::MAX).then_some(n),
            None => self.base.index.get(&k).copied(),
        }
    }

    /// The id of a tenant value, if any node ever had it.
    pub(crate) fn tenant_id(&self, value: &NodeKey) -> Option<TenantId> {
        self.tenant_ids.get(value).copied()
    }

    /// The tenant value of an id.
    pub(crate) fn tenant_value(&self, t: TenantId) -> Option<&NodeKey> {
        self.tenant_names.get(t.0 as usize)
    }

    /// Members of tenant `t` (visible or not).
    pub(crate) fn members(&self, t: TenantId) -> Option<&RoaringBitmap> {
        self.members.get(&t).map(|b| b.as_ref())
    }

    /// The id of a filter value, if any node ever had it.
    pub(crate) fn filter_value_id(&self, filter: FilterId, value: &NodeKey) -> Option<FilterValueId> {
        self.filter_ids.get(&(filter, value.clone())).copied()
    }

    /// Nodes (visible or not) holding filter value `v`.
    pub(crate) fn filter_members(&self, v: FilterValueId) -> Option<&RoaringBitmap> {
        self.filter_members.get(&v).map(|b| b.as_ref())
    }

    fn intern_filter(&mut self, f: FilterId, value: &NodeKey) -> FilterValueId {
        let k = (f, value.clone());
        if let Some(&v) = self.filter_ids.get(&k) {
            return v;
        }
        let v = FilterValueId(self.filter_ids.len() as u32);
        self.filter_ids.insert(k, v);
        v
    }

    fn intern(&mut self, value: &NodeKey) -> TenantId {
        if let Some(&t) = self.tenant_ids.get(value) {
            return t;
        }
        let t = TenantId(self.tenant_names.len() as u32);
        self.tenant_names.push_back(value.clone());
        self.tenant_ids.insert(value.clone(), t);
        t
    }

    /// Sets the data of node `n` (`None` clears it), keeping the index and the tenant bitmaps
    /// in step. The caller marks `n` as changed since the base.
    pub(crate) fn set(&mut self, n: u32, data: Option<Arc<NodeData>>) {
        let old = self.data(n).cloned();
        let old_tenant = old.as_ref().and_then(|d| d.tenant.as_ref()).map(|t| self.intern(t));
        let new_tenant = data.as_ref().and_then(|d| d.tenant.as_ref()).map(|t| self.intern(t));
        if old_tenant != new_tenant {
            if let Some(t) = old_tenant {
                if let Some(b) = self.members.get_mut(&t) {
                    Arc::make_mut(b).remove(n);
                }
            }
            if let Some(t) = new_tenant {
                Arc::make_mut(self.members.entry(t).or_default()).insert(n);
            }
        }
        let old_filters: Vec<FilterValueId> = old
            .as_ref()
            .map_or(&[][..], |d| &d.filters[..])
            .iter()
            .map(|(f, v)| self.intern_filter(*f, v))
            .collect();
        let new_filters: Vec<FilterValueId> = data
            .as_ref()
            .map_or(&[][..], |d| &d.filters[..])
            .iter()
            .map(|(f, v)| self.intern_filter(*f, v))
            .collect();
        for v in old_filters.iter().filter(|v| !new_filters.contains(v)) {
            if let Some(b) = self.filter_members.get_mut(v) {
                Arc::make_mut(b).remove(n);
            }
        }
        for v in new_filters.iter().filter(|v| !old_filters.contains(v)) {
            Arc::make_mut(self.filter_members.entry(*v).or_default()).insert(n);
        }
        if let Some(o) = &old {
            if data.as_ref().is_none_or(|d| d.label != o.label || d.key != o.key) {
                let k = (o.label, o.key.clone());
                if self.resolve(o.label, &o.key) == Some(n) {
                    // A key a node leaves stays mapped to it in the base index; shadow it.
                    self.index_delta.insert(k, u32::MAX);
                }
            }
        }
        if let Some(d) = &data {
            self.index_delta.insert((d.label, d.key.clone()), n);
        }
        self.changed.insert(n, data);
    }

    /// A store whose base holds `nodes` (node `i` is `nodes[i]`), built in one pass.
    pub(crate) fn from_nodes(nodes: Vec<Option<NodeData>>) -> Result<NodeStore, (NodeLabel, NodeKey)> {
        let mut store = NodeStore::default();
        let mut base = NodeBase {
            data: Vec::with_capacity(nodes.len()),
            tenant: Vec::with_capacity(nodes.len()),
            index: HashMap::with_capacity(nodes.len()),
        };
        let mut members: HashMap<TenantId, RoaringBitmap> = HashMap::new();
        let mut filter_members: HashMap<FilterValueId, RoaringBitmap> = HashMap::new();
        for (n, d) in nodes.into_iter().enumerate() {
            let n = n as u32;
            let mut t = NO_TENANT;
            if let Some(d) = &d {
                if base.index.insert((d.label, d.key.clone()), n).is_some() {
                    return Err((d.label, d.key.clone()));
                }
                if let Some(tv) = &d.tenant {
                    let id = store.intern(tv);
                    members.entry(id).or_default().insert(n);
                    t = id.0;
                }
                for (f, v) in d.filters.iter() {
                    let id = store.intern_filter(*f, v);
                    filter_members.entry(id).or_default().insert(n);
                }
            }
            base.data.push(d.map(Arc::new));
            base.tenant.push(t);
        }
        store.members = members.into_iter().map(|(t, b)| (t, Arc::new(b))).collect();
        store.filter_members = filter_members.into_iter().map(|(v, b)| (v, Arc::new(b))).collect();
        store.base = Arc::new(base);
        Ok(store)
    }

    /// A fresh base holding everything, for node ids `0..node_count` (compaction).
    pub(crate) fn compacted(&self, node_count: u32) -> NodeStore {
        let mut base = NodeBase {
            data: Vec::with_capacity(node_count as usize),
            tenant: Vec::with_capacity(node_count as usize),
            index: HashMap::with_capacity(self.base.index.len() + self.index_delta.len()),
        };
        for n in 0..node_count {
            let d = self.data(n).cloned();
            let t = d
                .as_ref()
                .and_then(|d| d.tenant.as_ref())
                .and_then(|t| self.tenant_ids.get(t))
                .map_or(NO_TENANT, |t| t.0);
            if let Some(d) = &d {
                base.index.insert((d.label, d.key.clone()), n);
            }
            base.data.push(d);
            base.tenant.push(t);
        }
        NodeStore {
            base: Arc::new(base),
            changed: imbl::HashMap::new(),
            index_delta: imbl::HashMap::new(),
            tenant_ids: self.tenant_ids.clone(),
            tenant_names: self.tenant_names.clone(),
            members: self.members.clone(),
            filter_ids: self.filter_ids.clone(),
            filter_members: self.filter_members.clone(),
        }
    }
}

/// Compact binary encoding of node data for snapshots: per node a presence byte, then label,
/// key, tenant and properties. Decoding checks every length against the bytes left.
pub(crate) mod codec {
    use super::*;

    fn put_key(out: &mut Vec<u8>, k: &NodeKey) {
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

    /// Encodes the data of nodes `0..node_count`.
    pub(crate) fn encode(store: &NodeStore, node_count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for n in 0..node_count {
            let Some(d) = store.data(n) else {
                out.push(0);
                continue;
            };
            out.push(1);
            out.extend_from_slice(&d.label.0.to_le_bytes());
            put_key(&mut out, &d.key);
            match &d.tenant {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    put_key(&mut out, t);
                }
            }
            out.extend_from_slice(&(d.filters.len() as u32).to_le_bytes());
            for (f, v) in d.filters.iter() {
                out.extend_from_slice(&f.0.to_le_bytes());
                put_key(&mut out, v);
            }
            out.extend_from_slice(&(d.properties.len() as u32).to_le_bytes());
            for (name, v) in d.properties.iter() {
                put_str(&mut out, name);
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
                        put_str(&mut out, t);
                    }
                }
            }
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

    /// Decodes `node_count` nodes into a fresh store.
    pub(crate) fn decode(bytes: &[u8], node_count: u32) -> Result<NodeStore, String> {
        let mut r = Reader(bytes);
        let mut data = Vec::with_capacity((node_count as usize).min(bytes.len()));
        for _ in 0..node_count {
            if r.u8()? == 0 {
                data.push(None);
                continue;
            }
            let label = NodeLabel(u16::from_le_bytes(r.take(2)?.try_into().map_err(|_| "short")?));
            let key = r.key(0)?;
            let tenant = match r.u8()? {
                0 => None,
                1 => Some(r.key(0)?),
                t => return Err(format!("unknown tenant tag {t}")),
            };
            let nf = r.u32()? as usize;
            if nf > r.0.len() {
                return Err("filter count does not fit".into());
            }
            let mut filters = Vec::with_capacity(nf);
            for _ in 0..nf {
                let f = FilterId(u16::from_le_bytes(r.take(2)?.try_into().map_err(|_| "short")?));
                filters.push((f, r.key(0)?));
            }
            let n = r.u32()? as usize;
            if n > r.0.len() {
                return Err("property count does not fit".into());
            }
            let mut props = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.str()?;
                let v = match r.u8()? {
                    0 => PropValue::Null,
                    1 => PropValue::Bool(r.u8()? != 0),
                    2 => PropValue::Int(i64::from_le_bytes(r.u64()?)),
                    3 => PropValue::Float(f64::from_le_bytes(r.u64()?)),
                    4 => PropValue::Text(r.str()?),
                    t => return Err(format!("unknown property tag {t}")),
                };
                props.push((name, v));
            }
            data.push(Some(NodeData {
                label,
                key,
                tenant,
                filters: filters.into(),
                properties: props.into(),
            }));
        }
        if !r.0.is_empty() {
            return Err("trailing bytes after node data".into());
        }
        NodeStore::from_nodes(data).map_err(|(label, key)| format!("two nodes have label {} and key {key:?}", label.0))
    }
}
