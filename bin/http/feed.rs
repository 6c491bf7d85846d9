//! The live side of the API: `/v1/subgraph` (a tenant's — or the whole graph's — nodes and
//! the edges inside it, streamed) and `/v1/changes` (the same subgraph's changes after an LSN,
//! one event per transaction, as Server-Sent Events or long-poll).
//!
//! A subscriber is a task with a cursor: it reads the shared feed (`sync::feed`, which
//! renders each transaction once per scope) into a bounded channel that the connection
//! drains. Replication never waits for it; one that does not drain its channel for
//! `feed_stall_timeout` is disconnected (and resumes with `Last-Event-ID`).
//!
//! Not for: computing changes (`graph::diff`), storing them (the change log) or auth (the
//! router's layer).

use super::{bad, number, unavailable, Api, ApiError, Params};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use graph::{Direction, EdgeLabel, GraphView, NodeId, Topology};
use pgoutput::Lsn;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use sync::feed::{Feed, FeedError, Page, Query as FeedQuery, Scope};
use sync::replicator::GraphSchema;
use tokio::sync::mpsc;

/// Change feed settings and counters, shared by every subscriber.
#[derive(Debug)]
pub struct FeedConfig {
    /// How long a subscriber may leave its buffer full before it is disconnected.
    pub stall_timeout: Duration,
    /// Comment lines sent this often keep idle connections (and proxies) open.
    pub heartbeat: Duration,
    /// Open SSE subscriptions.
    pub subscribers: AtomicU64,
    /// Events sent (SSE and long-poll).
    pub events_sent: AtomicU64,
    /// Subscribers disconnected for not reading.
    pub disconnects: AtomicU64,
    /// `/v1/subgraph` streams that may run at once.
    pub subgraph_streams: Arc<tokio::sync::Semaphore>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            stall_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            subscribers: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            subgraph_streams: Arc::new(tokio::sync::Semaphore::new(8)),
        }
    }
}

/// How often an SSE subscriber catches up with the applied position when its scope has no
/// events (its `up-to-date` then names the newer position).
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// Events a subscriber's buffer holds before the stall clock starts.
const SEND_BUFFER: usize = 16;
/// Most events one long-poll answer or one feed read holds.
const MAX_EVENTS: usize = 1000;
/// Most event bytes one long-poll answer holds.
const MAX_BYTES: usize = 4 << 20;

/// A body that sends what a channel receives.
struct Chunks(mpsc::Receiver<Bytes>, Option<Arc<Budget>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.0.poll_recv(cx);
        if let (std::task::Poll::Ready(Some(b)), Some(budget)) = (&polled, &self.1) {
            budget.inflight.fetch_sub(b.len(), Ordering::AcqRel);
            budget.drained.notify_one();
        }
        polled.map(|o| o.map(Ok))
    }
}

/// Bytes handed to a connection and not yet taken by it.
#[derive(Default)]
struct Budget {
    inflight: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

/// Most bytes one SSE connection holds in its buffer (an event larger than this is sent
/// alone, once the buffer is empty).
const SEND_BYTES: usize = 1 << 20;

fn streamed(content_type: &'static str, rx: mpsc::Receiver<Bytes>, budget: Option<Arc<Budget>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(Chunks(rx, budget)),
    )
        .into_response()
}

fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(what))
}

fn scope(p: &HashMap<String, String>) -> Scope {
    match p.get("tenant") {
        Some(t) => Scope::Tenant(t.clone()),
        None => Scope::All,
    }
}

fn edge_label(schema: &GraphSchema, p: &HashMap<String, String>) -> Result<Option<EdgeLabel>, ApiError> {
    let Some(l) = p.get("edge_label") else { return Ok(None) };
    let i = schema.edge_labels.iter().position(|x| x == l).ok_or_else(|| {
        bad(
            "edge_label",
            format!("unknown edge label {l:?} (labels: {})", schema.edge_labels.join(", ")),
        )
    })?;
    Ok(Some(EdgeLabel(i as u8)))
}

