//! `graphsync init --discover`: a mapping config drafted from the catalog.
//!
//! Tables with a primary key of usable type become `[[nodes]]`; a table whose primary key is
//! exactly two foreign keys becomes an edge table; every other foreign key that references a
//! mapped table's primary key becomes an `[[edges]]` entry from the row's own node. What is
//! skipped is listed in comments with the reason, so the draft is a starting point to edit.

use crate::catalog::{literal, CatalogError, KEY_TYPES};
use pgrepl::ReplicationClient;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone)]
struct Table {
    schema: String,
    name: String,
    columns: Vec<(String, u32)>,
    pk: Vec<String>,
    /// (columns, referenced table oid, referenced columns)
    fks: Vec<(Vec<String>, u32, Vec<String>)>,
}

const NUMERIC: &[u32] = &[21, 23, 20, 700, 701, 1700];

/// `users` → `User`, `user_groups` → `UserGroup`.
pub fn label_for(table: &str) -> String {
    let mut out = String::new();
    for part in table.split('_').filter(|p| !p.is_empty()) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    if out.len() > 3 && out.ends_with('s') && !out.ends_with("ss") {
        out.pop();
    }
    if out.is_empty() {
        "Node".into()
    } else {
        out
    }
}

fn edge_label(cols: &[String]) -> String {
    let base = cols.join("_");
    let base = base.strip_suffix("_id").unwrap_or(&base);
    base.to_uppercase()
}

