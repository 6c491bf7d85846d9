//! `graphsync init --discover --diff graph.toml`: what changed in the catalog since the mapping
//! was written, as a proposed mapping change.
//!
//! Compares the mapping with the catalog and with the draft [`crate::discover`] would write
//! today: mapped tables that no longer exist, mapped columns that are gone (with the table's
//! unmapped columns as rename candidates, and the `{ column, name }` form that keeps the
//! graph's names when exactly one fits), and tables or foreign keys the draft maps that the
//! mapping does not, as TOML entries to add. Lines start with `-` (remove), `~` (change) or `+`
//! (add); `#` lines explain. Not for applying anything: the operator edits the file and
//! reloads.

use crate::catalog::{literal, needed_columns, CatalogError};
use crate::config::{EdgeMapping, MappingConfig, NodeMapping};
use pgrepl::ReplicationClient;
use std::fmt::Write as _;
use std::path::Path;

/// The proposed change, and whether anything differs.
pub async fn diff(
    client: &mut ReplicationClient,
    mapping: &MappingConfig,
    schema: Option<&str>,
) -> Result<(String, bool), CatalogError> {
    let draft_text = crate::discover::discover(client, schema).await?;
    let draft = MappingConfig::parse(&draft_text, Path::new("(draft)")).ok();
    let mut out = String::new();
    let mut differs = false;
    for table in mapping.tables() {
        let (s, t) = table.split_once('.').unwrap_or(("public", table));
        let r = client
            .simple_query(&format!(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                literal(s),
                literal(t)
            ))
            .await?;
        let columns: Vec<(String, String)> = r
            .rows
            .into_iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect();
        if columns.is_empty() {
            differs = true;
            let labels: Vec<&str> = mapping
                .nodes
                .iter()
                .filter(|n| n.table == table)
                .map(|n| n.label.as_str())
                .chain(
                    mapping
                        .edges
                        .iter()
                        .filter(|e| e.table == table)
                        .map(|e| e.label.as_str()),
                )
                .collect();
            let _ = writeln!(
                out,
                "- {table}: the table no longer exists; remove its entries ({}) and edges pointing at its nodes",
                labels.join(", ")
            );
            continue;
        }
        let needed = needed_columns(mapping, table);
        let unmapped: Vec<&(String, String)> = columns.iter().filter(|(c, _)| !needed.contains(c)).collect();
        for c in needed.iter().filter(|c| !columns.iter().any(|(n, _)| n == *c)) {
            differs = true;
            let candidates: Vec<String> = unmapped.iter().map(|(n, t)| format!("{n} ({t})")).collect();
            let _ = writeln!(
                out,
                "~ {table}: mapped column {c:?} no longer exists; unmapped columns now: {}",
                if candidates.is_empty() {
                    "none".to_string()
                } else {
                    candidates.join(", ")
                }
            );
            if let [(only, _)] = unmapped.as_slice() {
                let _ = writeln!(
                    out,
                    "~   if {c:?} was renamed to {only:?}: read it as {{ column = {only:?}, name = {c:?} }} in properties or \
                     filters (the graph keeps its names), or write {only:?} for a key, tenant, endpoint or weight column"
                );
            }
        }
    }
    if let Some(d) = draft {
        for n in d
            .nodes
            .iter()
            .filter(|n| !mapping.nodes.iter().any(|m| m.table == n.table))
        {
            differs = true;
            let _ = writeln!(
                out,
                "+ {}: not mapped; the draft maps it as {} nodes:",
                n.table, n.label
            );
            node_toml(&mut out, n);
        }
        for e in d.edges.iter().filter(|e| {
            !mapping
                .edges
                .iter()
                .any(|m| m.table == e.table && m.source.column == e.source.column && m.target.column == e.target.column)
        }) {
            // Only edges between nodes the mapping (or a proposed addition) has.
            let known = |label: &str| {
                mapping.nodes.iter().any(|n| n.label == label) || d.nodes.iter().any(|n| n.label == label)
            };
            if !known(&e.source.node) || !known(&e.target.node) {
                continue;
            }
            differs = true;
            let _ = writeln!(
                out,
                "+ {}: a foreign key the mapping does not map; as {} edges:",
                e.table, e.label
            );
            edge_toml(&mut out, e, mapping, &d);
        }
    }
    if !differs {
        out.push_str("# the mapping matches the catalog: nothing to change\n");
    }
    Ok((out, differs))
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn node_toml(out: &mut String, n: &NodeMapping) {
    let _ = writeln!(out, "+ [[nodes]]\n+ table = {}", q(&n.table));
    let keys = n.key.names();
    if let [k] = keys.as_slice() {
        let _ = writeln!(out, "+ key = {}", q(k));
    } else {
        let _ = writeln!(
            out,
            "+ key = [{}]",
            keys.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(out, "+ label = {}", q(&n.label));
    if !n.properties.is_empty() {
        let props: Vec<String> = n.properties.iter().map(|p| q(p.column())).collect();
        let _ = writeln!(out, "+ properties = [{}]", props.join(", "));
    }
}

fn edge_toml(out: &mut String, e: &EdgeMapping, mapping: &MappingConfig, draft: &MappingConfig) {
    // The draft names labels after tables; the mapping may call the same tables otherwise.
    let label_of = |draft_label: &str| -> String {
        let table = draft
            .nodes
            .iter()
            .find(|n| n.label == draft_label)
            .map(|n| n.table.as_str());
        table
            .and_then(|t| mapping.nodes.iter().find(|n| n.table == t))
            .map_or(draft_label.to_string(), |n| n.label.clone())
    };
    let cols = |c: &crate::config::Columns| match c.names().as_slice() {
        [one] => q(one),
        many => format!("[{}]", many.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ")),
    };
    let _ = writeln!(
        out,
        "+ [[edges]]\n+ table = {}\n+ label = {}\n+ source = {{ column = {}, node = {} }}\n+ target = {{ column = {}, node = {} }}",
        q(&e.table),
        q(&e.label),
        cols(&e.source.column),
        q(&label_of(&e.source.node)),
        cols(&e.target.column),
        q(&label_of(&e.target.node))
    );
}
