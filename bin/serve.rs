//! What `replicate` and `follow` share: the HTTP API's flags and server, the graph store's
//! flags (compaction, snapshots, log, feed memory), and NATS settings for scale-out.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use sync::replicator::{Options, ReplicaStatus};

/// The HTTP API's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
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
    /// A change feed subscriber whose connection takes nothing for this long while events
    /// wait is disconnected (it resumes with Last-Event-ID).
    #[arg(long, env = "GRAPHSYNC_FEED_STALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub feed_stall_timeout_ms: u64,
}

impl HttpArgs {
    /// The tenant-token checker, if configured.
    pub fn jwt(&self) -> anyhow::Result<Option<crate::http::Jwt>> {
        crate::http::Jwt::load(&crate::http::JwtSettings {
            hs256_secret_file: self.jwt_hs256_secret_file.as_deref(),
            public_key_file: self.jwt_public_key_file.as_deref(),
            claim: &self.jwt_tenants_claim,
            audience: self.jwt_audience.as_deref(),
            issuer: self.jwt_issuer.as_deref(),
        })
    }

    /// Binds the listening socket.
    pub async fn bind(&self) -> anyhow::Result<tokio::net::TcpListener> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {} (in use? pass --listen)", self.listen))?;
        let bound = listener.local_addr().unwrap_or(self.listen);
        tracing::info!(listen = %bound, "HTTP API listening");
        Ok(listener)
    }

    /// The API over `status`.
    pub fn api(
        &self,
        status: Arc<ReplicaStatus>,
        jwt: Option<crate::http::Jwt>,
        admin: Option<Arc<crate::http::Admin>>,
    ) -> crate::http::Api {
        crate::http::Api {
            status,
            token: self.api_token.clone().map(Into::into),
            started: std::time::Instant::now(),
            max_lag_seconds: self.max_lag_seconds,
            jwt: jwt.map(Arc::new),
            admin,
            feed: Arc::new(crate::http::FeedConfig {
                stall_timeout: Duration::from_millis(self.feed_stall_timeout_ms.max(100)),
                ..Default::default()
            }),
        }
    }
}

/// The graph store's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Overlay edge changes that start a background compaction (transactions are refused
    /// only at 16 times this, until it finishes).
    #[arg(long, env = "GRAPHSYNC_COMPACTION_THRESHOLD", default_value_t = 1 << 20)]
    pub compaction_threshold: usize,
    /// Write a snapshot (the base the change log is replayed on at restart) once this many
    /// graph changes were logged since the last one. Default: 1,000,000, or for a smaller
    /// graph as many as its nodes + edges (at least 100,000). Lower: faster restarts, more
    /// snapshot writes.
    #[arg(long, env = "GRAPHSYNC_SNAPSHOT_AFTER_CHANGES")]
    pub snapshot_after_changes: Option<u64>,
    /// Size of one change log segment file, in megabytes.
    #[arg(long, env = "GRAPHSYNC_LOG_SEGMENT_MB", default_value_t = 64)]
    pub log_segment_mb: u64,
    /// The change log's group commit: fdatasync at most once per this many milliseconds
    /// (what is confirmed to the server waits for it). Lower: changes durable sooner, more
    /// device flushes.
    #[arg(long, env = "GRAPHSYNC_LOG_SYNC_MS", default_value_t = 20)]
    pub log_sync_ms: u64,
    /// Memory for the change feed's recent records, in megabytes (older ones are read from
    /// the change log on disk).
    #[arg(long, env = "GRAPHSYNC_FEED_MEMORY_MB", default_value_t = 64)]
    pub feed_memory_mb: usize,
}

impl StoreArgs {
    /// Sets them on `opts`.
    pub fn apply(&self, opts: &mut Options) {
        opts.compaction = graph::CompactionPolicy {
            soft_limit: self.compaction_threshold.max(1),
            hard_limit: self.compaction_threshold.max(1).saturating_mul(16),
        };
        opts.snapshot_after_changes = self.snapshot_after_changes.map(|n| n.max(1));
        opts.log_segment_bytes = self.log_segment_mb.clamp(1, 1 << 20) << 20;
        opts.log_sync_interval = std::time::Duration::from_millis(self.log_sync_ms.min(10_000));
        opts.feed_memory_bytes = self.feed_memory_mb.clamp(1, 1 << 20) << 20;
    }
}

