//! The mapping configuration (TOML): which tables are nodes and edges, and how.
//!
//! ```toml
//! [source]
//! slot = "graphsync"
//! publication = "graphsync"
//!
//! [[nodes]]
//! table = "public.users"
//! key = "id"                       # or ["a", "b"] for a composite key
//! label = "User"
//! tenant = "org_id"                # optional
//! filters = ["status"]             # optional
//! properties = ["name"]            # optional
//!
//! [[edges]]                        # a row is an edge (join table)
//! table = "public.follows"
//! label = "FOLLOWS"
//! source = { column = "follower_id", node = "User" }
//! target = { column = "followee_id", node = "User" }
//! weight = "weight"                # optional
//! ```
//!
//! [`MappingConfig::parse`] checks everything that can be checked without the database (names
//! qualified, labels defined and unique, endpoint column counts matching the target's key,
//! limits of the graph engine) and reports the file, the offending entry and the fix. Checks
//! against the catalog (columns exist, keys are the primary key or replica identity) belong to
//! the sync start-up, which has a connection.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A mapping configuration that parsed and passed the structural checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Where to replicate from.
    #[serde(default)]
    pub source: SourceConfig,
    /// Tables whose rows are nodes.
    #[serde(default)]
    pub nodes: Vec<NodeMapping>,
    /// Tables whose rows are edges, and foreign keys inside node tables.
    #[serde(default)]
    pub edges: Vec<EdgeMapping>,
}

/// `[source]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection string; may also come from `GRAPHSYNC_DATABASE_URL` or `PG*` variables.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Replication slot name.
    #[serde(default = "default_name")]
    pub slot: String,
    /// Publication name (created for the mapped tables if missing).
    #[serde(default = "default_name")]
    pub publication: String,
    /// Rebuild from source (drop and recreate the slot, copy again) when the state cannot be
    /// resumed, instead of refusing; like `--rebuild`.
    #[serde(default)]
    pub rebuild: bool,
}

fn default_name() -> String {
    "graphsync".into()
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            database_url: None,
            slot: default_name(),
            publication: default_name(),
            rebuild: false,
        }
    }
}

/// One or more column names (`"id"` or `["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Columns {
    /// A single column.
    One(String),
    /// Several columns, in order.
    Many(Vec<String>),
}

impl Columns {
    /// The column names in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Columns::One(c) => vec![c.as_str()],
            Columns::Many(cs) => cs.iter().map(String::as_str).collect(),
        }
    }
}

/// `[[nodes]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMapping {
    /// Schema-qualified table name.
    pub table: String,
    /// Key column(s): the primary key or replica identity.
    pub key: Columns,
    /// Node label.
    pub label: String,
    /// Tenant column.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Columns whose values get a membership bitmap each.
    #[serde(default)]
    pub filters: Vec<Field>,
    /// Columns kept and returned by the API.
    #[serde(default)]
    pub properties: Vec<Field>,
}

/// A mapped column and the name the graph gives its values: `"name"` (the column's name), or
/// `{ column = "full_name", name = "name" }` — after `ALTER TABLE … RENAME COLUMN`, the graph
/// (and every client) keeps the old name and the change reloads online.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Field {
    /// The column, named as in the table.
    Same(String),
    /// A column with another name in the graph.
    Renamed(RenamedField),
}

/// `{ column = "…", name = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenamedField {
    /// The table's column.
    pub column: String,
    /// The name in the graph.
    pub name: String,
}

impl Field {
    /// The name in the graph (a property's or a filter's).
    pub fn name(&self) -> &str {
        match self {
            Field::Same(c) => c,
            Field::Renamed(r) => &r.name,
        }
    }

    /// The table's column.
    pub fn column(&self) -> &str {
        match self {
            Field::Same(c) => c,
            Field::Renamed(r) => &r.column,
        }
    }
}

impl From<&str> for Field {
    fn from(c: &str) -> Self {
        Field::Same(c.to_string())
    }
}

/// One end of an edge: column(s) of the edge's table and the node label they point at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Column(s) holding the node's key.
    pub column: Columns,
    /// Label of the node.
    pub node: String,
}

/// `[[edges]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeMapping {
    /// Schema-qualified table name.
    pub table: String,
    /// Edge label.
    pub label: String,
    /// Source node.
    pub source: Endpoint,
    /// Target node.
    pub target: Endpoint,
    /// Numeric weight column, for weighted paths.
    #[serde(default)]
    pub weight: Option<String>,
}

/// Why a mapping configuration is refused. The message names the file, the entry and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read mapping config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or fields of the wrong shape.
    #[error("mapping config {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Valid TOML that does not describe a usable mapping.
    #[error("mapping config {path}: {entry}: {problem}; fix: {fix}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which entry (`nodes[1] (public.users)`).
        entry: String,
        /// What is wrong.
        problem: String,
        /// What to change.
        fix: String,
    },
}

