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

use crate::change::RowChange;
use crate::committed::CommittedTxn;
use crate::config::MappingConfig;
use crate::rows::{self, RowError};
use graph::{
    ApplyError, BulkError, CompactionPolicy, EdgeInput, EdgeLabel, FilterId, Graph, GraphView, NodeData, NodeId,
    NodeKey, NodeLabel, PropValue, Topology,
};
use pgoutput::{DecodeError, Relation, TupleData, Value};
use std::collections::HashMap;
use std::sync::Arc;

mod ahead;
mod bulk;
mod ids;
mod plan;
mod values;

use crate::row_index::IndexedEdge;
pub use crate::row_index::{EdgeLookup, RowIndex};
pub use bulk::{BulkLoad, BulkPlan};
use ids::IdTable;
use plan::{EdgePlan, NodePlan, RelPlan};
#[allow(unused_imports)]
use values::*;

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
        "table {table}: the replica identity the graph finds this table's edges by changed (now {column:?}); \
         the graph is rebuilt in the background (the graph as applied keeps answering)"
    )]
    IdentityChanged {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// A key or endpoint column changed type class (int, uuid, text) mid-stream: the graph's
    /// keys would no longer match the rows'.
    #[error(
        "table {table}: column {column:?} changed type from {from} to {to}, so its rows no longer name the graph's nodes by \
         the same keys; the graph is rebuilt in the background with the new type (the graph as applied keeps answering)"
    )]
    KeyTypeChanged {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// Its type's name before.
        from: &'static str,
        /// Its type's name now.
        to: &'static str,
    },
    /// A mapped table was renamed (or moved to another schema).
    #[error(
        "table {old} is now {new} (renamed or moved to another schema), so its changes no longer match the mapping; \
         fix: write table = \"{new}\" in its entries and reload the mapping (graphsync reload; the graph is rebuilt in \
         the background)"
    )]
    TableRenamed {
        /// The mapped name.
        old: String,
        /// Its name now.
        new: String,
    },
    /// A mapped table was dropped and created again: the graph holds the old one's rows.
    #[error(
        "table {table} was dropped and created again (another OID), so the graph holds rows of the old table; \
         the graph is rebuilt in the background (the graph as applied keeps answering)"
    )]
    TableRecreated {
        /// `schema.table`.
        table: String,
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

/// Where the mapper gets node ids from: a transaction on the live graph, or the bulk build.
trait Nodes {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId;
}

impl Nodes for graph::Txn<'_> {
    fn id(&mut self, label: NodeLabel, key: &NodeKey) -> NodeId {
        self.node_id(label, key)
    }
}

/// What [`Mapper::apply_logged`] applied: the published view and what the change log keeps.
#[derive(Debug)]
pub struct Applied {
    /// The published view.
    pub view: Arc<GraphView>,
    /// The node count before the batch (the first new node's id).
    pub node_count_before: u32,
    /// The graph mutations, in order.
    pub mutations: Vec<graph::Mutation>,
    /// The row index changes, in order.
    pub index_ops: Vec<crate::row_index::IndexOp>,
    /// Each transaction's changes to the visible subgraphs (for the change feed), in order.
    pub changes: Vec<graph::diff::Scoped>,
    /// Per transaction, the mutation, index-change and subgraph-change counts after it
    /// (cumulative).
    pub ends: Vec<(usize, usize, usize)>,
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
    /// Per table, the type class of each key and endpoint column as first seen (a change is a
    /// [`MapError::KeyTypeChanged`]).
    key_classes: HashMap<String, Vec<(String, &'static str)>>,
    /// Mapped tables by OID (pgoutput's relation id), to notice one renamed.
    table_oids: HashMap<u32, String>,
    /// Per edge table, its replica identity as first seen (its columns' types, sorted: the
    /// copy's relation lists columns in another order than the stream's): the row index is
    /// keyed by it.
    identities: HashMap<String, Vec<u32>>,
    /// Columns an online reload renamed, (table, new name) → old name: changes committed
    /// before the `ALTER TABLE … RENAME COLUMN` still arrive under the old name.
    renamed: HashMap<(String, String), String>,
    /// The look-ahead's buffers, kept between batches.
    staged: ahead::Staged,
}

/// The key of one visible node of each of the first `labels` labels (`None` for a label with
/// none): what the graph's keys of that label look like.
pub fn first_keys(view: &GraphView, labels: usize) -> Vec<Option<NodeKey>> {
    let mut out: Vec<Option<NodeKey>> = vec![None; labels];
    let mut left = labels;
    for id in 0..view.node_count() {
        if left == 0 {
            break;
        }
        let n = NodeId(id);
        if let Some(d) = view.node(n).filter(|_| view.is_visible(n)) {
            let l = d.label.0 as usize;
            if l < labels && out[l].is_none() {
                out[l] = Some(d.key.clone());
                left -= 1;
            }
        }
    }
    out
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
                if !filter_names.iter().any(|x| x == f.name()) {
                    filter_names.push(f.name().to_string());
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
            staged: Default::default(),
            key_classes: HashMap::new(),
            table_oids: HashMap::new(),
            identities: HashMap::new(),
            renamed: HashMap::new(),
        }
    }

