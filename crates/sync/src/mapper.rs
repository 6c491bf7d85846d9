//! Rows of mapped tables → graph mutations.
//!
//! - A `[[nodes]]` table's row is a node (label, key, tenant, filters, properties). An update
//!   that changes the key deletes the old node and upserts the new one; a delete tombstones it;
//!   `TRUNCATE` deletes every node of the label.
//! - An `[[edges]]` entry maps a row to one edge; the table may be a join table or a node table
//!   (a foreign key inside a node table). An update may move either endpoint; a NULL endpoint
//!   means no edge. Endpoints that name a node which does not exist (yet) get an invisible id:
//!   the edge is kept and shows up with the node, so table order inside a transaction does not
//!   matter.
//! - Unchanged-TOAST columns (not sent by the server) keep the values the replica holds.
//!
//! Edges are removed by exact identity (source, target, label, weight), and a delete carries only
//! the row's replica identity, so the mapper keeps a [`RowIndex`]: per edge mapping, row identity
//! → the edge that row made. It is part of the replica's durable state (written with every
//! checkpoint).
//!
//! Not for decoding (pgoutput), transaction assembly ([`crate::assembly`]) or I/O.

use crate::change::{CommittedTxn, RowChange};
use crate::config::MappingConfig;
use crate::rows::{self, RowError};
use graph::{
    ApplyError, BulkError, CompactionPolicy, EdgeInput, EdgeLabel, FilterId, Graph, GraphView, NodeData, NodeId,
    NodeKey, NodeLabel, PropValue,
};
use pgoutput::{DecodeError, Relation, TupleData, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a change could not be applied. Nothing of its transaction is published; the replica
/// must not confirm it and should stop (the mapping or the table needs fixing).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A row's values could not be mapped.
    #[error(transparent)]
    Row(#[from] RowError),
    /// A row's values could not be typed.
    #[error("table {table}: {source}")]
    Decode {
        /// `schema.table`.
        table: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// The graph refused the transaction.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Spilled changes could not be read back.
    #[error(transparent)]
    Spill(#[from] crate::spill::SpillError),
    /// The bulk build of the initial copy failed.
    #[error(transparent)]
    Bulk(#[from] BulkError),
    /// The table's replica identity no longer holds an endpoint column the graph was built to
    /// find its edges by.
    #[error(
        "table {table}: replica identity no longer includes {column:?}, which the graph finds this table's \
         edges by; fix: run with --rebuild"
    )]
    IdentityChanged {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// An edge table has no replica identity columns to tell its rows apart.
    #[error(
        "table {table} has no replica identity columns; run ALTER TABLE {table} REPLICA IDENTITY FULL \
         (or add a primary key)"
    )]
    NoIdentity {
        /// `schema.table`.
        table: String,
    },
}

/// The edge one row made, and how many identical rows (REPLICA IDENTITY FULL) share it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IndexedEdge {
    edge: EdgeInput,
    extra: u32,
}

/// How the mapper finds the edge an edge mapping's row made, when the row is updated or
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeLookup {
    /// Through the [`RowIndex`] (row identity → edge). Works for every table; costs memory and
    /// checkpoint size per edge.
    Rows,
    /// The row identity is exactly the endpoint columns and the label belongs to this mapping
    /// alone: the edge is the one out-edge of the source with this label to the target.
    Endpoints,
    /// A foreign key in a node table whose source is the row's own node, the label belonging to
    /// this mapping alone: the edge is the source's one out-edge with this label.
    OwnNode,
}

impl EdgeLookup {
    fn byte(self) -> u8 {
        match self {
            EdgeLookup::Rows => 0,
            EdgeLookup::Endpoints => 1,
            EdgeLookup::OwnNode => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => EdgeLookup::Rows,
            1 => EdgeLookup::Endpoints,
            2 => EdgeLookup::OwnNode,
            _ => return None,
        })
    }
}

/// Per edge mapping, how its edges are found, and for [`EdgeLookup::Rows`] mappings the row
/// identity → edge map. See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowIndex {
    modes: Vec<EdgeLookup>,
    maps: Vec<HashMap<NodeKey, IndexedEdge>>,
}