/// The nodes of the subgraph in `view`, in id order.
fn members(view: &GraphView, scope: &Scope) -> Vec<NodeId> {
    match scope {
        Scope::All => (0..view.node_count())
            .map(NodeId)
            .filter(|&n| view.is_visible(n) && view.node(n).is_some())
            .collect(),
        Scope::Tenant(t) => {
            let mut v: Vec<NodeId> = super::tenant_ids(view, t)
                .into_iter()
                .flat_map(|id| view.tenant_members(id))
                .filter(|&n| view.is_visible(n))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    }
}

/// `GET /v1/subgraph`: every node of the scope and every edge with both ends in it, at one
/// LSN; NDJSON (`Accept: application/x-ndjson`: a header line, then one line per node and per
/// edge) or one JSON object, streamed either way.
pub(super) async fn subgraph(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let (view, schema, applied) = api.view(&p).await?;
    let label = edge_label(&schema, &p)?;
    let scope = scope(&p);
    // The view may be newer than the applied LSN the status shows (it is published first);
    // with nothing mapped since, a later applied LSN describes the same graph.
    let lsn = Lsn(view.lsn()).max(applied);
    let ndjson = accepts(&headers, "application/x-ndjson");
    // A few at a time: each holds a view (and its overlay versions) while it streams.
    let Ok(slot) = api.feed.subgraph_streams.clone().try_acquire_owned() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "too many /v1/subgraph streams at once; retry in a moment"}),
        ));
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let (rt, stall) = (tokio::runtime::Handle::current(), api.feed.stall_timeout);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut w = Writer {
            tx,
            buf: Vec::with_capacity(CHUNK + 4096),
            rt,
            stall,
        };
        let tenant = match &scope {
            Scope::All => serde_json::Value::Null,
            Scope::Tenant(t) => json!(t),
        };
        let head = json!({"lsn": lsn.to_string(), "tenant": tenant});
        let nodes = members(&view, &scope);
        let inside = |m: NodeId| match &scope {
            Scope::All => view.is_visible(m) && view.node(m).is_some(),
            Scope::Tenant(_) => nodes.binary_search(&m).is_ok(),
        };
        if ndjson {
            w.line(&head.to_string());
        } else {
            let mut h = head.to_string();
            h.pop();
            w.put(&h);
            w.put(",\"nodes\":[");
        }
        let mut first = true;
        for &n in &nodes {
            let Some(d) = view.node(n) else { continue };
            let mut m = sync::render::node_fields(&schema, &d);
            if ndjson {
                m.insert("kind".into(), json!("node"));
            }
            let text = serde_json::Value::Object(m).to_string();
            if !w.item(ndjson, &mut first, &text) {
                return;
            }
        }
        if !ndjson {
            w.put("],\"edges\":[");
        }
        first = true;
        for &n in &nodes {
            let Some(src) = view.node(n) else { continue };
            let source = sync::render::node_name(&schema, src.label, &src.key);
            let mut edges = Vec::new();
            view.for_each_edge(n, Direction::Out, |m, l, weight| {
                if label.is_none_or(|x| x == l) && inside(m) {
                    edges.push((m, l, weight));
                }
            });
            for (m, l, weight) in edges {
                let Some(dst) = view.node(m) else { continue };
                let mut e = json!({
                    "source": source,
                    "target": sync::render::node_name(&schema, dst.label, &dst.key),
                    "edge_label": sync::render::edge_label(&schema, l),
                    "weight": weight,
                });
                if ndjson {
                    e["kind"] = json!("edge");
                }
                if !w.item(ndjson, &mut first, &e.to_string()) {
                    return;
                }
            }
        }
        if !ndjson {
            w.put("]}");
        }
        w.flush();
    });
    Ok(streamed(
        if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        },
        rx,
        None,
    ))
}

const CHUNK: usize = 64 << 10;

/// Buffers text into chunks for a streamed body.
struct Writer {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    rt: tokio::runtime::Handle,
    /// A client that takes nothing for this long is dropped.
    stall: Duration,
}

