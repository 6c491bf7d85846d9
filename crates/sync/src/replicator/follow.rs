//! A follower's replica: a leader's change-log records, applied in LSN order onto the graph
//! restored from the follower's own data directory (a snapshot installed from the leader's,
//! then its own change log and snapshots, exactly as a replicator keeps them), with the same
//! status, graph reader and change feed the HTTP API serves.
//!
//! Records carry the leader's node ids, so they apply only onto the leader's graph at the
//! record's starting point: a record that does not fit (another node count) is
//! [`SyncError::Replay`] and the caller re-bootstraps from a newer snapshot.
//!
//! Not for: where records come from (JetStream, in the `scaleout` crate) — this module never
//! touches a socket.

#[allow(unused_imports)]
use super::*;
use crate::changelog::record::{self, Record};

/// A follower's graph, log and status.
pub struct Follower {
    opts: Options,
    store: CheckpointStore,
    st: State,
    status: Arc<ReplicaStatus>,
    hash: u64,
    mapper: Mapper,
    decoder: graph::wire::Decoder,
    /// Whether every label's key kinds came from a node (else they are re-read now and then).
    kinds_known: bool,
    next_kinds: Instant,
}

impl Follower {
    /// Opens the follower's data directory (`opts.data_dir`): the newest usable snapshot with
    /// the follower's own log replayed onto it. `Ok(None)` when it holds no snapshot (install
    /// one first: [`Follower::install`]).
    pub fn open(opts: Options, status: Arc<ReplicaStatus>) -> Result<Option<Follower>, SyncError> {
        let hash = opts.hash();
        let store = CheckpointStore::open(&opts.data_dir)?;
        let log = LogDir::open(&opts.data_dir.join("log"))?;
        let Some(r) = crate::blocking(|| restore::restore(&store, &log, hash))? else {
            return Ok(None);
        };
        let position = r.position();
        tracing::info!(
            snapshot_lsn = %r.restored.lsn,
            position = %position,
            replayed_changes = r.replayed.mutations,
            ms = r.took.as_millis() as u64,
            snapshot_ms = r.loading.as_millis() as u64,
            "restored"
        );
        let mut graph = r.restored.graph;
        graph.set_policy(opts.compaction);
        let mapper = Mapper::new(opts.config.clone());
        let names = schema(&opts, &mapper, &[], Some(&graph.view()), hash);
        let kinds_known = crate::mapper::first_keys(&graph.view(), mapper.node_labels().len())
            .iter()
            .all(Option::is_some);
        let writer = LogWriter::open(&log, position, writer_options(&opts))?;
        status.set_served(graph.reader(), Arc::new(names));
        let feed = open_feed(&opts, hash, &status, position)?;
        status.update(|s| {
            s.phase = Phase::Streaming;
            s.applied_lsn = position;
            s.durable_lsn = position;
            s.snapshot_lsn = r.restored.manifest.lsn;
            s.replayed_changes = r.replayed.mutations;
        });
        let st = State {
            graph,
            index: r.restored.index,
            safe: position,
            manifest: r.restored.manifest,
            log: writer,
            feed,
            logged: position,
            since_snapshot: r.replayed.mutations,
            bg: Background::default(),
            log_pin: Arc::default(),
        };
        Ok(Some(Follower {
            opts,
            store,
            st,
            status,
            hash,
            mapper,
            decoder: graph::wire::Decoder::default(),
            kinds_known,
            next_kinds: Instant::now(),
        }))
    }

