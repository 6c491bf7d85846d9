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

/// A tenant, as interned by the graph from the tenant column's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(pub u32);

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
        }
    }
}
