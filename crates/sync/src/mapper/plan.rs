//! A relation's plan: which of its columns (by position in the relation as last sent) feed
//! each mapped node's key, tenant, filters and properties and each edge's endpoints and
//! weight, checked against what the mapper saw before (replica identity, key type classes).
//!
//! Not for reading values out of rows (`values`) or applying them.

#[allow(unused_imports)]
use super::*;

#[derive(Debug)]
pub(super) struct NodePlan {
    pub(super) label: NodeLabel,
    pub(super) key: Vec<usize>,
    pub(super) tenant: Option<usize>,
    pub(super) filters: Vec<(FilterId, usize)>,
    pub(super) props: Vec<(Arc<str>, usize)>,
}

#[derive(Debug)]
pub(super) struct EdgePlan {
    pub(super) mapping: usize,
    pub(super) label: EdgeLabel,
    pub(super) source: (NodeLabel, Vec<usize>),
    pub(super) target: (NodeLabel, Vec<usize>),
    pub(super) weight: Option<usize>,
}

/// How one relation's rows map, resolved against its current column list.
#[derive(Debug)]
pub(super) struct RelPlan {
    pub(super) rel: Arc<Relation>,
    pub(super) node: Option<NodePlan>,
    pub(super) edges: Vec<EdgePlan>,
    /// Row identity columns (edge index key) when the table is not a node table.
    pub(super) identity: Vec<usize>,
}

/// The class of a key column's type: what kind of [`NodeKey`] its values become.
pub(super) fn key_class(type_oid: u32) -> &'static str {
    match type_oid {
        20 | 21 | 23 => "integer",
        2950 => "uuid",
        _ => "text",
    }
}

impl Mapper {
    /// The plan made already for this relation, if any; changes nothing (planning records
    /// a table's OID, identity and key types as first seen, so only applying plans).
    pub(super) fn cached_plan(&self, rel: &Arc<Relation>) -> Option<Arc<RelPlan>> {
        let p = self.plans.get(&rel.id)?;
        (Arc::ptr_eq(&p.rel, rel) || *p.rel == **rel).then(|| p.clone())
    }

    pub(super) fn plan(&mut self, rel: &Arc<Relation>) -> Result<Option<Arc<RelPlan>>, MapError> {
        if let Some(p) = self.cached_plan(rel) {
            return Ok(Some(p));
        }
        let name = rel.qualified_name();
        let Some((node, edges)) = self.tables.get(&name) else {
            // A mapped table under another name (ALTER TABLE RENAME or SET SCHEMA): its
            // changes would be dropped silently.
            if let Some(old) = self.table_oids.get(&rel.id).filter(|old| **old != name) {
                return Err(MapError::TableRenamed {
                    old: old.clone(),
                    new: name,
                });
            }
            return Ok(None);
        };
        self.table_oids.insert(rel.id, name.clone());
        let column = |c: &str| column(rel, &name, c, &self.renamed);
        let cols = |names: Vec<&str>| -> Result<Vec<usize>, RowError> { names.into_iter().map(column).collect() };
        let node = match node {
            Some(i) => {
                let n = &self.config.nodes[*i];
                Some(NodePlan {
                    label: NodeLabel(*i as u16),
                    key: cols(n.key.names())?,
                    tenant: n.tenant.as_deref().map(column).transpose()?,
                    filters: n
                        .filters
                        .iter()
                        .map(|f| {
                            let id = self.filter_names.iter().position(|x| x == f.name()).unwrap_or(0);
                            Ok((FilterId(id as u16), column(f.column())?))
                        })
                        .collect::<Result<_, RowError>>()?,
                    props: n
                        .properties
                        .iter()
                        .map(|p| Ok((Arc::from(p.name()), column(p.column())?)))
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
                weight: e.weight.as_deref().map(column).transpose()?,
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
        // An edge table's rows are found by their replica identity: it must stay the same
        // columns (a rename keeps them; REPLICA IDENTITY FULL or a key of other types does
        // not, and rows would no longer find their edges).
        if !plans.is_empty() {
            let mut ident: Vec<u32> = identity.iter().map(|&i| rel.columns[i].type_oid).collect();
            ident.sort_unstable();
            match self.identities.get(&name) {
                Some(before) if *before != ident => {
                    return Err(MapError::IdentityChanged {
                        table: name,
                        column: rel
                            .columns
                            .iter()
                            .filter(|c| c.is_key)
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                Some(_) => {}
                None => {
                    self.identities.insert(name.clone(), ident);
                }
            }
        }
        // Key and endpoint columns keep their type class.
        let mut keys: Vec<usize> = node.iter().flat_map(|n| n.key.iter().copied()).collect();
        for p in &plans {
            keys.extend(p.source.1.iter().chain(&p.target.1));
        }
        let classes: Vec<(String, &'static str)> = keys
            .iter()
            .map(|&i| (rel.columns[i].name.clone(), key_class(rel.columns[i].type_oid)))
            .collect();
        match self.key_classes.get(&name) {
            Some(before) if before.len() == classes.len() => {
                if let Some(((column, from), (_, to))) = before.iter().zip(&classes).find(|(a, b)| a.1 != b.1) {
                    return Err(MapError::KeyTypeChanged {
                        table: name,
                        column: column.clone(),
                        from,
                        to,
                    });
                }
            }
            _ => {
                self.key_classes.insert(name.clone(), classes);
            }
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
}

/// Position of column `c` of `table` in `rel`; a column an online reload renamed also under its
/// earlier names (`renamed`: (table, new) → old), for relations sent for changes from before
/// the rename.
fn column(
    rel: &Relation,
    table: &str,
    c: &str,
    renamed: &HashMap<(String, String), String>,
) -> Result<usize, RowError> {
    let first = rows::column_index(rel, c);
    let mut at = c;
    // Bounded: a chain of renames, each name at most once.
    for _ in 0..renamed.len() {
        if first.is_ok() {
            break;
        }
        let Some(old) = renamed.get(&(table.to_string(), at.to_string())) else {
            break;
        };
        if let Ok(i) = rows::column_index(rel, old) {
            return Ok(i);
        }
        at = old;
    }
    first
}
