//! The HTTP surface: health, Prometheus metrics, status, and the graph query API.
//!
//! Every query reads one immutable graph view (a pointer copy), so answers are consistent with
//! one transaction boundary and never block replication. `min_lsn` waits (bounded by
//! `timeout_ms`) until the replica has applied that position: read-your-writes for a client
//! that just committed. Errors are JSON `{"error": ...}` naming the parameter at fault.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use graph::query::{self, Scratch};
use graph::{Direction, EdgeFilter, GraphView, NodeId, NodeKey, Topology};
use pgoutput::Lsn;
use serde_json::{json, Value as Json_};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::replicator::{GraphSchema, KeyKind, ReplicaStatus};

mod admin;
mod auth;
mod feed;
mod ops;
pub use admin::Admin;
use auth::Access;
pub use auth::{Jwt, JwtSettings};
pub use feed::FeedConfig;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub status: Arc<ReplicaStatus>,
    pub token: Option<Arc<str>>,
    pub started: Instant,
    pub max_lag_seconds: f64,
    pub feed: Arc<feed::FeedConfig>,
    /// Checks tenant-scoped signed tokens, when configured.
    pub jwt: Option<Arc<auth::Jwt>>,
    /// Mapping reloads, when the process has a mapping file.
    pub admin: Option<Arc<admin::Admin>>,
}

/// The router.
pub fn router(api: Api) -> Router {
    // Everything but /health needs the token (when one is configured): one layer, not a check
    // per handler.
    let guarded = Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/v1/status", get(ops::status))
        .route("/v1/nodes/{label}/{key}", get(node))
        .route("/v1/neighbors", get(neighbors))
        .route("/v1/traverse", get(traverse))
        .route("/v1/shortest-path", get(shortest_path))
        .route("/v1/components", get(components))
        .route("/v1/subgraph", get(feed::subgraph))
        .route("/v1/changes", get(feed::changes))
        .route("/v1/admin/reload", axum::routing::post(admin::reload))
        .route("/v1/admin/rebuild", axum::routing::post(admin::rebuild))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), require_token));
    Router::new()
        .route("/health", get(ops::health))
        .merge(crate::explorer::router())
        .merge(guarded)
        .with_state(api)
}

/// Refuses a request without a valid token (401) and scopes a tenant-scoped one (see
/// [`auth`]); handlers find the [`Access`] in the request's extensions.
async fn require_token(
    State(api): State<Api>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let access = api.access(req.headers(), req.uri().query())?;
    if let Access::Tenants(t) = &access {
        let uri = auth::restrict(req.uri(), t)?;
        *req.uri_mut() = uri;
    }
    req.extensions_mut().insert(access);
    Ok(next.run(req).await)
}

/// Serves the API on `listener` until `stop` turns true.
pub fn spawn(
    listener: tokio::net::TcpListener,
    api: Api,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router(api))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    })
}

type Params = Query<HashMap<String, String>>;

#[derive(Debug)]
struct ApiError(StatusCode, Json_);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn bad(param: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({"error": format!("parameter {param}: {msg}"), "parameter": param}),
    )
}

fn not_found(msg: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, json!({"error": msg.to_string()}))
}

fn unavailable(msg: &str) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, json!({"error": msg}))
}

impl Api {
    /// Waits for `min_lsn` if given, then returns the view, the schema and the applied LSN.
    async fn view(&self, p: &HashMap<String, String>) -> Result<(Arc<GraphView>, Arc<GraphSchema>, Lsn), ApiError> {
        let timeout = match p.get("timeout_ms") {
            Some(t) => Duration::from_millis(
                t.parse()
                    .map_err(|_| bad("timeout_ms", "not a number of milliseconds"))?,
            ),
            None => Duration::from_secs(5),
        };
        if let Some(m) = p.get("min_lsn") {
            let want: Lsn = m.parse().map_err(|_| bad("min_lsn", "not an LSN like 0/16B3748"))?;
            let mut rx = self.status.subscribe_applied();
            let reached = tokio::time::timeout(timeout, rx.wait_for(|l| *l >= want)).await;
            if !matches!(reached, Ok(Ok(_))) {
                let now = self.status.snapshot().applied_lsn;
                return Err(ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    json!({"error": format!("applied LSN {now} did not reach min_lsn {want} within {} ms", timeout.as_millis()), "lsn": now.to_string()}),
                ));
            }
        }
        let (graph, schema) = self.status.served();
        let graph = graph.ok_or_else(|| unavailable("the graph is not loaded yet (initial copy or start-up)"))?;
        let schema = schema.ok_or_else(|| unavailable("the graph is not loaded yet"))?;
        let lsn = self.status.snapshot().applied_lsn;
        Ok((graph.view(), schema, lsn))
    }
}

