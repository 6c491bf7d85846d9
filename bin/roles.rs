//! A publishing replica's roles (`replicate --publish`): it leads while it holds the
//! replication slot, and stands by — following the stream as `graphsync follow` does, serving
//! the same API — while another process holds it. PostgreSQL lets one process stream from a
//! slot at a time: that is the fence, no consensus of our own. "The slot" is the configured
//! one or any of its generations (`<slot>_g<N>`, from background rebuilds): the leader names
//! the one it streams from in every message. When none is in use, the standby takes
//! everything published, fences the stream (a marker one term higher: a stale publisher's
//! next message is refused and it stops for good), adopts the leader's slot and leads from
//! exactly there; a leader that finds the slot taken or its stream fenced stands by in turn.
//!
//! Not for: how records are published or followed (`scaleout`), or replication itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync::replicator::{self, Options, ReloadOutcome, ReloadRequest, Reloads, ReplicaStatus, SyncError};
use tokio::sync::{mpsc, watch};

/// What leading or standing by needs.
pub struct Roles {
    pub opts: Options,
    pub nats: scaleout::NatsOptions,
    pub status: Arc<ReplicaStatus>,
    pub shutdown: watch::Receiver<bool>,
    pub reloads: Reloads,
}

/// Where mapping reloads go: the replicator while leading, refused while standing by.
type LeadReloads = Arc<Mutex<Option<mpsc::Sender<ReloadRequest>>>>;

/// Leads or stands by until shutdown.
pub async fn run(r: Roles) -> Result<(), SyncError> {
    let Roles {
        opts,
        nats,
        status,
        shutdown,
        reloads,
    } = r;
    let lead: LeadReloads = Arc::default();
    let dispatcher = tokio::spawn(dispatch_reloads(reloads, lead.clone()));
    let result = roles(&opts, &nats, &status, &shutdown, &lead).await;
    dispatcher.abort();
    result
}

async fn roles(
    opts: &Options,
    nats: &scaleout::NatsOptions,
    status: &Arc<ReplicaStatus>,
    shutdown: &watch::Receiver<bool>,
    lead: &LeadReloads,
) -> Result<(), SyncError> {
    let root = opts.data_dir.clone();
    // Set when leading ended because another replica leads or led (the slot taken or
    // confirmed past this replica's state, the stream fenced): follow before leading again.
    let mut deposed = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let has_state = sync::checkpoint::CheckpointStore::open(&sync::generation::state_dir(&root))
            .map(|s| s.manifest().is_some())
            .unwrap_or(false);
        let mut term = None;
        let family = slot_family(opts).await;
        let follow_first = match family.as_deref().map(holder) {
            _ if deposed => {
                tracing::info!(slot = %opts.slot, "another replica leads or led: standing by, following the stream");
                true
            }
            // Taken, or free but this process has nothing to lead from yet: follow first.
            Ok(Some(Some(pid))) => {
                tracing::info!(slot = %opts.slot, pid, "the slot is in use by another process: standing by, following the stream");
                true
            }
            Ok(Some(None)) if !has_state && !opts.rebuild => {
                tracing::info!(slot = %opts.slot, "the slot exists and this data directory is empty: bootstrapping from the stream before leading");
                true
            }
            // This replica's slot is gone but others of the family are there (another
            // replica rebuilt and swapped slots): take over the one the stream names.
            Ok(Some(None)) if family.as_deref().is_ok_and(|f| !own_slot_in(opts, f)) => {
                tracing::info!(slot = %opts.slot, "this replica's slot is gone and another of its family is there: following the stream, then taking over the slot it names");
                true
            }
            Ok(_) => false,
            // The replicator reports connection trouble itself.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the slot's state; trying to lead");
                false
            }
        };
        if follow_first {
            match standby(opts, nats, status, shutdown).await? {
                scaleout::follow::Followed::Stopped => return Ok(()),
                scaleout::follow::Followed::TookOver { term: t, .. } => term = Some(t),
            }
        }
        status.lead();
        // Stops the replicator and the publisher: shutdown, or the stream fenced.
        let (stop_tx, stop_rx) = watch::channel(false);
        let forward = {
            let mut shutdown = shutdown.clone();
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                if shutdown.wait_for(|s| *s).await.is_ok() {
                    let _ = stop_tx.send(true);
                }
            })
        };
        let publisher = crate::serve::PublishPlan {
            nats: nats.clone(),
            data_dir: root.clone(),
            base_slot: opts.slot.clone(),
        }
        .spawn(status, stop_rx.clone(), term);
        let publisher_abort = publisher.abort_handle();
        let publisher = {
            let stop_tx = stop_tx.clone();
            tokio::spawn(async move {
                let r = publisher.await;
                if let Ok(scaleout::publish::Published::Fenced(why)) = &r {
                    tracing::warn!(why = %why, "another replica took over the stream: this one stops leading (it releases the slot and stands by)");
                    let _ = stop_tx.send(true);
                }
                r
            })
        };
        let (tx, rx) = replicator::reload_channel();
        *lead.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let mut o = opts.clone();
        o.yield_slot = true;
        let result = replicator::run_with_reloads(o, status.clone(), stop_rx, rx).await;
        *lead.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Stop the publisher (a leader started again publishes what its log holds beyond the
        // stream first); it never outlives this leading period.
        let _ = stop_tx.send(true);
        forward.abort();
        let fenced = match tokio::time::timeout(Duration::from_secs(10), publisher).await {
            Ok(Ok(Ok(p))) => p != scaleout::publish::Published::Stopped,
            _ => {
                publisher_abort.abort();
                false
            }
        };
        status.stop_publishing();
        if *shutdown.borrow() {
            return result;
        }
        match result {
            Ok(()) if fenced => deposed = true,
            Err(e) if e.is_slot_in_use() => {
                tracing::warn!("another process took the slot: standing by");
                deposed = true;
            }
            other => return other,
        }
    }
}

