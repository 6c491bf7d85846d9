//! What changed between two mappings, and what applying the change costs.
//!
//! A change is *compatible* when the graph it describes is the same — same tables, labels, key
//! arity, tenant and weight presence, filter and property names, edge endpoints — and only
//! the columns it reads differ (a column renamed in the table, read under its new name). Such a
//! change is applied online: the mapper is swapped between two transactions, nothing is
//! copied, snapshots and the change log stay valid ([`MappingConfig::mapping_hash`] is equal).
//! Anything else is *incompatible* for now and reported with what differs and the fix.
//!
//! Pure: compares two parsed configs; checking the new one against the catalog is the
//! replicator's job.

use crate::config::{Columns, EdgeMapping, Field, MappingConfig, NodeMapping};

/// What a reload would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingChange {
    /// Nothing that shapes the graph or what it reads (the source settings may differ).
    Same,
    /// Only the columns read changed: applied online. Each entry says what changed.
    Compatible(Vec<String>),
    /// The graph itself would change: each entry says what and how to apply it.
    Incompatible(Vec<String>),
}

/// Classifies the change from `old` to `new`.
pub fn classify(old: &MappingConfig, new: &MappingConfig) -> MappingChange {
    if old.nodes == new.nodes && old.edges == new.edges {
        return MappingChange::Same;
    }
    if old.mapping_hash() == new.mapping_hash() {
        let mut changes = Vec::new();
        for (a, b) in old.nodes.iter().zip(&new.nodes) {
            node_columns(a, b, &mut changes);
        }
        for (a, b) in old.edges.iter().zip(&new.edges) {
            edge_columns(a, b, &mut changes);
        }
        return MappingChange::Compatible(changes);
    }
    MappingChange::Incompatible(incompatible(old, new))
}

/// Every column the new mapping reads in place of another, as (table, old column, new column):
/// what a compatible change must prove is the same column renamed.
pub fn changed_columns(old: &MappingConfig, new: &MappingConfig) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut pair = |table: &str, a: &str, b: &str| {
        if a != b {
            out.push((table.to_string(), a.to_string(), b.to_string()));
        }
    };
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        for (x, y) in a.key.names().into_iter().zip(b.key.names()) {
            pair(&b.table, x, y);
        }
        if let (Some(x), Some(y)) = (&a.tenant, &b.tenant) {
            pair(&b.table, x, y);
        }
        for (x, y) in a
            .filters
            .iter()
            .zip(&b.filters)
            .chain(a.properties.iter().zip(&b.properties))
        {
            pair(&b.table, x.column(), y.column());
        }
    }
    for (a, b) in old.edges.iter().zip(&new.edges) {
        for (x, y) in [
            (&a.source.column, &b.source.column),
            (&a.target.column, &b.target.column),
        ] {
            for (c, d) in x.names().into_iter().zip(y.names()) {
                pair(&b.table, c, d);
            }
        }
        if let (Some(x), Some(y)) = (&a.weight, &b.weight) {
            pair(&b.table, x, y);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Where a node field's values come from once a change is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The field the graph holds under this (old) name: rewritten in memory, nothing copied.
    Held(String),
    /// Read from the table (a field newly mapped): the table's node rows are copied again.
    Copied,
}

/// How the nodes of one `[[nodes]]` entry change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReshape {
    /// The entry's position (its label's number).
    pub index: usize,
    /// Its table.
    pub table: String,
    /// Filters by their new name, each from a held filter or copied.
    pub filters: Vec<(String, Source)>,
    /// Properties by their new name, each from a held property or copied.
    pub properties: Vec<(String, Source)>,
    /// The tenant (`None`: the new mapping has none).
    pub tenant: Option<Source>,
}

impl NodeReshape {
    /// Whether any value must be read from the table.
    pub fn copies(&self) -> bool {
        self.filters
            .iter()
            .chain(&self.properties)
            .any(|(_, s)| *s == Source::Copied)
            || self.tenant == Some(Source::Copied)
    }
}

/// A change the graph in force can be brought to without copying every table: labels keep
/// their numbers (entries kept in place, new ones appended), edges are read the same way, and
/// what differs is node fields (rewritten in memory or copied for one table) and tables newly
/// mapped (copied alone).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reshape {
    /// Tables newly mapped (appended entries), copied alone.
    pub new_tables: Vec<String>,
    /// Node entries whose fields change.
    pub nodes: Vec<NodeReshape>,
}