/// The graph's tenants whose value, as text, is exactly `text` — the form the API names
/// tenants in and the change feed matches them by (an integer in decimal, a uuid in its
/// lower-case canonical form, text as is); an integer column's tenant comes first.
fn tenant_ids(view: &GraphView, text: &str) -> Vec<graph::TenantId> {
    let mut keys = Vec::new();
    if let Some(i) = text.parse::<i64>().ok().filter(|i| i.to_string() == text) {
        keys.push(NodeKey::Int(i));
    }
    if let Some(u) = parse_key(&[KeyKind::Uuid], text).filter(|u| u.to_string() == text) {
        keys.push(u);
    }
    keys.push(NodeKey::Text(text.into()));
    keys.iter().filter_map(|k| view.tenant(k)).collect()
}

fn key_text(k: &NodeKey) -> String {
    k.to_string()
}

fn node_name(view: &GraphView, schema: &GraphSchema, n: NodeId) -> String {
    match view.node(n) {
        Some(d) => format!(
            "{}:{}",
            schema.node_labels.get(d.label.0 as usize).map_or("?", String::as_str),
            key_text(&d.key)
        ),
        None => format!("#{}", n.0),
    }
}

fn parse_key(kinds: &[KeyKind], text: &str) -> Option<NodeKey> {
    let one = |kind: KeyKind, s: &str| -> Option<NodeKey> {
        Some(match kind {
            KeyKind::Int => NodeKey::Int(s.parse().ok()?),
            KeyKind::Uuid => {
                let hex: String = s.chars().filter(|c| *c != '-').collect();
                if hex.len() != 32 {
                    return None;
                }
                let mut u = [0u8; 16];
                for (i, b) in u.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
                }
                NodeKey::Uuid(u)
            }
            KeyKind::Text => NodeKey::Text(s.into()),
        })
    };
    if kinds.len() <= 1 {
        return one(kinds.first().copied().unwrap_or(KeyKind::Text), text);
    }
    let parts: Vec<&str> = text.splitn(kinds.len(), ',').collect();
    if parts.len() != kinds.len() {
        return None;
    }
    let keys = kinds
        .iter()
        .zip(parts)
        .map(|(k, s)| one(*k, s))
        .collect::<Option<Vec<_>>>()?;
    Some(NodeKey::Composite(keys.into()))
}

/// Resolves `LABEL:KEY` (parameter `param`) to a visible node. With a `tenant` parameter, a
/// node that does not exist gets the same 404 as one of another tenant (so a tenant-scoped
/// client learns nothing of other tenants' keys).
fn resolve(
    view: &GraphView,
    schema: &GraphSchema,
    p: &HashMap<String, String>,
    param: &str,
    text: &str,
) -> Result<NodeId, ApiError> {
    resolve_any(view, schema, param, text).map_err(|e| match p.get("tenant") {
        Some(t) if e.0 == StatusCode::NOT_FOUND => not_found(format!("node {text} is not in tenant {t}")),
        _ => e,
    })
}