/// Most edge labels the graph engine stores (one byte per edge).
pub const MAX_EDGE_LABELS: usize = 256;
/// Most node labels the graph engine stores (its columnar node base keeps a flag in the top
/// bit of the 16-bit label).
pub const MAX_NODE_LABELS: usize = 32_767;

impl MappingConfig {
    /// Reads and validates the mapping in `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates mapping `text`; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: MappingConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |entry: String, problem: String, fix: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            entry,
            problem,
            fix,
        };
        if self.nodes.is_empty() && self.edges.is_empty() {
            return Err(invalid(
                "mapping".into(),
                "no [[nodes]] or [[edges]] are defined".into(),
                "add at least one [[nodes]] table (graphsync init --discover writes a starting point)".into(),
            ));
        }
        let mut labels: BTreeMap<&str, &NodeMapping> = BTreeMap::new();
        let mut node_tables = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let entry = format!("nodes[{i}] ({})", n.table);
            check_table(&n.table).map_err(|(p, f)| invalid(entry.clone(), p, f))?;
            check_name(&n.label, "label").map_err(|(p, f)| invalid(entry.clone(), p, f))?;
            if n.key.names().is_empty() || n.key.names().iter().any(|c| c.is_empty()) {
                return Err(invalid(
                    entry,
                    "the key names no column".into(),
                    "set key = \"id\" or key = [\"a\", \"b\"]".into(),
                ));
            }
            let mut fields = BTreeSet::new();
            for (what, f) in n
                .filters
                .iter()
                .map(|f| ("filter", f))
                .chain(n.properties.iter().map(|p| ("property", p)))
            {
                if f.name().is_empty() || f.column().is_empty() {
                    return Err(invalid(
                        entry,
                        format!("a {what} names no column"),
                        format!("write the {what} as \"column\" or {{ column = \"column\", name = \"name\" }}"),
                    ));
                }
                if !fields.insert((what, f.name())) {
                    return Err(invalid(
                        entry,
                        format!("{what} {:?} is listed twice", f.name()),
                        format!("list each {what} once"),
                    ));
                }
            }
            if labels.insert(&n.label, n).is_some() {
                return Err(invalid(
                    entry,
                    format!("node label {:?} is defined twice", n.label),
                    "give each [[nodes]] table its own label".into(),
                ));
            }
            if !node_tables.insert(&n.table) {
                return Err(invalid(
                    entry,
                    format!("table {} is mapped as nodes twice", n.table),
                    "map each table once; one table can have one node label".into(),
                ));
            }
        }
        if labels.len() > MAX_NODE_LABELS {
            return Err(invalid(
                "nodes".into(),
                format!("{} node labels", labels.len()),
                format!("use at most {MAX_NODE_LABELS}"),
            ));
        }
        let mut edge_labels = BTreeSet::new();
        for (i, e) in self.edges.iter().enumerate() {
            let entry = format!("edges[{i}] ({})", e.table);
            check_table(&e.table).map_err(|(p, f)| invalid(entry.clone(), p, f))?;
            check_name(&e.label, "label").map_err(|(p, f)| invalid(entry.clone(), p, f))?;
            edge_labels.insert(e.label.as_str());
            for (side, end) in [("source", &e.source), ("target", &e.target)] {
                let Some(node) = labels.get(end.node.as_str()) else {
                    let known = labels.keys().copied().collect::<Vec<_>>().join(", ");
                    return Err(invalid(
                        entry,
                        format!("{side} node label {:?} is not defined by any [[nodes]] entry", end.node),
                        format!(
                            "use one of: {known}; or add a [[nodes]] table with label = {:?}",
                            end.node
                        ),
                    ));
                };
                let (want, got) = (node.key.names().len(), end.column.names().len());
                if want != got {
                    return Err(invalid(
                        entry,
                        format!(
                            "{side} has {got} column(s) but the key of {:?} ({}) has {want}",
                            end.node,
                            node.key.names().join(", ")
                        ),
                        format!(
                            "list {want} column(s) in {side}.column, in the order of {}'s key",
                            end.node
                        ),
                    ));
                }
            }
        }
        if edge_labels.len() > MAX_EDGE_LABELS {
            return Err(invalid(
                "edges".into(),
                format!("{} distinct edge labels", edge_labels.len()),
                format!("the graph stores at most {MAX_EDGE_LABELS} edge labels; merge some"),
            ));
        }
        Ok(())
    }

    /// A stable hash of everything that shapes the graph: tables, labels, key arity, whether
    /// there is a tenant and a weight, filter and property names, edge endpoints — not column
    /// names (a renamed column mapped to the same names is the same graph), the connection or
    /// the slot. Stored with every snapshot and log segment: a different hash means they were
    /// built under another mapping.
    pub fn mapping_hash(&self) -> u64 {
        let mut s = String::from("shape-1\n");
        let names = |f: &[Field]| f.iter().map(Field::name).collect::<Vec<_>>().join(",");
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "N|{}|{}|{}|{}|{}|{}",
                n.table,
                n.key.names().len(),
                n.label,
                u8::from(n.tenant.is_some()),
                names(&n.filters),
                names(&n.properties)
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "E|{}|{}|{}>{}|{}>{}|{}",
                e.table,
                e.label,
                e.source.column.names().len(),
                e.source.node,
                e.target.column.names().len(),
                e.target.node,
                u8::from(e.weight.is_some())
            );
        }
        xxhash_rust::xxh3::xxh3_64(s.as_bytes())
    }

    /// The hash releases before online mapping changes stored (it covered column names too):
    /// a data directory written by one keeps working with the same mapping.
    pub fn legacy_hash(&self) -> u64 {
        let mut s = String::new();
        let cols = |c: &Columns| c.names().join(",");
        let names = |f: &[Field]| f.iter().map(Field::column).collect::<Vec<_>>().join(",");
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "N|{}|{}|{}|{}|{}|{}",
                n.table,
                cols(&n.key),
                n.label,
                n.tenant.as_deref().unwrap_or(""),
                names(&n.filters),
                names(&n.properties)
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "E|{}|{}|{}>{}|{}>{}|{}",
                e.table,
                e.label,
                cols(&e.source.column),
                e.source.node,
                cols(&e.target.column),
                e.target.node,
                e.weight.as_deref().unwrap_or("")
            );
        }
        xxhash_rust::xxh3::xxh3_64(s.as_bytes())
    }

    /// The mapped tables, each once, in config order.
    pub fn tables(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.nodes
            .iter()
            .map(|n| n.table.as_str())
            .chain(self.edges.iter().map(|e| e.table.as_str()))
            .filter(|t| seen.insert(*t))
            .collect()
    }
}

