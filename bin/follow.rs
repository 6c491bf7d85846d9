//! `graphsync follow`: a read replica fed by a leader's JetStream stream instead of a
//! replication slot. Serves the same HTTP API until SIGTERM/SIGINT.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use sync::config::MappingConfig;
use sync::replicator::{Options, ReplicaStatus};

/// Arguments of `graphsync follow`.
#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// The leader's mapping configuration (TOML): the same file (its hash must match the
    /// stream's).
    #[arg(long, env = "GRAPHSYNC_CONFIG")]
    pub config: PathBuf,
    /// NATS server URL(s), comma-separated (`tls://` for TLS).
    #[arg(long, env = "GRAPHSYNC_NATS", hide_env_values = true)]
    pub nats: String,
    /// Where this follower keeps its snapshots and change log.
    #[arg(long, env = "GRAPHSYNC_DATA_DIR", default_value = "graphsync-data")]
    pub data_dir: PathBuf,
    /// Replication slot of the leader (names the default stream).
    #[arg(long, env = "GRAPHSYNC_SLOT")]
    pub slot: Option<String>,
    #[command(flatten)]
    pub nats_opts: crate::serve::NatsArgs,
    #[command(flatten)]
    pub http: crate::serve::HttpArgs,
    #[command(flatten)]
    pub store: crate::serve::StoreArgs,
}

pub fn run(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let config = MappingConfig::load(&args.config)?;
    // A follower never connects to PostgreSQL: the connection settings are placeholders.
    let conn = pgrepl::Config::parse("user=graphsync-follower").context("placeholder connection settings")?;
    let mut opts = Options::new(Arc::new(config), conn, args.data_dir.clone());
    if let Some(s) = &args.slot {
        opts.slot = s.clone();
    }
    args.store.apply(&mut opts);
    let nats = args.nats_opts.options(&args.nats, &opts.slot);
    let jwt = args.http.jwt()?;
    let rt = crate::serve::runtime()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        crate::replicate::stop_on_signal(tx);
        let status = ReplicaStatus::new();
        let listener = args.http.bind().await?;
        let api = args.http.api(status.clone(), jwt, None);
        let server = crate::http::spawn(listener, api, rx.clone());
        tracing::info!(nats = %scaleout::redact(&nats.url), stream = %nats.stream, "following");
        let cfg = scaleout::follow::FollowConfig {
            nats,
            opts,
            take_over: None,
        };
        // On the workers, as `replicate` does: no wake-up of this thread per message.
        let result = match tokio::spawn(scaleout::follow::run(cfg, status, rx)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        server.abort();
        result?;
        Ok(ExitCode::SUCCESS)
    })
}