    /// Makes a leader's snapshot the data directory's only state: `snapshot` and `rows` (files
    /// in the data directory, named as [`CheckpointStore::snapshot_name`] and
    /// `rows-<LSN>.idx` name them for `lsn`) become the checkpoint; the follower's own log and
    /// every other snapshot are removed. Checks that the snapshot loads before anything is
    /// removed.
    pub fn install(data_dir: &std::path::Path, lsn: Lsn, mapping_hash: u64) -> Result<(), SyncError> {
        // The log first: a crash in between leaves the previous snapshot with no log, a
        // consistent (older) state, never the old log replayed onto the new snapshot. The
        // lineage before both: the caller records the new graph's once it is installed.
        match std::fs::remove_file(data_dir.join(crate::checkpoint::LINEAGE_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SyncError::Io(format!(
                    "cannot replace the lineage in {}: {e}",
                    data_dir.display()
                )))
            }
            _ => {}
        }
        LogDir::open(&data_dir.join("log"))?.clear()?;
        CheckpointStore::open(data_dir)?.adopt(lsn, mapping_hash)?;
        Ok(())
    }

    /// Every record at or before this is applied.
    pub fn applied(&self) -> Lsn {
        self.st.safe
    }

    /// The status the API serves.
    pub fn status(&self) -> &Arc<ReplicaStatus> {
        &self.status
    }

    /// Applies `records` (LSN, payload; increasing LSNs) after what is applied — those at or
    /// before it are skipped — publishes one view for them, and logs them. After an error the
    /// graph may hold records the log does not: drop the follower and open it again.
    pub fn apply(&mut self, records: &[(Lsn, bytes::Bytes)]) -> Result<usize, SyncError> {
        let records: Vec<&(Lsn, bytes::Bytes)> = records.iter().filter(|(l, _)| *l > self.st.safe).collect();
        let Some(&&(last, _)) = records.last() else {
            return Ok(0);
        };
        let started = Instant::now();
        if self.st.graph.read_only_reason().is_some() {
            tracing::warn!("overlays at the hard limit; compacting before applying");
            crate::blocking(|| self.st.graph.compact())?;
        }
        let mismatch = |lsn: Lsn, what: String| SyncError::Replay(ReplayError::Mismatch { lsn, what });
        let mut next_id = self.st.graph.view().node_count();
        let mut mutations = Vec::new();
        let mut index_ops = Vec::new();
        let mut txns = Vec::new();
        for (lsn, payload) in &records {
            let rec = record::decode_with(payload, &mut self.decoder, false)
                .map_err(|e| mismatch(*lsn, format!("the record cannot be decoded: {e}")))?;
            let Record::Changes {
                txns: ends,
                node_count_before,
                mutations: m,
                index_ops: i,
                ..
            } = rec
            else {
                continue;
            };
            if node_count_before != next_id {
                return Err(mismatch(
                    *lsn,
                    format!("it starts at node id {node_count_before}, the graph has {next_id} nodes"),
                ));
            }
            for l in m {
                if matches!(l.mutation, graph::Mutation::AddNode) {
                    next_id += 1;
                }
                mutations.push(l.mutation);
            }
            index_ops.extend(i);
            txns.extend(ends);
        }
        // A mutation that does not apply means the records do not fit this graph.
        let misfit = |e: graph::ApplyError| mismatch(last, e.to_string());
        let mut t = self.st.graph.begin(last.0).map_err(misfit)?;
        let changed = mutations.len() as u64;
        for m in mutations {
            t.push(m).map_err(misfit)?;
        }
        t.commit().map_err(misfit)?;
        self.st.safe = last;
        for op in index_ops {
            self.st.index.apply_op(op).map_err(|what| mismatch(last, what))?;
        }
        for (lsn, payload) in &records {
            self.st.feed.push(*lsn, payload, self.st.log.durable());
            self.st.log.append(*lsn, payload.to_vec())?;
        }
        self.st.logged = last;
        self.st.since_snapshot += changed;
        let now_us = unix_micros_now();
        let took = started.elapsed().as_secs_f64();
        self.status.update(|s| {
            s.apply_seconds.observe(took);
            for t in &txns {
                s.commit_to_apply_seconds
                    .observe(((now_us - t.commit_unix_micros) as f64 / 1e6).max(0.0));
                s.changes += u64::from(t.mutations);
            }
            if let Some(t) = txns.last() {
                s.last_commit_time = Some(PgTimestamp::from_unix_micros(t.commit_unix_micros));
            }
            s.transactions += txns.len() as u64;
            s.follower_records += records.len() as u64;
            s.applied_lsn = last;
            s.server_wal_end = s.server_wal_end.max(last);
        });
        if !self.kinds_known && Instant::now() >= self.next_kinds {
            self.refresh_kinds();
        }
        Ok(records.len())
    }

    /// Re-reads the key kinds once nodes of a label with none before arrive.
    fn refresh_kinds(&mut self) {
        let view = self.st.graph.view();
        self.kinds_known = crate::mapper::first_keys(&view, self.mapper.node_labels().len())
            .iter()
            .all(Option::is_some);
        let names = schema(&self.opts, &self.mapper, &[], Some(&view), self.hash);
        self.status.set_served(self.st.graph.reader(), Arc::new(names));
        self.next_kinds = Instant::now() + Duration::from_secs(1);
    }

    /// The leader's newest record (what lag is measured against).
    pub fn set_leader_position(&self, lsn: Lsn) {
        self.status.update(|s| s.server_wal_end = s.server_wal_end.max(lsn));
    }

    /// Background work between batches: compactions, and snapshots of them (then the log
    /// before the older kept snapshot is removed); the log's durable position in the status.
    pub async fn chores(&mut self) -> Result<(), SyncError> {
        let mut bg = std::mem::take(&mut self.st.bg);
        let ctx = SnapshotCtx {
            store: &self.store,
            hash: self.hash,
            after_changes: self.opts.snapshot_after_changes,
        };
        let r = bg.compaction(&mut self.st, &self.status, &ctx).await;
        self.st.bg = bg;
        let durable = self.st.log.durable().max(self.st.manifest.position);
        self.status.note_durable(durable);
        self.status.update(|s| {
            s.durable_lsn = durable;
            s.log_error = self.st.log.error();
        });
        r
    }

    /// Flushes the log and lets background work finish (a clean stop).
    pub async fn close(mut self) {
        if let Err(e) = crate::blocking(|| self.st.log.flush(Duration::from_secs(30))) {
            tracing::warn!(error = %e, "flushing the change log while stopping failed");
        }
        finish_background(&mut self.st, &self.status, &self.store, self.hash).await;
        self.status.update(|s| s.phase = Phase::Stopping);
    }
}