const INDEX_MAGIC: &[u8; 8] = b"GSROWIX2";

impl RowIndex {
    /// An index for edge mappings looked up as `modes` say.
    pub fn new(modes: Vec<EdgeLookup>) -> Self {
        RowIndex {
            maps: vec![HashMap::new(); modes.len()],
            modes,
        }
    }

    /// How mapping `i`'s edges are found.
    pub fn mode(&self, i: usize) -> EdgeLookup {
        self.modes.get(i).copied().unwrap_or(EdgeLookup::Rows)
    }

    /// Rows indexed, over all mappings.
    pub fn len(&self) -> usize {
        self.maps
            .iter()
            .map(|m| m.values().map(|e| 1 + e.extra as usize).sum::<usize>())
            .sum()
    }

    /// Whether no row is indexed.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(HashMap::is_empty)
    }

    fn insert(&mut self, mapping: usize, row: NodeKey, edge: EdgeInput) {
        match self.maps[mapping].entry(row) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().edge == edge {
                    o.get_mut().extra += 1;
                } else {
                    o.insert(IndexedEdge { edge, extra: 0 });
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(IndexedEdge { edge, extra: 0 });
            }
        }
    }

    fn remove(&mut self, mapping: usize, row: &NodeKey) -> Option<EdgeInput> {
        let e = self.maps[mapping].get_mut(row)?;
        if e.extra > 0 {
            e.extra -= 1;
            return Some(e.edge);
        }
        self.maps[mapping].remove(row).map(|e| e.edge)
    }

    /// Serialises the index (with a checksum) for a checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.len() * 40);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&(self.maps.len() as u32).to_le_bytes());
        for (i, m) in self.maps.iter().enumerate() {
            out.push(self.mode(i).byte());
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            for (k, e) in m {
                k.encode(&mut out);
                out.extend_from_slice(&e.edge.source.0.to_le_bytes());
                out.extend_from_slice(&e.edge.target.0.to_le_bytes());
                out.push(e.edge.label.0);
                out.extend_from_slice(&e.edge.weight.to_le_bytes());
                out.extend_from_slice(&e.extra.to_le_bytes());
            }
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads an index written by [`RowIndex::encode`]; every length and the checksum are
    /// checked.
    pub fn decode(bytes: &[u8]) -> Result<RowIndex, String> {
        if bytes.len() < 20 || &bytes[..8] != INDEX_MAGIC {
            return Err("not a row index file (bad magic or too short)".into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(sum.try_into().map_err(|_| "short")?) {
            return Err("row index checksum mismatch (the file is corrupt)".into());
        }
        let mut r = &body[8..];
        let take = |n: usize, r: &mut &[u8]| -> Result<Vec<u8>, String> {
            if r.len() < n {
                return Err("row index ends early".to_string());
            }
            let (a, b) = r.split_at(n);
            *r = b;
            Ok(a.to_vec())
        };
        let u32_ = |b: Vec<u8>| u32::from_le_bytes(b.try_into().unwrap_or_default());
        let n = u32_(take(4, &mut r)?) as usize;
        let mut maps = Vec::with_capacity(n.min(1 << 16));
        let mut modes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            modes.push(EdgeLookup::from_byte(take(1, &mut r)?[0]).ok_or("row index has an unknown lookup mode")?);
            let count = u64::from_le_bytes(take(8, &mut r)?.try_into().unwrap_or_default());
            if count > r.len() as u64 {
                return Err("row index count exceeds the file".into());
            }
            let mut m = HashMap::with_capacity(count as usize);
            for _ in 0..count {
                let (k, used) = NodeKey::decode(r)?;
                r = &r[used..];
                let source = NodeId(u32_(take(4, &mut r)?));
                let target = NodeId(u32_(take(4, &mut r)?));
                let label = EdgeLabel(take(1, &mut r)?[0]);
                let weight = f64::from_le_bytes(take(8, &mut r)?.try_into().unwrap_or_default());
                let extra = u32_(take(4, &mut r)?);
                m.insert(
                    k,
                    IndexedEdge {
                        edge: EdgeInput {
                            source,
                            target,
                            label,
                            weight,
                        },
                        extra,
                    },
                );
            }
            maps.push(m);
        }
        if !r.is_empty() {
            return Err("row index has trailing bytes".into());
        }
        Ok(RowIndex { modes, maps })
    }
}

#[derive(Debug)]
struct NodePlan {
    label: NodeLabel,
    key: Vec<usize>,
    tenant: Option<usize>,
    filters: Vec<(FilterId, usize)>,
    props: Vec<(Arc<str>, usize)>,
}

#[derive(Debug)]
struct EdgePlan {
    mapping: usize,
    label: EdgeLabel,
    source: (NodeLabel, Vec<usize>),
    target: (NodeLabel, Vec<usize>),
    weight: Option<usize>,
}

/// How one relation's rows map, resolved against its current column list.
#[derive(Debug)]
struct RelPlan {
    rel: Arc<Relation>,
    node: Option<NodePlan>,
    edges: Vec<EdgePlan>,
    /// Row identity columns (edge index key) when the table is not a node table.
    identity: Vec<usize>,
}

/// Where the mapper gets node ids from: a transaction on the live graph, or the bulk build.
trait Nodes {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId;
}

impl Nodes for graph::Txn<'_> {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        self.node_id(label, key)
    }
}

