//! Background (blue/green) rebuilds: a new generation of the replica — its own slot, initial
//! copy, snapshots and change log, in a directory beside the one in force — is built and
//! streamed by a second replicator while the graph in force keeps serving and streaming. Once
//! the new one has applied at least what the old one has, the old session stops at a
//! transaction boundary, the new one is stopped (everything it applied durable), the
//! generation pointer is switched (one atomic write), the new graph is published to the API in
//! one pointer swap, and the old slot and files are dropped.
//!
//! Started by a reload the old graph cannot take online (a table added or removed, a label or
//! property changed), by `POST /v1/admin/rebuild`, or by `--rebuild` when the data directory
//! holds a usable state. Before starting, the disk and memory the second graph needs are
//! checked against what is free.
//!
//! Not for the in-place rebuild of a data directory that cannot be resumed (the session does
//! that: there is nothing to serve meanwhile).

#[allow(unused_imports)]
use super::*;
use crate::generation::{self, Generation};

/// A rebuild in progress.
pub(super) struct Rebuild {
    task: tokio::task::JoinHandle<Result<Replicator, SyncError>>,
    /// The new generation's status.
    pub(super) status: Arc<ReplicaStatus>,
    stop: watch::Sender<bool>,
    generation: Generation,
    requested: Instant,
}

impl Rebuild {
    /// Whether the swap can happen (the new generation streams and has applied `applied`),
    /// or the rebuild ended (failed): the session in force should end so the run reaps it.
    pub(super) fn wants_swap(status: &ReplicaStatus, applied: Lsn) -> bool {
        let s = status.snapshot();
        match s.phase {
            // Within 1 MB of WAL: the old session stops and the swap waits the few
            // milliseconds the new one needs for the rest (under a steady load the old one may
            // never be exactly behind it).
            Phase::Streaming => s.applied_lsn.0.saturating_add(1 << 20) >= applied.0,
            Phase::Failed => true,
            _ => false,
        }
    }
}

