//! The node store: each node's label, key, tenant and properties, the (label, key) → id
//! resolution index, and tenant membership bitmaps — versioned with the views.
//!
//! The base part (dense arrays and a hash index) is immutable and shared. Since the last
//! compaction: added nodes' first data in a persistent vector (`added`); data set on a node
//! after its first in the node's overlay versions, which the view passes in ([`Overrides`]);
//! tenants, filters and moved keys in persistent maps (`imbl`, structurally shared between
//! views, so publishing a transaction copies nothing but the paths it touched). Tenant membership is a
//! persistent id set per tenant (`idset`: a roaring bitmap per 65,536 ids), and a change
//! copies only the chunk of the old and the new tenant's set that holds the node.
//! A dense per-node tenant token (base) makes "is this node in tenant T" one array load for
//! nodes not changed since compaction.

use std::collections::HashMap;
use std::sync::Arc;
mod added;
mod base;
pub(crate) mod codec;
mod columns;
mod idset;

pub(crate) use added::Slot;
use added::{AddedKeys, Changed};
pub use base::MAX_NODE_LABELS;
use base::*;
pub(crate) use columns::NodeColumns;
pub(crate) use idset::IdSet;
use idset::IdSetBuilder;

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

impl std::fmt::Display for NodeKey {
    /// The key as text, as the API names nodes (`Label:key`): integers in decimal, uuids in
    /// their canonical form, text as is, composite keys' parts joined by `,`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Int(i) => write!(f, "{i}"),
            NodeKey::Text(t) => f.write_str(t),
            NodeKey::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            NodeKey::Composite(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

impl NodeKey {
    /// Appends the key's self-delimiting binary encoding (the one snapshots use) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        codec::put_key(out, self)
    }

    /// Decodes a key written by [`NodeKey::encode`] at the start of `bytes`; returns it and
    /// the number of bytes it took. Every length is checked against the bytes left.
    pub fn decode(bytes: &[u8]) -> Result<(NodeKey, usize), crate::bytes::Corrupt> {
        codec::read_key_prefix(bytes)
    }
}

/// A tenant, as interned by the graph from the tenant column's value. Snapshots keep the
/// numbering; still, outside the process refer to tenants by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u32);

/// A filter column (an index into the mapping's filter names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FilterId(pub u16);

/// One value of one filter column, as interned by the graph (numbered like [`TenantId`]).
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

impl NodeData {
    /// Data of a node known only by its label and key (no tenant, filters or properties); the
    /// empty lists are shared, so such nodes — placeholders for edge endpoints not seen yet —
    /// allocate nothing for them.
    pub fn bare(label: NodeLabel, key: NodeKey) -> NodeData {
        type Filters = Arc<[(FilterId, NodeKey)]>;
        type Props = Arc<[(Arc<str>, PropValue)]>;
        static EMPTY: std::sync::OnceLock<(Filters, Props)> = std::sync::OnceLock::new();
        let (filters, properties) = EMPTY.get_or_init(|| (Arc::from(Vec::new()), Arc::from(Vec::new())));
        NodeData {
            label,
            key,
            tenant: None,
            filters: filters.clone(),
            properties: properties.clone(),
        }
    }
}

/// Where a view keeps the data set on a node after its first: in the node's overlay versions
/// (`view::table`), so updating a node costs one version, whatever the number of nodes changed.
/// Every read of the store that can meet a changed node takes the view (or transaction) it
/// reads for.
pub(crate) trait Overrides {
    /// The data last set on node `n` in this view if it was set after the node's first data
    /// (the base's columns, or what an added node was first given), else `None`.
    fn slot(&self, n: u32) -> Option<&Slot>;
}

/// The node store of one view.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStore {
    base: Arc<NodeBase>,
    changed: Changed,
    /// Keys base nodes took since the base (rare: a key change of an existing row).
    index_delta: imbl::HashMap<(NodeLabel, NodeKey), u32>,
    /// Keys of nodes added since the base: append-only and shared by every view derived from
    /// this base (hits are checked against the view's own data).
    new_keys: Arc<std::sync::RwLock<AddedKeys>>,
    tenant_ids: imbl::HashMap<NodeKey, TenantId>,
    tenant_names: imbl::Vector<NodeKey>,
    members: imbl::HashMap<TenantId, IdSet>,
    filter_ids: imbl::HashMap<(FilterId, NodeKey), FilterValueId>,
    filter_names: imbl::Vector<(FilterId, NodeKey)>,
    filter_members: imbl::HashMap<FilterValueId, IdSet>,
}