impl Writer {
    fn put(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn line(&mut self, s: &str) {
        self.put(s);
        self.buf.push(b'\n');
    }

    /// Adds one item (a line, or a comma-separated array element); false if the client left.
    fn item(&mut self, ndjson: bool, first: &mut bool, s: &str) -> bool {
        if ndjson {
            self.line(s);
        } else {
            if !*first {
                self.buf.push(b',');
            }
            self.put(s);
        }
        *first = false;
        self.buf.len() < CHUNK || self.flush()
    }

    fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096)));
        self.rt.block_on(self.tx.send_timeout(chunk, self.stall)).is_ok()
    }
}

fn must_refetch(oldest: Lsn) -> ApiError {
    ApiError(
        StatusCode::CONFLICT,
        json!({"error": "must-refetch", "oldest": oldest.to_string(),
               "hint": "this position is older than the change log keeps: fetch /v1/subgraph again and follow from its lsn"}),
    )
}

fn feed_error(e: FeedError) -> ApiError {
    match e {
        FeedError::TooOld { oldest, .. } => must_refetch(oldest),
        e => {
            tracing::error!(error = %e, "change feed read failed");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()}))
        }
    }
}

/// One read of the feed, on a blocking thread when it may touch the disk.
async fn read(feed: &Arc<Feed>, q: &FeedQuery, from: Lsn, upto: Lsn) -> Result<Page, FeedError> {
    if feed.in_memory(from) {
        return feed.read(q, from, upto);
    }
    let (feed, q) = (feed.clone(), q.clone());
    tokio::task::spawn_blocking(move || feed.read(&q, from, upto))
        .await
        .unwrap_or_else(|e| {
            Err(FeedError::Corrupt {
                lsn: from,
                what: format!("feed reader failed: {e}"),
            })
        })
}

/// `GET /v1/changes`: SSE with `Accept: text/event-stream`, long-poll otherwise.
pub(super) async fn changes(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let feed = api
        .status
        .feed()
        .ok_or_else(|| unavailable("the graph is not loaded yet (initial copy or start-up)"))?;
    let label = edge_label(feed.schema(), &p)?;
    let last_event = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let from = match last_event.or(p.get("from").map(String::as_str)) {
        Some(f) => f
            .parse::<Lsn>()
            .map_err(|_| bad("from", format!("{f:?} is not an LSN like 0/16B3748")))?,
        None => {
            let applied = api.status.snapshot().applied_lsn;
            api.status.graph().map_or(applied, |g| Lsn(g.view().lsn()).max(applied))
        }
    };
    let oldest = feed.oldest().map_err(feed_error)?;
    if from < oldest {
        return Err(must_refetch(oldest));
    }
    let q = FeedQuery {
        scope: scope(&p),
        edge_label: label,
        max_events: MAX_EVENTS,
        max_bytes: MAX_BYTES,
    };
    if accepts(&headers, "text/event-stream") {
        return Ok(sse(api, feed, q, from));
    }
    let wait: u64 = number(&p, "wait_ms", 20_000)?;
    if wait > 300_000 {
        return Err(bad("wait_ms", format!("{wait} is more than 300000")));
    }
    long_poll(api, feed, q, from, Duration::from_millis(wait)).await
}

async fn long_poll(
    api: Api,
    feed: Arc<Feed>,
    q: FeedQuery,
    mut from: Lsn,
    wait: Duration,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = api.status.subscribe_applied();
    loop {
        let upto = *applied.borrow_and_update();
        if upto > from {
            let page = read(&feed, &q, from, upto).await.map_err(feed_error)?;
            from = page.next;
            if !page.events.is_empty() {
                api.feed
                    .events_sent
                    .fetch_add(page.events.len() as u64, Ordering::Relaxed);
                let mut body = String::from("{\"events\":[");
                for (i, e) in page.events.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&e.json);
                }
                body.push_str(&format!(
                    "],\"next\":\"{}\",\"up_to_date\":{}}}",
                    page.next,
                    page.complete && page.next >= *applied.borrow()
                ));
                return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
            if !page.complete {
                continue;
            }
        }
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    let now = *applied.borrow();
    Ok(axum::Json(json!({"events": [], "next": from.to_string(), "up_to_date": from >= now})).into_response())
}

