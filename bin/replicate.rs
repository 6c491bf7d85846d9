//! `graphsync replicate`: run the replicator until SIGTERM/SIGINT, then flush the change log,
//! confirm it and exit 0.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use sync::config::MappingConfig;
use sync::replicator::{self, Options, ReplicaStatus};

/// Arguments of `graphsync replicate`.
#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    /// Mapping configuration (TOML).
    #[arg(long, env = "GRAPHSYNC_CONFIG")]
    pub config: PathBuf,
    /// Replication slot (default: the config's source.slot).
    #[arg(long, env = "GRAPHSYNC_SLOT")]
    pub slot: Option<String>,
    /// Publication (default: the config's source.publication).
    #[arg(long, env = "GRAPHSYNC_PUBLICATION")]
    pub publication: Option<String>,
    /// Connection string, URL or key=value (default: the config's source.database_url, then PG* variables).
    #[arg(long, env = "GRAPHSYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where snapshots and the change log are kept.
    #[arg(long, env = "GRAPHSYNC_DATA_DIR", default_value = "graphsync-data")]
    pub data_dir: PathBuf,
    /// Copy the tables again: with a usable data directory, in the background while the
    /// restored graph serves (then swapped in); when the state cannot be resumed (mapping
    /// changed, slot dropped or invalidated, no usable checkpoint), in place instead of refusing.
    #[arg(long, env = "GRAPHSYNC_REBUILD")]
    pub rebuild: bool,
    #[command(flatten)]
    pub http: crate::serve::HttpArgs,
    /// Megabytes of streamed (large, in-progress) transactions held in memory before they
    /// spill to temporary files in the data directory.
    #[arg(long, env = "GRAPHSYNC_SPILL_THRESHOLD_MB", default_value_t = 64)]
    pub spill_threshold_mb: usize,
    /// Ask the server for column values in binary form (less work for both sides on numeric,
    /// temporal and uuid columns).
    #[arg(long, env = "GRAPHSYNC_BINARY")]
    pub binary: bool,
    /// After applying a few small transactions, wait this many milliseconds before reading
    /// more, so a steady trickle is applied a few transactions at a time (about a third less
    /// CPU at 1,000 single-row transactions/s) for at most this much added latency. 0: read at
    /// once.
    #[arg(long, env = "GRAPHSYNC_APPLY_LINGER_MS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub apply_linger_ms: u64,
    /// Reconnect after this many milliseconds without a message from the server.
    #[arg(long, env = "GRAPHSYNC_RECEIVE_TIMEOUT_MS", default_value_t = 30_000)]
    pub receive_timeout_ms: u64,
    #[command(flatten)]
    pub store: crate::serve::StoreArgs,
    #[command(flatten)]
    pub nats: crate::serve::NatsArgs,
    /// Publish the change log and snapshots to NATS JetStream at this URL (comma-separated
    /// for a cluster; `tls://` for TLS) for followers (`graphsync follow`). What is confirmed
    /// to PostgreSQL then waits for JetStream's acknowledgement.
    #[arg(long, env = "GRAPHSYNC_PUBLISH", hide_env_values = true)]
    pub publish: Option<String>,
    /// No longer used: changes are durable in the change log within milliseconds and
    /// snapshots follow --snapshot-after-changes. Accepted so old unit files keep working.
    #[arg(long, env = "GRAPHSYNC_CHECKPOINT_INTERVAL_MS", hide = true)]
    pub checkpoint_interval_ms: Option<u64>,
}

