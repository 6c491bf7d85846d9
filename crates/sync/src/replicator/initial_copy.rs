//! The initial copy: a slot with an exported snapshot, `COPY` of every mapped table inside it
//! on a second connection, bulk build, checkpoint at the consistent point. Also the copy of
//! only the tables a mapping newly maps, onto the graph in force brought to the same point.

use super::loader::Loader;
#[allow(unused_imports)]
use super::*;
use pgoutput::{Relation, Value};

/// The slot (with its consistent point) and a second connection inside its exported snapshot.
async fn begin_copy(
    opts: &Options,
    client: &mut ReplicationClient,
    store: &CheckpointStore,
) -> Result<(pgrepl::CreatedSlot, ReplicationClient), SyncError> {
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
    Ok((created, copier))
}

/// Copies table `t` (the columns `config` reads, and its identity for an edge table), handing
/// each row's typed values to `row`; returns the rows copied.
async fn copy_table<F>(
    copier: &mut ReplicationClient,
    config: &MappingConfig,
    t: &TableInfo,
    progress: &ReplicaStatus,
    mut row: F,
) -> Result<u64, SyncError>
where
    F: FnMut(&Arc<Relation>, &mut Vec<Value>) -> Result<(), SyncError>,
{
    let mut cols = catalog::needed_columns(config, &t.qualified);
    if !config.nodes.iter().any(|n| n.table == t.qualified) {
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
    let mut rows = 0u64;
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
                row(&rel, &mut values)?;
                rows += 1;
                if rows.is_multiple_of(65_536) {
                    progress.update(|s| s.copied_rows += 65_536);
                    // The clock is read here, not per message: each row is a message of its
                    // own, and reading it per row cost 3 % of the copy.
                    if last_log.elapsed() > Duration::from_secs(5) {
                        last_log = Instant::now();
                        tracing::info!(table = %t.qualified, rows, rows_per_s = (rows as f64 / started.elapsed().as_secs_f64()) as u64, "copying");
                    }
                }
                Ok(())
            });
            if let Err(e) = r {
                let msg = e.to_string();
                failed = Some(e);
                return Err(msg);
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
    progress.update(|s| s.copied_rows += rows % 65_536);
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(table = %t.qualified, rows, secs = format!("{secs:.2}"), rows_per_s = (rows as f64 / secs.max(1e-9)) as u64, "copied table");
    Ok(rows)
}