impl NodeStore {
    /// `n`'s data as a slot when it is not the base's columns': its override, else an added
    /// node's first data.
    #[inline]
    fn slot<'a>(&'a self, n: u32, ov: &'a impl Overrides) -> Option<&'a Slot> {
        ov.slot(n).or_else(|| self.changed.get(self.base.len() as u32, n))
    }

    /// The data of node `n`, if it was ever given any (built from the columns for base nodes).
    pub(crate) fn data(&self, n: u32, ov: &impl Overrides) -> Option<Arc<NodeData>> {
        if let Some(s) = self.slot(n, ov) {
            return s.data();
        }
        let b = &self.base;
        if !b.has(n) {
            return None;
        }
        let i = n as usize;
        let tenant = self.base_tenant(i).cloned();
        let filters: Vec<(FilterId, NodeKey)> = b.filter_values
            [b.filter_offsets[i] as usize..b.filter_offsets[i + 1] as usize]
            .iter()
            .filter_map(|&v| self.filter_names.get(v as usize).cloned())
            .collect();
        let props = codec::read_props(
            &b.prop_arena[b.prop_offsets[i] as usize..b.prop_offsets[i + 1] as usize],
            &b.prop_names,
        );
        Some(Arc::new(NodeData {
            label: b.label(i),
            key: b.key(i),
            tenant,
            filters: filters.into(),
            properties: props.into(),
        }))
    }

    /// The tenant value of node `n` if it was ever given data (`Some(None)`: data with no
    /// tenant). Allocates nothing, unlike [`Self::data`].
    pub(crate) fn tenant_key<'a>(&'a self, n: u32, ov: &'a impl Overrides) -> Option<Option<&'a NodeKey>> {
        if let Some(s) = self.slot(n, ov) {
            return s.label_key().map(|_| s.tenant());
        }
        self.base.has(n).then(|| self.base_tenant(n as usize))
    }

    /// The tenant value of base node `i` as the columns hold it.
    fn base_tenant(&self, i: usize) -> Option<&NodeKey> {
        match self.base.tenant[i] {
            NO_TENANT => None,
            t => self.tenant_names.get(t as usize),
        }
    }

    /// The label and key of node `n`, if it was ever given data (cheaper than [`Self::data`]
    /// for base nodes: no properties are decoded).
    pub(crate) fn label_key(&self, n: u32, ov: &impl Overrides) -> Option<(NodeLabel, NodeKey)> {
        if let Some(s) = self.slot(n, ov) {
            return s.label_key().map(|(l, k)| (l, k.clone()));
        }
        let b = &self.base;
        b.has(n).then(|| (b.label(n as usize), b.key(n as usize)))
    }

    /// Nodes with data among `0..node_count` that `live` accepts, per label (`counts[label]`,
    /// as long as the highest label counted). Reads the base's label column and the slots of
    /// changed nodes; allocates nothing per node, unlike [`Self::data`].
    pub(crate) fn count_labels(&self, node_count: u32, live: impl Fn(u32) -> bool, ov: &impl Overrides) -> Vec<u64> {
        let mut counts: Vec<u64> = Vec::new();
        let mut count = |label: Option<NodeLabel>| {
            if let Some(l) = label {
                let i = l.0 as usize;
                if counts.len() <= i {
                    counts.resize(i + 1, 0);
                }
                counts[i] += 1;
            }
        };
        let base_len = self.base.len() as u32;
        for n in 0..base_len.min(node_count) {
            if live(n) {
                count(match ov.slot(n) {
                    Some(s) => s.label_key().map(|(l, _)| l),
                    None => self.base.has(n).then(|| self.base.label(n as usize)),
                });
            }
        }
        // Added nodes in id order, from the vector of first data (an id past its end has none).
        for (n, first) in (base_len..node_count).zip(self.changed.added()) {
            if live(n) {
                count(ov.slot(n).unwrap_or(first).label_key().map(|(l, _)| l));
            }
        }
        counts
    }

    /// `n`'s tenant; `changed`: whether `n`'s data changed since the base (it is then read
    /// from `n`'s slot, else from the base's tenant column).
    pub(crate) fn tenant_of(&self, n: u32, changed: bool, ov: &impl Overrides) -> Option<TenantId> {
        if changed {
            if let Some(s) = self.slot(n, ov) {
                return self.tenant_ids.get(s.tenant()?).copied();
            }
        }
        self.base_tenant_id(n)
    }

