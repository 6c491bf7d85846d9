//! Watching the catalog for what the replication stream does not say: a mapped table dropped
//! or renamed (DDL sends nothing through pgoutput, so its nodes and edges would linger
//! silently). A task per streaming session checks, every few seconds on a connection of its
//! own, that every mapped table's OID still exists under its mapped name; the stream loop
//! pauses replication when one does not. A partitioned table's partitions are watched too: one
//! attached or detached sends nothing either (its rows never arrive, or stay), and the graph is
//! rebuilt.
//! Connection trouble here is never an error: the stream has its own.

#[allow(unused_imports)]
use super::*;

/// How often the catalog is checked.
const EVERY: Duration = Duration::from_secs(5);

/// A running probe; dropping it stops the task.
pub(super) struct Probe {
    task: tokio::task::JoinHandle<()>,
    dropped: Arc<Mutex<Option<String>>>,
    repartitioned: Arc<Mutex<Option<String>>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Starts checking that the tables in `tables` (OID, name, partitioned) exist, and that
    /// the partitioned ones keep the partitions they have now.
    pub(super) fn start(conn: pgrepl::Config, tables: Vec<(u32, String, bool)>) -> Probe {
        let dropped = Arc::new(Mutex::new(None));
        let repartitioned = Arc::new(Mutex::new(None));
        let (found, moved) = (dropped.clone(), repartitioned.clone());
        let task = tokio::spawn(async move {
            if tables.is_empty() {
                return;
            }
            let leaves = |oid: u32| {
                format!(
                    "SELECT coalesce(string_agg(relid::oid::text, ',' ORDER BY relid::oid), '') \
                     FROM pg_catalog.pg_partition_tree({oid}) WHERE isleaf"
                )
            };
            // The partitions as they are when streaming starts.
            let mut partitions: Vec<(u32, String, Option<String>)> = tables
                .iter()
                .filter(|(_, _, p)| *p)
                .map(|(o, n, _)| (*o, n.clone(), None))
                .collect();
            let tables: Vec<(u32, String)> = tables.into_iter().map(|(o, n, _)| (o, n)).collect();
            let mut first = true;
            let oids = tables.iter().map(|(o, _)| o.to_string()).collect::<Vec<_>>().join(",");
            let query = format!(
                "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid IN ({oids})"
            );
            let mut client: Option<ReplicationClient> = None;
            loop {
                if !first {
                    tokio::time::sleep(EVERY).await;
                }
                first = false;
                if client.is_none() {
                    client = ReplicationClient::connect_sql(&conn).await.ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let Ok(r) = c.simple_query(&query).await else {
                    client = None;
                    continue;
                };
                let present: Vec<(u32, String)> = r
                    .rows
                    .iter()
                    .filter_map(|r| Some((r[0].as_deref()?.parse().ok()?, r[1].clone()?)))
                    .collect();
                let mut changed: Vec<String> = Vec::new();
                for (oid, name) in &tables {
                    match present.iter().find(|(o, _)| o == oid) {
                        None => changed.push(format!("{name} (dropped)")),
                        Some((_, now)) if now != name => changed.push(format!("{name} (now {now})")),
                        Some(_) => {}
                    }
                }
                if !changed.is_empty() {
                    *found.lock().unwrap_or_else(|e| e.into_inner()) = Some(changed.join(", "));
                    return;
                }
                for (oid, name, seen) in partitions.iter_mut() {
                    let Ok(r) = c.simple_query(&leaves(*oid)).await else {
                        break;
                    };
                    let now = r.rows.first().and_then(|r| r[0].clone()).unwrap_or_default();
                    match seen {
                        None => *seen = Some(now),
                        Some(before) if *before != now => {
                            *moved.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
                            return;
                        }
                        Some(_) => {}
                    }
                }
            }
        });
        Probe {
            task,
            dropped,
            repartitioned,
        }
    }

    /// What the catalog changed that replication did not say, as an error that pauses it.
    pub(super) fn changed(&self) -> Option<SyncError> {
        if let Some(table) = self.repartitioned.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Some(SyncError::PartitionsChanged { table });
        }
        self.dropped()
    }

    /// The mapped tables found dropped or renamed.
    fn dropped(&self) -> Option<SyncError> {
        let tables = self.dropped.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(SyncError::Catalog(CatalogError::Table {
            table: tables,
            problem: "was dropped or renamed (a DDL change sends nothing through replication: the graph still holds its rows)".into(),
            fix: "remove its [[nodes]]/[[edges]] entries from the mapping, or write its new name, and reload it (graphsync reload; the graph is rebuilt)".into(),
        }))
    }
}