/// NATS settings of a leader (`--publish`) or a follower (`--nats`).
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// JetStream stream the change log goes to (default: `GRAPHSYNC_<slot>`).
    #[arg(long, env = "GRAPHSYNC_STREAM")]
    pub stream: Option<String>,
    /// NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "GRAPHSYNC_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to check the NATS server's TLS certificate with.
    #[arg(long, env = "GRAPHSYNC_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Replicas of the stream and snapshot bucket when the leader creates them (3 on a
    /// three-node cluster).
    #[arg(long, env = "GRAPHSYNC_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// The stream keeps at most this many megabytes of records (0: no limit); a follower
    /// further behind re-bootstraps from the newest snapshot.
    #[arg(long, env = "GRAPHSYNC_STREAM_MAX_MB", default_value_t = 0)]
    pub stream_max_mb: i64,
    /// The stream keeps records at most this many hours (0: no limit).
    #[arg(long, env = "GRAPHSYNC_STREAM_MAX_AGE_HOURS", default_value_t = 0)]
    pub stream_max_age_hours: u64,
}

impl NatsArgs {
    /// The options for `url`; the stream named after `slot` unless given.
    pub fn options(&self, url: &str, slot: &str) -> scaleout::NatsOptions {
        scaleout::NatsOptions {
            url: url.to_string(),
            stream: self
                .stream
                .clone()
                .unwrap_or_else(|| scaleout::default_stream_name(slot)),
            creds_file: self.nats_creds.clone(),
            ca_file: self.nats_ca.clone(),
            replicas: self.stream_replicas.max(1),
            max_bytes: self.stream_max_mb.max(0).saturating_mul(1 << 20),
            max_age: Duration::from_secs(self.stream_max_age_hours.saturating_mul(3600)),
        }
    }
}

/// A leader's publisher, to start beside the replicator.
pub struct PublishPlan {
    pub nats: scaleout::NatsOptions,
    pub data_dir: PathBuf,
    /// The configured slot name.
    pub base_slot: String,
}

impl PublishPlan {
    /// Gates the replicator's confirms on what JetStream acknowledged and starts publishing,
    /// in `term` when this process took over the stream at it.
    pub fn spawn(
        self,
        status: &Arc<ReplicaStatus>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        term: Option<u64>,
    ) -> tokio::task::JoinHandle<scaleout::publish::Published> {
        let (tx, rx) = tokio::sync::watch::channel(pgoutput::Lsn(0));
        status.gate_confirms(rx);
        tracing::info!(nats = %scaleout::redact(&self.nats.url), stream = %self.nats.stream, "publishing to NATS JetStream");
        let cfg = scaleout::publish::PublishConfig {
            nats: self.nats,
            data_dir: self.data_dir,
            base_slot: self.base_slot,
        };
        tokio::spawn(scaleout::publish::run(cfg, status.clone(), tx, shutdown, term))
    }
}

/// The async runtime `replicate` and `follow` run on: a worker per core (at least two) for
/// the HTTP API and the other tasks, plus one: a publishing replica (`replicate --publish`)
/// and `follow` run their replicator or follower as a task on it, which stays busy under load.
/// A plain `replicate` runs its replicator beside it on a thread of its own
/// ([`on_own_thread`]).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(2, 64) + 1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `fut` to completion on a thread named `name` with a current-thread runtime of its own
/// (I/O driver and timers included), and resolves to its output once that runtime has shut
/// down (its side tasks dropped); a panic there is raised here.
///
/// Why, for the replicator: it waits on its socket for every transaction. As a task on the
/// shared workers, the worker that saw the socket readable also polled the I/O driver for the
/// HTTP API, so on saturated cores a query woken there waited for another worker to steal it
/// (neighbours p50 2.5× higher at the e2e bench's max rate); in `block_on` on the main thread,
/// each message meant a worker waking that thread (CPU per transaction 27 % higher). On its own
/// thread it waits in its own `epoll` and wakes no one. Its side tasks (probe, feed dispatcher)
/// run on that thread between its awaits; a background rebuild runs on the shared runtime
/// (`Options::side_runtime`), as its copy blocks for long. Not for a follower or a publishing
/// replica: the NATS client would share the thread and go unanswered while a follower opens
/// or replays (seconds to minutes).
pub async fn on_own_thread<F>(name: &str, fut: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        // As much stack as the main thread, where it used to run (blocking work runs inline).
        .stack_size(8 << 20)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok::<_, std::io::Error>(rt.block_on(Box::pin(fut)))
        })
        .with_context(|| format!("cannot start the {name} thread"))?;
    // Joined off the async workers: it ends when the future has and its runtime is dropped.
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(out)) => out.with_context(|| format!("cannot start the {name} thread's async runtime")),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => anyhow::bail!("waiting for the {name} thread failed: {e}"),
    }
}