/// Counts a subscriber while it lives.
struct Subscribed(Arc<FeedConfig>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn sse(api: Api, feed: Arc<Feed>, q: FeedQuery, mut from: Lsn) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(SEND_BUFFER);
    let budget = Arc::new(Budget::default());
    let drained = budget.clone();
    let shared = api.feed.clone();
    shared.subscribers.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _count = Subscribed(shared.clone());
        let cfg = &*shared;
        // Wakes when transactions with events in this scope were applied, and once a
        // second to follow the applied position (so `up-to-date` reaches every LSN).
        let mut applied = feed.watch(&q.scope);
        let position = api.status.subscribe_applied();
        let mut target = from;
        let mut tick = tokio::time::interval(POSITION_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since = tokio::time::Instant::now();
        let send = |chunk: String| {
            let (tx, budget) = (tx.clone(), budget.clone());
            async move {
                // Within the byte budget, or alone; a connection that takes nothing for the
                // stall timeout is dropped.
                let deadline = tokio::time::Instant::now() + cfg.stall_timeout;
                loop {
                    let held = budget.inflight.load(Ordering::Acquire);
                    if held == 0 || held + chunk.len() <= SEND_BYTES {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, budget.drained.notified())
                        .await
                        .is_err()
                    {
                        cfg.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "change feed subscriber not reading: disconnected (it resumes with Last-Event-ID)"
                        );
                        return false;
                    }
                }
                budget.inflight.fetch_add(chunk.len(), Ordering::AcqRel);
                match tx.send_timeout(Bytes::from(chunk), cfg.stall_timeout).await {
                    Ok(()) => true,
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        cfg.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "change feed subscriber not reading: disconnected (it resumes with Last-Event-ID)"
                        );
                        false
                    }
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
                }
            }
        };
        // Tells EventSource to retry after 1 s when the connection drops.
        if !send("retry: 1000\n\n".into()).await {
            return;
        }
        let mut told_up_to_date: Option<Lsn> = None;
        loop {
            let upto = target.max(*applied.borrow_and_update());
            if upto > from {
                let page = match read(&feed, &q, from, upto).await {
                    Ok(p) => p,
                    Err(e) => {
                        let (kind, body) = match e {
                            FeedError::TooOld { oldest, .. } => (
                                "must-refetch",
                                json!({"error": "must-refetch", "oldest": oldest.to_string()}),
                            ),
                            e => {
                                tracing::error!(error = %e, "change feed read failed");
                                ("error", json!({"error": e.to_string()}))
                            }
                        };
                        let _ = send(format!("event: {kind}\ndata: {body}\n\n")).await;
                        return;
                    }
                };
                for e in &page.events {
                    if !send(format!("id: {}\ndata: {}\n\n", e.lsn, e.json)).await {
                        return;
                    }
                    cfg.events_sent.fetch_add(1, Ordering::Relaxed);
                }
                if !page.events.is_empty() {
                    idle_since = tokio::time::Instant::now();
                }
                from = page.next;
                if !page.complete {
                    continue;
                }
            }
            if told_up_to_date != Some(from) && from >= *applied.borrow() {
                // `id:` moves the browser's Last-Event-ID past transactions of other scopes.
                if !send(format!(
                    "id: {from}\nevent: up-to-date\ndata: {{\"lsn\":\"{from}\"}}\n\n"
                ))
                .await
                {
                    return;
                }
                told_up_to_date = Some(from);
                idle_since = tokio::time::Instant::now();
            }
            tokio::select! {
                r = applied.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    target = *position.borrow();
                    if idle_since.elapsed() >= cfg.heartbeat {
                        if !send(": heartbeat\n\n".into()).await {
                            return;
                        }
                        idle_since = tokio::time::Instant::now();
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    streamed("text/event-stream", rx, Some(drained))
}
