//! The initial copy's loading thread: the replicator's thread reads and decodes the copied
//! rows, this thread maps them into the [`BulkLoad`], in batches handed over through a bounded
//! queue. The two halves of a row's cost (decoding; key lookups and the build) then run on two
//! cores, beside the server's COPY backend, which uses about a third of one.
//!
//! Rows keep their order. The first mapping error stops the thread; the replicator sees it at
//! its next hand-over, at [`Loader::finish`], or when its own side fails ([`Loader::fail`]
//! prefers the thread's error, the earlier one), so nothing after a bad row is loaded and the
//! copy fails with that row's error.
//!
//! Not for the copy of newly mapped tables into a live graph (`table_copy` maps rows through
//! the `Mapper` on its own thread).

#[allow(unused_imports)]
use super::*;
use crate::mapper::BulkPlan;
use pgoutput::{Relation, Value};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Rows per hand-over.
const BATCH_ROWS: usize = 2048;
/// Rows ahead of the one being added whose id slots are requested.
const PREFETCH: usize = 12;
/// Batches queued for the loading thread before the reader waits.
const QUEUE: usize = 4;

/// Rows of one table, their values back to back.
struct Batch {
    plan: BulkPlan,
    values: Vec<Value>,
    /// Values per row.
    width: usize,
    rows: usize,
}

/// The table rows are being batched for: the relation as the copy sent it (compared by
/// pointer: one per copied table) and its plan.
struct Table {
    rel: Arc<Relation>,
    plan: BulkPlan,
    width: usize,
}

/// A [`BulkLoad`] running on its own thread.
pub(super) struct Loader {
    /// Taken by `finish` (closing the queue ends the thread).
    tx: Option<SyncSender<Batch>>,
    /// Emptied batches coming back, so their buffers are reused.
    spare: Receiver<Vec<Value>>,
    table: Option<Table>,
    batch: Option<Batch>,
    thread: Option<JoinHandle<Result<BulkLoad, MapError>>>,
}

impl Loader {
    /// Starts the loading thread on `bulk`.
    pub(super) fn spawn(mut bulk: BulkLoad) -> Result<Loader, SyncError> {
        let (tx, rx) = sync_channel::<Batch>(QUEUE);
        let (back, spare) = sync_channel::<Vec<Value>>(QUEUE + 2);
        let thread = std::thread::Builder::new()
            .name("graphsync-bulk-load".into())
            .spawn(move || {
                for mut b in rx {
                    let row = |i: usize| &b.values[i * b.width..(i + 1) * b.width];
                    // The id slots a row reads are requested PREFETCH rows before it is added:
                    // by then they are in cache.
                    for i in 0..b.rows.min(PREFETCH) {
                        bulk.prefetch_planned(&b.plan, row(i));
                    }
                    for i in 0..b.rows {
                        if i + PREFETCH < b.rows {
                            bulk.prefetch_planned(&b.plan, row(i + PREFETCH));
                        }
                        bulk.insert_planned(&b.plan, row(i))?;
                    }
                    b.values.clear();
                    let _ = back.try_send(b.values);
                }
                Ok(bulk)
            })
            .map_err(|e| SyncError::Io(format!("cannot start the initial copy's loading thread: {e}")))?;
        Ok(Loader {
            tx: Some(tx),
            spare,
            table: None,
            batch: None,
            thread: Some(thread),
        })
    }

    /// Queues one copied row of `rel`; its values are taken out of `values`.
    pub(super) fn push(
        &mut self,
        mapper: &mut Mapper,
        rel: &Arc<Relation>,
        values: &mut Vec<Value>,
    ) -> Result<(), SyncError> {
        if !self.table.as_ref().is_some_and(|t| Arc::ptr_eq(&t.rel, rel)) {
            self.send()?;
            self.table = mapper.bulk_plan(rel)?.map(|plan| Table {
                rel: rel.clone(),
                plan,
                width: values.len(),
            });
        }
        let Some(t) = &self.table else {
            return Ok(());
        };
        debug_assert_eq!(values.len(), t.width, "every row of a copied table has its columns");
        let spare = &self.spare;
        let b = self.batch.get_or_insert_with(|| Batch {
            plan: t.plan.clone(),
            values: spare.try_recv().unwrap_or_default(),
            width: t.width,
            rows: 0,
        });
        b.values.append(values);
        b.rows += 1;
        if b.rows == BATCH_ROWS {
            self.send()?;
        }
        Ok(())
    }

    /// Hands the current batch over (waiting while the queue is full).
    fn send(&mut self) -> Result<(), SyncError> {
        let Some(b) = self.batch.take().filter(|b| b.rows > 0) else {
            return Ok(());
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(b).is_ok());
        if !sent {
            // The thread stopped on an error: report it.
            self.join()?;
            return Err(SyncError::Io("the initial copy's loading thread stopped".into()));
        }
        Ok(())
    }

    /// Loads what is queued and returns the build.
    pub(super) fn finish(mut self) -> Result<BulkLoad, SyncError> {
        self.send()?;
        self.join()
    }

    /// Ends a copy that failed with `e` on the reading side: the error of a row queued before
    /// it, if one fails to map (the earlier cause), else `e`.
    pub(super) fn fail(mut self, e: SyncError) -> SyncError {
        // Rows queued before the failure are mapped first: an error among them came earlier.
        match self.send().and_then(|()| self.join()) {
            Err(first) => first,
            Ok(_) => e,
        }
    }

    fn join(&mut self) -> Result<BulkLoad, SyncError> {
        self.tx = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| SyncError::Io("the initial copy's loading thread stopped".into()))?;
        match thread.join() {
            Ok(r) => Ok(r?),
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(SyncError::Io(format!(
                    "the initial copy's loading thread panicked ({what}); this is a bug: please report it"
                )))
            }
        }
    }
}