/// Bytes free for unprivileged use on the file system holding `dir`.
fn free_disk(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// `MemAvailable` of /proc/meminfo, and this process's resident set, in bytes.
fn memory() -> Option<(u64, u64)> {
    let kb = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    };
    let available = kb(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")?;
    let rss = kb(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS:")?;
    Some((available, rss))
}

impl Replicator {
    /// Starts building the next generation with `config` beside the one in force. Refused
    /// (with what is missing) when the disk or memory the second graph needs is not free.
    /// With `base`, only the tables it names are copied (onto the graph in force).
    pub(super) fn start_rebuild(
        &mut self,
        config: Arc<MappingConfig>,
        why: String,
        base: Option<initial_copy::Base>,
    ) -> Result<(), String> {
        if let Some(rb) = &self.rebuilding {
            return Err(format!(
                "a background rebuild (generation {}) is in progress; try again once it is swapped in",
                rb.generation.number
            ));
        }
        // The second graph needs about what the first takes: its snapshot on disk (twice:
        // two are kept) and its memory.
        let snapshot_bytes = self.status.snapshot().snapshot_bytes;
        if let Some(free) = free_disk(&self.root) {
            let need = snapshot_bytes.saturating_mul(2);
            if free < need {
                return Err(format!(
                    "not enough disk for a second graph in {}: {} MB free, about {} MB needed (two snapshots of {} MB); \
                     fix: free disk space, or stop graphsync and run it with --rebuild (rebuilds in place, not serving meanwhile)",
                    self.root.display(),
                    free >> 20,
                    need >> 20,
                    snapshot_bytes >> 20
                ));
            }
        }
        if let Some((available, rss)) = memory() {
            if available < rss {
                return Err(format!(
                    "not enough memory for a second graph: {} MB available, this process uses {} MB; \
                     fix: free memory, or stop graphsync and run it with --rebuild (rebuilds in place, not serving meanwhile)",
                    available >> 20,
                    rss >> 20
                ));
            }
        }
        let next = generation::next(&self.root, &self.generation, &self.base_slot).map_err(|e| {
            format!(
                "cannot create the next generation's directory in {}: {e}",
                self.root.display()
            )
        })?;
        let mut opts = self.opts.clone();
        opts.yield_slot = false;
        opts.config = config.clone();
        opts.data_dir = next.dir.clone();
        opts.slot = next.slot.clone();
        opts.rebuild = true;
        opts.legacy_hash = false;
        let store = CheckpointStore::open(&next.dir).map_err(|e| e.to_string())?;
        let log = LogDir::open(&next.dir.join("log")).map_err(|e| e.to_string())?;
        let status = ReplicaStatus::new();
        if self.status.publish_floor().is_some() {
            // Publishing: nothing of the new generation is in the stream before the swap, so
            // its slot confirms nothing until then (a standby taking over the slot after a swap
            // finds the server resending from what the stream holds).
            status.gate_confirms(watch::channel(pgoutput::Lsn(0)).1);
        }
        let (stop, stopped) = watch::channel(false);
        let nested = Replicator {
            mapper: Mapper::new(config),
            rebuild: true,
            store,
            log,
            status: status.clone(),
            shutdown: stopped,
            reloads: None,
            state: None,
            restoring: None,
            root: self.root.clone(),
            base_slot: self.base_slot.clone(),
            generation: next.clone(),
            rebuilding: None,
            rebuild_after_restore: false,
            nested: true,
            auto_rebuild: None,
            tables: Vec::new(),
            base,
            opts,
        };
        tracing::info!(generation = next.number, slot = %next.slot, %why, "background rebuild started; the graph in force keeps serving");
        self.status.set_rebuild(Some(RebuildInfo {
            generation: next.number,
            why,
            started_unix_ms: now_ms(),
            status: status.clone(),
        }));
        self.rebuilding = Some(Rebuild {
            task: (self.opts.side_runtime.clone())
                .unwrap_or_else(tokio::runtime::Handle::current)
                .spawn(run_nested(nested)),
            status,
            stop,
            generation: next,
            requested: Instant::now(),
        });
        Ok(())
    }

    /// Swaps the rebuilt generation in (or reaps a failed rebuild). Called between sessions.
    pub(super) async fn swap(&mut self) {
        let Some(rb) = self.rebuilding.take() else { return };
        self.status.set_rebuild(None);
        // The new generation must have applied everything the old one has (it streams on).
        let target = self.state.as_ref().map_or(Lsn(0), |s| s.safe);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !rb.task.is_finished() {
            let s = rb.status.snapshot();
            if s.phase == Phase::Streaming && s.applied_lsn >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = rb.stop.send(true);
        let abandon = |why: String| {
            tracing::error!(%why, generation = rb.generation.number, "background rebuild failed; the graph in force keeps serving");
            why
        };
        let nested = match rb.task.await {
            Ok(Ok(n)) if n.state.as_ref().is_some_and(|st| st.safe >= target) => n,
            Ok(Ok(_)) => {
                let why = abandon("it stopped before catching up".into());
                self.fail_rebuild(&rb.generation, why).await;
                return;
            }
            Ok(Err(e)) => {
                let why = abandon(e.to_string());
                self.fail_rebuild(&rb.generation, why).await;
                return;
            }
            Err(e) => {
                let why = abandon(format!("its task ended: {e}"));
                self.fail_rebuild(&rb.generation, why).await;
                return;
            }
        };
        // The old generation: what it applied is in its log (no longer needed).
        let hash = self.opts.hash();
        if let Some(old) = self.state.as_mut() {
            let _ = old.log.flush(Duration::from_secs(30));
            finish_background(old, &self.status, &self.store, hash).await;
        }
        if let Err(e) = generation::commit(&self.root, &rb.generation) {
            let why = abandon(format!("cannot switch generations: {e}"));
            self.fail_rebuild(&rb.generation, why).await;
            return;
        }
        let old = std::mem::replace(&mut self.generation, rb.generation.clone());
        let Replicator {
            opts,
            store,
            log,
            mapper,
            state,
            status: new_status,
            tables,
            ..
        } = nested;
        self.tables = tables;
        let Some(mut st) = state else { return };
        self.opts = opts;
        self.opts.rebuild = false;
        self.store = store;
        self.log = log;
        self.mapper = mapper;
        // Subscribers of the old graph must refetch: the new one starts at the swap.
        match open_feed(&self.opts, self.opts.hash(), &self.status, st.safe) {
            Ok(feed) => {
                feed.set_floor(st.safe);
                st.feed = feed;
            }
            Err(e) => tracing::warn!(error = %e, "the change feed could not be reopened on the new generation"),
        }
        if let Some(old) = self.state.as_ref() {
            old.feed.supersede(st.safe);
        }
        let n = new_status.snapshot();
        match new_status.schema() {
            Some(schema) => self.status.set_served(st.graph.reader(), schema),
            None => self.status.set_graph(st.graph.reader()),
        }
        self.status.update(|s| {
            s.applied_lsn = st.safe;
            s.durable_lsn = n.durable_lsn;
            s.confirmed_lsn = n.confirmed_lsn;
            s.snapshot_lsn = n.snapshot_lsn;
            s.snapshot_bytes = n.snapshot_bytes;
            s.copies += n.copies;
            s.copied_rows += n.copied_rows;
            s.rebuilds += 1;
        });
        self.state = Some(st);
        self.auto_rebuild = None;
        tracing::info!(
            generation = rb.generation.number,
            slot = %rb.generation.slot,
            secs = format!("{:.2}", rb.requested.elapsed().as_secs_f64()),
            "background rebuild swapped in"
        );
        self.drop_slot(&old.slot).await;
        generation::remove(&self.root, &old);
    }

    /// Stops a rebuild in progress and drops what it made (shutdown: it starts over when asked
    /// again).
    pub(super) async fn abandon_rebuild(&mut self) {
        let Some(mut rb) = self.rebuilding.take() else { return };
        self.status.set_rebuild(None);
        let _ = rb.stop.send(true);
        // A copy in progress does not look at the stop signal: it is cut (nothing of it is
        // kept); a streaming one stops at a transaction boundary.
        if rb.status.snapshot().phase != Phase::Streaming {
            rb.task.abort();
        }
        if tokio::time::timeout(Duration::from_secs(30), &mut rb.task)
            .await
            .is_err()
        {
            rb.task.abort();
            let _ = (&mut rb.task).await;
        }
        tracing::info!(
            generation = rb.generation.number,
            "background rebuild abandoned at shutdown"
        );
        self.drop_slot(&rb.generation.slot).await;
        let _ = std::fs::remove_dir_all(&rb.generation.dir);
    }

    async fn fail_rebuild(&mut self, g: &Generation, why: String) {
        self.status
            .update(|s| s.last_error = Some(format!("background rebuild failed: {why}")));
        self.drop_slot(&g.slot).await;
        let _ = std::fs::remove_dir_all(&g.dir);
    }

    /// Drops a slot no longer used (logged, not fatal: the fix is named). A slot still held by
    /// a connection that is closing is retried for a few seconds.
    async fn drop_slot(&self, slot: &str) {
        let dropped = async {
            let mut c = ReplicationClient::connect(&self.opts.conn).await?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let r = loop {
                match catalog::slot_state(&mut c, slot).await {
                    Ok(Some(s)) if s.active_pid.is_some() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(Some(_)) => break c.drop_slot(slot, false).await.map_err(SyncError::from),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                }
            };
            c.close().await;
            r
        };
        if let Err(e) = dropped.await {
            tracing::warn!(slot, error = %e, "cannot drop the replication slot no longer used; it holds WAL until dropped: SELECT pg_drop_replication_slot('{slot}')");
        }
    }
}

/// Drops what an earlier generation or an unfinished rebuild left: inactive slots named after
/// the configured one (other than the generation's own) and `gen-*` directories other than its
/// own. Only between rebuilds. With `yield_slot` (replicas sharing a stream) other slots of the
/// family are left, with a warning: one may be another replica's.
pub(super) async fn cleanup_leftovers(
    client: &mut ReplicationClient,
    root: &std::path::Path,
    base_slot: &str,
    g: &Generation,
    yield_slot: bool,
) {
    let pattern = format!(
        "{}\\_g%",
        base_slot.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%")
    );
    let q = format!(
        "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE NOT active AND database = current_database() \
         AND (slot_name = {} OR slot_name LIKE {})",
        catalog::literal(base_slot),
        catalog::literal(&pattern)
    );
    if let Ok(r) = client.simple_query(&q).await {
        for name in r.rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
            if name == g.slot || !catalog::is_generation_slot(base_slot, &name) {
                continue;
            }
            if yield_slot {
                // Replicas sharing a stream share the slot family: an inactive one may be the
                // slot another replica leads from (between reconnects, or being taken over).
                tracing::warn!(slot = %name, "an inactive replication slot of this slot's family is not this replica's; if no replica of the stream uses it, drop it (it holds WAL): SELECT pg_drop_replication_slot('{name}')");
                continue;
            }
            match client.drop_slot(&name, false).await {
                Ok(()) => {
                    tracing::info!(slot = %name, "dropped a replication slot an earlier generation or an unfinished rebuild left")
                }
                Err(e) => {
                    tracing::warn!(slot = %name, error = %e, "cannot drop a replication slot left by an earlier generation")
                }
            }
        }
    }
    if g.number > 0 {
        // A crash between switching generations and deleting the first one's files.
        let first = Generation {
            number: 0,
            dir: root.to_path_buf(),
            slot: base_slot.to_string(),
        };
        generation::remove(root, &first);
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("gen-") && e.path() != g.dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The new generation's replicator: copies, then streams until stopped; returns itself with
/// its state.
async fn run_nested(mut r: Replicator) -> Result<Replicator, SyncError> {
    let mut backoff = Backoff::new();
    let result = loop {
        if *r.shutdown.borrow() {
            r.stop_unconnected().await;
            break Ok(());
        }
        match session(&mut r).await {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "background rebuild: replication interrupted; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = r.shutdown.changed() => {}
                }
            }
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(()) => Ok(r),
        Err(e) => {
            r.status.update(|s| {
                s.phase = Phase::Failed;
                s.last_error = Some(e.to_string());
            });
            Err(e)
        }
    }
}