pub(super) async fn initial_copy(
    opts: &Options,
    client: &mut ReplicationClient,
    tables: &[TableInfo],
    mapper: &mut Mapper,
    store: &CheckpointStore,
    progress: &ReplicaStatus,
) -> Result<(Graph, RowIndex, Lsn), SyncError> {
    let (created, mut copier) = begin_copy(opts, client, store).await?;
    let index = mapper.index_for_tables(tables);
    let mut loader = Loader::spawn(BulkLoad::new(index))?;
    let all = Instant::now();
    // Node tables first: most edges then find their endpoints already known.
    let mut order: Vec<&TableInfo> = tables.iter().collect();
    order.sort_by_key(|t| !opts.config.nodes.iter().any(|n| n.table == t.qualified));
    for t in order {
        let copied = copy_table(&mut copier, &opts.config, t, progress, |rel, values| {
            loader.push(mapper, rel, values)
        })
        .await;
        if let Err(e) = copied {
            return Err(loader.fail(e));
        }
    }
    if let Err(e) = copier.simple_query("COMMIT").await {
        return Err(loader.fail(e.into()));
    }
    copier.close().await;
    let bulk = crate::blocking(|| loader.finish())?;
    let lsn = created.consistent_point;
    let rows = bulk.rows();
    let (graph, index) = crate::blocking(|| bulk.finish(lsn.0, opts.compaction))?;
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

/// What a rebuild that copies only newly mapped tables starts from: the graph in force, its
/// row index and position, and its change log to bring it to the new slot's consistent point.
pub(super) struct Base {
    pub(super) view: Arc<graph::GraphView>,
    pub(super) index: RowIndex,
    pub(super) lsn: Lsn,
    pub(super) log: LogDir,
    pub(super) hash: u64,
    /// What to copy or rewrite.
    pub(super) reshape: crate::mapping_change::Reshape,
    /// The filter names of the mapping in force (filter numbers by name).
    pub(super) old_filters: Vec<String>,
    /// Keeps the log in force from being pruned past `lsn` until the replay is done.
    pub(super) pin: LogPin,
    /// The status of the replicator in force (its durable position).
    pub(super) status: Arc<ReplicaStatus>,
}

/// The graph of a mapping that adds tables to the one in force: the graph in force at the new
/// slot's consistent point (its base replayed from its change log up to that point) with only
/// the added tables copied into it, in one transaction at that point.
pub(super) async fn table_copy(
    opts: &Options,
    client: &mut ReplicationClient,
    tables: &[TableInfo],
    mapper: &mut Mapper,
    store: &CheckpointStore,
    progress: &ReplicaStatus,
    base: Base,
) -> Result<(Graph, RowIndex, Lsn), SyncError> {
    let (created, mut copier) = begin_copy(opts, client, store).await?;
    let lsn = created.consistent_point;
    let all = Instant::now();
    // The graph in force must have logged everything up to the consistent point durably.
    let deadline = Instant::now() + Duration::from_secs(300);
    while base.status.snapshot().durable_lsn < lsn {
        if Instant::now() > deadline {
            return Err(SyncError::Io(format!(
                "the graph in force did not reach {lsn} within 5 minutes (paused or far behind); copy every table instead (graphsync reload --rebuild)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let empty = mapper.index_for_tables(tables);
    let Base {
        view,
        index,
        lsn: from,
        log,
        hash,
        reshape,
        old_filters,
        pin,
        ..
    } = base;
    let (mut graph, mut index, replayed) = crate::blocking(|| {
        let mut graph = Graph::from_view((*view).clone(), opts.compaction);
        if (0..index.len_mappings()).any(|i| index.mode(i) != empty.mode(i)) {
            return Err(SyncError::Io(
                "the new mapping finds some existing edges another way (an edge label now shared, or a replica identity changed); copy every table instead (graphsync reload --rebuild)".into(),
            ));
        }
        let mut index = index.extended(empty);
        let r = crate::changelog::replay_until(&log, hash, from, Some(lsn), &mut graph, &mut index)?;
        if graph.read_only_reason().is_some() {
            graph.compact()?;
        }
        Ok::<_, SyncError>((graph, index, r))
    })?;
    drop(pin);
    tracing::info!(from = %from, to = %lsn, txns = replayed.txns, "brought the graph in force to the new slot's consistent point");
    mapper.seed_key_classes(&graph.view());
    let view = graph.view();
    let mut t = graph.begin(lsn.0)?;
    let mut rows = 0;
    for nr in &reshape.nodes {
        if nr.copies() {
            // Fields newly mapped: this table's node rows again (its edges untouched).
            let Some(info) = tables.iter().find(|t| t.qualified == nr.table) else {
                continue;
            };
            rows += copy_table(&mut copier, &opts.config, info, progress, |rel, values| {
                mapper.upsert_node_values(&mut t, rel, values)?;
                Ok(())
            })
            .await?;
            continue;
        }
        // Renamed or removed fields: rewritten from what the graph holds.
        let label = graph::NodeLabel(nr.index as u16);
        for id in 0..view.node_count() {
            let n = graph::NodeId(id);
            let Some(d) = view.node(n).filter(|d| d.label == label && view.is_visible(n)) else {
                continue;
            };
            t.upsert_node(reshaped(&d, nr, &old_filters, mapper.filter_names()));
        }
    }
    for name in &reshape.new_tables {
        let Some(info) = tables.iter().find(|t| &t.qualified == name) else {
            continue;
        };
        rows += copy_table(&mut copier, &opts.config, info, progress, |rel, values| {
            mapper.insert_values(&mut t, &mut index, rel, values)?;
            Ok(())
        })
        .await?;
    }
    t.commit()?;
    copier.simple_query("COMMIT").await?;
    copier.close().await;
    crate::blocking(|| graph.compact())?;
    let v = graph.view();
    tracing::info!(
        new_tables = %reshape.new_tables.join(", "),
        reshaped_labels = reshape.nodes.len(),
        copied_tables = reshape.copied_tables(),
        rows,
        nodes = v.node_count(),
        edges = v.edge_count(),
        secs = format!("{:.2}", all.elapsed().as_secs_f64()),
        "brought the graph in force to the new mapping, copying only what it newly reads"
    );
    Ok((graph, index, lsn))
}

/// A node's data under the new mapping, from what the graph holds (fields renamed, removed,
/// renumbered; nothing newly read).
fn reshaped(
    d: &graph::NodeData,
    nr: &crate::mapping_change::NodeReshape,
    old_filters: &[String],
    new_filters: &[String],
) -> graph::NodeData {
    use crate::mapping_change::Source;
    let properties: Vec<(Arc<str>, graph::PropValue)> = nr
        .properties
        .iter()
        .filter_map(|(name, src)| match src {
            Source::Held(old) => d
                .properties
                .iter()
                .find(|(k, _)| &**k == old)
                .map(|(_, v)| (Arc::from(name.as_str()), v.clone())),
            Source::Copied => None,
        })
        .collect();
    let filters: Vec<(graph::FilterId, graph::NodeKey)> = nr
        .filters
        .iter()
        .filter_map(|(name, src)| match src {
            Source::Held(old) => {
                let was = old_filters.iter().position(|f| f == old)?;
                let now = new_filters.iter().position(|f| f == name)?;
                d.filters
                    .iter()
                    .find(|(f, _)| usize::from(f.0) == was)
                    .map(|(_, v)| (graph::FilterId(now as u16), v.clone()))
            }
            Source::Copied => None,
        })
        .collect();
    graph::NodeData {
        label: d.label,
        key: d.key.clone(),
        tenant: nr.tenant.as_ref().and(d.tenant.clone()),
        filters: filters.into(),
        properties: properties.into(),
    }
}