    /// This mapper, reading each `(table, old, new)` column under its old name too, in
    /// relations that lack the new one (changes from before the rename).
    pub fn with_renamed(mut self, renamed: impl IntoIterator<Item = (String, String, String)>) -> Self {
        for (table, old, new) in renamed {
            self.renamed.insert((table, new), old);
        }
        self
    }

    /// This mapper, knowing the key and endpoint column type classes `other` has seen (a
    /// reload keeps knowing what the graph's keys are).
    pub fn inheriting(mut self, other: &Mapper) -> Self {
        self.key_classes = other.key_classes.clone();
        self.renamed = other.renamed.clone();
        self
    }

    /// Learns the OIDs of the mapped tables (from the catalog), so a mapped table renamed
    /// later is noticed even before any of its rows changed under the old name.
    /// A mapped name now under another OID (dropped and created again while nothing watched)
    /// is [`MapError::TableRecreated`]: the graph holds the old table's rows.
    pub fn know_table_oids(&mut self, tables: impl IntoIterator<Item = (u32, String)>) -> Result<(), MapError> {
        for (oid, name) in tables {
            if !self.tables.contains_key(&name) {
                continue;
            }
            if self.table_oids.get(&oid) != Some(&name) {
                if self.table_oids.values().any(|n| *n == name) {
                    return Err(MapError::TableRecreated { table: name });
                }
                self.table_oids.insert(oid, name);
            }
        }
        Ok(())
    }