fn resolve_any(view: &GraphView, schema: &GraphSchema, param: &str, text: &str) -> Result<NodeId, ApiError> {
    let (label, key) = text
        .split_once(':')
        .ok_or_else(|| bad(param, format!("{text:?} is not LABEL:KEY (e.g. User:42)")))?;
    let li = schema.node_labels.iter().position(|l| l == label).ok_or_else(|| {
        bad(
            param,
            format!(
                "unknown node label {label:?} (labels: {})",
                schema.node_labels.join(", ")
            ),
        )
    })?;
    let k = parse_key(&schema.key_kinds[li], key)
        .ok_or_else(|| bad(param, format!("{key:?} is not a valid key of {label}")))?;
    match view.resolve(graph::NodeLabel(li as u16), &k) {
        Some(n) if view.is_visible(n) => Ok(n),
        _ => Err(not_found(format!("node {text} does not exist"))),
    }
}

fn direction(p: &HashMap<String, String>, default: Direction) -> Result<Direction, ApiError> {
    match p.get("direction").map(String::as_str) {
        None => Ok(default),
        Some("out") => Ok(Direction::Out),
        Some("in") => Ok(Direction::In),
        Some("both") => Ok(Direction::Both),
        Some(other) => Err(bad("direction", format!("{other:?} is not out, in or both"))),
    }
}

/// The edge label and tenant restrictions of a query.
fn filter(view: &GraphView, schema: &GraphSchema, p: &HashMap<String, String>) -> Result<Option<EdgeFilter>, ApiError> {
    let mut f = EdgeFilter::default();
    if let Some(l) = p.get("edge_label") {
        let i = schema.edge_labels.iter().position(|x| x == l).ok_or_else(|| {
            bad(
                "edge_label",
                format!("unknown edge label {l:?} (labels: {})", schema.edge_labels.join(", ")),
            )
        })?;
        f.label = Some(graph::EdgeLabel(i as u8));
    }
    if let Some(t) = p.get("tenant") {
        match tenant_ids(view, t).first().copied() {
            Some(id) => f.tenant = Some(id),
            // No node ever had this tenant: nothing is visible to the query.
            None => return Ok(None),
        }
    }
    Ok(Some(f))
}

fn number<T: std::str::FromStr>(p: &HashMap<String, String>, name: &str, default: T) -> Result<T, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| bad(name, format!("{s:?} is not a valid number"))),
    }
}

fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    p.get(name).map(String::as_str).ok_or_else(|| bad(name, "is required"))
}

/// A query error in the client's terms: nodes named `Label:key`, tenants by value, never the
/// graph's internal ids.
fn query_error(e: graph::QueryError, view: &GraphView, schema: &GraphSchema) -> ApiError {
    let name = |n: u32| node_name(view, schema, NodeId(n));
    match e {
        graph::QueryError::NegativeWeight { from, to, weight } => ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": format!("edge {} -> {} has weight {weight}; weighted shortest paths need non-negative weights", name(from), name(to))}),
        ),
        graph::QueryError::NoSuchNode(_) => not_found("node does not exist"),
        graph::QueryError::NotInTenant { node, tenant } => {
            let t = view
                .tenant_value(graph::TenantId(tenant))
                .map_or_else(|| "?".to_string(), key_text);
            not_found(format!("node {} is not in tenant {t}", name(node)))
        }
        graph::QueryError::FilteredOut { node, .. } => {
            not_found(format!("node {} does not have the filter value asked for", name(node)))
        }
    }
}

/// The restrictions of a query from `start`: a tenant no node ever had is one `start` is not in
/// (the same 404 every endpoint gives for a start node outside the tenant).
fn start_filter(
    view: &GraphView,
    schema: &GraphSchema,
    p: &HashMap<String, String>,
    start: &str,
) -> Result<EdgeFilter, ApiError> {
    filter(view, schema, p)?.ok_or_else(|| not_found(format!("node {start} is not in tenant {}", p["tenant"])))
}

async fn node(
    State(api): State<Api>,
    Path((label, key)): Path<(String, String)>,
    Query(p): Params,
) -> Result<Json<Json_>, ApiError> {
    let (view, schema, lsn) = api.view(&p).await?;
    let n = resolve(&view, &schema, &p, "node", &format!("{label}:{key}"))?;
    let d = view.node(n).ok_or_else(|| not_found("node has no data"))?;
    if let Some(t) = p.get("tenant") {
        if d.tenant.as_ref().is_none_or(|k| k.to_string() != *t) {
            return Err(not_found(format!("node {label}:{key} is not in tenant {t}")));
        }
    }
    let mut body = sync::render::node_fields(&schema, &d);
    body.insert("lsn".into(), json!(lsn.to_string()));
    Ok(Json(Json_::Object(body)))
}

