//! Reloading the mapping while running: classify the change, check the new mapping against
//! the catalog on a connection of its own, swap it in between two transactions.
//!
//! A reload arrives as a [`ReloadRequest`] (the binary reads the file on SIGHUP or an admin
//! request); the stream loop ends its session at the next transaction boundary, [`run`] applies
//! or refuses the reload, and a new session resumes from the durable position with the
//! mapping now in force. While paused (`mapping_broken`) a reload is the way on: even an
//! unchanged mapping retries (the table may have been fixed instead).
//!
//! Not for reading config files or signals (the binary) or for deciding compatibility
//! ([`crate::mapping_change`]).

#[allow(unused_imports)]
use super::*;
use crate::mapping_change::{changed_columns, classify, MappingChange};
use tokio::sync::{mpsc, oneshot};

/// A new mapping to apply, and where to say what became of it.
#[derive(Debug)]
pub struct ReloadRequest {
    /// The mapping, parsed and validated.
    pub config: Arc<MappingConfig>,
    /// Rebuild in the background with it even if it could apply online (a forced rebuild).
    pub rebuild: bool,
    /// Told the outcome (if anyone waits for it).
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// What became of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The mapping is the one in force (replication retries if it was paused).
    Unchanged,
    /// Applied online, without a copy: what changed.
    Applied(Vec<String>),
    /// A background rebuild with it started (the graph changes): why; the graph in force keeps
    /// serving and is swapped for the new one once it has caught up.
    Rebuilding(Vec<String>),
    /// Not applied; the mapping in force is kept: why, and the fix.
    Refused(String),
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadOutcome::Unchanged => f.write_str("the mapping is unchanged"),
            ReloadOutcome::Applied(c) => write!(f, "applied online, nothing copied: {}", c.join("; ")),
            ReloadOutcome::Rebuilding(why) => write!(
                f,
                "rebuilding in the background (the graph in force keeps serving until the new one has caught up): {}",
                why.join("; ")
            ),
            ReloadOutcome::Refused(why) => write!(f, "refused, the mapping in force is kept: {why}"),
        }
    }
}

/// Where reloads come from.
pub type Reloads = mpsc::Receiver<ReloadRequest>;

/// A sender and receiver of reloads (the binary keeps the sender).
pub fn reload_channel() -> (mpsc::Sender<ReloadRequest>, Reloads) {
    mpsc::channel(8)
}

impl Replicator {
    /// Applies or refuses `req` (between sessions) and tells its sender.
    pub(super) async fn reload(&mut self, req: ReloadRequest) -> ReloadOutcome {
        let outcome = self.try_reload(req.config, req.rebuild).await;
        match &outcome {
            ReloadOutcome::Refused(why) => {
                tracing::error!(%why, "mapping reload refused; the mapping in force is kept")
            }
            ReloadOutcome::Applied(changes) => {
                tracing::info!(changes = %changes.join("; "), "mapping reloaded: applied online, nothing copied");
                self.status.update(|s| s.mapping_reloads += 1);
            }
            ReloadOutcome::Unchanged => tracing::info!("mapping reloaded: unchanged"),
            ReloadOutcome::Rebuilding(why) => {
                tracing::info!(why = %why.join("; "), "mapping reloaded: rebuilding in the background")
            }
        }
        if let Some(reply) = req.reply {
            let _ = reply.send(outcome.clone());
        }
        outcome
    }