    /// Learns the type class of every key and endpoint column from the keys `view` holds (one
    /// node per label), so a column whose type changed while nothing ran is still noticed.
    pub fn seed_key_classes(&mut self, view: &GraphView) {
        fn classes(k: &NodeKey, out: &mut Vec<&'static str>) {
            match k {
                NodeKey::Int(_) => out.push("integer"),
                NodeKey::Uuid(_) => out.push("uuid"),
                NodeKey::Text(_) => out.push("text"),
                NodeKey::Composite(parts) => parts.iter().for_each(|p| classes(p, out)),
            }
        }
        let kinds: Vec<Option<Vec<&'static str>>> = first_keys(view, self.node_labels.len())
            .iter()
            .map(|k| {
                k.as_ref().map(|k| {
                    let mut c = Vec::new();
                    classes(k, &mut c);
                    c
                })
            })
            .collect();
        let label = |name: &str| self.node_labels.iter().position(|l| l == name);
        'tables: for (table, (node, edges)) in &self.tables {
            let mut out = Vec::new();
            if let Some(i) = node {
                let Some(k) = &kinds[*i] else { continue };
                let names = self.config.nodes[*i].key.names();
                out.extend(names.into_iter().map(str::to_string).zip(k.iter().copied()));
            }
            for &e in edges {
                let em = &self.config.edges[e];
                for end in [&em.source, &em.target] {
                    let Some(k) = label(&end.node).and_then(|l| kinds[l].as_ref()) else {
                        continue 'tables;
                    };
                    out.extend(
                        end.column
                            .names()
                            .into_iter()
                            .map(str::to_string)
                            .zip(k.iter().copied()),
                    );
                }
            }
            self.key_classes.insert(table.clone(), out);
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

    /// [`Mapper::index_for`] with each table's replica identity as the catalog describes it.
    pub fn index_for_tables(&self, tables: &[crate::catalog::TableInfo]) -> RowIndex {
        self.index_for(|t| {
            tables
                .iter()
                .find(|x| x.qualified == t)
                .map(|x| x.identity_columns.clone())
        })
    }

    /// Whether `qualified` (`schema.table`) is mapped.
    pub fn is_mapped(&self, qualified: &str) -> bool {
        self.tables.contains_key(qualified)
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
        self.apply_logged(graph, index, txns).map(|a| a.view)
    }

    /// As [`Mapper::apply_many`], also returning what the change log keeps: the graph
    /// mutations and row index changes, and where each transaction's end in both.
    pub fn apply_logged(
        &mut self,
        graph: &mut Graph,
        index: &mut RowIndex,
        txns: &[CommittedTxn],
    ) -> Result<Applied, MapError> {
        let Some(last) = txns.last() else {
            return Ok(Applied {
                view: graph.view(),
                node_count_before: graph.view().node_count(),
                mutations: Vec::new(),
                index_ops: Vec::new(),
                changes: Vec::new(),
                ends: Vec::new(),
            });
        };
        let node_count_before = graph.view().node_count();
        let mut t = graph.begin(last.end_lsn.0)?;
        index.start_journal();
        t.start_diff();
        let mut ends = Vec::with_capacity(txns.len());
        let mut changes = Vec::new();
        let result = self.apply_txns(&mut t, index, txns, &mut |t, index| {
            changes.extend(t.take_diff());
            ends.push((t.mutations().len(), index.journal().len(), changes.len()));
        });
        // A transaction that fails leaves nothing behind: the graph's is dropped unpublished,
        // the row index is rolled back (the replica can then pause before it and go on).
        if let Err(e) = result {
            index.rollback();
            return Err(e);
        }
        let (view, mutations) = match t.commit_logged() {
            Ok(done) => done,
            Err(e) => {
                index.rollback();
                return Err(e.into());
            }
        };
        let index_ops = index.take_journal();
        Ok(Applied {
            view,
            node_count_before,
            mutations,
            index_ops,
            changes,
            ends,
        })
    }

    /// Applies one committed transaction to `graph` as one published view at `txn.end_lsn`,
    /// keeping `index` in step. On error nothing is published and `index` is as before.
    pub fn apply(
        &mut self,
        graph: &mut Graph,
        index: &mut RowIndex,
        txn: &CommittedTxn,
    ) -> Result<Arc<GraphView>, MapError> {
        self.apply_many(graph, index, std::slice::from_ref(txn))
    }

    /// Applies one inserted row of `rel` given as typed values (a row changes stream, or a
    /// table copied into a graph that already holds others).
    pub fn insert_values(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        rel: &Arc<Relation>,
        newv: &[Value],
    ) -> Result<(), MapError> {
        let Some(plan) = self.plan(rel)? else { return Ok(()) };
        // A node table's row identity is its node key: computed once.
        let rk = row_key(&plan, newv)?;
        if let Some(np) = &plan.node {
            t.upsert_node(node_data(&plan, np, rk.clone(), newv, None)?);
        }
        for ep in &plan.edges {
            if let Some(e) = edge_of(&plan, ep, newv, None, t)? {
                t.add_edge(e)?;
                index.record(ep.mapping, &rk, e);
            }
        }
        Ok(())
    }

    /// Upserts the node one row of a node table makes (its edges untouched): a node table
    /// copied again for fields newly mapped.
    pub fn upsert_node_values(
        &mut self,
        t: &mut graph::Txn<'_>,
        rel: &Arc<Relation>,
        values: &[Value],
    ) -> Result<(), MapError> {
        let Some(plan) = self.plan(rel)? else { return Ok(()) };
        if let Some(np) = &plan.node {
            let rk = row_key(&plan, values)?;
            t.upsert_node(node_data(&plan, np, rk, values, None)?);
        }
        Ok(())
    }

    /// Applies one change; `decoded`: the values it is applied with (an insert's new row, a
    /// delete's old one) if decoded already.
    fn apply_change(
        &mut self,
        t: &mut graph::Txn<'_>,
        index: &mut RowIndex,
        change: &RowChange,
        decoded: Option<Vec<Value>>,
    ) -> Result<(), MapError> {
        match change {
            RowChange::Insert { rel, new } => {
                let newv = match decoded {
                    Some(v) => v,
                    None => typed(rel, new, "Insert")?,
                };
                self.insert_values(t, index, rel, &newv)?;
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
                let oldv = match decoded {
                    Some(v) => v,
                    None => typed(rel, old, "Delete")?,
                };
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
                            let drained: Vec<IndexedEdge> = index.drain_mapping(ep.mapping);
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
