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
    /// Address of the HTTP API (health, metrics, queries).
    #[arg(long, env = "GRAPHSYNC_LISTEN", default_value = "127.0.0.1:9187")]
    pub listen: std::net::SocketAddr,
    /// Bearer token required by every HTTP endpoint but /health.
    #[arg(long, env = "GRAPHSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// File holding the secret (32+ bytes) that signs tenant-scoped tokens (JWT, HS256).
    #[arg(long, env = "GRAPHSYNC_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<std::path::PathBuf>,
    /// PEM public key (RSA: RS256, or EC P-256: ES256) that checks tenant-scoped tokens (JWT).
    #[arg(long, env = "GRAPHSYNC_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// The token claim listing the tenants it may read (a list, or one value).
    #[arg(long, env = "GRAPHSYNC_JWT_TENANTS_CLAIM", default_value = "tenants")]
    pub jwt_tenants_claim: String,
    /// Accept only tokens with this audience (`aud`).
    #[arg(long, env = "GRAPHSYNC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Accept only tokens from this issuer (`iss`).
    #[arg(long, env = "GRAPHSYNC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// /health answers 503 "lagging" past this replica lag.
    #[arg(long, env = "GRAPHSYNC_MAX_LAG_SECONDS", default_value_t = 30.0)]
    pub max_lag_seconds: f64,
    /// Megabytes of streamed (large, in-progress) transactions held in memory before they
    /// spill to temporary files in the data directory.
    #[arg(long, env = "GRAPHSYNC_SPILL_THRESHOLD_MB", default_value_t = 64)]
    pub spill_threshold_mb: usize,
    /// Ask the server for column values in binary form (less work for both sides on numeric,
    /// temporal and uuid columns).
    #[arg(long, env = "GRAPHSYNC_BINARY")]
    pub binary: bool,
    /// Overlay edge changes that start a background compaction (transactions are refused
    /// only at 16 times this, until it finishes).
    #[arg(long, env = "GRAPHSYNC_COMPACTION_THRESHOLD", default_value_t = 1 << 20)]
    pub compaction_threshold: usize,
    /// Reconnect after this many milliseconds without a message from the server.
    #[arg(long, env = "GRAPHSYNC_RECEIVE_TIMEOUT_MS", default_value_t = 30_000)]
    pub receive_timeout_ms: u64,
    /// Write a snapshot (the base the change log is replayed on at restart) once this many
    /// graph changes were logged since the last one. Lower: faster restarts, more snapshot
    /// writes.
    #[arg(long, env = "GRAPHSYNC_SNAPSHOT_AFTER_CHANGES", default_value_t = 1_000_000)]
    pub snapshot_after_changes: u64,
    /// Size of one change log segment file, in megabytes.
    #[arg(long, env = "GRAPHSYNC_LOG_SEGMENT_MB", default_value_t = 64)]
    pub log_segment_mb: u64,
    /// Memory for the change feed's recent records, in megabytes (older ones are read from
    /// the change log on disk).
    #[arg(long, env = "GRAPHSYNC_FEED_MEMORY_MB", default_value_t = 64)]
    pub feed_memory_mb: usize,
    /// A change feed subscriber whose connection takes nothing for this long while events
    /// wait is disconnected (it resumes with Last-Event-ID).
    #[arg(long, env = "GRAPHSYNC_FEED_STALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub feed_stall_timeout_ms: u64,
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
    opts.compaction = graph::CompactionPolicy {
        soft_limit: args.compaction_threshold.max(1),
        hard_limit: args.compaction_threshold.max(1).saturating_mul(16),
    };
    opts.receive_timeout = Duration::from_millis(args.receive_timeout_ms.max(1000));
    opts.snapshot_after_changes = args.snapshot_after_changes.max(1);
    opts.log_segment_bytes = args.log_segment_mb.clamp(1, 1 << 20) << 20;
    opts.feed_memory_bytes = args.feed_memory_mb.clamp(1, 1 << 20) << 20;
    if args.checkpoint_interval_ms.is_some() {
        tracing::warn!("--checkpoint-interval-ms (GRAPHSYNC_CHECKPOINT_INTERVAL_MS) is no longer used: changes are durable in the change log as they are applied; snapshots follow --snapshot-after-changes");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let jwt = crate::http::Jwt::load(&crate::http::JwtSettings {
        hs256_secret_file: args.jwt_hs256_secret_file.as_deref(),
        public_key_file: args.jwt_public_key_file.as_deref(),
        claim: &args.jwt_tenants_claim,
        audience: args.jwt_audience.as_deref(),
        issuer: args.jwt_issuer.as_deref(),
    })?;
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
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (in use? pass --listen)", args.listen))?;
        let bound = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(listen = %bound, "HTTP API listening");
        let api = crate::http::Api {
            status: status.clone(),
            token: args.api_token.map(Into::into),
            started: std::time::Instant::now(),
            max_lag_seconds: args.max_lag_seconds,
            jwt: jwt.map(std::sync::Arc::new),
            admin: Some(admin),
            feed: std::sync::Arc::new(crate::http::FeedConfig {
                stall_timeout: std::time::Duration::from_millis(args.feed_stall_timeout_ms.max(100)),
                ..Default::default()
            }),
        };
        let server = crate::http::spawn(listener, api, rx.clone());
        let notifier = tokio::spawn(notify_loop(status.clone(), rx.clone()));
        let result = replicator::run_with_reloads(opts, status, rx, reloads).await;
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