    /// `n`'s tenant as the base's tenant column holds it.
    fn base_tenant_id(&self, n: u32) -> Option<TenantId> {
        match self.base.tenant.get(n as usize) {
            Some(&t) if t != NO_TENANT => Some(TenantId(t)),
            _ => None,
        }
    }

    /// A hint for resolving (`label`, `key`) a little later, in two stages
    /// ([`NodeBase::prefetch_hashed`]); the second returns the base node the key probably
    /// names. Nodes added since the base are not looked at (their table is small).
    pub(crate) fn prefetch_key(&self, label: NodeLabel, key: &NodeKey, node: bool) -> Option<u32> {
        self.base.prefetch_hashed(&KeyHash::new(label, key), node)
    }

    /// The node with this label and key.
    pub(crate) fn resolve(&self, label: NodeLabel, key: &NodeKey, ov: &impl Overrides) -> Option<u32> {
        if !self.index_delta.is_empty() {
            if let Some(&n) = self.index_delta.get(&(label, key.clone())) {
                if self.holds(n, label, key, ov) {
                    return Some(n);
                }
            }
        }
        let h = KeyHash::new(label, key);
        let added = self.new_keys.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = added.find(h.hash, |n| self.holds(n, label, key, ov)) {
            return Some(n);
        }
        drop(added);
        self.base
            .lookup_hashed(label, key, &h)
            .filter(|&n| self.holds(n, label, key, ov))
    }