/// Most neighbours one page holds, and the default page size (a whole list for all but the
/// largest hubs, so clients that ignore `next_cursor` see every neighbour of most nodes).
const MAX_PAGE: usize = 100_000;

/// A neighbours cursor: `direction.node.label.weight_bits` (hex) of the last one returned.
fn parse_cursor(c: &str) -> Option<(u8, u32, u8, u64)> {
    let mut it = c.split('.');
    let key = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        u64::from_str_radix(it.next()?, 16).ok()?,
    );
    it.next().is_none().then_some(key)
}

async fn neighbors(State(api): State<Api>, Query(p): Params) -> Result<Json<Json_>, ApiError> {
    let (view, schema, lsn) = api.view(&p).await?;
    let name = required(&p, "node")?;
    let dir = direction(&p, Direction::Out)?;
    let limit: usize = number(&p, "limit", MAX_PAGE)?;
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad("limit", format!("{limit} is not between 1 and {MAX_PAGE}")));
    }
    // Neighbours come in one canonical order (direction, node id, label, weight), whatever the
    // view's internal layout (a compaction reorders adjacency), and the cursor is the key of
    // the last one returned: the next page starts after it, so pages read across views (new
    // writes, a compaction) never repeat or skip what did not change.
    let after: Option<(u8, u32, u8, u64)> = match p.get("cursor") {
        None => None,
        Some(c) => Some(
            parse_cursor(c).ok_or_else(|| bad("cursor", format!("{c:?} is not a cursor returned by this endpoint")))?,
        ),
    };
    let n = resolve(&view, &schema, &p, "node", name)?;
    let f = start_filter(&view, &schema, &p, name)?;
    let mut all = query::neighbor_edges(&*view, n, dir, f).map_err(|e| query_error(e, &view, &schema))?;
    let key = |e: &query::Neighbor| {
        (
            u8::from(e.direction != Direction::Out),
            e.node.0,
            e.label.0,
            e.weight.to_bits(),
        )
    };
    all.sort_unstable_by_key(key);
    let from = after.map_or(0, |a| all.partition_point(|e| key(e) <= a));
    let page: Vec<Json_> = all
        .iter()
        .skip(from)
        .take(limit)
        .map(|e| {
            json!({
                "node": node_name(&view, &schema, e.node),
                "edge_label": schema.edge_labels.get(e.label.0 as usize).cloned().unwrap_or_default(),
                "weight": e.weight,
                "direction": if e.direction == Direction::Out { "out" } else { "in" },
            })
        })
        .collect();
    let next = from.saturating_add(limit);
    let next_cursor = (next < all.len()).then(|| {
        let (d, node, label, w) = key(&all[next - 1]);
        format!("{d}.{node}.{label}.{w:x}")
    });
    Ok(Json(json!({
        "lsn": lsn.to_string(),
        "node": name,
        "neighbors": page,
        "total": all.len(),
        "next_cursor": next_cursor,
    })))
}

async fn traverse(State(api): State<Api>, Query(p): Params) -> Result<Json<Json_>, ApiError> {
    let (view, schema, lsn) = api.view(&p).await?;
    let name = required(&p, "start")?;
    let dir = direction(&p, Direction::Out)?;
    let depth: u32 = number(&p, "max_depth", 2)?;
    let limit: usize = number(&p, "limit", 1000)?;
    let n = resolve(&view, &schema, &p, "start", name)?;
    let f = start_filter(&view, &schema, &p, name)?;
    let nodes = tokio::task::block_in_place(|| query::k_hop(&*view, &mut Scratch::default(), n, dir, f, depth, limit))
        .map_err(|e| query_error(e, &view, &schema))?;
    let nodes: Vec<Json_> = nodes
        .into_iter()
        .map(|(m, d)| json!({"node": node_name(&view, &schema, m), "depth": d}))
        .collect();
    Ok(Json(json!({"lsn": lsn.to_string(), "start": name, "nodes": nodes})))
}

