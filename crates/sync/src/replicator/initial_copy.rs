//! The initial copy: a slot with an exported snapshot, `COPY` of every mapped table inside it
//! on a second connection, bulk build, checkpoint at the consistent point.

#[allow(unused_imports)]
use super::*;

pub(super) async fn initial_copy(
    opts: &Options,
    client: &mut ReplicationClient,
    tables: &[TableInfo],
    mapper: &mut Mapper,
    store: &CheckpointStore,
) -> Result<(Graph, RowIndex, Lsn), SyncError> {
    std::fs::write(store.dir().join("initial-copy.started"), b"")
        .map_err(|e| SyncError::Io(format!("cannot write to data directory {}: {e}", store.dir().display())))?;
    let created = client
        .create_slot(
            &opts.slot,
            CreateSlotOptions {
                temporary: false,
                two_phase: false,
                snapshot: SlotSnapshot::Export,
            },
        )
        .await?;
    let snapshot = created
        .snapshot_name
        .clone()
        .ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into()))?;
    tracing::info!(slot = %opts.slot, consistent_point = %created.consistent_point, "created replication slot; copying tables");
    let mut copier = ReplicationClient::connect_sql(&opts.conn).await?;
    copier
        .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    copier
        .simple_query(&format!("SET TRANSACTION SNAPSHOT {}", catalog::literal(&snapshot)))
        .await?;
    let index = mapper.index_for(|t| {
        tables
            .iter()
            .find(|x| x.qualified == t)
            .map(|x| x.identity_columns.clone())
    });
    let mut bulk = BulkLoad::new(index);
    let all = Instant::now();
    // Node tables first: most edges then find their endpoints already known.
    let mut order: Vec<&TableInfo> = tables.iter().collect();
    order.sort_by_key(|t| !opts.config.nodes.iter().any(|n| n.table == t.qualified));
    for t in order {
        let mut cols = catalog::needed_columns(&opts.config, &t.qualified);
        if !opts.config.nodes.iter().any(|n| n.table == t.qualified) {
            for c in &t.identity_columns {
                if !cols.contains(c) {
                    cols.push(c.clone());
                }
            }
        }
        let rel = Arc::new(t.relation(&cols));
        let sql = format!(
            // The SELECT form also reads partitioned tables (a plain COPY of one is refused).
            "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
            cols.iter()
                .map(|c| pgrepl::quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            t.quoted()
        );
        let mut reader = CopyReader::new(cols.len());
        let started = Instant::now();
        let before = bulk.rows();
        let mut failed: Option<SyncError> = None;
        let mut last_log = Instant::now();
        let mut values = Vec::new();
        let copied = copier
            .copy_out(&sql, |chunk| {
                let r = reader.push::<SyncError>(&chunk, |tuple| {
                    rel.typed_values_into(&tuple, "COPY", &mut values)
                        .map_err(|source| MapError::Decode {
                            table: t.qualified.clone(),
                            source,
                        })?;
                    bulk.insert(mapper, &rel, &values)?;
                    Ok(())
                });
                if let Err(e) = r {
                    let msg = e.to_string();
                    failed = Some(e);
                    return Err(msg);
                }
                if last_log.elapsed() > Duration::from_secs(5) {
                    last_log = Instant::now();
                    let rows = bulk.rows() - before;
                    tracing::info!(table = %t.qualified, rows, rows_per_s = (rows as f64 / started.elapsed().as_secs_f64()) as u64, "copying");
                }
                Ok(())
            })
            .await;
        if let Some(e) = failed {
            return Err(e);
        }
        copied?;
        reader.finish().map_err(|source| SyncError::Copy {
            table: t.qualified.clone(),
            source,
        })?;
        let rows = bulk.rows() - before;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table = %t.qualified, rows, secs = format!("{secs:.2}"), rows_per_s = (rows as f64 / secs.max(1e-9)) as u64, "copied table");
    }
    copier.simple_query("COMMIT").await?;
    copier.close().await;
    let lsn = created.consistent_point;
    let rows = bulk.rows();
    let (graph, index) = tokio::task::block_in_place(|| bulk.finish(lsn.0, opts.compaction))?;
    let v = graph.view();
    tracing::info!(
        rows,
        nodes = v.node_count(),
        edges = v.edge_count(),
        secs = format!("{:.2}", all.elapsed().as_secs_f64()),
        "initial copy done"
    );
    Ok((graph, index, lsn))
}
