// graphsync explorer: draws a node's neighbourhood from the HTTP API and keeps it live from
// the change feed. Plain JavaScript, no library: a hand-written force layout in SVG.
//
// State lives in the URL hash (#node=User:1&depth=2&tenant=1), the token in sessionStorage.
// Every drawn node is an SVG <g data-node="Label:key">; the status corner is #status.
"use strict";

const MAX_NODES = 200;        // most nodes drawn (depth 2 stops adding past this)
const STATUS_EVERY_MS = 2000; // replica status refresh
const DEBOUNCE_MS = 100;      // change feed → refetch
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// ---- State -------------------------------------------------------------------------------

const view = { node: "", depth: 1, tenant: "" }; // what the hash asks for
const nodes = new Map();  // name → {name, x, y, vx, vy, depth, el, pinned}
const edges = new Map();  // key → {source, target, label, weight, el}
let loadSeq = 0;          // answers of older loads are dropped
let feed = null;          // the EventSource
let feedLsn = null;       // last LSN seen on the feed (resume point)
let refetchTimer = null;
let alpha = 0;            // layout "temperature": ticks run while it is above 0.01

function token() { return sessionStorage.getItem("graphsync.token") || ""; }

// ---- API ---------------------------------------------------------------------------------

/** GET an API path as JSON, with the bearer token; throws an Error carrying the API's message. */
async function api(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(body.error || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return body;
}

function tenantParam() { return view.tenant ? "&tenant=" + encodeURIComponent(view.tenant) : ""; }

/** All neighbours (both directions) of `name`, one page of at most MAX_NODES. */
function neighbours(name) {
  return api(`/v1/neighbors?node=${encodeURIComponent(name)}&direction=both&limit=${MAX_NODES}${tenantParam()}`);
}

/**
 * The neighbourhood to draw: {lsn, nodes: Map name → depth, edges: [{source, target, label, weight}]}.
 * Depth 1: the centre's neighbours. Depth 2: also the neighbours of each depth-1 node (all
 * edges among drawn nodes that touch the centre or a depth-1 node), capped at MAX_NODES.
 */
async function fetchNeighbourhood() {
  const centre = view.node;
  const found = new Map([[centre, 0]]);
  const list = [];
  const take = (from, answer) => {
    for (const n of answer.neighbors) {
      if (!found.has(n.node) && found.size < MAX_NODES) found.set(n.node, found.get(from) + 1);
      const [source, target] = n.direction === "out" ? [from, n.node] : [n.node, from];
      list.push({ source, target, label: n.edge_label, weight: n.weight });
    }
  };
  const first = await neighbours(centre);
  take(centre, first);
  if (view.depth >= 2) {
    const ring = [...found.keys()].filter((n) => found.get(n) === 1);
    // A few requests at a time; a node gone meanwhile (404) is skipped.
    for (let i = 0; i < ring.length; i += 8) {
      const answers = await Promise.all(ring.slice(i, i + 8).map((n) => neighbours(n).catch(() => null)));
      answers.forEach((a, j) => a && take(ring[i + j], a));
    }
  }
  // Keep edges between drawn nodes, once each (an edge between two ring nodes is seen twice).
  const unique = new Map();
  for (const e of list) {
    if (found.has(e.source) && found.has(e.target)) unique.set(edgeKey(e), e);
  }
  return { lsn: first.lsn, nodes: found, edges: [...unique.values()] };
}

function edgeKey(e) { return `${e.source}\u0000${e.target}\u0000${e.label}`; }

// ---- Drawing -----------------------------------------------------------------------------

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

/** A stable colour per label (hue from a string hash). */
function colour(name) {
  const label = name.split(":")[0];
  let h = 0;
  for (const c of label) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 55%, 55%)`;
}

/**
 * Makes the drawing match `g`: new nodes and edges get elements (new nodes placed next to a
 * drawn neighbour), gone ones are removed, nodes already placed keep their positions.
 */
function applyGraph(g) {
  const fresh = nodes.size > 0; // highlight additions after the first draw
  let changed = false;
  for (const [name, n] of nodes) {
    if (!g.nodes.has(name)) { n.el.remove(); nodes.delete(name); changed = true; }
  }
  const keep = new Set(g.edges.map(edgeKey));
  for (const [key, e] of edges) {
    if (!keep.has(key)) { e.el.remove(); edges.delete(key); changed = true; }
  }
  for (const [name, depth] of g.nodes) {
    const n = nodes.get(name);
    if (n) { n.depth = depth; continue; }
    nodes.set(name, newNode(name, depth, g, fresh));
    changed = true;
  }
  for (const e of g.edges) {
    const key = edgeKey(e);
    const title = `${e.source} -[${e.label}${e.weight == null ? "" : " " + e.weight}]-> ${e.target}`;
    const old = edges.get(key);
    if (old) { old.el.querySelector("title").textContent = title; continue; } // weight may change
    const el = svg("g", { class: "edge" }, $("edges"));
    svg("line", { class: "hit" }, el);
    svg("line", { class: "vis" }, el);
    svg("text", {}, el).textContent = e.label;
    svg("title", {}, el).textContent = title;
    edges.set(key, { ...e, el });
    changed = true;
  }
  if (changed) alpha = Math.max(alpha, 0.6); // let the layout settle again
  draw();
}

function newNode(name, depth, g, fresh) {
  // Start next to a neighbour already placed (so the layout only settles, never jumps).
  let x = 0, y = 0;
  const e = g.edges.find((e) => (e.source === name && nodes.has(e.target)) || (e.target === name && nodes.has(e.source)));
  if (e) { const p = nodes.get(e.source === name ? e.target : e.source); x = p.x; y = p.y; }
  const a = Math.random() * 2 * Math.PI;
  const r = depth === 0 ? 0 : 40 + Math.random() * 40;
  const n = { name, depth, x: x + r * Math.cos(a), y: y + r * Math.sin(a), vx: 0, vy: 0, pinned: false };
  n.el = svg("g", { class: "node" + (depth === 0 ? " centre" : "") + (fresh ? " fresh" : ""), "data-node": name }, $("nodes"));
  svg("circle", { r: depth === 0 ? 14 : 10, fill: colour(name) }, n.el);
  svg("text", { dy: depth === 0 ? 28 : 23 }, n.el).textContent = name;
  svg("title", {}, n.el).textContent = name;
  n.el.addEventListener("click", () => showDetails(name));
  n.el.addEventListener("dblclick", () => setHash({ ...view, node: name }));
  n.el.addEventListener("pointerdown", (ev) => startDrag(ev, n));
  return n;
}

function clearGraph() {
  for (const n of nodes.values()) n.el.remove();
  for (const e of edges.values()) e.el.remove();
  nodes.clear();
  edges.clear();
}

/** Writes positions to the SVG and fits the view box around the nodes. */
function draw() {
  let minX = -200, maxX = 200, minY = -150, maxY = 150;
  for (const n of nodes.values()) {
    n.el.setAttribute("transform", `translate(${n.x.toFixed(1)},${n.y.toFixed(1)})`);
    minX = Math.min(minX, n.x - 60); maxX = Math.max(maxX, n.x + 60);
    minY = Math.min(minY, n.y - 40); maxY = Math.max(maxY, n.y + 40);
  }
  for (const e of edges.values()) {
    const s = nodes.get(e.source), t = nodes.get(e.target);
    const dx = t.x - s.x, dy = t.y - s.y, d = Math.hypot(dx, dy) || 1;
    // End the arrow at the target's circle, not its centre.
    const rs = s.depth === 0 ? 14 : 10, rt = (t.depth === 0 ? 14 : 10) + 2;
    const [x1, y1, x2, y2] = [s.x + dx * rs / d, s.y + dy * rs / d, t.x - dx * rt / d, t.y - dy * rt / d];
    for (const line of e.el.querySelectorAll("line")) {
      line.setAttribute("x1", x1.toFixed(1)); line.setAttribute("y1", y1.toFixed(1));
      line.setAttribute("x2", x2.toFixed(1)); line.setAttribute("y2", y2.toFixed(1));
    }
    const text = e.el.querySelector("text");
    text.setAttribute("x", ((x1 + x2) / 2).toFixed(1));
    text.setAttribute("y", ((y1 + y2) / 2 - 4).toFixed(1));
  }
  $("graph").setAttribute("viewBox", `${minX} ${minY} ${maxX - minX} ${maxY - minY}`);
}

// ---- Force layout ------------------------------------------------------------------------

/** One step: pairwise repulsion, springs along edges, a pull to the centre; the centre is fixed. */
function tick() {
  const list = [...nodes.values()];
  for (let i = 0; i < list.length; i++) {
    const a = list[i];
    for (let j = i + 1; j < list.length; j++) {
      const b = list[j];
      let dx = a.x - b.x, dy = a.y - b.y, d2 = dx * dx + dy * dy;
      if (d2 < 1) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; d2 = 1; }
      const f = Math.min(5000 / d2, 50) * alpha;
      const d = Math.sqrt(d2);
      a.vx += f * dx / d; a.vy += f * dy / d;
      b.vx -= f * dx / d; b.vy -= f * dy / d;
    }
  }
  for (const e of edges.values()) {
    const s = nodes.get(e.source), t = nodes.get(e.target);
    if (s === t) continue;
    const dx = t.x - s.x, dy = t.y - s.y, d = Math.hypot(dx, dy) || 1;
    const f = 0.05 * (d - 90) * alpha;
    s.vx += f * dx / d; s.vy += f * dy / d;
    t.vx -= f * dx / d; t.vy -= f * dy / d;
  }
  for (const n of list) {
    if (n.depth === 0) { n.x = 0; n.y = 0; n.vx = n.vy = 0; continue; }
    if (n.pinned) { n.vx = n.vy = 0; continue; }
    n.vx = (n.vx - n.x * 0.01 * alpha) * 0.6;
    n.vy = (n.vy - n.y * 0.01 * alpha) * 0.6;
    n.x += n.vx; n.y += n.vy;
  }
  alpha *= 0.98;
}

function frame() {
  if (alpha > 0.01) { tick(); draw(); }
  requestAnimationFrame(frame);
}

/** Dragging a node pins it where it is dropped. */
function startDrag(ev, n) {
  ev.preventDefault();
  const svgEl = $("graph");
  const move = (e) => {
    const p = svgEl.createSVGPoint();
    p.x = e.clientX; p.y = e.clientY;
    const q = p.matrixTransform(svgEl.getScreenCTM().inverse());
    n.x = q.x; n.y = q.y; n.pinned = true;
    alpha = Math.max(alpha, 0.1);
    draw();
  };
  const up = () => { window.removeEventListener("pointermove", move); window.removeEventListener("pointerup", up); };
  window.addEventListener("pointermove", move);
  window.addEventListener("pointerup", up);
}

// ---- Loading and the live feed -----------------------------------------------------------

function message(text) { $("message").textContent = text || ""; $("message").hidden = !text; }

/** Fetches the neighbourhood and redraws; the first successful load opens the change feed. */
async function load() {
  const seq = ++loadSeq;
  try {
    const g = await fetchNeighbourhood();
    if (seq !== loadSeq) return; // a newer load started meanwhile
    message("");
    applyGraph(g);
    if (!feed) openFeed(g.lsn);
  } catch (e) {
    if (seq !== loadSeq) return;
    message(e.status === 401 ? "the API needs a token: type it in the token field" : e.message);
    clearGraph();
    // Keep listening (the node may come back), from where the feed was, else from now.
    if (!feed && e.status !== 401) openFeed(feedLsn);
  }
}

/** Refetch soon: many changes in a burst cost one refetch. */
function scheduleRefetch() {
  clearTimeout(refetchTimer);
  refetchTimer = setTimeout(load, DEBOUNCE_MS);
}

function setLive(cls, text) { $("live").className = cls; $("live").textContent = "● " + text; }

/**
 * Opens `/v1/changes` as Server-Sent Events from `lsn` (or from now). EventSource cannot send
 * headers, so the token goes as `access_token`. A transaction touching a drawn node (or the
 * centre) schedules a refetch.
 */
function openFeed(lsn) {
  closeFeed();
  if (lsn) feedLsn = lsn;
  let url = "/v1/changes?" + (lsn ? "from=" + encodeURIComponent(lsn) : "") + tenantParam();
  if (token()) url += "&access_token=" + encodeURIComponent(token());
  const es = new EventSource(url);
  feed = es;
  setLive("off", "connecting");
  es.onopen = () => setLive("on", "live");
  es.onmessage = (ev) => {
    let txn;
    try { txn = JSON.parse(ev.data); } catch { return; }
    feedLsn = txn.lsn || ev.lastEventId || feedLsn;
    setLive("on", "live " + (feedLsn || ""));
    const touches = (name) => name && (name === view.node || nodes.has(name));
    if ((txn.changes || []).some((c) => touches(c.node) || touches(c.source) || touches(c.target))) scheduleRefetch();
  };
  es.addEventListener("up-to-date", (ev) => {
    try { feedLsn = JSON.parse(ev.data).lsn || feedLsn; } catch { /* keep the last one */ }
    setLive("on", "live " + (feedLsn || ""));
  });
  es.onerror = () => {
    if (feed !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (no feed, wrong token, or `from` older than the feed keeps): EventSource gives
      // up. In a while, redraw from scratch, which opens a new feed from the new drawing's LSN.
      setLive("err", "offline");
      feed = null;
      setTimeout(() => { if (!feed && view.node) { feedLsn = null; load(); } }, 5000);
    } else {
      setLive("off", "reconnecting"); // EventSource retries by itself, with Last-Event-ID
    }
  };
}

function closeFeed() {
  if (feed) { feed.close(); feed = null; }
  setLive("off", "offline");
}

async function showDetails(name) {
  for (const n of nodes.values()) n.el.classList.toggle("selected", n.name === name);
  const i = name.indexOf(":");
  const path = `/v1/nodes/${encodeURIComponent(name.slice(0, i))}/${encodeURIComponent(name.slice(i + 1))}`;
  const box = $("details");
  box.hidden = false;
  try {
    const d = await api(path + (view.tenant ? "?tenant=" + encodeURIComponent(view.tenant) : ""));
    box.textContent = JSON.stringify(d, null, 2);
  } catch (e) {
    box.textContent = `${name}: ${e.message}`;
  }
}

// ---- Replica status ----------------------------------------------------------------------

async function refreshStatus() {
  try {
    const s = await api("/v1/status");
    let lag = s.lag_seconds;
    if (lag === undefined) {
      // /v1/status has no lag figure: /health (unguarded) has it.
      lag = await fetch("/health").then((r) => r.json()).then((h) => h.lag_seconds).catch(() => undefined);
    }
    const lagText = typeof lag === "number" ? lag.toFixed(1) + " s" : "?";
    $("status").textContent = `${s.phase || "?"} · applied ${s.applied_lsn} · lag ${lagText}`;
  } catch (e) {
    $("status").textContent = "status: " + e.message;
  }
}

// ---- URL hash and the form ---------------------------------------------------------------

/** Reads #node=…&depth=…&tenant=… into `view`. */
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  view.node = (p.get("node") || "").trim();
  view.depth = p.get("depth") === "2" ? 2 : 1;
  view.tenant = (p.get("tenant") || "").trim();
}

function setHash(v) {
  // Readable: keep ':' and ',' of node names unescaped.
  const enc = (s) => encodeURIComponent(s).replace(/%3A/gi, ":").replace(/%2C/gi, ",");
  let h = `node=${enc(v.node)}&depth=${v.depth}`;
  if (v.tenant) h += `&tenant=${enc(v.tenant)}`;
  if (location.hash.slice(1) === h) start(); else location.hash = h; // hashchange → start()
}

/** (Re)starts on the hash's node: a fresh drawing and a fresh feed. */
function start() {
  readHash();
  $("node").value = view.node;
  $("depth").value = String(view.depth);
  $("tenant").value = view.tenant;
  clearGraph();
  closeFeed();
  feedLsn = null;
  $("details").hidden = true;
  if (view.node) load(); else message("type a node, like User:1");
}

$("token").value = token();
$("query").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("graphsync.token", $("token").value.trim());
  setHash({ node: $("node").value.trim(), depth: Number($("depth").value), tenant: $("tenant").value.trim() });
});
$("depth").addEventListener("change", () => $("query").requestSubmit());
window.addEventListener("hashchange", start);

start();
refreshStatus();
setInterval(refreshStatus, STATUS_EVERY_MS);
requestAnimationFrame(frame);
