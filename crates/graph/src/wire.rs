//! The byte encoding of [`Mutation`]s for the change log: exact (replaying the decoded
//! mutations on the same starting view gives the same graph, node ids included) and readable
//! in key terms (every node a mutation names carries its label and key, so a reader without
//! the graph — a change feed, a follower's debugger — knows which nodes changed).
//!
//! Format (all integers little-endian), one mutation after another:
//!
//! | tag | mutation      | fields |
//! |-----|---------------|--------|
//! | 1   | `AddNode`     | id u32 (the next id: the view's node count) |
//! | 2   | `RemoveNode`  | id u32, node ref |
//! | 3   | `RestoreNode` | id u32, node ref |
//! | 4   | `SetNode`     | id u32, u8 0 (data cleared) or 1 then node data |
//! | 5   | `AddEdge`     | source u32, target u32, edge label u8, weight f64, source ref, target ref |
//! | 6   | `RemoveEdge`  | as `AddEdge` |
//!
//! A *node ref* is the node label u16 then its key ([`NodeKey::encode`]), or label `0xFFFF`
//! alone when the node has no data. *Node data* is label u16, key, tenant (u8 0, or 1 then a
//! key), filter count u16 then (filter id u16, key) each, property count u16 then (name: u32
//! length + UTF-8, value: tag u8 — 0 null, 1 bool (u8), 2 int (i64), 3 float (f64), 4 text
//! (u32 length + UTF-8)) each.
//!
//! Subgraph changes ([`crate::diff::Scoped`], for the change feed) are encoded the same way,
//! one after another:
//!
//! | tag | change        | fields |
//! |-----|---------------|--------|
//! | 1   | `NodeUpsert`  | scope, id u32, node data |
//! | 2   | `NodeDelete`  | scope, id u32, node ref |
//! | 3   | `EdgeAdd`     | scope, source u32, target u32, edge label u8, weight f64, source ref, target ref |
//! | 4   | `EdgeRemove`  | as `EdgeAdd` |
//!
//! where *scope* is u8 flags (bit 0: the whole graph's subgraph; bit 1: a tenant's, whose
//! value, a key, follows).
//!
//! Not for: framing, checksums or files (the change log's segments), or what a record holds
//! besides mutations and changes.

use crate::bytes::{ByteReader, Corrupt};
use crate::diff::{Change, Scoped};
use crate::nodes::codec::{put_key, put_prop, put_str, Reader};
use crate::nodes::{FilterId, NodeData, NodeKey, NodeLabel, PropValue};
use crate::view::{GraphView, Mutation};
use crate::{EdgeInput, EdgeLabel, NodeId};
use std::collections::HashMap;
use std::sync::Arc;

const NO_DATA: u16 = u16::MAX;

/// Appends the encoding of `mutations` to `out`; node refs and new ids are read from `view`,
/// the view the mutations produced (the last of them applied), or a later one with no node
/// added since.
pub fn encode_mutations(view: &GraphView, mutations: &[Mutation], out: &mut Vec<u8>) {
    let added = mutations.iter().filter(|m| matches!(m, Mutation::AddNode)).count() as u32;
    let mut next_id = view.node_count.saturating_sub(added);
    for m in mutations {
        encode_one(view, m, &mut next_id, out);
    }
}

fn put_ref(view: &GraphView, id: NodeId, out: &mut Vec<u8>) {
    match view.node_key(id) {
        Some((label, key)) => {
            out.extend_from_slice(&label.0.to_le_bytes());
            put_key(out, &key);
        }
        None => out.extend_from_slice(&NO_DATA.to_le_bytes()),
    }
}

fn put_edge(view: &GraphView, e: &EdgeInput, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.source.0.to_le_bytes());
    out.extend_from_slice(&e.target.0.to_le_bytes());
    out.push(e.label.0);
    out.extend_from_slice(&e.weight.to_le_bytes());
    put_ref(view, e.source, out);
    put_ref(view, e.target, out);
}