/// Maps rows of the configured tables to graph changes. Holds the label numbering (node labels
/// in config order, edge labels and filter columns in order of first appearance).
#[derive(Debug)]
pub struct Mapper {
    config: Arc<MappingConfig>,
    node_labels: Vec<String>,
    edge_labels: Vec<String>,
    filter_names: Vec<String>,
    tables: HashMap<String, (Option<usize>, Vec<usize>)>,
    plans: HashMap<u32, Arc<RelPlan>>,
}

impl Mapper {
    /// A mapper for `config`.
    pub fn new(config: Arc<MappingConfig>) -> Self {
        let node_labels = config.nodes.iter().map(|n| n.label.clone()).collect();
        let mut edge_labels: Vec<String> = Vec::new();
        for e in &config.edges {
            if !edge_labels.contains(&e.label) {
                edge_labels.push(e.label.clone());
            }
        }
        let mut filter_names: Vec<String> = Vec::new();
        for n in &config.nodes {
            for f in &n.filters {
                if !filter_names.contains(f) {
                    filter_names.push(f.clone());
                }
            }
        }
        let mut tables: HashMap<String, (Option<usize>, Vec<usize>)> = HashMap::new();
        for (i, n) in config.nodes.iter().enumerate() {
            tables.entry(n.table.clone()).or_default().0 = Some(i);
        }
        for (i, e) in config.edges.iter().enumerate() {
            tables.entry(e.table.clone()).or_default().1.push(i);
        }
        Mapper {
            config,
            node_labels,
            edge_labels,
            filter_names,
            tables,
            plans: HashMap::new(),
        }
    }

    /// The mapping.
    pub fn config(&self) -> &Arc<MappingConfig> {
        &self.config
    }

    /// Node label names; [`NodeLabel`] `i` is `node_labels()[i]`.
    pub fn node_labels(&self) -> &[String] {
        &self.node_labels
    }

    /// Edge label names; [`EdgeLabel`] `i` is `edge_labels()[i]`.
    pub fn edge_labels(&self) -> &[String] {
        &self.edge_labels
    }

    /// Filter column names; [`FilterId`] `i` is `filter_names()[i]`.
    pub fn filter_names(&self) -> &[String] {
        &self.filter_names
    }

    /// The label id of a node label name.
    pub fn node_label(&self, name: &str) -> Option<NodeLabel> {
        self.node_labels
            .iter()
            .position(|l| l == name)
            .map(|i| NodeLabel(i as u16))
    }

    /// The label id of an edge label name.
    pub fn edge_label(&self, name: &str) -> Option<EdgeLabel> {
        self.edge_labels
            .iter()
            .position(|l| l == name)
            .map(|i| EdgeLabel(i as u8))
    }

