//! The JSON forms of graph items that the HTTP API and the change feed share: a node's name
//! (`Label:key`), its fields (label, key, tenant, filters, properties), property values.
//!
//! Not for: HTTP (the binary) or choosing what to render.

use crate::replicator::GraphSchema;
use graph::{EdgeLabel, NodeData, NodeKey, NodeLabel, PropValue};
use serde_json::{json, Map, Value};

/// `Label:key`, the name the API gives a node.
pub fn node_name(schema: &GraphSchema, label: NodeLabel, key: &NodeKey) -> String {
    format!(
        "{}:{}",
        schema.node_labels.get(label.0 as usize).map_or("?", String::as_str),
        key
    )
}

/// An edge label's name.
pub fn edge_label(schema: &GraphSchema, label: EdgeLabel) -> &str {
    schema.edge_labels.get(label.0 as usize).map_or("?", String::as_str)
}

/// A property value as JSON.
pub fn prop_json(v: &PropValue) -> Value {
    match v {
        PropValue::Null => Value::Null,
        PropValue::Bool(b) => json!(b),
        PropValue::Int(i) => json!(i),
        PropValue::Float(f) => json!(f),
        PropValue::Text(t) => json!(&**t),
    }
}

/// A node's fields: `node`, `label`, `key`, `tenant`, `filters`, `properties`.
pub fn node_fields(schema: &GraphSchema, d: &NodeData) -> Map<String, Value> {
    let props: Map<String, Value> = d
        .properties
        .iter()
        .map(|(k, v)| (k.to_string(), prop_json(v)))
        .collect();
    let filters: Map<String, Value> = d
        .filters
        .iter()
        .map(|(f, v)| {
            (
                schema.filter_names.get(f.0 as usize).cloned().unwrap_or_default(),
                json!(v.to_string()),
            )
        })
        .collect();
    let mut m = Map::new();
    m.insert("node".into(), json!(node_name(schema, d.label, &d.key)));
    m.insert(
        "label".into(),
        json!(schema.node_labels.get(d.label.0 as usize).map_or("?", String::as_str)),
    );
    m.insert("key".into(), json!(d.key.to_string()));
    m.insert("tenant".into(), json!(d.tenant.as_ref().map(ToString::to_string)));
    m.insert("filters".into(), Value::Object(filters));
    m.insert("properties".into(), Value::Object(props));
    m
}