    /// Whether node `n` has this label and key in this store's state.
    fn holds(&self, n: u32, label: NodeLabel, key: &NodeKey, ov: &impl Overrides) -> bool {
        let base_len = self.base.len() as u32;
        match self.slot(n, ov) {
            Some(s) => s.label_key().is_some_and(|(l, k)| l == label && k == key),
            // Unchanged since the base: the base index (which found it) is right.
            None => n < base_len,
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
    pub(crate) fn members(&self, t: TenantId) -> Option<&IdSet> {
        self.members.get(&t)
    }

    /// The id of a filter value, if any node ever had it.
    pub(crate) fn filter_value_id(&self, filter: FilterId, value: &NodeKey) -> Option<FilterValueId> {
        self.filter_ids.get(&(filter, value.clone())).copied()
    }

    /// Nodes (visible or not) holding filter value `v`.
    pub(crate) fn filter_members(&self, v: FilterValueId) -> Option<&IdSet> {
        self.filter_members.get(&v)
    }

    /// Bytes held by the base columns and index (the overlay maps are not counted).
    pub(crate) fn base_heap_bytes(&self) -> usize {
        self.base.heap_bytes()
    }

    fn intern_filter(&mut self, f: FilterId, value: &NodeKey) -> FilterValueId {
        let k = (f, value.clone());
        if let Some(&v) = self.filter_ids.get(&k) {
            return v;
        }
        let v = FilterValueId(self.filter_names.len() as u32);
        self.filter_names.push_back(k.clone());
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

    /// Sets the data of node `n` (`None` clears it), keeping the index and the tenant and
    /// filter sets in step; `current` is `n`'s override in the caller's view, if any. An
    /// added node's first data is kept here; any other is returned, for the caller to keep as
    /// `n`'s override. The caller marks `n` as changed since the base.
    #[must_use]
    pub(crate) fn set(&mut self, n: u32, current: Option<&Slot>, data: Option<Arc<NodeData>>) -> Option<Slot> {
        let (old_tenant, old_filters) = self.membership(n, current);
        let new_tenant = data.as_ref().and_then(|d| d.tenant.as_ref()).map(|t| self.intern(t));
        if old_tenant != new_tenant {
            if let Some(t) = old_tenant {
                if let Some(b) = self.members.get_mut(&t) {
                    b.remove(n);
                }
            }
            if let Some(t) = new_tenant {
                self.members.entry(t).or_default().insert(n);
            }
        }
        let new_filters: Vec<FilterValueId> = data
            .as_ref()
            .map_or(&[][..], |d| &d.filters[..])
            .iter()
            .map(|(f, v)| self.intern_filter(*f, v))
            .collect();
        for v in old_filters.iter().filter(|v| !new_filters.contains(v)) {
            if let Some(b) = self.filter_members.get_mut(v) {
                b.remove(n);
            }
        }
        for v in new_filters.iter().filter(|v| !old_filters.contains(v)) {
            self.filter_members.entry(*v).or_default().insert(n);
        }
        // Keys a node leaves need no clean-up: every index hit is checked against the data.
        let base_len = self.base.len() as u32;
        if let Some(d) = &data {
            if n >= base_len {
                let h = KeyHash::new(d.label, &d.key).hash;
                let mut keys = self.new_keys.write().unwrap_or_else(|e| e.into_inner());
                keys.insert(h, n);
            } else if self.base.lookup(d.label, &d.key) != Some(n) {
                self.index_delta.insert((d.label, d.key.clone()), n);
            }
        }
        self.changed.push_first(base_len, n, Slot::of(data)).err()
    }

    /// The tenant and filter values node `n` holds now (`current`: its override), read
    /// without building its data.
    fn membership(&mut self, n: u32, current: Option<&Slot>) -> (Option<TenantId>, Vec<FilterValueId>) {
        let base_len = self.base.len() as u32;
        match current.or_else(|| self.changed.get(base_len, n)).cloned() {
            Some(Slot::Full(d)) => {
                let tenant = d.tenant.as_ref().map(|t| self.intern(t));
                (
                    tenant,
                    d.filters.iter().map(|(f, v)| self.intern_filter(*f, v)).collect(),
                )
            }
            Some(_) => (None, Vec::new()),
            None if self.base.has(n) => {
                let b = &self.base;
                let i = n as usize;
                let values = &b.filter_values[b.filter_offsets[i] as usize..b.filter_offsets[i + 1] as usize];
                (
                    self.base_tenant_id(n),
                    values.iter().map(|&v| FilterValueId(v)).collect(),
                )
            }
            None => (None, Vec::new()),
        }
    }

    /// A store whose base holds `nodes` (node `i` is `nodes[i]`), built in one pass.
    pub(crate) fn from_nodes(nodes: Vec<Option<NodeData>>) -> Result<NodeStore, (NodeLabel, NodeKey)> {
        let mut store = NodeStore::default();
        let mut base = NodeBase::default();
        for d in &nodes {
            base.push(&mut store, d.as_ref());
        }
        drop(nodes);
        base.finish()?;
        store.rebuild_members(&base);
        store.base = Arc::new(base);
        Ok(store)
    }

    /// Tenant and filter sets from the base columns.
    fn rebuild_members(&mut self, base: &NodeBase) {
        let mut members: HashMap<TenantId, IdSetBuilder> = HashMap::new();
        let mut filter_members: HashMap<FilterValueId, IdSetBuilder> = HashMap::new();
        // Ids in increasing order: each set is appended to, never searched.
        for n in 0..base.len() {
            if base.tenant[n] != NO_TENANT {
                members.entry(TenantId(base.tenant[n])).or_default().push(n as u32);
            }
            for &v in &base.filter_values[base.filter_offsets[n] as usize..base.filter_offsets[n + 1] as usize] {
                filter_members.entry(FilterValueId(v)).or_default().push(n as u32);
            }
        }
        self.members = members.into_iter().map(|(t, b)| (t, b.finish())).collect();
        self.filter_members = filter_members.into_iter().map(|(v, b)| (v, b.finish())).collect();
    }

    /// A fresh base holding everything, for node ids `0..node_count` (compaction). Tenant and
    /// filter ids stay as they are.
    pub(crate) fn compacted(&self, node_count: u32, ov: &impl Overrides) -> NodeStore {
        let mut store = NodeStore {
            base: Arc::default(),
            changed: Changed::default(),
            index_delta: imbl::HashMap::new(),
            new_keys: Arc::default(),
            tenant_ids: self.tenant_ids.clone(),
            tenant_names: self.tenant_names.clone(),
            members: self.members.clone(),
            filter_ids: self.filter_ids.clone(),
            filter_names: self.filter_names.clone(),
            filter_members: self.filter_members.clone(),
        };
        let mut base = NodeBase::default();
        for n in 0..node_count {
            let d = self.data(n, ov);
            base.push(&mut store, d.as_deref());
        }
        // Keys were unique in the view, so they are unique in the fold.
        let _ = base.finish();
        store.base = Arc::new(base);
        store
    }
}
