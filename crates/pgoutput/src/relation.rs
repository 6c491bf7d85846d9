//! Relation descriptions and the cache that maps relation ids to them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Relation OIDs are already well spread; hashing them with SipHash would cost more than the
/// rest of a row lookup.
#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A relation as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Streamed transaction id, when sent inside a stream block.
    pub xid: Option<u32>,
    /// Relation OID; row messages refer to it.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// The table's replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in tuple order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity (all columns under REPLICA IDENTITY FULL).
    pub is_key: bool,
}

/// `ALTER TABLE ... REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; updates and deletes cannot be replicated.
    Nothing,
    /// `f`: every column.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Lower-case name (`default`, `nothing`, `full`, `index`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaIdentity::Default => "default",
            ReplicaIdentity::Nothing => "nothing",
            ReplicaIdentity::Full => "full",
            ReplicaIdentity::Index => "index",
        }
    }

    /// The protocol byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// Relation id → latest description. A later Relation message for the same id (after
/// `ALTER TABLE`) replaces the earlier one; rows decoded before keep the `Arc` they took.
#[derive(Debug, Default, Clone)]
pub struct RelationCache {
    by_id: HashMap<u32, Arc<Relation>, BuildHasherDefault<OidHasher>>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `rel`, replacing any earlier description of its id.
    pub fn insert(&mut self, rel: Relation) -> Arc<Relation> {
        let rel = Arc::new(rel);
        self.by_id.insert(rel.id, rel.clone());
        rel
    }

    /// Stores an already shared description, replacing any earlier one of its id.
    pub fn insert_arc(&mut self, rel: Arc<Relation>) {
        self.by_id.insert(rel.id, rel);
    }

    /// The latest description of relation `id`.
    pub fn get(&self, id: u32) -> Option<&Arc<Relation>> {
        self.by_id.get(&id)
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
