//! Operations endpoints: `/health` (replica state and lag, 200 or 503), `/v1/status` (what the
//! replica holds and where it stands) and `/metrics` (Prometheus text). Not for graph queries.

use super::{Api, ApiError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use graph::Topology;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json_};
use sync::replicator::{Phase, ReplicaStatus};

use super::auth::Access;

/// Lag figures from a status snapshot.
struct Lag {
    bytes: u64,
    seconds: f64,
}

fn lag(s: &sync::replicator::StatusSnapshot) -> Lag {
    let bytes = s.server_wal_end.0.saturating_sub(s.applied_lsn.0);
    let seconds = if bytes == 0 {
        0.0
    } else {
        s.last_commit_time.map_or(0.0, |t| {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0);
            ((now_us - t.unix_micros()) as f64 / 1e6).max(0.0)
        })
    };
    Lag { bytes, seconds }
}

pub(super) async fn health(State(api): State<Api>) -> Response {
    let s = api.status.snapshot();
    let l = lag(&s);
    let view = api.status.graph().map(|g| g.view());
    let state = match s.phase {
        Phase::Starting => "starting",
        Phase::InitialCopy => "initial_copy",
        Phase::Disconnected | Phase::Failed => "disconnected",
        Phase::Stopping => "stopping",
        Phase::MappingBroken => "mapping_broken",
        Phase::Streaming if s.log_error.is_some() => "log_unwritable",
        Phase::Streaming if s.publish_error.is_some() => "publish_stalled",
        Phase::Streaming if l.seconds > api.max_lag_seconds => "lagging",
        Phase::Streaming if l.bytes > 0 && l.seconds > 1.0 => "catching_up",
        Phase::Streaming => "streaming",
    };
    let ok = matches!(state, "streaming" | "catching_up");
    let body = json!({
        "status": state,
        "applied_lsn": s.applied_lsn.to_string(),
        "confirmed_flush_lsn": s.confirmed_lsn.to_string(),
        "durable_lsn": s.durable_lsn.to_string(),
        "server_wal_lsn": s.server_wal_end.to_string(),
        "lag_bytes": l.bytes,
        "lag_seconds": l.seconds,
        "last_error": s.last_error,
        "log_error": s.log_error,
        "overlay_edges": view.as_ref().map_or(0, |v| v.overlay_edges()),
        "read_only_reason": Json_::Null,
        "snapshot_lsn": s.snapshot_lsn.to_string(),
        "rebuild": rebuild_json(&api.status),
        "role": if s.follower { "follower" } else { "leader" },
        "published_lsn": s.published_lsn.map(|l| l.to_string()),
        "publish_error": s.publish_error,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// A background rebuild in progress: its generation, why, phase and position, how long it runs.
fn rebuild_json(status: &ReplicaStatus) -> Json_ {
    let Some(r) = status.rebuild() else { return Json_::Null };
    let s = r.status.snapshot();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    json!({
        "generation": r.generation,
        "why": r.why,
        "phase": s.phase.as_str(),
        "applied_lsn": s.applied_lsn.to_string(),
        "rows_copied": s.copied_rows,
        "elapsed_seconds": (now - r.started_unix_ms) as f64 / 1000.0,
    })
}

pub(super) async fn status(
    State(api): State<Api>,
    access: Option<axum::Extension<Access>>,
) -> Result<Json<Json_>, ApiError> {
    let s = api.status.snapshot();
    if !matches!(access.as_deref(), None | Some(Access::All)) {
        // A tenant-scoped token sees positions, not what the whole graph holds.
        let l = lag(&s);
        return Ok(Json(json!({
            "phase": s.phase.as_str(),
            "applied_lsn": s.applied_lsn.to_string(),
            "durable_lsn": s.durable_lsn.to_string(),
            "lag_seconds": l.seconds,
            "lag_bytes": l.bytes,
        })));
    }
    let schema = api.status.schema().unwrap_or_default();
    let mut per_label = serde_json::Map::new();
    let mut edges = 0;
    if let Some(g) = api.status.graph() {
        let v = g.view();
        edges = v.edge_count();
        // O(nodes) over the label column: off the async workers on a big graph.
        let counts = tokio::task::spawn_blocking(move || v.visible_nodes_per_label())
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()})))?;
        for (i, l) in schema.node_labels.iter().enumerate() {
            per_label.insert(l.clone(), json!(counts.get(i).copied().unwrap_or(0)));
        }
    }
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "versions": {
            "graphsync": env!("CARGO_PKG_VERSION"),
            "snapshot_format": graph::snapshot::FORMAT_VERSION,
            "postgresql": s.server_version,
            "pgoutput_protocol": s.proto_version,
        },
        "slot": schema.slot,
        "publication": schema.publication,
        "mapping_hash": format!("{:016x}", schema.mapping_hash),
        "phase": s.phase.as_str(),
        "applied_lsn": s.applied_lsn.to_string(),
        "durable_lsn": s.durable_lsn.to_string(),
        "snapshot_lsn": s.snapshot_lsn.to_string(),
        "replayed_changes_at_start": s.replayed_changes,
        "log_error": s.log_error,
        "nodes_per_label": per_label,
        "edges": edges,
        "uptime_seconds": api.started.elapsed().as_secs_f64(),
        "rebuild": rebuild_json(&api.status),
        "rebuilds": s.rebuilds,
        "rows_copied": s.copied_rows,
    })))
}