fn check_table(t: &str) -> Result<(), (String, String)> {
    match t.split_once('.') {
        Some((schema, table)) if !schema.is_empty() && !table.is_empty() && !table.contains('.') => Ok(()),
        _ => Err((
            format!("table {t:?} is not schema-qualified"),
            format!(
                "write it as schema.table, e.g. \"public.{}\"",
                t.rsplit('.').next().unwrap_or(t)
            ),
        )),
    }
}

fn check_name(name: &str, what: &str) -> Result<(), (String, String)> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err((
            format!("{what} {name:?} is empty or contains ':' or whitespace"),
            format!("use a {what} like \"User\" (nodes are named label:key in queries)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../../fixtures/configs/social.toml");

    fn parse(text: &str) -> Result<MappingConfig, ConfigError> {
        MappingConfig::parse(text, Path::new("graphsync.toml"))
    }

    #[test]
    fn the_sample_parses() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.edges.len(), 2);
        assert_eq!(c.source.slot, "graphsync");
        assert_eq!(c.nodes[0].key, Columns::One("id".into()));
        assert_eq!(c.tables(), ["public.users", "public.posts", "public.follows"]);
    }

    #[test]
    fn hash_ignores_formatting_and_source_but_not_the_mapping() {
        let a = parse(SAMPLE).unwrap();
        let reformatted = SAMPLE.replace(" = ", "=").replace("# ", "#  ");
        let b = parse(&reformatted).unwrap();
        assert_eq!(a.mapping_hash(), b.mapping_hash());
        let other_slot = SAMPLE.replace("slot = \"graphsync\"", "slot = \"other\"");
        assert_eq!(a.mapping_hash(), parse(&other_slot).unwrap().mapping_hash());
        let changed = SAMPLE.replace("properties = [\"name\"]", "properties = [\"name\", \"bio\"]");
        assert_ne!(a.mapping_hash(), parse(&changed).unwrap().mapping_hash());
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_entry_and_the_fix() {
        let e = err(&SAMPLE.replace("node = \"Post\"", "node = \"Article\""));
        assert!(
            e.contains("edges[0] (public.posts)") && e.contains("\"Article\""),
            "{e}"
        );
        assert!(e.contains("fix: use one of: Post, User"), "{e}");
        let e = err(&SAMPLE.replace("table = \"public.users\"", "table = \"users\""));
        assert!(e.contains("not schema-qualified") && e.contains("public.users"), "{e}");
        let e = err(&SAMPLE.replace("label = \"Post\"", "label = \"User\""));
        assert!(e.contains("defined twice"), "{e}");
        let e = err(&SAMPLE.replace("tenant = \"org_id\"", "tenant = \"org_id\"\ncolour = \"red\""));
        assert!(e.contains("unknown field") && e.contains("colour"), "{e}");
        let e = err(&SAMPLE.replace(
            "source = { column = \"follower_id\", node = \"User\" }",
            "source = { column = [\"a\", \"b\"], node = \"User\" }",
        ));
        assert!(e.contains("2 column(s)") && e.contains("has 1"), "{e}");
        let e = err("[source]\nslot = \"x\"\n");
        assert!(e.contains("no [[nodes]]"), "{e}");
        let e = err("[[nodes]\n");
        assert!(e.contains("graphsync.toml") && e.contains("line 1"), "{e}");
    }
}
