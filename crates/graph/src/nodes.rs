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
    pub fn decode(bytes: &[u8]) -> Result<(NodeKey, usize), String> {
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

const NO_TENANT: u32 = u32::MAX;
const NO_LABEL: u16 = u16::MAX;
/// Top bit of a base label: the key is encoded in the arena, not an integer.
const ARENA_KEY: u16 = 0x8000;
/// Most node labels the columnar base can hold (the top bit is taken).
pub const MAX_NODE_LABELS: usize = 0x7FFF;
const EMPTY: u32 = u32::MAX;

/// The immutable part, rebuilt by compaction: flat columns, no allocation per node.
///
/// Integer keys live in `keys` itself; other keys are encoded (see [`codec`]) into
/// `key_arena`, with `keys` holding their offset and the label's top bit set. Filter values and properties are
/// variable-length, stored CSR-style. The (label, key) index is an open-addressing table of
/// node ids hashed from the columns.
#[derive(Debug, Default)]
struct NodeBase {
    /// Label, with [`ARENA_KEY`] set when the key is in the arena; [`NO_LABEL`] for no data.
    labels: Vec<u16>,
    keys: Vec<u64>,
    key_arena: Vec<u8>,
    tenant: Vec<u32>,
    filter_offsets: Vec<u32>,
    filter_values: Vec<u32>,
    prop_offsets: Vec<u32>,
    prop_arena: Vec<u8>,
    prop_names: Vec<Arc<str>>,
    index: Vec<u32>,
}

/// A key's hash input: label then the key's encoding.
fn key_bytes(label: NodeLabel, key: &NodeKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.extend_from_slice(&label.0.to_le_bytes());
    codec::put_key(&mut out, key);
    out
}

impl NodeBase {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn has(&self, n: u32) -> bool {
        self.labels.get(n as usize).is_some_and(|&l| l != NO_LABEL)
    }

    fn key_is_int(&self, n: usize) -> bool {
        self.labels[n] & ARENA_KEY == 0
    }

    fn label(&self, n: usize) -> NodeLabel {
        NodeLabel(self.labels[n] & !ARENA_KEY)
    }

    fn key(&self, n: usize) -> NodeKey {
        if self.key_is_int(n) {
            NodeKey::Int(self.keys[n] as i64)
        } else {
            // Written by `push`; decoding cannot fail on bytes this store encoded.
            codec::read_key(&self.key_arena[self.keys[n] as usize..]).unwrap_or(NodeKey::Int(0))
        }
    }

    /// Whether node `n` has `label` and the key whose encoding (after the label) is `enc`.
    fn matches(&self, n: usize, label: NodeLabel, key: &NodeKey, enc: &[u8]) -> bool {
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

    fn lookup(&self, label: NodeLabel, key: &NodeKey) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        let bytes = key_bytes(label, key);
        let mask = self.index.len() - 1;
        let mut i = xxhash_rust::xxh3::xxh3_64(&bytes) as usize & mask;
        loop {
            let id = self.index[i];
            if id == EMPTY {
                return None;
            }
            if self.matches(id as usize, label, key, &bytes[2..]) {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Appends node `data` (or an id without data) as the next id; interning through `store`.
    fn push(&mut self, store: &mut NodeStore, data: Option<&NodeData>) {
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
    fn finish(&mut self) -> Result<(), (NodeLabel, NodeKey)> {
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
            let bytes = key_bytes(label, &key);
            let mut i = xxhash_rust::xxh3::xxh3_64(&bytes) as usize & mask;
            while self.index[i] != EMPTY {
                if self.matches(self.index[i] as usize, label, &key, &bytes[2..]) {
                    return Err((label, key));
                }
                i = (i + 1) & mask;
            }
            self.index[i] = n as u32;
        }
        Ok(())
    }

    /// Bytes held by the columns and the index.
    fn heap_bytes(&self) -> usize {
        self.labels.capacity() * 2
            + self.keys.capacity() * 8
            + self.key_arena.capacity()
            + self.tenant.capacity() * 4
            + (self.filter_offsets.capacity() + self.filter_values.capacity() + self.prop_offsets.capacity()) * 4
            + self.prop_arena.capacity()
            + self.index.capacity() * 4
    }
}

/// The node store of one view.
/// (label, key) → the nodes added since the base that ever held it, oldest first.
type NewKeys = HashMap<(NodeLabel, NodeKey), smallvec::SmallVec<[u32; 1]>>;

#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStore {
    base: Arc<NodeBase>,
    changed: Changed,
    /// Keys base nodes took since the base (rare: a key change of an existing row).
    index_delta: imbl::HashMap<(NodeLabel, NodeKey), u32>,
    /// Keys of nodes added since the base: append-only and shared by every view derived from
    /// this base (a view sees only the nodes it holds data for, so every hit is checked
    /// against the view's own data). Avoids copying hash-trie paths per inserted node.
    new_keys: Arc<std::sync::RwLock<NewKeys>>,
    tenant_ids: imbl::HashMap<NodeKey, TenantId>,
    tenant_names: imbl::Vector<NodeKey>,
    members: imbl::HashMap<TenantId, Arc<RoaringBitmap>>,
    filter_ids: imbl::HashMap<(FilterId, NodeKey), FilterValueId>,
    filter_names: imbl::Vector<(FilterId, NodeKey)>,
    filter_members: imbl::HashMap<FilterValueId, Arc<RoaringBitmap>>,
}

/// Node data changed since the base: a persistent map for base nodes, and for nodes added
/// since (dense ids from the base's length on) a persistent vector, so inserting new nodes
/// appends instead of copying hash-trie paths.
#[derive(Debug, Clone, Default)]
struct Changed {
    base: imbl::HashMap<u32, Option<Arc<NodeData>>>,
    added: imbl::Vector<Option<Arc<NodeData>>>,
}

impl Changed {
    /// `Some(data)` if `n` changed since a base of `base_len` nodes.
    fn get(&self, base_len: u32, n: u32) -> Option<&Option<Arc<NodeData>>> {
        if n < base_len {
            self.base.get(&n)
        } else {
            self.added.get((n - base_len) as usize)
        }
    }

    fn insert(&mut self, base_len: u32, n: u32, data: Option<Arc<NodeData>>) {
        if n < base_len {
            self.base.insert(n, data);
            return;
        }
        let i = (n - base_len) as usize;
        while self.added.len() < i {
            self.added.push_back(None);
        }
        if i == self.added.len() {
            self.added.push_back(data);
        } else {
            self.added.set(i, data);
        }
    }

    fn is_empty(&self) -> bool {
        self.base.is_empty() && self.added.is_empty()
    }
}

impl NodeStore {
    /// The data of node `n`, if it was ever given any (built from the columns for base nodes).
    pub(crate) fn data(&self, n: u32) -> Option<Arc<NodeData>> {
        if let Some(d) = self.changed.get(self.base.len() as u32, n) {
            return d.clone();
        }
        let b = &self.base;
        if !b.has(n) {
            return None;
        }
        let i = n as usize;
        let tenant = match b.tenant[i] {
            NO_TENANT => None,
            t => self.tenant_names.get(t as usize).cloned(),
        };
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

    /// Whether `n` changed since the base (its tenant must then be read from `changed`).
    pub(crate) fn tenant_of(&self, n: u32, changed: bool) -> Option<TenantId> {
        if changed {
            if let Some(d) = self.changed.get(self.base.len() as u32, n) {
                let t = d.as_ref()?.tenant.as_ref()?;
                return self.tenant_ids.get(t).copied();
            }
        }
        match self.base.tenant.get(n as usize) {
            Some(&t) if t != NO_TENANT => Some(TenantId(t)),
            _ => None,
        }
    }

    /// The node with this label and key.
    pub(crate) fn resolve(&self, label: NodeLabel, key: &NodeKey) -> Option<u32> {
        let k = (label, key.clone());
        if let Some(&n) = self.index_delta.get(&k) {
            if self.holds(n, label, key) {
                return Some(n);
            }
        }
        if let Some(ids) = self.new_keys.read().unwrap_or_else(|e| e.into_inner()).get(&k) {
            if let Some(&n) = ids.iter().rev().find(|&&n| self.holds(n, label, key)) {
                return Some(n);
            }
        }
        self.base.lookup(label, key).filter(|&n| self.holds(n, label, key))
    }

    /// Whether node `n` has this label and key in this store's state.
    fn holds(&self, n: u32, label: NodeLabel, key: &NodeKey) -> bool {
        let base_len = self.base.len() as u32;
        match self.changed.get(base_len, n) {
            Some(Some(d)) => d.label == label && d.key == *key,
            Some(None) => false,
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

    /// Sets the data of node `n` (`None` clears it), keeping the index and the tenant bitmaps
    /// in step. The caller marks `n` as changed since the base.
    pub(crate) fn set(&mut self, n: u32, data: Option<Arc<NodeData>>) {
        let old = self.data(n);
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
        // Keys a node leaves need no clean-up: every index hit is checked against the data.
        let base_len = self.base.len() as u32;
        if let Some(d) = &data {
            let k = (d.label, d.key.clone());
            if n >= base_len {
                let mut keys = self.new_keys.write().unwrap_or_else(|e| e.into_inner());
                let ids = keys.entry(k).or_default();
                if ids.last() != Some(&n) {
                    ids.push(n);
                }
            } else if self.base.lookup(d.label, &d.key) != Some(n) {
                self.index_delta.insert(k, n);
            }
        }
        self.changed.insert(base_len, n, data);
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

    /// Tenant and filter bitmaps from the base columns.
    fn rebuild_members(&mut self, base: &NodeBase) {
        let mut members: HashMap<TenantId, RoaringBitmap> = HashMap::new();
        let mut filter_members: HashMap<FilterValueId, RoaringBitmap> = HashMap::new();
        for n in 0..base.len() {
            if base.tenant[n] != NO_TENANT {
                members.entry(TenantId(base.tenant[n])).or_default().insert(n as u32);
            }
            for &v in &base.filter_values[base.filter_offsets[n] as usize..base.filter_offsets[n + 1] as usize] {
                filter_members.entry(FilterValueId(v)).or_default().insert(n as u32);
            }
        }
        self.members = members.into_iter().map(|(t, b)| (t, Arc::new(b))).collect();
        self.filter_members = filter_members.into_iter().map(|(v, b)| (v, Arc::new(b))).collect();
    }

    /// A fresh base holding everything, for node ids `0..node_count` (compaction). Tenant and
    /// filter ids stay as they are.
    pub(crate) fn compacted(&self, node_count: u32) -> NodeStore {
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
            let d = self.data(n);
            base.push(&mut store, d.as_deref());
        }
        // Keys were unique in the view, so they are unique in the fold.
        let _ = base.finish();
        store.base = Arc::new(base);
        store
    }
}

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
    /// The store's data as columns (folding changes since the base first, if any).
    pub(crate) fn to_columns(&self, node_count: u32) -> NodeColumns {
        let folded;
        let store = if self.changed.is_empty() && self.base.len() == node_count as usize {
            self
        } else {
            folded = self.compacted(node_count);
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
        let mut r = &c.tenant_names[..];
        while !r.is_empty() {
            let k = codec::read_key(r)?;
            r = &r[codec::key_len(&k)..];
            store.intern(&k);
        }
        let mut r = &c.filter_names[..];
        while !r.is_empty() {
            let f = FilterId(u16::from_le_bytes([
                *r.first().ok_or("short")?,
                *r.get(1).ok_or("short")?,
            ]));
            let k = codec::read_key(&r[2..])?;
            r = &r[2 + codec::key_len(&k)..];
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

/// Self-delimiting binary encoding of keys and property values, used by the node base's
/// arenas (and so by snapshots). Decoding checks every length against the bytes left.
pub(crate) mod codec {
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
}