impl Reshape {
    /// Tables read from the source.
    pub fn copied_tables(&self) -> usize {
        self.new_tables.len() + self.nodes.iter().filter(|n| n.copies()).count()
    }
}

fn filter_names(c: &MappingConfig) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for n in &c.nodes {
        for f in &n.filters {
            if !out.contains(&f.name()) {
                out.push(f.name());
            }
        }
    }
    out
}

/// The [`Reshape`] from `old` to `new` (two different mappings), when one exists (else a full
/// rebuild is needed).
pub fn reshape(old: &MappingConfig, new: &MappingConfig) -> Option<Reshape> {
    if new.nodes.len() < old.nodes.len() || new.edges.len() < old.edges.len() {
        return None;
    }
    let node_index = |c: &MappingConfig, label: &str| c.nodes.iter().position(|n| n.label == label);
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        if a.table != b.table || a.key != b.key {
            return None;
        }
    }
    for (j, (a, b)) in old.edges.iter().zip(&new.edges).enumerate() {
        let same_ends = node_index(old, &a.source.node) == node_index(new, &b.source.node)
            && node_index(old, &a.target.node) == node_index(new, &b.target.node);
        if a.table != b.table
            || a.source.column != b.source.column
            || a.target.column != b.target.column
            || a.weight != b.weight
            || !same_ends
        {
            return None;
        }
        // Edge labels keep their numbers: the same labels are shared as before.
        for (k, c) in old.edges.iter().enumerate().take(j) {
            if (c.label == a.label) != (new.edges[k].label == b.label) {
                return None;
            }
        }
    }
    let before = old.tables();
    let new_tables: Vec<String> = new.nodes[old.nodes.len()..]
        .iter()
        .map(|n| n.table.as_str())
        .chain(new.edges[old.edges.len()..].iter().map(|e| e.table.as_str()))
        .map(str::to_string)
        .collect();
    if new_tables.iter().any(|t| before.contains(&t.as_str())) {
        return None;
    }
    let renumbered = {
        let (a, b) = (filter_names(old), filter_names(new));
        a.iter().zip(&b).any(|(x, y)| x != y) || b.len() < a.len()
    };
    let source = |held: &[crate::config::Field], f: &crate::config::Field| match held
        .iter()
        .find(|g| g.column() == f.column())
    {
        Some(g) => Source::Held(g.name().to_string()),
        None => Source::Copied,
    };
    let mut nodes = Vec::new();
    for (i, (a, b)) in old.nodes.iter().zip(&new.nodes).enumerate() {
        if a.filters == b.filters
            && a.properties == b.properties
            && a.tenant == b.tenant
            && (!renumbered || b.filters.is_empty())
        {
            continue;
        }
        nodes.push(NodeReshape {
            index: i,
            table: b.table.clone(),
            filters: b
                .filters
                .iter()
                .map(|f| (f.name().to_string(), source(&a.filters, f)))
                .collect(),
            properties: b
                .properties
                .iter()
                .map(|p| (p.name().to_string(), source(&a.properties, p)))
                .collect(),
            tenant: b.tenant.as_ref().map(|t| {
                if a.tenant.as_ref() == Some(t) {
                    Source::Held(String::new())
                } else {
                    Source::Copied
                }
            }),
        });
    }
    let mut new_tables = new_tables;
    new_tables.sort();
    new_tables.dedup();
    // Nothing to copy or rewrite (label names only): a new generation of the same data.
    Some(Reshape { new_tables, nodes })
}

fn cols(c: &Columns) -> String {
    c.names().join(", ")
}

fn node_columns(a: &NodeMapping, b: &NodeMapping, out: &mut Vec<String>) {
    let t = &b.table;
    if a.key != b.key {
        out.push(format!("{t}: key column(s) {} → {}", cols(&a.key), cols(&b.key)));
    }
    if a.tenant != b.tenant {
        out.push(format!(
            "{t}: tenant column {} → {}",
            a.tenant.as_deref().unwrap_or("-"),
            b.tenant.as_deref().unwrap_or("-")
        ));
    }
    for (what, x, y) in [
        ("filter", &a.filters, &b.filters),
        ("property", &a.properties, &b.properties),
    ] {
        for (f, g) in x.iter().zip(y) {
            if f.column() != g.column() {
                out.push(format!(
                    "{t}: {what} {:?} now reads column {:?} (was {:?})",
                    g.name(),
                    g.column(),
                    f.column()
                ));
            }
        }
    }
}

