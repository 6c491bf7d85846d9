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

/// The tables `new` maps that `old` does not, when that is all that differs: `new` is `old`
/// with entries appended (so labels keep their numbers) for tables `old` does not map. Such a
/// change needs only those tables copied.
pub fn tables_added(old: &MappingConfig, new: &MappingConfig) -> Option<Vec<String>> {
    let kept = new.nodes.get(..old.nodes.len())? == old.nodes.as_slice()
        && new.edges.get(..old.edges.len())? == old.edges.as_slice();
    let before = old.tables();
    let added: Vec<&str> = new.nodes[old.nodes.len()..]
        .iter()
        .map(|n| n.table.as_str())
        .chain(new.edges[old.edges.len()..].iter().map(|e| e.table.as_str()))
        .collect();
    if !kept || added.is_empty() || added.iter().any(|t| before.contains(t)) {
        return None;
    }
    let mut out: Vec<String> = added.into_iter().map(str::to_string).collect();
    out.sort();
    out.dedup();
    Some(out)
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
        assert_eq!(tables_added(&old, &new), Some(vec!["public.likes".to_string()]));
        // An edge added on a table already mapped needs that table again: not just an addition.
        let fk = "\n[[edges]]\ntable = \"public.posts\"\nlabel = \"X\"\nsource = { column = \"id\", node = \"Post\" }\ntarget = { column = \"e\", node = \"User\" }\n";
        assert_eq!(tables_added(&old, &parse(&format!("{SAMPLE}{fk}"))), None);
        assert_eq!(tables_added(&old, &old), None);
        assert_eq!(tables_added(&new, &old), None);
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