/// Follows the stream until the slot frees and everything published is applied
/// (`TookOver`), or shutdown.
async fn standby(
    opts: &Options,
    nats: &scaleout::NatsOptions,
    status: &Arc<ReplicaStatus>,
    shutdown: &watch::Receiver<bool>,
) -> Result<scaleout::follow::Followed, SyncError> {
    let (free_tx, free_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_slot(opts.clone(), free_tx));
    let mut follow_opts = opts.clone();
    follow_opts.data_dir = sync::generation::state_dir(&opts.data_dir);
    let cfg = scaleout::follow::FollowConfig {
        nats: nats.clone(),
        opts: follow_opts,
        take_over: Some(free_rx),
    };
    let r = scaleout::follow::run(cfg, status.clone(), shutdown.clone()).await;
    watcher.abort();
    let r = r.map_err(|e| SyncError::Io(e.to_string()))?;
    if let scaleout::follow::Followed::TookOver { slot: Some(slot), .. } = &r {
        if !sync::catalog::is_generation_slot(&opts.slot, slot) {
            tracing::warn!(theirs = %slot, ours = %opts.slot, "the last leader streamed from a slot not named after this replica's; leading from this replica's own (configure the same --slot on every replica of a stream)");
        } else if sync::generation::adopt_slot(&opts.data_dir, &opts.slot, slot)
            .map_err(|e| SyncError::Io(e.to_string()))?
        {
            tracing::info!(slot = %slot, "taking over the slot the last leader streamed from (one of a background rebuild's)");
        }
    }
    Ok(r)
}

/// The configured slot and its generations' (`<slot>_g<N>`: a leader that rebuilt in the
/// background streams from one of those), each with the process streaming from it, if any.
async fn slot_family(opts: &Options) -> Result<Vec<(String, Option<u32>)>, String> {
    let mut c = pgrepl::ReplicationClient::connect_sql(&opts.conn)
        .await
        .map_err(|e| e.to_string())?;
    let s = sync::catalog::slot_family(&mut c, &opts.slot)
        .await
        .map_err(|e| e.to_string());
    c.close().await;
    s
}

/// Who holds a slot of `family`: `None` when there is none, `Some(None)` when none is in use,
/// else a holder's process id.
fn holder(family: &[(String, Option<u32>)]) -> Option<Option<u32>> {
    (!family.is_empty()).then(|| family.iter().find_map(|(_, pid)| *pid))
}

/// Whether `family` holds the slot this replica's generation in force streams from (`true`
/// when that is unknown).
fn own_slot_in(opts: &Options, family: &[(String, Option<u32>)]) -> bool {
    sync::generation::current(&opts.data_dir, &opts.slot)
        .map_or(true, |g| family.iter().any(|(name, _)| *name == g.slot))
}

/// Turns `free` true once no slot of the family has been in use for two polls in a row, and
/// false again when one is (the leader reconnected before the take-over fenced the stream).
async fn watch_slot(opts: Options, free: watch::Sender<bool>) {
    let mut free_polls = 0;
    let mut failing = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match slot_family(&opts).await.as_deref().map(holder) {
            Ok(Some(Some(_))) => free_polls = 0,
            Ok(_) => free_polls += 1,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the slot's state from PostgreSQL; standing by until it can (no take-over meanwhile)");
                }
                failing = true;
                free_polls = 0;
                continue;
            }
        }
        failing = false;
        let now_free = free_polls >= 2;
        if now_free != *free.borrow() {
            if now_free {
                tracing::info!(slot = %opts.slot, "the slot is free: taking over once everything published is applied");
            } else {
                tracing::info!(slot = %opts.slot, "the slot is in use again: not taking over");
            }
            if free.send(now_free).is_err() {
                return;
            }
        }
    }
}

/// Hands reloads to the replicator while leading; refuses them while standing by.
async fn dispatch_reloads(mut reloads: Reloads, lead: LeadReloads) {
    while let Some(mut req) = reloads.recv().await {
        let to = lead.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match to {
            Some(tx) => {
                if let Err(mpsc::error::SendError(req)) = tx.send(req).await {
                    refuse(req);
                }
            }
            None => {
                if let Some(reply) = req.reply.take() {
                    let _ = reply.send(ReloadOutcome::Refused(
                        "this replica stands by (another process holds the slot); reload the leader".into(),
                    ));
                }
            }
        }
    }
}

fn refuse(mut req: ReloadRequest) {
    if let Some(reply) = req.reply.take() {
        let _ = reply.send(ReloadOutcome::Refused(
            "the replicator stopped leading; reload again once it leads".into(),
        ));
    }
}