/// Appends node data in the format above.
pub fn encode_node_data(d: &NodeData, out: &mut Vec<u8>) {
    out.extend_from_slice(&d.label.0.to_le_bytes());
    put_key(out, &d.key);
    match &d.tenant {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_key(out, t);
        }
    }
    out.extend_from_slice(&(d.filters.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (f, v) in d.filters.iter().take(u16::MAX as usize) {
        out.extend_from_slice(&f.0.to_le_bytes());
        put_key(out, v);
    }
    out.extend_from_slice(&(d.properties.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (name, v) in d.properties.iter().take(u16::MAX as usize) {
        put_str(out, name);
        put_prop(out, v);
    }
}

fn encode_one(view: &GraphView, m: &Mutation, next_id: &mut u32, out: &mut Vec<u8>) {
    match m {
        Mutation::AddNode => {
            // The id is implied by the order; written so readers need no count of their own
            // (and replay checks it).
            out.push(1);
            out.extend_from_slice(&next_id.to_le_bytes());
            *next_id += 1;
        }
        Mutation::RemoveNode(id) => {
            out.push(2);
            out.extend_from_slice(&id.0.to_le_bytes());
            put_ref(view, *id, out);
        }
        Mutation::RestoreNode(id) => {
            out.push(3);
            out.extend_from_slice(&id.0.to_le_bytes());
            put_ref(view, *id, out);
        }
        Mutation::SetNode { id, data } => {
            out.push(4);
            out.extend_from_slice(&id.0.to_le_bytes());
            match data {
                None => out.push(0),
                Some(d) => {
                    out.push(1);
                    encode_node_data(d, out);
                }
            }
        }
        Mutation::AddEdge(e) => {
            out.push(5);
            put_edge(view, e, out);
        }
        Mutation::RemoveEdge(e) => {
            out.push(6);
            put_edge(view, e, out);
        }
    }
}

/// Appends the encoding of subgraph `changes` to `out`; node refs are read from `view` (any
/// view at or after the changes: a node's label and key never change).
pub fn encode_changes(view: &GraphView, changes: &[Scoped], out: &mut Vec<u8>) {
    for c in changes {
        let tag = match c.change {
            Change::NodeUpsert { .. } => 1,
            Change::NodeDelete { .. } => 2,
            Change::EdgeAdd(_) => 3,
            Change::EdgeRemove(_) => 4,
        };
        out.push(tag);
        out.push(u8::from(c.global) | if c.tenant.is_some() { 2 } else { 0 });
        if let Some(t) = &c.tenant {
            put_key(out, t);
        }
        match &c.change {
            Change::NodeUpsert { id, data } => {
                out.extend_from_slice(&id.0.to_le_bytes());
                encode_node_data(data, out);
            }
            Change::NodeDelete { id } => {
                out.extend_from_slice(&id.0.to_le_bytes());
                put_ref(view, *id, out);
            }
            Change::EdgeAdd(e) | Change::EdgeRemove(e) => {
                put_edge(view, e, out);
            }
        }
    }
}

/// A decoded subgraph change and the nodes it names, in key terms.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedChange {
    /// The change, in id terms, with its scope.
    pub scoped: Scoped,
    /// The node a node change names, or an edge's source (`None`: the node had no data).
    pub node: Option<(NodeLabel, NodeKey)>,
    /// An edge's target.
    pub target: Option<(NodeLabel, NodeKey)>,
}

/// A decoded mutation and the nodes it names, in key terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// The mutation, as the graph applies it.
    pub mutation: Mutation,
    /// The node a node mutation names, or an edge's source (`None`: the node had no data).
    pub node: Option<(NodeLabel, NodeKey)>,
    /// An edge's target.
    pub target: Option<(NodeLabel, NodeKey)>,
}

/// Decodes mutations written by [`encode_mutations`]. Keeps an interner of property names
/// (one allocation per distinct name, not per value); reuse one decoder for a whole replay.
#[derive(Debug, Default)]
pub struct Decoder {
    names: HashMap<Box<str>, Arc<str>>,
}

impl Decoder {
    /// Decodes `count` mutations from `r`, calling `each` for every one in order. `next_id`
    /// is the node count before them (the id the first `AddNode` gets); every `AddNode` is
    /// checked against it.
    pub fn decode(
        &mut self,
        r: &mut ByteReader<'_>,
        count: u64,
        mut next_id: u32,
        mut each: impl FnMut(Logged),
    ) -> Result<u32, Corrupt> {
        for _ in 0..count {
            let logged = self.one(r, &mut next_id)?;
            each(logged);
        }
        Ok(next_id)
    }

    fn node_ref(&mut self, r: &mut ByteReader<'_>) -> Result<Option<(NodeLabel, NodeKey)>, Corrupt> {
        let label = u16::from_le_bytes(r.array("node label")?);
        if label == NO_DATA {
            return Ok(None);
        }
        Ok(Some((NodeLabel(label), Reader(r).key(0)?)))
    }

    fn edge(&mut self, r: &mut ByteReader<'_>) -> Result<(EdgeInput, Logged), Corrupt> {
        let source = NodeId(r.u32("edge source")?);
        let target = NodeId(r.u32("edge target")?);
        let label = EdgeLabel(r.u8("edge label")?);
        let weight = r.f64("edge weight")?;
        let e = EdgeInput {
            source,
            target,
            label,
            weight,
        };
        let node = self.node_ref(r)?;
        let target = self.node_ref(r)?;
        Ok((
            e,
            Logged {
                mutation: Mutation::AddNode,
                node,
                target,
            },
        ))
    }

    /// Decodes node data written by [`encode_node_data`].
    pub fn node_data(&mut self, r: &mut ByteReader<'_>) -> Result<NodeData, Corrupt> {
        let label = NodeLabel(u16::from_le_bytes(r.array("node label")?));
        let key = Reader(r).key(0)?;
        let tenant = match r.u8("tenant flag")? {
            0 => None,
            1 => Some(Reader(r).key(0)?),
            _ => return Err(r.corrupt("an unknown tenant flag")),
        };
        let nf = u16::from_le_bytes(r.array("filter count")?);
        let mut filters = Vec::with_capacity(usize::from(nf).min(r.remaining()));
        for _ in 0..nf {
            let f = FilterId(u16::from_le_bytes(r.array("filter id")?));
            filters.push((f, Reader(r).key(0)?));
        }
        let np = u16::from_le_bytes(r.array("property count")?);
        let mut properties: Vec<(Arc<str>, PropValue)> = Vec::with_capacity(usize::from(np).min(r.remaining()));
        for _ in 0..np {
            let n = r.u32("property name length")? as usize;
            let at = r.offset();
            let bytes = r.take(n, "property name")?;
            let name = std::str::from_utf8(bytes).map_err(|_| Corrupt {
                what: "a property name that is not UTF-8",
                offset: at,
            })?;
            let name = match self.names.get(name) {
                Some(a) => a.clone(),
                None => {
                    let a: Arc<str> = Arc::from(name);
                    self.names.insert(name.into(), a.clone());
                    a
                }
            };
            properties.push((name, Reader(r).prop()?));
        }
        let mut d = NodeData::bare(label, key);
        d.tenant = tenant;
        if !filters.is_empty() {
            d.filters = filters.into();
        }
        if !properties.is_empty() {
            d.properties = properties.into();
        }
        Ok(d)
    }

    /// Decodes `count` subgraph changes written by [`encode_changes`], calling `each` for
    /// every one in order.
    pub fn decode_changes(
        &mut self,
        r: &mut ByteReader<'_>,
        count: u64,
        mut each: impl FnMut(LoggedChange),
    ) -> Result<(), Corrupt> {
        for _ in 0..count {
            let tag = r.u8("change tag")?;
            let flags = r.u8("change scope")?;
            if flags & !3 != 0 {
                return Err(r.corrupt("unknown change scope flags"));
            }
            let tenant = if flags & 2 != 0 { Some(Reader(r).key(0)?) } else { None };
            let global = flags & 1 != 0;
            let (change, node, target) = match tag {
                1 => {
                    let id = NodeId(r.u32("node id")?);
                    let data = Arc::new(self.node_data(r)?);
                    let node = Some((data.label, data.key.clone()));
                    (Change::NodeUpsert { id, data }, node, None)
                }
                2 => {
                    let id = NodeId(r.u32("node id")?);
                    (Change::NodeDelete { id }, self.node_ref(r)?, None)
                }
                3 | 4 => {
                    let (e, l) = self.edge(r)?;
                    let change = if tag == 3 {
                        Change::EdgeAdd(e)
                    } else {
                        Change::EdgeRemove(e)
                    };
                    (change, l.node, l.target)
                }
                _ => return Err(r.corrupt("an unknown change tag")),
            };
            each(LoggedChange {
                scoped: Scoped { global, tenant, change },
                node,
                target,
            });
        }
        Ok(())
    }

    fn one(&mut self, r: &mut ByteReader<'_>, next_id: &mut u32) -> Result<Logged, Corrupt> {
        let tag = r.u8("mutation tag")?;
        Ok(match tag {
            1 => {
                let at = r.offset();
                let id = r.u32("node id")?;
                if id != *next_id {
                    return Err(Corrupt {
                        what: "a new node id out of sequence",
                        offset: at,
                    });
                }
                *next_id = id.checked_add(1).ok_or(Corrupt {
                    what: "more nodes than ids",
                    offset: at,
                })?;
                Logged {
                    mutation: Mutation::AddNode,
                    node: None,
                    target: None,
                }
            }
            2 | 3 => {
                let id = NodeId(r.u32("node id")?);
                let node = self.node_ref(r)?;
                Logged {
                    mutation: if tag == 2 {
                        Mutation::RemoveNode(id)
                    } else {
                        Mutation::RestoreNode(id)
                    },
                    node,
                    target: None,
                }
            }
            4 => {
                let id = NodeId(r.u32("node id")?);
                let data = match r.u8("data flag")? {
                    0 => None,
                    1 => Some(Arc::new(self.node_data(r)?)),
                    _ => return Err(r.corrupt("an unknown data flag")),
                };
                Logged {
                    node: data.as_ref().map(|d| (d.label, d.key.clone())),
                    mutation: Mutation::SetNode { id, data },
                    target: None,
                }
            }
            5 | 6 => {
                let (e, mut l) = self.edge(r)?;
                l.mutation = if tag == 5 {
                    Mutation::AddEdge(e)
                } else {
                    Mutation::RemoveEdge(e)
                };
                l
            }
            _ => return Err(r.corrupt("an unknown mutation tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Csr, Graph, Topology};

    #[test]
    fn mutations_round_trip_with_their_keys() {
        let mut g = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
        let mut t = g.begin(2).unwrap();
        let mut d = NodeData::bare(NodeLabel(1), NodeKey::Text("a".into()));
        d.tenant = Some(NodeKey::Int(7));
        d.filters = vec![(FilterId(0), NodeKey::Int(3))].into();
        d.properties = vec![
            (Arc::from("name"), PropValue::Text("Ann".into())),
            (Arc::from("n"), PropValue::Int(-4)),
            (Arc::from("x"), PropValue::Float(0.5)),
            (Arc::from("b"), PropValue::Bool(true)),
            (Arc::from("z"), PropValue::Null),
        ]
        .into();
        let a = t.upsert_node(d.clone());
        let b = t.node_id(NodeLabel(0), &NodeKey::Int(9));
        let e = EdgeInput {
            source: a,
            target: b,
            label: EdgeLabel(2),
            weight: 1.5,
        };
        t.add_edge(e).unwrap();
        t.remove_edge(e).unwrap();
        t.delete_node(NodeLabel(1), &NodeKey::Text("a".into()));
        let muts = t.mutations().to_vec();
        let view = t.commit().unwrap();
        let mut bytes = Vec::new();
        encode_mutations(&view, &muts, &mut bytes);
        let mut got = Vec::new();
        let mut r = ByteReader::new(&bytes);
        let next = Decoder::default()
            .decode(&mut r, muts.len() as u64, 0, |l| got.push(l))
            .unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(next, 2);
        assert_eq!(got.iter().map(|l| l.mutation.clone()).collect::<Vec<_>>(), muts);
        let edge = got.iter().find(|l| matches!(l.mutation, Mutation::AddEdge(_))).unwrap();
        assert_eq!(edge.node, Some((NodeLabel(1), NodeKey::Text("a".into()))));
        assert_eq!(edge.target, Some((NodeLabel(0), NodeKey::Int(9))));

        // Replaying gives the same graph.
        let mut h = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
        h.apply(2, &muts).unwrap();
        assert_eq!(h.view().node_count(), view.node_count());
        assert_eq!(h.view().node(a), view.node(a));
        // The subgraph changes of the same transaction round-trip too.
        let mut g2 = Graph::new(Csr::build(0, &[], false).unwrap(), 1);
        let mut t2 = g2.begin(2).unwrap();
        t2.start_diff();
        let a2 = t2.upsert_node(d.clone());
        let b2 = t2.upsert_node(NodeData::bare(NodeLabel(0), NodeKey::Int(9)));
        t2.add_edge(EdgeInput {
            source: a2,
            target: b2,
            ..e
        })
        .unwrap();
        let first = t2.take_diff();
        t2.delete_node(NodeLabel(0), &NodeKey::Int(9));
        let second = t2.take_diff();
        let view2 = t2.commit().unwrap();
        let changes: Vec<_> = first.into_iter().chain(second).collect();
        assert_eq!(changes.len(), 4, "{changes:?}");
        let mut cb = Vec::new();
        encode_changes(&view2, &changes, &mut cb);
        let mut back = Vec::new();
        let mut r = ByteReader::new(&cb);
        Decoder::default()
            .decode_changes(&mut r, changes.len() as u64, |c| back.push(c))
            .unwrap();
        assert_eq!(r.remaining(), 0);
        assert_eq!(back.iter().map(|c| c.scoped.clone()).collect::<Vec<_>>(), changes);
        assert_eq!(back[3].node, Some((NodeLabel(0), NodeKey::Int(9))));
        for cut in 0..cb.len() {
            let mut r = ByteReader::new(&cb[..cut]);
            assert!(Decoder::default()
                .decode_changes(&mut r, changes.len() as u64, |_| {})
                .is_err());
        }
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            let mut r = ByteReader::new(&bytes[..cut]);
            assert!(Decoder::default().decode(&mut r, muts.len() as u64, 0, |_| {}).is_err());
        }
    }
}