    /// An empty row index that looks every edge up through rows (works for any table).
    pub fn new_index(&self) -> RowIndex {
        RowIndex::new(vec![EdgeLookup::Rows; self.config.edges.len()])
    }

    /// An empty row index using the cheapest lookup each edge mapping allows, given each
    /// table's replica identity columns (`identity("schema.table")`; all columns for FULL).
    pub fn index_for(&self, identity: impl Fn(&str) -> Option<Vec<String>>) -> RowIndex {
        let c = &self.config;
        let modes = c
            .edges
            .iter()
            .map(|e| {
                if c.edges.iter().filter(|x| x.label == e.label).count() != 1 {
                    return EdgeLookup::Rows;
                }
                if let Some(n) = c.nodes.iter().find(|n| n.table == e.table) {
                    if e.source.node == n.label && e.source.column.names() == n.key.names() {
                        return EdgeLookup::OwnNode;
                    }
                    return EdgeLookup::Rows;
                }
                let ends: std::collections::BTreeSet<&str> = e
                    .source
                    .column
                    .names()
                    .into_iter()
                    .chain(e.target.column.names())
                    .collect();
                match identity(&e.table) {
                    Some(id) if id.iter().map(String::as_str).collect::<std::collections::BTreeSet<_>>() == ends => {
                        EdgeLookup::Endpoints
                    }
                    _ => EdgeLookup::Rows,
                }
            })
            .collect();
        RowIndex::new(modes)
    }

    /// Whether `qualified` (`schema.table`) is mapped.
    pub fn is_mapped(&self, qualified: &str) -> bool {
        self.tables.contains_key(qualified)
    }

    fn plan(&mut self, rel: &Arc<Relation>) -> Result<Option<Arc<RelPlan>>, MapError> {
        if let Some(p) = self.plans.get(&rel.id) {
            if Arc::ptr_eq(&p.rel, rel) || *p.rel == **rel {
                return Ok(Some(p.clone()));
            }
        }
        let name = rel.qualified_name();
        let Some((node, edges)) = self.tables.get(&name) else {
            return Ok(None);
        };
        let cols = |names: Vec<&str>| -> Result<Vec<usize>, RowError> {
            names.into_iter().map(|c| rows::column_index(rel, c)).collect()
        };
        let node = match node {
            Some(i) => {
                let n = &self.config.nodes[*i];
                Some(NodePlan {
                    label: NodeLabel(*i as u16),
                    key: cols(n.key.names())?,
                    tenant: n.tenant.as_deref().map(|t| rows::column_index(rel, t)).transpose()?,
                    filters: n
                        .filters
                        .iter()
                        .map(|f| {
                            let id = self.filter_names.iter().position(|x| x == f).unwrap_or(0);
                            Ok((FilterId(id as u16), rows::column_index(rel, f)?))
                        })
                        .collect::<Result<_, RowError>>()?,
                    props: n
                        .properties
                        .iter()
                        .map(|p| Ok((Arc::from(p.as_str()), rows::column_index(rel, p)?)))
                        .collect::<Result<_, RowError>>()?,
                })
            }
            None => None,
        };
        let mut plans = Vec::new();
        for &i in edges {
            let e = &self.config.edges[i];
            let label_of = |n: &str| NodeLabel(self.node_labels.iter().position(|l| l == n).unwrap_or(0) as u16);
            plans.push(EdgePlan {
                mapping: i,
                label: EdgeLabel(self.edge_labels.iter().position(|l| *l == e.label).unwrap_or(0) as u8),
                source: (label_of(&e.source.node), cols(e.source.column.names())?),
                target: (label_of(&e.target.node), cols(e.target.column.names())?),
                weight: e.weight.as_deref().map(|w| rows::column_index(rel, w)).transpose()?,
            });
        }
        let identity: Vec<usize> = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect();
        if node.is_none() && !plans.is_empty() && identity.is_empty() {
            return Err(MapError::NoIdentity { table: name });
        }
        let plan = Arc::new(RelPlan {
            rel: rel.clone(),
            node,
            edges: plans,
            identity,
        });
        self.plans.insert(rel.id, plan.clone());
        Ok(Some(plan))
    }