async fn shortest_path(State(api): State<Api>, Query(p): Params) -> Result<Json<Json_>, ApiError> {
    let (view, schema, lsn) = api.view(&p).await?;
    let (from_s, to_s) = (required(&p, "from")?, required(&p, "to")?);
    let dir = direction(&p, Direction::Out)?;
    let weighted = match p.get("weighted").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(o) => return Err(bad("weighted", format!("{o:?} is not true or false"))),
    };
    let from = resolve(&view, &schema, &p, "from", from_s)?;
    let to = resolve(&view, &schema, &p, "to", to_s)?;
    let f = start_filter(&view, &schema, &p, from_s)?;
    let found = tokio::task::block_in_place(|| {
        if weighted {
            query::weighted_shortest_path(&*view, from, to, dir, f)
        } else {
            query::shortest_path(&*view, &mut Scratch::default(), from, to, dir, f).map(|p| p.map(|p| (f64::NAN, p)))
        }
    })
    .map_err(|e| query_error(e, &view, &schema))?;
    let Some((cost, path)) = found else {
        return Err(not_found(format!("no path from {from_s} to {to_s}")));
    };
    let mut edges = Vec::new();
    let mut total = 0.0;
    for w in path.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mut best: Option<(graph::EdgeLabel, f64, &str)> = None;
        let mut pick = |d: Direction, other: NodeId, dname: &'static str| {
            view.for_each_edge(a, d, |m, l, wt| {
                if m == other && f.label.is_none_or(|x| x == l) && best.is_none_or(|(_, bw, _)| wt < bw) {
                    best = Some((l, wt, dname));
                }
            });
        };
        if dir != Direction::In {
            pick(Direction::Out, b, "out");
        }
        if dir != Direction::Out {
            pick(Direction::In, b, "in");
        }
        if let Some((l, wt, d)) = best {
            total += wt;
            edges.push(json!({
                "from": node_name(&view, &schema, a),
                "to": node_name(&view, &schema, b),
                "edge_label": schema.edge_labels.get(l.0 as usize).cloned().unwrap_or_default(),
                "weight": wt,
                "direction": d,
            }));
        }
    }
    let cost = if weighted { cost } else { (path.len() - 1) as f64 };
    Ok(Json(json!({
        "lsn": lsn.to_string(),
        "nodes": path.iter().map(|&n| node_name(&view, &schema, n)).collect::<Vec<_>>(),
        "edges": edges,
        "hops": path.len() - 1,
        "cost": cost,
        "total_weight": total,
    })))
}

async fn components(State(api): State<Api>, Query(p): Params) -> Result<Json<Json_>, ApiError> {
    let (view, schema, lsn) = api.view(&p).await?;
    let limit: usize = number(&p, "limit", 1000)?;
    let f = filter(&view, &schema, &p)?;
    if let Some(name) = p.get("node") {
        let n = resolve(&view, &schema, &p, "node", name)?;
        let f = start_filter(&view, &schema, &p, name)?;
        let members = tokio::task::block_in_place(|| query::component_of(&*view, &mut Scratch::default(), n, f))
            .map_err(|e| query_error(e, &view, &schema))?;
        return Ok(Json(json!({
            "lsn": lsn.to_string(),
            "node": name,
            "size": members.len(),
            "members": members.iter().take(limit).map(|&m| node_name(&view, &schema, m)).collect::<Vec<_>>(),
        })));
    }
    let Some(f) = f else {
        return Ok(Json(json!({"lsn": lsn.to_string(), "count": 0, "largest": []})));
    };
    let c = tokio::task::block_in_place(|| query::components(&*view, f));
    let mut sizes = vec![0usize; c.count as usize];
    for &x in &c.component {
        if x != u32::MAX {
            sizes[x as usize] += 1;
        }
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.truncate(limit.min(100));
    Ok(Json(
        json!({"lsn": lsn.to_string(), "count": c.count, "largest": sizes}),
    ))
}