pub fn run(args: ReplicateArgs) -> anyhow::Result<ExitCode> {
    let config = MappingConfig::load(&args.config)?;
    let url = args
        .database_url
        .clone()
        .or_else(|| config.source.database_url.clone())
        .unwrap_or_default();
    let conn = pgrepl::Config::parse(&url).context("invalid database URL")?;
    let mut opts = Options::new(Arc::new(config), conn, args.data_dir.clone());
    if let Some(s) = args.slot {
        opts.slot = s;
    }
    if let Some(p) = args.publication {
        opts.publication = p;
    }
    opts.rebuild = args.rebuild || opts.config.source.rebuild;
    opts.spill_threshold = args.spill_threshold_mb << 20;
    opts.binary = args.binary;
    args.store.apply(&mut opts);
    opts.receive_timeout = Duration::from_millis(args.receive_timeout_ms.max(1000));
    opts.apply_linger = Duration::from_millis(args.apply_linger_ms);
    if args.checkpoint_interval_ms.is_some() {
        tracing::warn!("--checkpoint-interval-ms (GRAPHSYNC_CHECKPOINT_INTERVAL_MS) is no longer used: changes are durable in the change log as they are applied; snapshots follow --snapshot-after-changes");
    }
    let rt = crate::serve::runtime()?;
    let jwt = args.http.jwt()?;
    let publish = args.publish.as_ref().map(|url| crate::serve::PublishPlan {
        nats: args.nats.options(url, &opts.slot),
        data_dir: opts.data_dir.clone(),
        base_slot: opts.slot.clone(),
    });
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        stop_on_signal(tx);
        let status = ReplicaStatus::new();
        let (reload_tx, reloads) = replicator::reload_channel();
        let admin = Arc::new(crate::http::Admin {
            config_path: args.config.clone(),
            reloads: reload_tx,
        });
        let hup = reload_on_sighup(admin.clone());
        let listener = args.http.bind().await?;
        let api = args.http.api(status.clone(), jwt, Some(admin));
        let server = crate::http::spawn(listener, api, rx.clone());
        let notifier = tokio::spawn(notify_loop(status.clone(), rx.clone()));
        let result = match publish {
            // Leads while it holds the slot, stands by (following the stream) otherwise; a
            // task on the shared runtime, beside the publisher and the NATS client.
            Some(p) => {
                let roles = tokio::spawn(crate::roles::run(crate::roles::Roles {
                    opts,
                    nats: p.nats,
                    status,
                    shutdown: rx,
                    reloads,
                }));
                // Never aborted: a join error is a panic, passed on as it was.
                match roles.await {
                    Ok(r) => r,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            // On a thread of its own (see `serve::on_own_thread`); a background rebuild runs
            // on the shared runtime.
            None => {
                let mut opts = opts;
                opts.side_runtime = Some(tokio::runtime::Handle::current());
                crate::serve::on_own_thread("replicator", replicator::run_with_reloads(opts, status, rx, reloads))
                    .await?
            }
        };
        notifier.abort();
        hup.abort();
        let n = crate::notify::Notifier::from_env();
        match &result {
            Ok(()) => n.send("STATUS=stopped"),
            Err(e) => n.send(&format!("STATUS=failed: {e}")),
        }
        server.abort();
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// READY=1 once the graph is loaded and streaming, STATUS= with the lag, WATCHDOG=1 pings,
/// STOPPING=1 when shutdown starts.
async fn notify_loop(status: Arc<ReplicaStatus>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    use sync::replicator::Phase;
    let n = crate::notify::Notifier::from_env();
    let watchdog = crate::notify::Notifier::watchdog_interval();
    let mut ready = false;
    let tick = watchdog.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
    loop {
        let s = status.snapshot();
        if !ready && s.phase == Phase::Streaming {
            ready = true;
            n.send(&format!("READY=1\nSTATUS=streaming from {}", s.applied_lsn));
        } else if ready {
            let lag = s.server_wal_end.0.saturating_sub(s.applied_lsn.0);
            n.send(&format!(
                "STATUS={}: applied {}, lag {lag} bytes",
                s.phase.as_str(),
                s.applied_lsn
            ));
        }
        if watchdog.is_some() {
            n.send("WATCHDOG=1");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|s| *s) => {
                n.send("STOPPING=1\nSTATUS=stopping: flushing the change log");
                return;
            }
        }
    }
}

/// Re-reads the mapping file on every SIGHUP and hands it to the replicator (which logs what
/// became of it); a file that does not parse is reported and changes nothing.
fn reload_on_sighup(admin: Arc<crate::http::Admin>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(config = %admin.config_path.display(), "SIGHUP: reloading the mapping");
            if let Err(e) = admin.reload(false, false).await {
                tracing::error!(error = %e, "cannot reload the mapping; the mapping in force is kept");
            }
        }
    })
}

/// Turns SIGTERM or SIGINT into `true` on `tx` (the replicator and the HTTP server stop on it).
pub fn stop_on_signal(tx: tokio::sync::watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested: finishing the current transaction and flushing the change log");
        let _ = tx.send(true);
    })
}
