//! graphsync's scale-out over NATS JetStream: one leader (`graphsync replicate --publish`)
//! holds the replication slot and publishes its change-log records and snapshots; followers
//! (`graphsync follow`) bootstrap from a snapshot and apply the records, serving the same API.
//!
//! - [`publish`]: the leader's publisher: tails the durable change log, publishes each record
//!   in LSN order, each expecting the stream's end as the publisher left it (a deposed leader
//!   cannot interleave), stops for good when a standby's fence raised the term, reports what
//!   JetStream acknowledged (confirms to PostgreSQL wait for it), and uploads snapshots to the
//!   object store.
//! - [`follow`]: the follower's loop: bootstrap, consume, apply, re-bootstrap on a gap; a
//!   standby's take-over (drain, fence one term higher, name the leader's slot).
//! - `wire`: the stream's layout (names, subjects, headers, parts of large records).
//!
//! JetStream does the replication, storage and clustering; nothing here is a consensus or a
//! storage engine. Not for: applying records to a graph (`sync::replicator::Follower`) or
//! anything PostgreSQL.

// Errors here are on cold paths (connecting, bootstrapping, a failed publish) and most of
// their size is `sync`'s error carried through; boxing them would buy nothing measurable.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::time::Duration;

pub mod follow;
mod lineage;
pub mod publish;
mod snapshots;
mod wire;

pub use wire::{default_stream_name, Layout};

/// How to reach NATS. (`Debug` hides credentials in the URL.)
#[derive(Clone)]
pub struct NatsOptions {
    /// Server URLs, comma-separated (`nats://host:4222`, `tls://…`; `user:pass@` as NATS
    /// clients accept).
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
    /// A NATS credentials file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the server's TLS certificate with.
    pub ca_file: Option<PathBuf>,
    /// Stream replicas when the stream is created (1, or 3 on a cluster).
    pub replicas: usize,
    /// Stream retention by size when it is created (bytes; 0: unlimited).
    pub max_bytes: i64,
    /// Stream retention by age when it is created (zero: unlimited).
    pub max_age: Duration,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact(&self.url))
            .field("stream", &self.stream)
            .field("creds_file", &self.creds_file)
            .field("ca_file", &self.ca_file)
            .field("replicas", &self.replicas)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// Why talking to NATS failed (each is retried by the loops; the text names what to check).
#[derive(Debug, thiserror::Error)]
pub enum ScaleoutError {
    /// Connecting failed.
    #[error("cannot connect to NATS at {url}: {what}; check that nats-server runs with JetStream enabled (-js) and the URL, credentials and TLS settings")]
    Connect {
        /// The URL (credentials removed).
        url: String,
        /// What failed.
        what: String,
    },
    /// A JetStream request failed.
    #[error("JetStream {op} failed: {what}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// What failed.
        what: String,
    },
    /// Retrying cannot help (another mapping): the process stops with this.
    #[error("{0}")]
    Refused(String),
    /// The stream holds something this process cannot continue from.
    #[error("{0}")]
    Stream(String),
    /// The replica's own files.
    #[error(transparent)]
    Sync(#[from] sync::replicator::SyncError),
    /// Reading the change log.
    #[error(transparent)]
    Tail(#[from] sync::changelog::TailError),
}

impl ScaleoutError {
    fn js(op: &'static str) -> impl FnOnce(String) -> ScaleoutError {
        move |what| ScaleoutError::JetStream { op, what }
    }
}

/// `url` without the `user:password@` part (for logs and errors).
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***@{}", &u[..s + 3], &u[at + 1..]),
            (None, Some(at)) => format!("***@{}", &u[at + 1..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to NATS (TLS and credentials as configured).
pub async fn connect(opts: &NatsOptions) -> Result<async_nats::Client, ScaleoutError> {
    let err = |what: String| ScaleoutError::Connect {
        url: redact(&opts.url),
        what,
    };
    let mut c = async_nats::ConnectOptions::new()
        .name("graphsync")
        .connection_timeout(Duration::from_secs(5));
    if let Some(f) = &opts.creds_file {
        c = c
            .credentials_file(f)
            .await
            .map_err(|e| err(format!("credentials file {}: {e}", f.display())))?;
    }
    if let Some(ca) = &opts.ca_file {
        c = c.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = opts
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a NATS URL: {e}")))?;
    c.connect(addrs).await.map_err(|e| err(e.to_string()))
}

/// The LSN of the newest message in the stream (what followers can read up to), for tools and
/// tests; `None` for an empty stream.
pub async fn stream_end(opts: &NatsOptions) -> Result<Option<pgoutput::Lsn>, ScaleoutError> {
    let client = connect(opts).await?;
    let js = async_nats::jetstream::new(client);
    let mut s = js
        .get_stream(wire::Layout::new(&opts.stream).stream)
        .await
        .map_err(|e| ScaleoutError::js("stream lookup")(e.to_string()))?;
    Ok(publish::last_message(&mut s).await?.map(|l| l.meta.lsn))
}

/// The wait between two tries of a session: 200 ms, doubling up to 5 s, and 200 ms again
/// after a session that ran for 30 s.
pub(crate) struct Retry {
    wait: std::time::Duration,
}

impl Retry {
    pub(crate) fn new() -> Retry {
        Retry {
            wait: std::time::Duration::from_millis(200),
        }
    }

    /// Waits before the next try of a session that started at `started` (or until shutdown).
    pub(crate) async fn wait(
        &mut self,
        started: std::time::Instant,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        use std::time::Duration;
        if started.elapsed() > Duration::from_secs(30) {
            self.wait = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(self.wait) => {}
            _ = shutdown.changed() => {}
        }
        self.wait = (self.wait * 2).min(Duration::from_secs(5));
    }
}