fn edge_columns(a: &EdgeMapping, b: &EdgeMapping, out: &mut Vec<String>) {
    let t = format!("{} ({})", b.table, b.label);
    for (side, x, y) in [("source", &a.source, &b.source), ("target", &a.target, &b.target)] {
        if x.column != y.column {
            out.push(format!(
                "{t}: {side} column(s) {} → {}",
                cols(&x.column),
                cols(&y.column)
            ));
        }
    }
    if a.weight != b.weight {
        out.push(format!(
            "{t}: weight column {} → {}",
            a.weight.as_deref().unwrap_or("-"),
            b.weight.as_deref().unwrap_or("-")
        ));
    }
}

/// What differs in the graph itself, entry by entry (matched by table), each with its fix.
fn incompatible(old: &MappingConfig, new: &MappingConfig) -> Vec<String> {
    const REBUILD: &str = "not applied online yet: restart with --rebuild";
    let mut out = Vec::new();
    let names = |f: &[Field]| f.iter().map(Field::name).collect::<Vec<_>>().join(", ");
    for b in &new.nodes {
        match old.nodes.iter().find(|a| a.table == b.table) {
            None => out.push(format!(
                "{}: newly mapped as {} nodes (its rows must be copied; {REBUILD})",
                b.table, b.label
            )),
            Some(a) => {
                let t = &b.table;
                if a.label != b.label {
                    out.push(format!("{t}: label {} → {} ({REBUILD})", a.label, b.label));
                }
                if a.key.names().len() != b.key.names().len() {
                    out.push(format!("{t}: the key has other columns ({REBUILD})"));
                }
                if a.tenant.is_some() != b.tenant.is_some() {
                    out.push(format!("{t}: tenant added or removed ({REBUILD})"));
                }
                for (what, x, y) in [
                    ("filters", &a.filters, &b.filters),
                    ("properties", &a.properties, &b.properties),
                ] {
                    if names(x) != names(y) {
                        out.push(format!(
                            "{t}: {what} [{}] → [{}]; to read a renamed column under the old name, write \
                             {{ column = \"new_name\", name = \"old_name\" }} (otherwise {REBUILD})",
                            names(x),
                            names(y)
                        ));
                    }
                }
            }
        }
    }
    for a in &old.nodes {
        if !new.nodes.iter().any(|b| b.table == a.table) {
            out.push(format!(
                "{}: no longer mapped as {} nodes ({REBUILD})",
                a.table, a.label
            ));
        }
    }
    let same_edge = |a: &EdgeMapping, b: &EdgeMapping| a.table == b.table && a.label == b.label;
    for b in &new.edges {
        match old.edges.iter().find(|a| same_edge(a, b)) {
            None => out.push(format!(
                "{}: newly mapped as {} edges (its rows must be copied; {REBUILD})",
                b.table, b.label
            )),
            Some(a) => {
                if a.source.node != b.source.node || a.target.node != b.target.node {
                    out.push(format!(
                        "{} ({}): endpoints now point at other labels ({REBUILD})",
                        b.table, b.label
                    ));
                }
                if a.weight.is_some() != b.weight.is_some() {
                    out.push(format!(
                        "{} ({}): weight added or removed ({REBUILD})",
                        b.table, b.label
                    ));
                }
            }
        }
    }
    for a in &old.edges {
        if !new.edges.iter().any(|b| same_edge(a, b)) {
            out.push(format!(
                "{}: no longer mapped as {} edges ({REBUILD})",
                a.table, a.label
            ));
        }
    }
    if out.is_empty() {
        out.push(format!(
            "the order of [[nodes]], [[edges]], filters or properties changed ({REBUILD}, or restore the order)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &str = include_str!("../../../fixtures/configs/social.toml");

    fn parse(text: &str) -> MappingConfig {
        MappingConfig::parse(text, Path::new("graphsync.toml")).unwrap()
    }

    #[test]
    fn a_renamed_column_read_under_the_old_name_is_compatible() {
        let old = parse(SAMPLE);
        assert_eq!(classify(&old, &old.clone()), MappingChange::Same);
        let slot = parse(&SAMPLE.replace("slot = \"graphsync\"", "slot = \"other\""));
        assert_eq!(classify(&old, &slot), MappingChange::Same);
        let renamed = parse(&SAMPLE.replace(
            "properties = [\"name\"]",
            "properties = [{ column = \"full_name\", name = \"name\" }]",
        ));
        match classify(&old, &renamed) {
            MappingChange::Compatible(c) => {
                assert_eq!(c.len(), 1, "{c:?}");
                assert!(c[0].contains("\"full_name\"") && c[0].contains("public.users"), "{c:?}");
            }
            other => panic!("{other:?}"),
        }
        let tenant = parse(&SAMPLE.replace("tenant = \"org_id\"", "tenant = \"organization_id\""));
        assert!(matches!(classify(&old, &tenant), MappingChange::Compatible(_)));
        let endpoint = parse(&SAMPLE.replace("column = \"follower_id\"", "column = \"from_id\""));
        assert!(matches!(classify(&old, &endpoint), MappingChange::Compatible(_)));
    }

    #[test]
    fn changed_columns_pairs_old_and_new_names() {
        let old = parse(SAMPLE);
        let new = parse(
            &SAMPLE
                .replace(
                    "properties = [\"name\"]",
                    "properties = [{ column = \"full_name\", name = \"name\" }]",
                )
                .replace("column = \"follower_id\"", "column = \"from_id\""),
        );
        assert_eq!(
            changed_columns(&old, &new),
            [
                (
                    "public.follows".to_string(),
                    "follower_id".to_string(),
                    "from_id".to_string()
                ),
                ("public.users".to_string(), "name".to_string(), "full_name".to_string()),
            ]
        );
        assert!(changed_columns(&old, &old).is_empty());
        assert!(crate::catalog::is_generation_slot("gs", "gs_g12"));
        assert!(crate::catalog::is_generation_slot("gs", "gs"));
        assert!(!crate::catalog::is_generation_slot("gs", "gs_green"));
        assert!(!crate::catalog::is_generation_slot("gs", "gs_g"));
    }

    #[test]
    fn appended_tables_are_told_apart() {
        let old = parse(SAMPLE);
        let likes = "\n[[edges]]\ntable = \"public.likes\"\nlabel = \"LIKES\"\nsource = { column = \"u\", node = \"User\" }\ntarget = { column = \"p\", node = \"Post\" }\n";
        let new = parse(&format!("{SAMPLE}{likes}"));
        let r = reshape(&old, &new).expect("a reshape");
        assert_eq!((r.new_tables, r.nodes), (vec!["public.likes".to_string()], vec![]));
        // An edge added on a table already mapped needs that table again: not just an addition.
        let fk = "\n[[edges]]\ntable = \"public.posts\"\nlabel = \"X\"\nsource = { column = \"id\", node = \"Post\" }\ntarget = { column = \"e\", node = \"User\" }\n";
        assert_eq!(reshape(&old, &parse(&format!("{SAMPLE}{fk}"))), None);
        assert_eq!(reshape(&new, &old), None);
    }

    #[test]
    fn node_field_changes_reshape_without_copying_what_is_held() {
        let old = parse(SAMPLE);
        let renamed = parse(&SAMPLE.replace(
            "properties = [\"name\"]",
            "properties = [{ column = \"name\", name = \"display_name\" }, \"bio\"]",
        ));
        let r = reshape(&old, &renamed).expect("a reshape");
        assert!(r.new_tables.is_empty());
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(
            r.nodes[0].properties,
            [
                ("display_name".to_string(), Source::Held("name".into())),
                ("bio".to_string(), Source::Copied)
            ]
        );
        assert_eq!(r.copied_tables(), 1);
        let label = parse(
            &SAMPLE
                .replace("label = \"Post\"", "label = \"Article\"")
                .replace("node = \"Post\"", "node = \"Article\""),
        );
        assert_eq!(
            reshape(&old, &label),
            Some(Reshape::default()),
            "label names only: nothing to rewrite or copy"
        );
        let key = parse(&SAMPLE.replace("key = \"id\"\nlabel = \"User\"", "key = \"uid\"\nlabel = \"User\""));
        assert_eq!(reshape(&old, &key), None);
    }

    #[test]
    fn a_changed_graph_is_incompatible_and_says_why() {
        let old = parse(SAMPLE);
        let property = parse(&SAMPLE.replace("properties = [\"name\"]", "properties = [\"full_name\"]"));
        match classify(&old, &property) {
            MappingChange::Incompatible(why) => {
                assert!(
                    why.iter()
                        .any(|w| w.contains("[name] → [full_name]") && w.contains("column =")),
                    "{why:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        let label = parse(&SAMPLE.replace("label = \"FOLLOWS\"", "label = \"FOLLOWS_USER\""));
        match classify(&old, &label) {
            MappingChange::Incompatible(why) => assert!(why.iter().any(|w| w.contains("newly mapped")), "{why:?}"),
            other => panic!("{other:?}"),
        }
    }
}