    async fn try_reload(&mut self, config: Arc<MappingConfig>, force: bool) -> ReloadOutcome {
        if let Some(g) = self.status.rebuild().map(|r| r.generation) {
            return ReloadOutcome::Refused(format!(
                "a background rebuild (generation {g}) is in progress; reload again once it is swapped in"
            ));
        }
        let change = classify(&self.opts.config, &config);
        let mut rebuild_why = match (&change, force) {
            (MappingChange::Incompatible(why), _) => Some(why.clone()),
            (_, true) => Some(vec!["a rebuild was requested".to_string()]),
            // The source settings (slot, publication, URL) are read at start only.
            (MappingChange::Same, false) => return ReloadOutcome::Unchanged,
            // Its snapshots and log carry a hash of the column names: a new generation instead.
            (MappingChange::Compatible(_), false) if self.opts.legacy_hash => Some(vec![
                "this data directory was written before online mapping changes: rebuilt once in the background".into(),
            ]),
            (MappingChange::Compatible(_), false) => None,
        };
        // The new mapping must fit the tables as they are now.
        let checked = async {
            let mut client = ReplicationClient::connect(&self.opts.conn).await?;
            let checked = catalog::check_tables(&mut client, &config).await;
            client.close().await;
            checked.map_err(SyncError::from)
        };
        let tables = match checked.await {
            Ok(t) => t,
            Err(e) => return ReloadOutcome::Refused(format!("the new mapping does not fit the source: {e}")),
        };
        // A compatible change reads the same columns under new names: each must be the column
        // read before, renamed (same attnum and type), not another one with other values.
        if rebuild_why.is_none() {
            let not_renamed: Vec<String> = changed_columns(&self.opts.config, &config)
                .into_iter()
                .filter(|(table, a, b)| {
                    let before = self.tables.iter().find(|t| &t.qualified == table).and_then(|t| t.attribute(a));
                    let now = tables.iter().find(|t| &t.qualified == table).and_then(|t| t.attribute(b));
                    before.is_none() || before != now
                })
                .map(|(table, a, b)| {
                    format!("{table}: column {b:?} is not {a:?} renamed (or that cannot be told), so its values must be copied")
                })
                .collect();
            if !not_renamed.is_empty() {
                rebuild_why = Some(not_renamed);
            }
        }
        let config = Arc::new(MappingConfig {
            source: self.opts.config.source.clone(),
            ..(*config).clone()
        });
        if let Some(why) = rebuild_why {
            // Labels kept in place: bring the graph in force to the new mapping, copying only
            // what it newly reads (tables added, fields newly mapped).
            let paused = self.status.snapshot().phase == Phase::MappingBroken;
            let base = match (crate::mapping_change::reshape(&self.opts.config, &config), &self.state) {
                (Some(reshape), Some(st))
                    if !force && !paused && !self.opts.legacy_hash && same_lookups(&st.index, &config, &tables) =>
                {
                    Some(initial_copy::Base {
                        view: st.graph.view(),
                        index: st.index.clone(),
                        lsn: st.safe,
                        log: self.log.clone(),
                        hash: self.opts.hash(),
                        reshape,
                        old_filters: self.mapper.filter_names().to_vec(),
                        pin: LogPin::new(&st.log_pin, st.safe),
                        status: self.status.clone(),
                    })
                }
                _ => None,
            };
            return match self.start_rebuild(config, why.join("; "), base) {
                Ok(()) => ReloadOutcome::Rebuilding(why),
                Err(e) => ReloadOutcome::Refused(e),
            };
        }
        let MappingChange::Compatible(changes) = change else {
            return ReloadOutcome::Unchanged;
        };
        let renamed = crate::mapping_change::changed_columns(&self.opts.config, &config);
        self.mapper = Mapper::new(config.clone())
            .inheriting(&self.mapper)
            .with_renamed(renamed);
        self.opts.config = config;
        self.tables = tables;
        ReloadOutcome::Applied(changes)
    }
}

/// Whether the edges the graph in force holds are found the same way under `config` (the
/// row index it keeps is then valid for it).
fn same_lookups(index: &RowIndex, config: &Arc<MappingConfig>, tables: &[TableInfo]) -> bool {
    let new = Mapper::new(config.clone()).index_for_tables(tables);
    (0..index.len_mappings()).all(|i| index.mode(i) == new.mode(i))
}
