//! Typed row values → what the graph holds: node keys, node data (tenant, filters,
//! properties, with unchanged-TOAST values kept), edge endpoints and weights.

#[allow(unused_imports)]
use super::*;

pub(super) fn typed(rel: &Relation, tuple: &TupleData, kind: &'static str) -> Result<Vec<Value>, MapError> {
    rel.typed_values(tuple, kind).map_err(|source| MapError::Decode {
        table: rel.qualified_name(),
        source,
    })
}

/// `new` with each unchanged-TOAST column replaced by `old`'s value when `old` has one.
pub(super) fn fill_unchanged(mut new: Vec<Value>, old: &[Value]) -> Vec<Value> {
    for (n, o) in new.iter_mut().zip(old) {
        if matches!(n, Value::UnchangedToast) && !matches!(o, Value::Null | Value::UnchangedToast) {
            *n = o.clone();
        }
    }
    new
}

/// The key's value when it is one integer column (as [`key_of`] makes it, without building
/// anything): what the bulk load prefetches by.
pub(super) fn int_key(cols: &[usize], values: &[Value]) -> Option<i64> {
    match cols {
        [c] => rows::int_of(&values[*c]),
        _ => None,
    }
}

pub(super) fn key_of(plan: &RelPlan, cols: &[usize], values: &[Value]) -> Result<NodeKey, RowError> {
    if let [c] = cols {
        // One column (most keys): no list to allocate.
        return rows::key_part(&plan.rel, &plan.rel.columns[*c].name, &values[*c]);
    }
    let mut parts = Vec::with_capacity(cols.len());
    for &c in cols {
        parts.push(rows::key_part(&plan.rel, &plan.rel.columns[c].name, &values[c])?);
    }
    Ok(NodeKey::Composite(parts.into()))
}

/// The row's identity for the edge index: the node key for node tables, else the replica
/// identity columns (any type: values that cannot be keys are keyed by their text).
pub(super) fn row_key(plan: &RelPlan, values: &[Value]) -> Result<NodeKey, RowError> {
    if let Some(np) = &plan.node {
        return key_of(plan, &np.key, values);
    }
    let mut parts = Vec::with_capacity(plan.identity.len());
    for &c in &plan.identity {
        let name = &plan.rel.columns[c].name;
        parts.push(match rows::key_part(&plan.rel, name, &values[c]) {
            Ok(k) => k,
            Err(RowError::UnsupportedKey { .. }) | Err(RowError::NullKey { .. }) => {
                let mut s = String::new();
                pgoutput::json::push_value(&mut s, &values[c]);
                NodeKey::Text(s.into())
            }
            Err(e) => return Err(e),
        });
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        NodeKey::Composite(parts.into())
    })
}

/// The node a row makes; `key` is its key (the row's identity, computed by the caller).
pub(super) fn node_data(
    plan: &RelPlan,
    np: &NodePlan,
    key: NodeKey,
    values: &[Value],
    held: Option<&NodeData>,
) -> Result<NodeData, RowError> {
    let unchanged = |c: usize| matches!(values[c], Value::UnchangedToast);
    let tenant = match np.tenant {
        Some(c) if unchanged(c) => held.and_then(|h| h.tenant.clone()),
        Some(c) => match &values[c] {
            Value::Null => None,
            v => Some(rows::key_part(&plan.rel, &plan.rel.columns[c].name, v)?),
        },
        None => None,
    };
    let mut filters = Vec::with_capacity(np.filters.len());
    for &(id, c) in &np.filters {
        let v = if unchanged(c) {
            held.and_then(|h| h.filters.iter().find(|(f, _)| *f == id).map(|(_, v)| v.clone()))
        } else {
            match &values[c] {
                Value::Null => None,
                v => Some(rows::key_part(&plan.rel, &plan.rel.columns[c].name, v)?),
            }
        };
        if let Some(v) = v {
            filters.push((id, v));
        }
    }
    let props: Vec<(Arc<str>, PropValue)> = np
        .props
        .iter()
        .map(|(name, c)| {
            let v = if unchanged(*c) {
                held.and_then(|h| h.properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
                    .unwrap_or(PropValue::Null)
            } else {
                rows::prop_value(&values[*c])
            };
            (name.clone(), v)
        })
        .collect();
    Ok(NodeData {
        label: np.label,
        key,
        tenant,
        filters: filters.into(),
        properties: props.into(),
    })
}

pub(super) enum End {
    Node(NodeId),
    Absent,
    Unchanged,
}

pub(super) fn endpoint(
    plan: &RelPlan,
    (label, cols): &(NodeLabel, Vec<usize>),
    values: &[Value],
    nodes: &mut dyn Nodes,
) -> Result<End, RowError> {
    if cols.iter().any(|&c| matches!(values[c], Value::Null)) {
        return Ok(End::Absent);
    }
    if cols.iter().any(|&c| matches!(values[c], Value::UnchangedToast)) {
        return Ok(End::Unchanged);
    }
    let key = key_of(plan, cols, values)?;
    Ok(End::Node(nodes.id(*label, &key)))
}

pub(super) fn edge_of(
    plan: &RelPlan,
    ep: &EdgePlan,
    values: &[Value],
    before: Option<&EdgeInput>,
    nodes: &mut dyn Nodes,
) -> Result<Option<EdgeInput>, RowError> {
    let toasted = |cols: &[usize]| {
        let c = cols[0];
        RowError::ToastedKey {
            table: plan.rel.qualified_name(),
            column: plan.rel.columns[c].name.clone(),
        }
    };
    let source = match endpoint(plan, &ep.source, values, nodes)? {
        End::Node(n) => n,
        End::Absent => return Ok(None),
        End::Unchanged => before.map(|b| b.source).ok_or_else(|| toasted(&ep.source.1))?,
    };
    let target = match endpoint(plan, &ep.target, values, nodes)? {
        End::Node(n) => n,
        End::Absent => return Ok(None),
        End::Unchanged => before.map(|b| b.target).ok_or_else(|| toasted(&ep.target.1))?,
    };
    let weight = match ep.weight {
        Some(c) if matches!(values[c], Value::UnchangedToast) => before.map_or(1.0, |b| b.weight),
        Some(c) => rows::weight(&values[c]).unwrap_or(1.0),
        None => 1.0,
    };
    Ok(Some(EdgeInput {
        source,
        target,
        label: ep.label,
        weight,
    }))
}