/// A latency histogram of the status snapshot, as a Prometheus histogram.
#[derive(Debug)]
struct SnapshotHistogram(sync::replicator::Histogram);

impl EncodeMetric for SnapshotHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets: Vec<(f64, u64)> = sync::replicator::Histogram::BOUNDS
            .iter()
            .copied()
            .zip(h.buckets)
            .collect();
        // Observations past the last bound are counted only by +Inf.
        let within: u64 = h.buckets.iter().sum();
        buckets.push((f64::MAX, h.count.saturating_sub(within)));
        encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

pub(super) async fn metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let s = api.status.snapshot();
    let l = lag(&s);
    let (nodes, edges, overlay) = api.status.graph().map_or((0, 0, 0), |g| {
        let v = g.view();
        (v.node_count(), v.edge_count(), v.overlay_edges())
    });
    let age = if s.snapshot_unix_ms > 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (now - s.snapshot_unix_ms) as f64 / 1000.0
    } else {
        0.0
    };
    // Built per scrape from one status snapshot, so every value is from the same moment.
    let mut reg = Registry::with_prefix("graphsync");
    let gauges: [(&str, &str, f64); 15] = [
        (
            "mapping_broken",
            "1 while replication is paused because the mapping does not fit the source (see /health).",
            f64::from(u8::from(s.phase == Phase::MappingBroken)),
        ),
        (
            "applied_lsn",
            "Every transaction committed before this WAL position is applied.",
            s.applied_lsn.0 as f64,
        ),
        (
            "confirmed_lsn",
            "WAL position confirmed to the server (never past the change log's durable position).",
            s.confirmed_lsn.0 as f64,
        ),
        (
            "durable_lsn",
            "WAL position the change log has fsynced (or the snapshot holds).",
            s.durable_lsn.0 as f64,
        ),
        (
            "snapshot_lsn",
            "WAL position of the newest snapshot (the change log is replayed after it at restart).",
            s.snapshot_lsn.0 as f64,
        ),
        (
            "log_unwritable",
            "1 while the change log cannot be written (disk full...): nothing more is confirmed.",
            f64::from(u8::from(s.log_error.is_some())),
        ),
        (
            "server_wal_lsn",
            "Server WAL end as last reported.",
            s.server_wal_end.0 as f64,
        ),
        ("lag_bytes", "Server WAL end minus applied position.", l.bytes as f64),
        ("lag_seconds", "Age of the last applied commit while behind.", l.seconds),
        (
            "graph_node_ids",
            "Node ids in the graph (visible or not).",
            f64::from(nodes),
        ),
        ("graph_edges", "Visible edges.", edges as f64),
        (
            "overlay_edges",
            "Edge changes held in overlays since the last compaction.",
            overlay as f64,
        ),
        (
            "streaming",
            "1 while streaming.",
            f64::from(u8::from(s.phase == Phase::Streaming)),
        ),
        (
            "snapshot_bytes",
            "Size of the newest snapshot file.",
            s.snapshot_bytes as f64,
        ),
        (
            "snapshot_age_seconds",
            "Age of the newest snapshot written by this process.",
            age,
        ),
    ];
    for (name, help, v) in gauges {
        reg.register(name, help, ConstGauge::new(v));
    }
    if let Some(p) = s.published_lsn {
        reg.register(
            "published_lsn",
            "Every change-log record through this WAL position is acknowledged by JetStream (--publish).",
            ConstGauge::new(p.0 as f64),
        );
        reg.register(
            "publish_stalled",
            "1 while publishing to JetStream fails (nothing past published_lsn is confirmed).",
            ConstGauge::new(f64::from(u8::from(s.publish_error.is_some()))),
        );
    }
    if s.follower {
        for (name, help, v) in [
            (
                "follower_leader_lsn",
                "The leader's newest record in the stream.",
                s.server_wal_end.0 as f64,
            ),
            (
                "follower_lag_bytes",
                "The leader's newest record minus the applied position.",
                l.bytes as f64,
            ),
            (
                "follower_lag_seconds",
                "Age of the last applied commit while behind the leader.",
                l.seconds,
            ),
        ] {
            reg.register(name, help, ConstGauge::new(v));
        }
        reg.register(
            "follower_records_applied",
            "Change-log records applied from the stream.",
            ConstCounter::new(s.follower_records as f64),
        );
        reg.register(
            "follower_rebootstraps",
            "Snapshots loaded because the stream no longer held the next record.",
            ConstCounter::new(s.rebootstraps as f64),
        );
    }
    reg.register(
        "feed_subscribers",
        "Open change feed (SSE) subscriptions.",
        ConstGauge::new(api.feed.subscribers.load(std::sync::atomic::Ordering::Relaxed) as f64),
    );
    // Counters get their `_total` suffix from the encoder.
    let counters: [(&str, &str, f64); 11] = [
        (
            "copied_rows",
            "Rows read by table copies (initial, rebuilds, newly mapped tables).",
            s.copied_rows as f64,
        ),
        (
            "copies",
            "Tables copied from the source (an initial copy counts each table).",
            s.copies as f64,
        ),
        (
            "mapping_reloads",
            "Mapping reloads applied online.",
            s.mapping_reloads as f64,
        ),
        (
            "feed_events_sent",
            "Change feed events sent (SSE and long-poll).",
            api.feed.events_sent.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "feed_disconnects",
            "Change feed subscribers disconnected for not reading.",
            api.feed.disconnects.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        ("transactions_applied", "Transactions applied.", s.transactions as f64),
        ("row_changes_applied", "Row changes applied.", s.changes as f64),
        ("reconnects", "Reconnects.", s.reconnects as f64),
        ("compactions", "Overlay compactions.", s.compactions as f64),
        ("compaction_seconds", "Time spent compacting.", s.compaction_seconds),
        (
            "checkpoints",
            "Snapshots written (the first after the copy, then with compactions).",
            s.checkpoints as f64,
        ),
    ];
    for (name, help, v) in counters {
        reg.register(name, help, ConstCounter::new(v));
    }
    for (name, help, h) in [
        (
            "apply_seconds",
            "Time to apply one transaction to the graph.",
            &s.apply_seconds,
        ),
        (
            "commit_to_apply_seconds",
            "Server commit to applied here, per transaction.",
            &s.commit_to_apply_seconds,
        ),
        (
            "commit_to_send_seconds",
            "Server commit to the server sending it, per transaction (the server's share of the lag: its WAL flush, its walsender's turn, decoding).",
            &s.commit_to_send_seconds,
        ),
        (
            "send_to_receive_seconds",
            "The server sending a commit to graphsync receiving it, per transaction (network and reading; includes the clocks' skew, clamped at 0).",
            &s.send_to_receive_seconds,
        ),
        (
            "receive_to_apply_seconds",
            "Commit received from the server to applied here, per transaction (graphsync's own share of the lag).",
            &s.receive_to_apply_seconds,
        ),
    ] {
        reg.register(name, help, SnapshotHistogram(h.clone()));
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "cannot encode metrics"}),
        )
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
