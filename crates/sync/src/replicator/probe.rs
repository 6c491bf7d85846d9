//! Watching the catalog for what the replication stream does not say: a mapped table dropped
//! (`DROP TABLE` sends nothing through pgoutput, so its nodes and edges would linger silently).
//! A task per streaming session checks, every few seconds on a connection of its own, that
//! every mapped table's OID still exists; the stream loop pauses replication when one is gone.
//! Connection trouble here is never an error: the stream has its own.

#[allow(unused_imports)]
use super::*;

/// How often the catalog is checked.
const EVERY: Duration = Duration::from_secs(5);

/// A running probe; dropping it stops the task.
pub(super) struct Probe {
    task: tokio::task::JoinHandle<()>,
    dropped: Arc<Mutex<Option<String>>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Starts checking that the tables in `tables` (OID, name) exist.
    pub(super) fn start(conn: pgrepl::Config, tables: Vec<(u32, String)>) -> Probe {
        let dropped = Arc::new(Mutex::new(None));
        let found = dropped.clone();
        let task = tokio::spawn(async move {
            if tables.is_empty() {
                return;
            }
            let oids = tables.iter().map(|(o, _)| o.to_string()).collect::<Vec<_>>().join(",");
            let query = format!("SELECT oid FROM pg_catalog.pg_class WHERE oid IN ({oids})");
            let mut client: Option<ReplicationClient> = None;
            loop {
                tokio::time::sleep(EVERY).await;
                if client.is_none() {
                    client = ReplicationClient::connect_sql(&conn).await.ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let Ok(r) = c.simple_query(&query).await else {
                    client = None;
                    continue;
                };
                let present: Vec<u32> = r
                    .rows
                    .iter()
                    .filter_map(|r| r[0].as_deref().and_then(|s| s.parse().ok()))
                    .collect();
                let gone: Vec<&str> = tables
                    .iter()
                    .filter(|(o, _)| !present.contains(o))
                    .map(|(_, n)| n.as_str())
                    .collect();
                if !gone.is_empty() {
                    *found.lock().unwrap_or_else(|e| e.into_inner()) = Some(gone.join(", "));
                    return;
                }
            }
        });
        Probe { task, dropped }
    }

    /// The mapped tables found dropped, as an error that pauses replication.
    pub(super) fn dropped(&self) -> Option<SyncError> {
        let tables = self.dropped.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(SyncError::Catalog(CatalogError::Table {
            table: tables,
            problem: "was dropped (DROP TABLE sends nothing through replication: its nodes and edges are still in the graph)".into(),
            fix: "remove its [[nodes]]/[[edges]] entries from the mapping and reload it (graphsync reload; the graph is rebuilt without it)".into(),
        }))
    }
}
