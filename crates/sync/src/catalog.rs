//! Start-up checks and set-up against the source database's catalog.
//!
//! Before anything streams, every mapped table must exist with the mapped columns, have a
//! usable replica identity, and node keys must be what the identity sends (so deletes and key
//! changes can be mapped). Errors name the table or column and the fix. Also creates the
//! publication for the mapped tables, or checks an existing one covers them, and reads the
//! slot's state.
//!
//! Not for streaming or mapping rows.

use crate::config::MappingConfig;
use pgoutput::{Column, Lsn, Relation, ReplicaIdentity};
use pgrepl::{quote_ident, ReplError, ReplicationClient};
use std::collections::BTreeSet;

/// What the catalog says about one mapped table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `schema.table` as in the mapping.
    pub qualified: String,
    /// Schema.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// The table's OID (pgoutput's relation id).
    pub oid: u32,
    /// `pg_class.relreplident`.
    pub identity: ReplicaIdentity,
    /// Columns (not dropped, not generated) with their type OIDs, in attribute order.
    pub columns: Vec<(String, u32)>,
    /// Each column's `attnum` (what survives a rename), as `columns`.
    pub attnums: Vec<i32>,
    /// Replica identity columns (all columns for FULL).
    pub identity_columns: Vec<String>,
    /// A partitioned table (its changes must be published as the root's).
    pub partitioned: bool,
}

impl TableInfo {
    /// The `attnum` and type OID of `column`.
    pub fn attribute(&self, column: &str) -> Option<(i32, u32)> {
        let i = self.columns.iter().position(|(n, _)| n == column)?;
        Some((self.attnums.get(i).copied().unwrap_or(0), self.columns[i].1))
    }

    /// `schema.table` quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// A relation description holding the `columns` given (in that order), typed from the
    /// catalog, key flags from the replica identity: what the initial copy's rows are typed
    /// and mapped with.
    pub fn relation(&self, columns: &[String]) -> Relation {
        Relation {
            xid: None,
            id: self.oid,
            namespace: self.schema.clone(),
            name: self.name.clone(),
            replica_identity: self.identity,
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.clone(),
                    type_oid: self.columns.iter().find(|(n, _)| n == c).map_or(25, |(_, t)| *t),
                    type_modifier: -1,
                    is_key: self.identity_columns.contains(c),
                })
                .collect(),
        }
    }
}

/// Why the source database cannot be replicated as mapped.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A query failed.
    #[error(transparent)]
    Repl(#[from] ReplError),
    /// A mapped table or column does not fit.
    #[error("table {table}: {problem}; fix: {fix}")]
    Table {
        /// `schema.table`.
        table: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The existing publication does not cover the mapped tables.
    #[error(
        "publication {publication} exists but does not publish {missing}; fix: ALTER PUBLICATION {publication} ADD TABLE {missing} \
         (or drop it and let graphsync create it)"
    )]
    PublicationIncomplete {
        /// The publication.
        publication: String,
        /// Tables it lacks, comma-separated.
        missing: String,
    },
}

pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `name` is slot `base` or the slot of one of its generations (`base_g<N>`, made by
/// background rebuilds).
pub fn is_generation_slot(base: &str, name: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix("_g"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The comment graphsync puts on publications it creates.
pub const CREATED_BY: &str = "created by graphsync";

/// Drops the slot (if it exists and is not in use) and the publication if graphsync created
/// it. Returns what was dropped, for the log.
pub async fn teardown(
    client: &mut ReplicationClient,
    slot: &str,
    publication: &str,
) -> Result<Vec<String>, CatalogError> {
    let mut done = Vec::new();
    // The slot, and those of the generations background rebuilds made (`<slot>_g<N>`).
    let r = client
        .simple_query("SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE database = current_database()")
        .await?;
    let slots: Vec<String> = r
        .rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter(|n| is_generation_slot(slot, n))
        .collect();
    for name in &slots {
        if let Some(s) = slot_state(client, name).await? {
            if let Some(pid) = s.active_pid {
                return Err(CatalogError::Table {
                    table: format!("slot {name}"),
                    problem: format!("is in use by server process {pid}"),
                    fix: "stop graphsync (or the other consumer) first".into(),
                });
            }
        }
    }
    for name in slots {
        client
            .simple_query(&format!("SELECT pg_drop_replication_slot({})", literal(&name)))
            .await?;
        done.push(format!("dropped replication slot {name}"));
    }
    let r = client
        .simple_query(&format!(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_catalog.pg_publication WHERE pubname = {}",
            literal(publication)
        ))
        .await?;
    if let Some(row) = r.rows.first() {
        if row[0].as_deref() == Some(CREATED_BY) {
            client
                .simple_query(&format!("DROP PUBLICATION {}", quote_ident(publication)))
                .await?;
            done.push(format!("dropped publication {publication}"));
        } else {
            done.push(format!("kept publication {publication} (not created by graphsync)"));
        }
    }
    Ok(done)
}

/// Key column types graphsync can use for node keys.
pub(crate) const KEY_TYPES: &[u32] = &[21, 23, 20, 2950, 25, 1043, 1042, 19];

/// Reads and checks every mapped table. Errors name the first problem found.
pub async fn check_tables(
    client: &mut ReplicationClient,
    config: &MappingConfig,
) -> Result<Vec<TableInfo>, CatalogError> {
    let mut out = Vec::new();
    for qualified in config.tables() {
        let (schema, name) = qualified.split_once('.').unwrap_or(("public", qualified));
        let r = client
            .simple_query(&format!(
                "SELECT c.oid, c.relreplident, c.relkind FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname = {}",
                literal(schema),
                literal(name)
            ))
            .await?;
        let Some(row) = r.rows.first() else {
            return Err(CatalogError::Table {
                table: qualified.into(),
                problem: "does not exist in the source database".into(),
                fix: "create it, or correct the table name in the mapping (names are case-sensitive)".into(),
            });
        };
        let oid: u32 = row[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
        let ident = row[1].as_deref().unwrap_or("d");
        let kind = row[2].as_deref().unwrap_or("r");
        if kind != "r" && kind != "p" {
            return Err(CatalogError::Table {
                table: qualified.into(),
                problem: format!("is not a table (relkind {kind}: a view, materialized view or foreign table has no changes to replicate)"),
                fix: "map the underlying tables instead".into(),
            });
        }
        let cols = client
            .simple_query(&format!(
                "SELECT attname, atttypid, attnum FROM pg_catalog.pg_attribute \
                 WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
            ))
            .await?;
        let columns: Vec<(String, u32)> = cols
            .rows
            .iter()
            .map(|r| {
                (
                    r[0].clone().unwrap_or_default(),
                    r[1].as_deref().and_then(|s| s.parse().ok()).unwrap_or(25),
                )
            })
            .collect();
        let attnums: Vec<i32> = cols
            .rows
            .iter()
            .map(|r| r[2].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0))
            .collect();
        let identity = match ident {
            "f" => ReplicaIdentity::Full,
            "n" => ReplicaIdentity::Nothing,
            "i" => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        };
        let identity_columns: Vec<String> = match identity {
            ReplicaIdentity::Full => columns.iter().map(|(n, _)| n.clone()).collect(),
            ReplicaIdentity::Nothing => Vec::new(),
            _ => {
                let which = if identity == ReplicaIdentity::Index {
                    "indisreplident"
                } else {
                    "indisprimary"
                };
                let r = client
                    .simple_query(&format!(
                        "SELECT a.attname FROM pg_catalog.pg_index i \
                         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                         WHERE i.indrelid = {oid} AND i.{which} ORDER BY k.ord"
                    ))
                    .await?;
                r.rows.iter().filter_map(|r| r[0].clone()).collect()
            }
        };
        let table = |problem: String, fix: String| CatalogError::Table {
            table: qualified.into(),
            problem,
            fix,
        };
        if identity_columns.is_empty() {
            let why = if identity == ReplicaIdentity::Nothing {
                "has REPLICA IDENTITY NOTHING, so deletes and updates do not say which row changed".to_string()
            } else {
                "has no primary key, so deletes and updates do not say which row changed".to_string()
            };
            return Err(table(
                why,
                format!(
                    "ALTER TABLE {qualified} REPLICA IDENTITY FULL; (or add a primary key and ALTER TABLE {qualified} REPLICA IDENTITY DEFAULT)"
                ),
            ));
        }
        let info = TableInfo {
            qualified: qualified.into(),
            schema: schema.into(),
            name: name.into(),
            oid,
            identity,
            columns,
            attnums,
            identity_columns,
            partitioned: kind == "p",
        };
        let has = |c: &str| info.columns.iter().find(|(n, _)| n == c).map(|(_, t)| *t);
        for c in needed_columns(config, qualified) {
            if has(&c).is_none() {
                let known = info
                    .columns
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(table(
                    format!("has no column {c:?}"),
                    format!("use one of its columns ({known}) in the mapping"),
                ));
            }
        }
        for n in config.nodes.iter().filter(|n| n.table == qualified) {
            let keys: Vec<String> = n.key.names().iter().map(|s| s.to_string()).collect();
            for k in &keys {
                let t = has(k).unwrap_or(0);
                if !KEY_TYPES.contains(&t) {
                    return Err(table(
                        format!("key column {k:?} has a type (oid {t}) that cannot be a node key"),
                        "use an int2/int4/int8, uuid or text/varchar column (or several) as the key".into(),
                    ));
                }
            }
            if identity != ReplicaIdentity::Full {
                let a: BTreeSet<&String> = keys.iter().collect();
                let b: BTreeSet<&String> = info.identity_columns.iter().collect();
                if a != b {
                    return Err(table(
                        format!(
                            "node key ({}) is not the replica identity ({}), so deletes and key changes could not be mapped",
                            keys.join(", "),
                            info.identity_columns.join(", ")
                        ),
                        format!(
                            "set key to the primary key ({}), or ALTER TABLE {qualified} REPLICA IDENTITY FULL",
                            info.identity_columns.join(", ")
                        ),
                    ));
                }
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// The columns of `table` the mapping reads (key, tenant, filters, properties, endpoints,
/// weight), each once, in mapping order.
pub fn needed_columns(config: &MappingConfig, table: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |c: &str| {
        if !out.iter().any(|x| x == c) {
            out.push(c.to_string());
        }
    };
    for n in config.nodes.iter().filter(|n| n.table == table) {
        n.key.names().into_iter().for_each(&mut add);
        n.tenant.as_deref().into_iter().for_each(&mut add);
        n.filters.iter().for_each(|f| add(f.column()));
        n.properties.iter().for_each(|p| add(p.column()));
    }
    for e in config.edges.iter().filter(|e| e.table == table) {
        e.source.column.names().into_iter().for_each(&mut add);
        e.target.column.names().into_iter().for_each(&mut add);
        e.weight.as_deref().into_iter().for_each(&mut add);
    }
    out
}

/// Creates publication `name` for the mapped tables if it does not exist (returns `true`), or
/// checks that it publishes all of them (returns `false`).
pub async fn ensure_publication(
    client: &mut ReplicationClient,
    name: &str,
    tables: &[TableInfo],
) -> Result<bool, CatalogError> {
    let r = client
        .simple_query(&format!(
            "SELECT puballtables, pubviaroot FROM pg_catalog.pg_publication WHERE pubname = {}",
            literal(name)
        ))
        .await?;
    if r.rows.is_empty() {
        let list = tables.iter().map(TableInfo::quoted).collect::<Vec<_>>().join(", ");
        client
            .simple_query(&format!(
                "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
                quote_ident(name)
            ))
            .await?;
        // Marks it as ours: `graphsync teardown` drops only publications carrying this.
        client
            .simple_query(&format!(
                "COMMENT ON PUBLICATION {} IS {}",
                quote_ident(name),
                literal(CREATED_BY)
            ))
            .await?;
        tracing::info!(publication = name, tables = tables.len(), "created publication");
        return Ok(true);
    }
    if r.rows[0][1].as_deref() != Some("t") {
        if let Some(t) = tables.iter().find(|t| t.partitioned) {
            return Err(CatalogError::Table {
                table: t.qualified.clone(),
                problem: format!("is partitioned but publication {name} publishes changes under the partitions' names"),
                fix: format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(name)
                ),
            });
        }
    }
    if r.rows[0][0].as_deref() == Some("t") {
        return Ok(false);
    }
    let r = client
        .simple_query(&format!(
            "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
            literal(name)
        ))
        .await?;
    let published: BTreeSet<String> = r
        .rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    let missing: Vec<&str> = tables
        .iter()
        .map(|t| t.qualified.as_str())
        .filter(|t| !published.contains(*t))
        .collect();
    if !missing.is_empty() {
        // A publication graphsync created follows the mapping (a table newly mapped).
        let r = client
            .simple_query(&format!(
                "SELECT obj_description(oid, 'pg_publication') FROM pg_catalog.pg_publication WHERE pubname = {}",
                literal(name)
            ))
            .await?;
        let ours = r.rows.first().and_then(|r| r[0].as_deref()) == Some(CREATED_BY);
        if ours {
            let list = tables
                .iter()
                .filter(|t| missing.contains(&t.qualified.as_str()))
                .map(TableInfo::quoted)
                .collect::<Vec<_>>()
                .join(", ");
            client
                .simple_query(&format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(name)))
                .await?;
            tracing::info!(publication = name, tables = %list, "added newly mapped tables to the publication");
            return Ok(false);
        }
        return Err(CatalogError::PublicationIncomplete {
            publication: name.into(),
            missing: missing.join(", "),
        });
    }
    Ok(false)
}

/// A replication slot's state, from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// `confirmed_flush_lsn`.
    pub confirmed_flush: Lsn,
    /// `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
    /// PID of the walsender using it, if active.
    pub active_pid: Option<u32>,
    /// Output plugin.
    pub plugin: Option<String>,
    /// Database it belongs to.
    pub database: Option<String>,
}

/// Slot `base` and its generations' (`base_g<N>`) in this database, each with the process
/// streaming from it, if any.
pub async fn slot_family(
    client: &mut ReplicationClient,
    base: &str,
) -> Result<Vec<(String, Option<u32>)>, CatalogError> {
    let r = client
        .simple_query(
            "SELECT slot_name, active_pid FROM pg_catalog.pg_replication_slots WHERE database = current_database()",
        )
        .await?;
    Ok(r.rows
        .into_iter()
        .filter_map(|row| {
            let name = row.first().cloned().flatten()?;
            let pid = row.get(1).cloned().flatten().and_then(|p| p.parse().ok());
            is_generation_slot(base, &name).then_some((name, pid))
        })
        .collect())
}

/// The slot's state, or `None` if it does not exist.
pub async fn slot_state(client: &mut ReplicationClient, slot: &str) -> Result<Option<SlotState>, CatalogError> {
    let r = client
        .simple_query(&format!(
            "SELECT confirmed_flush_lsn, wal_status, active_pid, plugin, database \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        ))
        .await?;
    let Some(row) = r.rows.into_iter().next() else {
        return Ok(None);
    };
    Ok(Some(SlotState {
        confirmed_flush: row[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(Lsn(0)),
        wal_status: row[1].clone(),
        active_pid: row[2].as_deref().and_then(|s| s.parse().ok()),
        plugin: row[3].clone(),
        database: row[4].clone(),
    }))
}