fn toml_list(v: &[String]) -> String {
    if v.len() == 1 {
        format!("{:?}", v[0])
    } else {
        format!(
            "[{}]",
            v.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Reads the catalog (tables of `schema`, or of every non-system schema) and drafts a mapping.
pub async fn discover(client: &mut ReplicationClient, schema: Option<&str>) -> Result<String, CatalogError> {
    let filter = match schema {
        Some(s) => format!("n.nspname = {}", literal(s)),
        None => "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'".into(),
    };
    let rows = client
        .simple_query(&format!(
            "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {filter} ORDER BY 2, 3"
        ))
        .await?;
    let mut tables: BTreeMap<u32, Table> = BTreeMap::new();
    for r in rows.rows {
        let oid: u32 = r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        tables.insert(
            oid,
            Table {
                schema: r[1].clone().unwrap_or_default(),
                name: r[2].clone().unwrap_or_default(),
                columns: Vec::new(),
                pk: Vec::new(),
                fks: Vec::new(),
            },
        );
    }
    if tables.is_empty() {
        return Ok(format!(
            "# graphsync init --discover found no tables{}\n",
            schema.map_or(String::new(), |s| format!(" in schema {s}"))
        ));
    }
    let oids = tables.keys().map(u32::to_string).collect::<Vec<_>>().join(",");
    let cols = client
        .simple_query(&format!(
            "SELECT attrelid, attname, atttypid FROM pg_catalog.pg_attribute \
             WHERE attrelid IN ({oids}) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
             ORDER BY attrelid, attnum"
        ))
        .await?;
    for r in cols.rows {
        let oid: u32 = r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some(t) = tables.get_mut(&oid) {
            t.columns.push((
                r[1].clone().unwrap_or_default(),
                r[2].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            ));
        }
    }
    let cons = client
        .simple_query(&format!(
            "SELECT con.conrelid, con.contype, con.confrelid, \
               (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord) \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum), \
               (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord) \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) \
             FROM pg_catalog.pg_constraint con WHERE con.contype IN ('p', 'f') AND con.conrelid IN ({oids}) \
             ORDER BY con.conrelid, con.conname"
        ))
        .await?;
    let split = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    for r in cons.rows {
        let oid: u32 = r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        let Some(t) = tables.get_mut(&oid) else { continue };
        match r[1].as_deref() {
            Some("p") => t.pk = split(&r[3]),
            Some("f") => {
                let target: u32 = r[2].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
                t.fks.push((split(&r[3]), target, split(&r[4])));
            }
            _ => {}
        }
    }

    let type_of = |t: &Table, c: &str| t.columns.iter().find(|(n, _)| n == c).map_or(0, |x| x.1);
    let mut out = String::new();
    let mut skipped = Vec::new();
    // Node tables: a usable primary key and not a pure join table.
    let is_join = |t: &Table| {
        t.pk.len() == 2
            && t.fks.len() >= 2
            && t.fks
                .iter()
                .filter(|(c, _, _)| c.len() == 1 && t.pk.contains(&c[0]))
                .count()
                >= 2
    };
    let mut labels: BTreeMap<u32, String> = BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for (oid, t) in &tables {
        if t.pk.is_empty() {
            skipped.push(format!("{}.{}: no primary key", t.schema, t.name));
            continue;
        }
        if is_join(t) {
            continue;
        }
        if let Some(c) = t.pk.iter().find(|c| !KEY_TYPES.contains(&type_of(t, c))) {
            skipped.push(format!(
                "{}.{}: key column {c} is not int, uuid or text",
                t.schema, t.name
            ));
            continue;
        }
        let mut label = label_for(&t.name);
        while !used.insert(label.clone()) {
            label.push('_');
        }
        labels.insert(*oid, label);
    }
    let _ = writeln!(out, "# Drafted by `graphsync init --discover`; review before use.");
    let _ = writeln!(out, "[source]\nslot = \"graphsync\"\npublication = \"graphsync\"\n");
    for (oid, label) in &labels {
        let t = &tables[oid];
        let _ = writeln!(
            out,
            "[[nodes]]\ntable = \"{}.{}\"\nkey = {}\nlabel = \"{label}\"",
            t.schema,
            t.name,
            toml_list(&t.pk)
        );
        if let Some((c, _)) = t
            .columns
            .iter()
            .find(|(c, _)| matches!(c.as_str(), "tenant_id" | "org_id" | "organization_id" | "account_id"))
        {
            let _ = writeln!(out, "tenant = {c:?}");
        }
        let others: Vec<&str> = t
            .columns
            .iter()
            .map(|(c, _)| c.as_str())
            .filter(|c| !t.pk.iter().any(|k| k == c))
            .collect();
        if !others.is_empty() {
            let _ = writeln!(out, "# other columns: {}", others.join(", "));
        }
        let _ = writeln!(out, "properties = []\n");
    }
    let mut edge_labels = std::collections::BTreeSet::new();
    let mut unique = |l: String| {
        let mut l = l;
        while !edge_labels.insert(l.clone()) {
            l.push('_');
        }
        l
    };
    for (oid, t) in &tables {
        let weight = t
            .columns
            .iter()
            .find(|(c, ty)| matches!(c.as_str(), "weight" | "cost" | "score") && NUMERIC.contains(ty))
            .map(|(c, _)| c.clone());
        if is_join(t) && t.pk.iter().all(|c| KEY_TYPES.contains(&type_of(t, c))) {
            let ends: Vec<&(Vec<String>, u32, Vec<String>)> = t
                .fks
                .iter()
                .filter(|(c, target, refs)| {
                    c.len() == 1 && t.pk.contains(&c[0]) && labels.contains_key(target) && tables[target].pk == *refs
                })
                .take(2)
                .collect();
            if ends.len() == 2 {
                let (s, d) = if t.pk[0] == ends[0].0[0] {
                    (ends[0], ends[1])
                } else {
                    (ends[1], ends[0])
                };
                let _ = writeln!(
                    out,
                    "[[edges]]\ntable = \"{}.{}\"\nlabel = \"{}\"\nsource = {{ column = {}, node = \"{}\" }}\ntarget = {{ column = {}, node = \"{}\" }}",
                    t.schema,
                    t.name,
                    unique(t.name.to_uppercase()),
                    toml_list(&s.0),
                    labels[&s.1],
                    toml_list(&d.0),
                    labels[&d.1]
                );
                if let Some(w) = &weight {
                    let _ = writeln!(out, "weight = {w:?}");
                }
                out.push('\n');
                continue;
            }
            skipped.push(format!(
                "{}.{}: join table whose keys do not reference mapped tables",
                t.schema, t.name
            ));
            continue;
        }
        let Some(own) = labels.get(oid) else { continue };
        for (cols, target, refs) in &t.fks {
            let Some(tl) = labels.get(target) else {
                skipped.push(format!(
                    "{}.{} ({}): references an unmapped table",
                    t.schema,
                    t.name,
                    cols.join(", ")
                ));
                continue;
            };
            if tables[target].pk != *refs {
                skipped.push(format!(
                    "{}.{} ({}): references columns other than {}'s primary key",
                    t.schema,
                    t.name,
                    cols.join(", "),
                    tl
                ));
                continue;
            }
            let _ = writeln!(
                out,
                "[[edges]]\ntable = \"{}.{}\"\nlabel = \"{}\"\nsource = {{ column = {}, node = \"{own}\" }}\ntarget = {{ column = {}, node = \"{tl}\" }}\n",
                t.schema,
                t.name,
                unique(edge_label(cols)),
                toml_list(&t.pk),
                toml_list(cols),
            );
        }
    }
    for s in skipped {
        let _ = writeln!(out, "# skipped {s}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label_for("users"), "User");
        assert_eq!(label_for("user_groups"), "UserGroup");
        assert_eq!(label_for("address"), "Address");
        assert_eq!(label_for("bus"), "Bus");
        assert_eq!(edge_label(&["author_id".into()]), "AUTHOR");
    }
}
