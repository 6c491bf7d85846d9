//! One transaction of the change feed: its subgraph changes as decoded from a change-log
//! record, indexed by tenant, and rendered to the feed's JSON once per scope (every
//! subscriber of a tenant shares the text).

use super::Scope;
use crate::changelog::record::{self, Record};
use crate::render;
use crate::replicator::GraphSchema;
use graph::diff::Change;
use graph::wire::{self, LoggedChange};
use graph::{EdgeLabel, NodeKey, NodeLabel};
use pgoutput::{Lsn, PgTimestamp};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a record cannot feed.
#[derive(Debug)]
pub(super) enum Unreadable {
    /// A version 1 record: no subgraph changes recorded.
    NotRecorded,
    /// The payload does not decode.
    Corrupt(String),
}

/// One transaction's subgraph changes.
#[derive(Debug)]
pub struct FeedTxn {
    /// The transaction's end LSN.
    pub lsn: Lsn,
    /// Its commit time, µs since 1970-01-01 UTC.
    pub commit_unix_micros: i64,
    changes: Vec<LoggedChange>,
    /// Tenant (as text) → its changes' positions in `changes`.
    tenants: HashMap<String, Vec<u32>>,
    rendered: Mutex<Vec<(Scope, Option<Arc<str>>)>>,
}

/// The transactions of one record payload, in commit order.
pub(super) fn decode(payload: &[u8]) -> Result<Vec<FeedTxn>, Unreadable> {
    let rec = record::decode(payload, &mut wire::Decoder::default()).map_err(|e| Unreadable::Corrupt(e.to_string()))?;
    let Record::Changes { txns, changes, .. } = rec else {
        return Ok(Vec::new());
    };
    let Some(changes) = changes else {
        return Err(Unreadable::NotRecorded);
    };
    let mut it = changes.into_iter();
    Ok(txns
        .iter()
        .map(|t| {
            let changes: Vec<LoggedChange> = it.by_ref().take(t.changes as usize).collect();
            let mut tenants: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, c) in changes.iter().enumerate() {
                if let Some(k) = &c.scoped.tenant {
                    tenants.entry(k.to_string()).or_default().push(i as u32);
                }
            }
            FeedTxn {
                lsn: t.lsn,
                commit_unix_micros: t.commit_unix_micros,
                changes,
                tenants,
                rendered: Mutex::new(Vec::new()),
            }
        })
        .collect())
}

fn name(schema: &GraphSchema, node: &Option<(NodeLabel, NodeKey)>, id: graph::NodeId) -> String {
    match node {
        Some((l, k)) => render::node_name(schema, *l, k),
        None => format!("#{}", id.0),
    }
}

impl FeedTxn {
    /// Whether it changes the whole graph's subgraph.
    pub(super) fn has_global(&self) -> bool {
        self.changes.iter().any(|c| c.scoped.global)
    }

    /// The tenants whose subgraphs it changes.
    pub(super) fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The transaction's event for `scope` as JSON text, or `None` if it changes nothing
    /// there; with `edge_label`, edge changes of other labels are left out.
    pub fn render(&self, schema: &GraphSchema, scope: &Scope, edge_label: Option<EdgeLabel>) -> Option<Arc<str>> {
        if let Scope::Tenant(t) = scope {
            if !self.tenants.contains_key(t) {
                return None;
            }
        }
        if edge_label.is_none() {
            let cache = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, r)) = cache.iter().find(|(s, _)| s == scope) {
                return r.clone();
            }
        }
        let picked: Vec<&LoggedChange> = match scope {
            Scope::All => self.changes.iter().filter(|c| c.scoped.global).collect(),
            Scope::Tenant(t) => self
                .tenants
                .get(t)
                .map(|ix| ix.iter().map(|&i| &self.changes[i as usize]).collect())
                .unwrap_or_default(),
        };
        let items: Vec<Value> = picked
            .into_iter()
            .filter_map(|c| self.change_json(schema, c, edge_label))
            .collect();
        let out = (!items.is_empty()).then(|| {
            let v = json!({
                "lsn": self.lsn.to_string(),
                "commit_time": PgTimestamp::from_unix_micros(self.commit_unix_micros).to_rfc3339(),
                "changes": items,
            });
            Arc::<str>::from(v.to_string())
        });
        if edge_label.is_none() {
            let mut cache = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
            if !cache.iter().any(|(s, _)| s == scope) {
                cache.push((scope.clone(), out.clone()));
            }
        }
        out
    }

    fn change_json(&self, schema: &GraphSchema, c: &LoggedChange, edge_label: Option<EdgeLabel>) -> Option<Value> {
        Some(match &c.scoped.change {
            Change::NodeUpsert { data, .. } => {
                let mut m = render::node_fields(schema, data);
                m.insert("op".into(), json!("node_upsert"));
                Value::Object(m)
            }
            Change::NodeDelete { id } => json!({"op": "node_delete", "node": name(schema, &c.node, *id)}),
            Change::EdgeAdd(e) | Change::EdgeRemove(e) => {
                if edge_label.is_some_and(|l| l != e.label) {
                    return None;
                }
                let op = if matches!(c.scoped.change, Change::EdgeAdd(_)) {
                    "edge_add"
                } else {
                    "edge_remove"
                };
                json!({
                    "op": op,
                    "source": name(schema, &c.node, e.source),
                    "target": name(schema, &c.target, e.target),
                    "edge_label": render::edge_label(schema, e.label),
                    "weight": e.weight,
                })
            }
        })
    }
}
