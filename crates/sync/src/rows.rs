//! Typed row values → graph values: node keys, tenant and filter values, properties, weights.
//!
//! Pure conversions used by the mapper: they read columns of a decoded row by name and say
//! precisely which column made a row unusable and why (a NULL key, an unchanged TOAST key, a
//! type that cannot be a key).

use graph::{NodeKey, PropValue};
use pgoutput::{Relation, Value};
use std::sync::Arc;

/// Why a row could not be mapped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// The mapping names a column the relation does not have (the table changed).
    #[error(
        "table {table} has no column {column:?} any more (its columns now: {columns}); did ALTER TABLE rename or drop it? \
         fix: update the mapping — a renamed column read under its old name keeps the graph as it is, \
         e.g. {{ column = \"new_name\", name = \"{column}\" }} in properties or filters, or the new name in key, tenant, \
         source, target or weight — then reload it (kill -HUP the graphsync process, or graphsync reload)"
    )]
    MissingColumn {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// The relation's columns, comma-separated.
        columns: String,
    },
    /// A key column is NULL.
    #[error("table {table}: key column {column:?} is NULL")]
    NullKey {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// A key column was not sent (unchanged TOAST) and no earlier value is known.
    #[error("table {table}: key column {column:?} was not sent (unchanged TOAST value)")]
    ToastedKey {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// The column's type cannot be a node key.
    #[error("table {table}: column {column:?} cannot be a key (int2/4/8, uuid and text types can)")]
    UnsupportedKey {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
}

/// Position of `column` in `rel`.
pub fn column_index(rel: &Relation, column: &str) -> Result<usize, RowError> {
    rel.columns
        .iter()
        .position(|c| c.name == column)
        .ok_or_else(|| RowError::MissingColumn {
            table: rel.qualified_name(),
            column: column.to_string(),
            columns: rel
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The value of an integer column (`int2`, `int4`, `int8`): what becomes a [`NodeKey::Int`].
pub fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int2(i) => Some(i64::from(*i)),
        Value::Int4(i) => Some(i64::from(*i)),
        Value::Int8(i) => Some(*i),
        _ => None,
    }
}

/// A key part from one column's value.
pub fn key_part(rel: &Relation, column: &str, v: &Value) -> Result<NodeKey, RowError> {
    let err = |f: fn(String, String) -> RowError| f(rel.qualified_name(), column.to_string());
    if let Some(i) = int_of(v) {
        return Ok(NodeKey::Int(i));
    }
    Ok(match v {
        Value::Uuid(u) => NodeKey::Uuid(*u),
        Value::Text(t) | Value::Numeric(t) | Value::Other { text: t, .. } => NodeKey::Text(Arc::from(t.as_str())),
        Value::Null => return Err(err(|table, column| RowError::NullKey { table, column })),
        Value::UnchangedToast => return Err(err(|table, column| RowError::ToastedKey { table, column })),
        _ => return Err(err(|table, column| RowError::UnsupportedKey { table, column })),
    })
}

/// The key made of `columns` (one column: that value; several: a composite key in order).
pub fn key(rel: &Relation, columns: &[&str], values: &[Value]) -> Result<NodeKey, RowError> {
    let mut parts = Vec::with_capacity(columns.len());
    for c in columns {
        let i = column_index(rel, c)?;
        parts.push(key_part(rel, c, &values[i])?);
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        NodeKey::Composite(parts.into())
    })
}

/// A tenant or filter value: like a key, but NULL means "none".
pub fn optional_key(rel: &Relation, column: &str, values: &[Value]) -> Result<Option<NodeKey>, RowError> {
    let i = column_index(rel, column)?;
    match &values[i] {
        Value::Null => Ok(None),
        v => key_part(rel, column, v).map(Some),
    }
}

/// A property value as the graph keeps it.
pub fn prop_value(v: &Value) -> PropValue {
    match v {
        Value::Null | Value::UnchangedToast => PropValue::Null,
        Value::Bool(b) => PropValue::Bool(*b),
        Value::Int2(i) => PropValue::Int(i64::from(*i)),
        Value::Int4(i) => PropValue::Int(i64::from(*i)),
        Value::Int8(i) => PropValue::Int(*i),
        Value::Float4(f) => PropValue::Float(f64::from(*f)),
        Value::Float8(f) => PropValue::Float(*f),
        Value::Uuid(u) => PropValue::Text(Value::format_uuid(u).into()),
        Value::Bytea(b) | Value::OtherBinary { data: b, .. } => PropValue::Text(pgoutput::value::bytea_hex(b).into()),
        Value::Array(_) => {
            let mut s = String::new();
            pgoutput::json::push_value(&mut s, v);
            PropValue::Text(s.into())
        }
        Value::Numeric(t)
        | Value::Text(t)
        | Value::Json(t)
        | Value::Jsonb(t)
        | Value::Date(t)
        | Value::Timestamp(t)
        | Value::TimestampTz(t)
        | Value::Other { text: t, .. } => PropValue::Text(Arc::from(t.as_str())),
    }
}

/// An edge weight: numeric columns as `f64`, NULL as 1.0.
pub fn weight(v: &Value) -> Option<f64> {
    match v {
        Value::Null => Some(1.0),
        Value::Int2(i) => Some(f64::from(*i)),
        Value::Int4(i) => Some(f64::from(*i)),
        Value::Int8(i) => Some(*i as f64),
        Value::Float4(f) => Some(f64::from(*f)),
        Value::Float8(f) => Some(*f),
        Value::Numeric(t) => t.as_str().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgoutput::value::oid;
    use pgoutput::{Column, ReplicaIdentity};

    fn rel() -> Relation {
        let col = |name: &str, type_oid| Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            is_key: false,
        };
        Relation {
            xid: None,
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("a", oid::INT4),
                col("b", oid::TEXT),
                col("c", oid::FLOAT8),
                col("d", oid::UUID),
            ],
        }
    }

    #[test]
    fn keys() {
        let r = rel();
        let vals = vec![
            Value::Int4(7),
            Value::Text("x".into()),
            Value::Float8(2.5),
            Value::Uuid([1; 16]),
        ];
        assert_eq!(key(&r, &["a"], &vals).unwrap(), NodeKey::Int(7));
        assert_eq!(
            key(&r, &["a", "b"], &vals).unwrap(),
            NodeKey::Composite(vec![NodeKey::Int(7), NodeKey::Text("x".into())].into())
        );
        assert_eq!(key(&r, &["d"], &vals).unwrap(), NodeKey::Uuid([1; 16]));
        assert!(matches!(key(&r, &["c"], &vals), Err(RowError::UnsupportedKey { .. })));
        assert!(matches!(key(&r, &["zz"], &vals), Err(RowError::MissingColumn { .. })));
        let nulls = vec![Value::Null, Value::UnchangedToast, Value::Null, Value::Null];
        assert!(matches!(key(&r, &["a"], &nulls), Err(RowError::NullKey { .. })));
        assert!(matches!(key(&r, &["b"], &nulls), Err(RowError::ToastedKey { .. })));
        assert_eq!(optional_key(&r, "a", &nulls).unwrap(), None);
        let e = key(&r, &["zz"], &vals).unwrap_err().to_string();
        assert!(
            e.contains("public.t") && e.contains("\"zz\"") && e.contains("update the mapping"),
            "{e}"
        );
    }

    #[test]
    fn values() {
        assert_eq!(prop_value(&Value::Int2(3)), PropValue::Int(3));
        assert_eq!(prop_value(&Value::Text("é".into())), PropValue::Text("é".into()));
        assert_eq!(
            prop_value(&Value::Array(vec![Value::Int4(1), Value::Null])),
            PropValue::Text("[1,null]".into())
        );
        assert_eq!(weight(&Value::Numeric("2.50".into())), Some(2.5));
        assert_eq!(weight(&Value::Null), Some(1.0));
        assert_eq!(weight(&Value::Text("x".into())), None);
    }
}