    /// Applies several committed transactions, in order, as one published view at the last
    /// one's end LSN (readers still only ever see a transaction boundary). Used to catch up:
    /// one copy-on-write of the touched overlay chunks instead of one per transaction.
    pub fn apply_many(
        &mut self,
        graph: &mut Graph,
        index: &mut RowIndex,
        txns: &[CommittedTxn],
    ) -> Result<Arc<GraphView>, MapError> {
        let Some(last) = txns.last() else {
            return Ok(graph.view());
        };
        let mut t = graph.begin(last.end_lsn.0)?;
        for txn in txns {
            txn.for_each_change(|change| self.apply_change(&mut t, index, change))?;
        }
        Ok(t.commit()?)
    }

    /// Applies one committed transaction to `graph` as one published view at `txn.end_lsn`,
    /// keeping `index` in step. On error nothing is published, but `index` may hold part of
    /// the transaction: the caller must stop and recover from its last checkpoint.
    pub fn apply(
        &mut self,
        graph: &mut Graph,
        index: &mut RowIndex,
        txn: &CommittedTxn,
    ) -> Result<Arc<GraphView>, MapError> {
        self.apply_many(graph, index, std::slice::from_ref(txn))
    }

    fn apply_change(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        change: &RowChange,
    ) -> Result<(), MapError> {
        match change {
            RowChange::Insert { rel, new } => {
                let Some(plan) = self.plan(rel)? else { return Ok(()) };
                let newv = typed(rel, new, "Insert")?;
                // A node table's row identity is its node key: computed once.
                let rk = row_key(&plan, &newv)?;
                if let Some(np) = &plan.node {
                    t.upsert_node(node_data(&plan, np, rk.clone(), &newv, None)?);
                }
                if !plan.edges.is_empty() {
                    for ep in &plan.edges {
                        if let Some(e) = edge_of(&plan, ep, &newv, None, t)? {
                            t.add_edge(e)?;
                            index.record(ep.mapping, &rk, e);
                        }
                    }
                }
            }
            RowChange::Update { rel, old, new } => {
                let Some(plan) = self.plan(rel)? else { return Ok(()) };
                let newv = typed(rel, new, "Update")?;
                let oldv = old.as_ref().map(|(_, o)| typed(rel, o, "Update")).transpose()?;
                // Key columns the new tuple did not send (unchanged TOAST) come from the old
                // tuple when there is one.
                let newv = match &oldv {
                    Some(o) => fill_unchanged(newv, o),
                    None => newv,
                };
                let old_ident = oldv.as_ref().unwrap_or(&newv);
                // For a node table these are the old and new node keys.
                let old_rk = row_key(&plan, old_ident)?;
                let new_rk = row_key(&plan, &newv)?;
                if let Some(np) = &plan.node {
                    let held = t.resolve(np.label, &old_rk).and_then(|id| t.node(id));
                    let data = node_data(&plan, np, new_rk.clone(), &newv, held.as_deref())?;
                    if old_rk != new_rk {
                        t.delete_node(np.label, &old_rk);
                    }
                    t.upsert_node(data);
                }
                if !plan.edges.is_empty() {
                    for ep in &plan.edges {
                        let before = take_edge(index, &plan, ep, &old_rk, old_ident, t)?;
                        let after = edge_of(&plan, ep, &newv, before.as_ref(), t)?;
                        if before == after && old_rk == new_rk {
                            if let Some(e) = after {
                                index.record(ep.mapping, &new_rk, e);
                            }
                            continue;
                        }
                        if let Some(e) = before {
                            t.remove_edge(e)?;
                        }
                        if let Some(e) = after {
                            t.add_edge(e)?;
                            index.record(ep.mapping, &new_rk, e);
                        }
                    }
                }
            }
            RowChange::Delete { rel, old } => {
                let Some(plan) = self.plan(rel)? else { return Ok(()) };
                let oldv = typed(rel, old, "Delete")?;
                let rk = row_key(&plan, &oldv)?;
                if let Some(np) = &plan.node {
                    t.delete_node(np.label, &rk);
                }
                if !plan.edges.is_empty() {
                    for ep in &plan.edges {
                        if let Some(e) = take_edge(index, &plan, ep, &rk, &oldv, t)? {
                            t.remove_edge(e)?;
                        }
                    }
                }
            }
            RowChange::Truncate { rels } => {
                for rel in rels {
                    let Some(plan) = self.plan(rel)? else { continue };
                    for ep in &plan.edges {
                        if index.mode(ep.mapping) == EdgeLookup::Rows {
                            let drained: Vec<IndexedEdge> = index.maps[ep.mapping].drain().map(|(_, e)| e).collect();
                            for e in drained {
                                for _ in 0..=e.extra {
                                    t.remove_edge(e.edge)?;
                                }
                            }
                        } else {
                            // The label is this mapping's alone: remove every edge carrying it.
                            for n in 0..t.node_count() {
                                for e in t.out_edges(NodeId(n)) {
                                    if e.label == ep.label {
                                        t.remove_edge(e)?;
                                    }
                                }
                            }
                        }
                    }
                    if let Some(np) = &plan.node {
                        for id in 0..t.node_count() {
                            if let Some(d) = t.node(NodeId(id)) {
                                if d.label == np.label {
                                    t.delete_node(np.label, &d.key);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl RowIndex {
    /// Remembers the edge a row made (only [`EdgeLookup::Rows`] mappings keep anything).
    fn record(&mut self, mapping: usize, row: &NodeKey, edge: EdgeInput) {
        if self.mode(mapping) == EdgeLookup::Rows {
            self.insert(mapping, row.clone(), edge);
        }
    }
}

/// The edge the row with identity `row` (values `ident`: the old key or old row, or the new
/// row when the identity did not change) made for `ep`, forgotten by the index; `None` if it
/// made none.
fn take_edge(
    index: &mut RowIndex,
    plan: &RelPlan,
    ep: &EdgePlan,
    row: &NodeKey,
    ident: &[Value],
    t: &mut graph::Txn<'_>,
) -> Result<Option<EdgeInput>, MapError> {
    let mode = index.mode(ep.mapping);
    if mode == EdgeLookup::Rows {
        return Ok(index.remove(ep.mapping, row));
    }
    if mode == EdgeLookup::Endpoints {
        let ends = ep.source.1.iter().chain(&ep.target.1);
        if let Some(&c) = ends.clone().find(|&&c| !plan.rel.columns[c].is_key) {
            return Err(MapError::IdentityChanged {
                table: plan.rel.qualified_name(),
                column: plan.rel.columns[c].name.clone(),
            });
        }
    }
    let resolve = |(label, cols): &(NodeLabel, Vec<usize>)| -> Result<Option<NodeId>, RowError> {
        if cols.iter().any(|&c| matches!(ident[c], Value::Null)) {
            return Ok(None);
        }
        Ok(t.resolve(*label, &key_of(plan, cols, ident)?))
    };
    let Some(source) = resolve(&ep.source)? else {
        return Ok(None);
    };
    let target = if mode == EdgeLookup::Endpoints {
        match resolve(&ep.target)? {
            Some(n) => Some(n),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(match target {
        // Both ends known: found without scanning either endpoint's list (a hub's can be long).
        Some(target) => t.find_edge(source, target, ep.label),
        None => t.find_out_edge(source, |e| e.label == ep.label),
    })
}

fn typed(rel: &Relation, tuple: &TupleData, kind: &'static str) -> Result<Vec<Value>, MapError> {
    rel.typed_values(tuple, kind).map_err(|source| MapError::Decode {
        table: rel.qualified_name(),
        source,
    })
}

/// `new` with each unchanged-TOAST column replaced by `old`'s value when `old` has one.
fn fill_unchanged(mut new: Vec<Value>, old: &[Value]) -> Vec<Value> {
    for (n, o) in new.iter_mut().zip(old) {
        if matches!(n, Value::UnchangedToast) && !matches!(o, Value::Null | Value::UnchangedToast) {
            *n = o.clone();
        }
    }
    new
}

fn key_of(plan: &RelPlan, cols: &[usize], values: &[Value]) -> Result<NodeKey, RowError> {
    let mut parts = Vec::with_capacity(cols.len());
    for &c in cols {
        parts.push(rows::key_part(&plan.rel, &plan.rel.columns[c].name, &values[c])?);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        NodeKey::Composite(parts.into())
    })
}

/// The row's identity for the edge index: the node key for node tables, else the replica
/// identity columns (any type: values that cannot be keys are keyed by their text).
fn row_key(plan: &RelPlan, values: &[Value]) -> Result<NodeKey, RowError> {
    if let Some(np) = &plan.node {
        return key_of(plan, &np.key, values);
    }
    let mut parts = Vec::with_capacity(plan.identity.len());
    for &c in &plan.identity {
        let name = &plan.rel.columns[c].name;
        parts.push(match rows::key_part(&plan.rel, name, &values[c]) {
            Ok(k) => k,
            Err(RowError::UnsupportedKey { .. }) | Err(RowError::NullKey { .. }) => {
                let mut s = String::new();
                pgoutput::json::push_value(&mut s, &values[c]);
                NodeKey::Text(s.into())
            }
            Err(e) => return Err(e),
        });
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        NodeKey::Composite(parts.into())
    })
}

/// The node a row makes; `key` is its key (the row's identity, computed by the caller).
fn node_data(
    plan: &RelPlan,
    np: &NodePlan,
    key: NodeKey,
    values: &[Value],
    held: Option<&NodeData>,
) -> Result<NodeData, RowError> {
    let unchanged = |c: usize| matches!(values[c], Value::UnchangedToast);
    let tenant = match np.tenant {
        Some(c) if unchanged(c) => held.and_then(|h| h.tenant.clone()),
        Some(c) => match &values[c] {
            Value::Null => None,
            v => Some(rows::key_part(&plan.rel, &plan.rel.columns[c].name, v)?),
        },
        None => None,
    };
    let mut filters = Vec::with_capacity(np.filters.len());
    for &(id, c) in &np.filters {
        let v = if unchanged(c) {
            held.and_then(|h| h.filters.iter().find(|(f, _)| *f == id).map(|(_, v)| v.clone()))
        } else {
            match &values[c] {
                Value::Null => None,
                v => Some(rows::key_part(&plan.rel, &plan.rel.columns[c].name, v)?),
            }
        };
        if let Some(v) = v {
            filters.push((id, v));
        }
    }
    let props: Vec<(Arc<str>, PropValue)> = np
        .props
        .iter()
        .map(|(name, c)| {
            let v = if unchanged(*c) {
                held.and_then(|h| h.properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
                    .unwrap_or(PropValue::Null)
            } else {
                rows::prop_value(&values[*c])
            };
            (name.clone(), v)
        })
        .collect();
    Ok(NodeData {
        label: np.label,
        key,
        tenant,
        filters: filters.into(),
        properties: props.into(),
    })
}

enum End {
    Node(NodeId),
    Absent,
    Unchanged,
}

fn endpoint(
    plan: &RelPlan,
    (label, cols): &(NodeLabel, Vec<usize>),
    values: &[Value],
    nodes: &mut dyn Nodes,
) -> Result<End, RowError> {
    if cols.iter().any(|&c| matches!(values[c], Value::Null)) {
        return Ok(End::Absent);
    }
    if cols.iter().any(|&c| matches!(values[c], Value::UnchangedToast)) {
        return Ok(End::Unchanged);
    }
    let key = key_of(plan, cols, values)?;
    Ok(End::Node(nodes.id(*label, &key)))
}

fn edge_of(
    plan: &RelPlan,
    ep: &EdgePlan,
    values: &[Value],
    before: Option<&EdgeInput>,
    nodes: &mut dyn Nodes,
) -> Result<Option<EdgeInput>, RowError> {
    let toasted = |cols: &[usize]| {
        let c = cols[0];
        RowError::ToastedKey {
            table: plan.rel.qualified_name(),
            column: plan.rel.columns[c].name.clone(),
        }
    };
    let source = match endpoint(plan, &ep.source, values, nodes)? {
        End::Node(n) => n,
        End::Absent => return Ok(None),
        End::Unchanged => before.map(|b| b.source).ok_or_else(|| toasted(&ep.source.1))?,
    };
    let target = match endpoint(plan, &ep.target, values, nodes)? {
        End::Node(n) => n,
        End::Absent => return Ok(None),
        End::Unchanged => before.map(|b| b.target).ok_or_else(|| toasted(&ep.target.1))?,
    };
    let weight = match ep.weight {
        Some(c) if matches!(values[c], Value::UnchangedToast) => before.map_or(1.0, |b| b.weight),
        Some(c) => rows::weight(&values[c]).unwrap_or(1.0),
        None => 1.0,
    };
    Ok(Some(EdgeInput {
        source,
        target,
        label: ep.label,
        weight,
    }))
}

/// Builds the first graph from copied rows (the initial copy): node ids are handed out as rows
/// and endpoints appear, edges go straight into the CSR.
#[derive(Debug)]
pub struct BulkLoad {
    ids: HashMap<(NodeLabel, NodeKey), u32>,
    nodes: Vec<Option<NodeData>>,
    visible: Vec<bool>,
    edges: Vec<EdgeInput>,
    weighted: bool,
    index: RowIndex,
    rows: u64,
}

struct BulkIds<'a> {
    ids: &'a mut HashMap<(NodeLabel, NodeKey), u32>,
    nodes: &'a mut Vec<Option<NodeData>>,
    visible: &'a mut Vec<bool>,
}

impl Nodes for BulkIds<'_> {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        if let Some(&id) = self.ids.get(&(label, key.clone())) {
            return NodeId(id);
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Some(NodeData::bare(label, key.clone())));
        self.visible.push(false);
        self.ids.insert((label, key.clone()), id);
        NodeId(id)
    }
}

impl BulkLoad {
    /// An empty build for `mapper`'s mapping, filling `index` (from [`Mapper::index_for`] or
    /// [`Mapper::new_index`]).
    pub fn new(index: RowIndex) -> Self {
        BulkLoad {
            ids: HashMap::new(),
            nodes: Vec::new(),
            visible: Vec::new(),
            edges: Vec::new(),
            weighted: false,
            index,
            rows: 0,
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds one copied row of `rel`.
    pub fn insert(&mut self, mapper: &mut Mapper, rel: &Arc<Relation>, values: &[Value]) -> Result<(), MapError> {
        let Some(plan) = mapper.plan(rel)? else { return Ok(()) };
        self.rows += 1;
        let mut ids = BulkIds {
            ids: &mut self.ids,
            nodes: &mut self.nodes,
            visible: &mut self.visible,
        };
        let rk = row_key(&plan, values)?;
        if let Some(np) = &plan.node {
            let id = ids.id(np.label, &rk);
            self.nodes[id.index()] = Some(node_data(&plan, np, rk.clone(), values, None)?);
            self.visible[id.index()] = true;
        }
        if !plan.edges.is_empty() {
            for ep in &plan.edges {
                let mut ids = BulkIds {
                    ids: &mut self.ids,
                    nodes: &mut self.nodes,
                    visible: &mut self.visible,
                };
                if let Some(e) = edge_of(&plan, ep, values, None, &mut ids)? {
                    self.weighted |= e.weight != 1.0;
                    self.edges.push(e);
                    self.index.record(ep.mapping, &rk, e);
                }
            }
        }
        Ok(())
    }

    /// The graph at `lsn` and its row index.
    pub fn finish(self, lsn: u64, policy: CompactionPolicy) -> Result<(Graph, RowIndex), MapError> {
        let mut hidden = vec![0u64; self.visible.len().div_ceil(64)];
        for (i, v) in self.visible.iter().enumerate() {
            if !v {
                hidden[i >> 6] |= 1 << (i & 63);
            }
        }
        let g = Graph::bulk_with_hidden(self.nodes, hidden, &self.edges, self.weighted, lsn, policy)?;
        Ok((g, self.index))
    }
}