impl Drop for Loader {
    /// A copy that ended early: the thread ends once the queue is closed and drained.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::ReplicaIdentity;
    use std::path::Path;

    const CONFIG: &str = r#"
[[nodes]]
table = "public.n"
key = "id"
label = "N"

[[edges]]
table = "public.e"
label = "E"
source = { column = "a", node = "N" }
target = { column = "b", node = "N" }
"#;

    /// The relation the copy types `name`'s rows with (integer columns, all in the identity).
    fn rel(oid: u32, name: &str, cols: &[&str]) -> Arc<Relation> {
        let cols: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        let table = TableInfo {
            qualified: format!("public.{name}"),
            schema: "public".into(),
            name: name.into(),
            oid,
            identity: ReplicaIdentity::Default,
            columns: cols.iter().map(|c| (c.clone(), 23)).collect(),
            attnums: (1..=cols.len() as i32).collect(),
            identity_columns: cols.clone(),
            partitioned: false,
        };
        Arc::new(table.relation(&cols))
    }

    fn mapper() -> (Mapper, RowIndex) {
        let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("t.toml")).unwrap());
        let mapper = Mapper::new(config);
        let index = mapper.index_for(|t| match t {
            "public.e" => Some(vec!["a".into(), "b".into()]),
            _ => Some(vec!["id".into()]),
        });
        (mapper, index)
    }

    /// Rows of two tables over many batches: the build holds what loading them one by one on
    /// the caller's thread gives.
    #[test]
    fn loads_what_a_direct_build_loads() {
        let (n, e) = (rel(1, "n", &["id"]), rel(2, "e", &["a", "b"]));
        let rows: Vec<(Arc<Relation>, Vec<Value>)> = (0..3_000)
            .map(|i| (n.clone(), vec![Value::Int4(i)]))
            .chain((0..10_000).map(|i| (e.clone(), vec![Value::Int4(i % 3_500), Value::Int4(i * 7 % 3_100)])))
            .collect();
        let (mut m1, index) = mapper();
        let mut direct = BulkLoad::new(index);
        for (r, v) in &rows {
            direct.insert(&mut m1, r, v).unwrap();
        }
        let (mut m2, index) = mapper();
        let mut loader = Loader::spawn(BulkLoad::new(index)).unwrap();
        for (r, v) in &rows {
            loader.push(&mut m2, r, &mut v.clone()).unwrap();
        }
        let loaded = loader.finish().unwrap();
        assert_eq!(loaded.rows(), direct.rows());
        let (a, _) = direct.finish(1, Default::default()).unwrap();
        let (b, _) = loaded.finish(1, Default::default()).unwrap();
        let (a, b) = (a.view(), b.view());
        assert_eq!((a.node_count(), a.edge_count()), (b.node_count(), b.edge_count()));
        for id in 0..a.node_count() {
            let id = graph::NodeId(id);
            assert_eq!(a.node(id).map(|d| d.key.clone()), b.node(id).map(|d| d.key.clone()));
            assert_eq!(a.is_visible(id), b.is_visible(id));
            let out = |g: &graph::GraphView| {
                let mut v = Vec::new();
                g.for_each_edge(id, graph::Direction::Out, |n, l, w| v.push((n, l, w)));
                v
            };
            assert_eq!(out(&a), out(&b));
        }
    }

    /// A row the mapping refuses (a NULL key) fails the copy with its error, at a later
    /// hand-over or at the end, whatever follows it.
    #[test]
    fn a_bad_row_fails_the_copy_with_its_error() {
        let n = rel(1, "n", &["id"]);
        let (mut m, index) = mapper();
        let mut loader = Loader::spawn(BulkLoad::new(index)).unwrap();
        let mut failed = None;
        for i in 0..(BATCH_ROWS * (QUEUE + 3)) as i32 {
            let v = if i == 5 { Value::Null } else { Value::Int4(i) };
            if let Err(e) = loader.push(&mut m, &n, &mut vec![v]) {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => loader.finish().expect_err("the copy fails"),
        };
        assert!(err.to_string().contains("is NULL"), "{err}");
    }

    /// A copy retried with the same mapper (its stored plan holds the earlier, equal relation)
    /// still batches rows.
    #[test]
    fn rows_of_a_table_planned_before_still_batch() {
        let (mut m, index) = mapper();
        m.bulk_plan(&rel(1, "n", &["id"])).unwrap();
        let n = rel(1, "n", &["id"]);
        let mut loader = Loader::spawn(BulkLoad::new(index)).unwrap();
        for i in 0..10 {
            loader.push(&mut m, &n, &mut vec![Value::Int4(i)]).unwrap();
        }
        assert_eq!(loader.batch.as_ref().map(|b| b.rows), Some(10));
        assert_eq!(loader.finish().unwrap().rows(), 10);
    }

    /// A failure on the reading side after a bad row was queued: the bad row's error wins.
    #[test]
    fn an_earlier_bad_row_wins_over_a_later_failure() {
        let n = rel(1, "n", &["id"]);
        let (mut m, index) = mapper();
        let mut loader = Loader::spawn(BulkLoad::new(index)).unwrap();
        for i in 0..10 {
            let v = if i == 5 { Value::Null } else { Value::Int4(i) };
            loader.push(&mut m, &n, &mut vec![v]).unwrap();
        }
        let err = loader.fail(SyncError::Io("the connection was lost".into()));
        assert!(err.to_string().contains("is NULL"), "{err}");
    }
}
