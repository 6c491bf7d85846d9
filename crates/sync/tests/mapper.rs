//! Property test of the mapper: random transactions of row changes (inserts, updates incl. key
//! and FK changes and unchanged-TOAST columns, deletes, truncates) applied to the graph, checked
//! after every transaction against a model of the tables; every transaction appended to a
//! change log, snapshots written and restarts (newest snapshot + log replay) at random points,
//! and the bulk build of the final rows compared too.

use bytes::Bytes;
use graph::{query, Direction, EdgeFilter, GraphView, NodeId, NodeKey, PropValue, Topology};
use pgoutput::{Column, ColumnData, Lsn, OldKind, PgTimestamp, Relation, ReplicaIdentity, TupleData};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use sync::change::RowChange;
use sync::changelog::{LogDir, LogWriter, WriterOptions};
use sync::checkpoint::CheckpointStore;
use sync::committed::CommittedTxn;
use sync::config::MappingConfig;
use sync::mapper::MapError;
use sync::mapper::{BulkLoad, Mapper};

const CONFIG: &str = r#"
[[nodes]]
table = "public.users"
key = "id"
label = "User"
tenant = "org"
properties = ["name"]

[[nodes]]
table = "public.posts"
key = "id"
label = "Post"

[[edges]]
table = "public.follows"
label = "FOLLOWS"
source = { column = "a", node = "User" }
target = { column = "b", node = "User" }
weight = "w"

[[edges]]
table = "public.posts"
label = "AUTHORED_BY"
source = { column = "id", node = "Post" }
target = { column = "author", node = "User" }
"#;

fn rel(id: u32, name: &str, cols: &[(&str, u32, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        xid: None,
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .map(|(n, t, k)| Column {
                name: (*n).into(),
                type_oid: *t,
                type_modifier: -1,
                is_key: *k,
            })
            .collect(),
    })
}

struct Rels {
    users: Arc<Relation>,
    follows: Arc<Relation>,
    posts: Arc<Relation>,
}

fn rels() -> Rels {
    Rels {
        users: rel(1, "users", &[("id", 23, true), ("org", 23, false), ("name", 25, false)]),
        follows: rel(2, "follows", &[("a", 23, true), ("b", 23, true), ("w", 701, false)]),
        posts: rel(3, "posts", &[("id", 23, true), ("author", 23, false)]),
    }
}

#[derive(Debug, Clone)]
enum C {
    Null,
    Toast,
    V(String),
}

fn tuple(cols: &[C]) -> TupleData {
    TupleData::from_columns(cols.iter().map(|c| match c {
        C::Null => ColumnData::Null,
        C::Toast => ColumnData::UnchangedToast,
        C::V(s) => ColumnData::Text(Bytes::copy_from_slice(s.as_bytes())),
    }))
}

fn v(i: impl ToString) -> C {
    C::V(i.to_string())
}

fn opt(o: Option<i32>) -> C {
    o.map_or(C::Null, v)
}

/// The tables.
#[derive(Debug, Clone, Default)]
struct Model {
    users: BTreeMap<i32, (Option<i32>, String)>,
    follows: BTreeMap<(i32, i32), f64>,
    posts: BTreeMap<i32, Option<i32>>,
}

#[derive(Debug, Clone)]
enum Op {
    InsertUser { id: i32, org: Option<i32>, name: u8 },
    SetOrg { pick: usize, org: Option<i32> },
    Rename { pick: usize, name: u8 },
    RekeyUser { pick: usize, id: i32 },
    DeleteUser { pick: usize },
    Follow { a: i32, b: i32, w: u8 },
    Reweight { pick: usize, w: u8 },
    MoveFollow { pick: usize, b: i32 },
    Unfollow { pick: usize },
    InsertPost { id: i32, author: Option<i32> },
    SetAuthor { pick: usize, author: Option<i32> },
    RekeyPost { pick: usize, id: i32 },
    DeletePost { pick: usize },
    TruncateFollows,
    TruncateUsers,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..40i32;
    let org = proptest::option::of(0..3i32);
    prop_oneof![
        4 => (id.clone(), org.clone(), any::<u8>()).prop_map(|(id, org, name)| Op::InsertUser { id, org, name }),
        1 => (any::<usize>(), org.clone()).prop_map(|(pick, org)| Op::SetOrg { pick, org }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, name)| Op::Rename { pick, name }),
        1 => (any::<usize>(), id.clone()).prop_map(|(pick, id)| Op::RekeyUser { pick, id }),
        1 => any::<usize>().prop_map(|pick| Op::DeleteUser { pick }),
        4 => (id.clone(), id.clone(), any::<u8>()).prop_map(|(a, b, w)| Op::Follow { a, b, w }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(pick, w)| Op::Reweight { pick, w }),
        1 => (any::<usize>(), id.clone()).prop_map(|(pick, b)| Op::MoveFollow { pick, b }),
        1 => any::<usize>().prop_map(|pick| Op::Unfollow { pick }),
        2 => (id.clone(), proptest::option::of(id.clone())).prop_map(|(id, author)| Op::InsertPost { id, author }),
        1 => (any::<usize>(), proptest::option::of(id.clone())).prop_map(|(pick, author)| Op::SetAuthor { pick, author }),
        1 => (any::<usize>(), id.clone()).prop_map(|(pick, id)| Op::RekeyPost { pick, id }),
        1 => any::<usize>().prop_map(|pick| Op::DeletePost { pick }),
        1 => Just(Op::TruncateFollows),
        1 => Just(Op::TruncateUsers),
    ]
}

fn nth<K: Clone, V>(m: &BTreeMap<K, V>, pick: usize) -> Option<K> {
    (!m.is_empty()).then(|| m.keys().nth(pick % m.len()).cloned()).flatten()
}

/// Applies `op` to the model and returns the row change PostgreSQL would send (none when the
/// statement would fail or touch nothing).
fn step(m: &mut Model, r: &Rels, op: &Op) -> Option<RowChange> {
    Some(match op.clone() {
        Op::InsertUser { id, org, name } => {
            if m.users.contains_key(&id) {
                return None;
            }
            let name = format!("n{name}");
            m.users.insert(id, (org, name.clone()));
            RowChange::Insert {
                rel: r.users.clone(),
                new: tuple(&[v(id), opt(org), v(name)]),
            }
        }
        Op::SetOrg { pick, org } => {
            let id = nth(&m.users, pick)?;
            m.users.get_mut(&id)?.0 = org;
            // name untouched: sent as unchanged TOAST.
            RowChange::Update {
                rel: r.users.clone(),
                old: None,
                new: tuple(&[v(id), opt(org), C::Toast]),
            }
        }
        Op::Rename { pick, name } => {
            let id = nth(&m.users, pick)?;
            let u = m.users.get_mut(&id)?;
            u.1 = format!("n{name}");
            RowChange::Update {
                rel: r.users.clone(),
                old: None,
                new: tuple(&[v(id), opt(u.0), v(u.1.clone())]),
            }
        }
        Op::RekeyUser { pick, id } => {
            let old = nth(&m.users, pick)?;
            if m.users.contains_key(&id) {
                return None;
            }
            let u = m.users.remove(&old)?;
            m.users.insert(id, u.clone());
            RowChange::Update {
                rel: r.users.clone(),
                old: Some((OldKind::Key, tuple(&[v(old), C::Null, C::Null]))),
                new: tuple(&[v(id), opt(u.0), C::Toast]),
            }
        }
        Op::DeleteUser { pick } => {
            let id = nth(&m.users, pick)?;
            m.users.remove(&id);
            RowChange::Delete {
                rel: r.users.clone(),
                old: tuple(&[v(id), C::Null, C::Null]),
            }
        }
        Op::Follow { a, b, w } => {
            if m.follows.contains_key(&(a, b)) {
                return None;
            }
            let w = f64::from(w) / 4.0;
            m.follows.insert((a, b), w);
            RowChange::Insert {
                rel: r.follows.clone(),
                new: tuple(&[v(a), v(b), v(w)]),
            }
        }
        Op::Reweight { pick, w } => {
            let (a, b) = nth(&m.follows, pick)?;
            let w = f64::from(w) / 4.0;
            m.follows.insert((a, b), w);
            RowChange::Update {
                rel: r.follows.clone(),
                old: None,
                new: tuple(&[v(a), v(b), v(w)]),
            }
        }
        Op::MoveFollow { pick, b: nb } => {
            let (a, b) = nth(&m.follows, pick)?;
            if m.follows.contains_key(&(a, nb)) {
                return None;
            }
            let w = m.follows.remove(&(a, b))?;
            m.follows.insert((a, nb), w);
            RowChange::Update {
                rel: r.follows.clone(),
                old: Some((OldKind::Key, tuple(&[v(a), v(b), C::Null]))),
                new: tuple(&[v(a), v(nb), v(w)]),
            }
        }
        Op::Unfollow { pick } => {
            let (a, b) = nth(&m.follows, pick)?;
            m.follows.remove(&(a, b));
            RowChange::Delete {
                rel: r.follows.clone(),
                old: tuple(&[v(a), v(b), C::Null]),
            }
        }
        Op::InsertPost { id, author } => {
            if m.posts.contains_key(&id) {
                return None;
            }
            m.posts.insert(id, author);
            RowChange::Insert {
                rel: r.posts.clone(),
                new: tuple(&[v(id), opt(author)]),
            }
        }
        Op::SetAuthor { pick, author } => {
            let id = nth(&m.posts, pick)?;
            m.posts.insert(id, author);
            RowChange::Update {
                rel: r.posts.clone(),
                old: None,
                new: tuple(&[v(id), opt(author)]),
            }
        }
        Op::RekeyPost { pick, id } => {
            let old = nth(&m.posts, pick)?;
            if m.posts.contains_key(&id) {
                return None;
            }
            let a = m.posts.remove(&old)?;
            m.posts.insert(id, a);
            RowChange::Update {
                rel: r.posts.clone(),
                old: Some((OldKind::Key, tuple(&[v(old), C::Null]))),
                new: tuple(&[v(id), opt(a)]),
            }
        }
        Op::DeletePost { pick } => {
            let id = nth(&m.posts, pick)?;
            m.posts.remove(&id);
            RowChange::Delete {
                rel: r.posts.clone(),
                old: tuple(&[v(id), C::Null]),
            }
        }
        Op::TruncateFollows => {
            m.follows.clear();
            RowChange::Truncate {
                rels: vec![r.follows.clone()],
            }
        }
        Op::TruncateUsers => {
            m.users.clear();
            RowChange::Truncate {
                rels: vec![r.users.clone()],
            }
        }
    })
}

fn name_of(view: &GraphView, mapper: &Mapper, n: NodeId) -> String {
    let d = view.node(n).expect("data");
    let k = match &d.key {
        NodeKey::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    };
    format!("{}:{k}", mapper.node_labels()[d.label.0 as usize])
}

/// The graph equals the model: visible nodes, tenants, names, and every node's out/in edges
/// with labels and weights.
fn check(view: &GraphView, mapper: &Mapper, m: &Model) -> Result<(), TestCaseError> {
    let mut want_nodes = BTreeMap::new();
    for (id, (org, name)) in &m.users {
        want_nodes.insert(
            format!("User:{id}"),
            (org.map(|o| NodeKey::Int(o.into())), Some(name.clone())),
        );
    }
    for id in m.posts.keys() {
        want_nodes.insert(format!("Post:{id}"), (None, None));
    }
    let mut want_edges: BTreeSet<(String, String, String, u64)> = BTreeSet::new();
    for (&(a, b), &w) in &m.follows {
        want_edges.insert((format!("User:{a}"), "FOLLOWS".into(), format!("User:{b}"), w.to_bits()));
    }
    for (&p, &a) in &m.posts {
        if let Some(a) = a {
            want_edges.insert((
                format!("Post:{p}"),
                "AUTHORED_BY".into(),
                format!("User:{a}"),
                1f64.to_bits(),
            ));
        }
    }
    want_edges.retain(|(s, _, t, _)| want_nodes.contains_key(s) && want_nodes.contains_key(t));
    let mut got_nodes = BTreeMap::new();
    let mut got_edges = BTreeSet::new();
    let mut edge_count = 0;
    for i in 0..view.node_count() {
        let n = NodeId(i);
        if !view.is_visible(n) {
            continue;
        }
        let d = view.node(n).expect("data");
        let name = d.properties.iter().find(|(k, _)| &**k == "name").map(|(_, v)| match v {
            PropValue::Text(t) => t.to_string(),
            other => format!("{other:?}"),
        });
        got_nodes.insert(name_of(view, mapper, n), (d.tenant.clone(), name));
        view.for_each_edge(n, Direction::Out, |t, l, w| {
            if view.is_visible(t) {
                edge_count += 1;
                got_edges.insert((
                    name_of(view, mapper, n),
                    mapper.edge_labels()[l.0 as usize].clone(),
                    name_of(view, mapper, t),
                    w.to_bits(),
                ));
            }
        });
        // In-edges agree with out-edges.
        let ins = query::neighbors(view, n, Direction::In, EdgeFilter::default())
            .unwrap()
            .len();
        let expect_in = want_edges.iter().filter(|e| e.2 == name_of(view, mapper, n)).count();
        prop_assert_eq!(ins, expect_in, "in-degree of {}", name_of(view, mapper, n));
    }
    prop_assert_eq!(&got_nodes, &want_nodes);
    prop_assert_eq!(&got_edges, &want_edges);
    prop_assert_eq!(edge_count, want_edges.len(), "parallel edges where none belong");
    prop_assert_eq!(view.edge_count(), want_edges.len(), "the view's edge count");
    Ok(())
}

/// The row index: every edge looked up through rows, or each mapping's cheapest lookup.
fn index(mapper: &Mapper, cheap: bool) -> sync::mapper::RowIndex {
    if !cheap {
        return mapper.new_index();
    }
    let index = mapper.index_for(|t| match t {
        "public.follows" => Some(vec!["a".into(), "b".into()]),
        _ => Some(vec!["id".into()]),
    });
    use sync::mapper::EdgeLookup;
    assert_eq!(
        (index.mode(0), index.mode(1)),
        (EdgeLookup::Endpoints, EdgeLookup::OwnNode)
    );
    index
}

fn bulk_of(m: &Model, r: &Rels, mapper: &mut Mapper, lsn: u64, cheap: bool) -> graph::Graph {
    let mut b = BulkLoad::new(index(mapper, cheap));
    let typed = |rel: &Relation, cols: &[C]| rel.typed_values(&tuple(cols), "COPY").unwrap();
    for (k, w) in &m.follows {
        b.insert(mapper, &r.follows, &typed(&r.follows, &[v(k.0), v(k.1), v(w)]))
            .unwrap();
    }
    for (id, (org, name)) in &m.users {
        b.insert(mapper, &r.users, &typed(&r.users, &[v(id), opt(*org), v(name)]))
            .unwrap();
    }
    for (id, a) in &m.posts {
        b.insert(mapper, &r.posts, &typed(&r.posts, &[v(id), opt(*a)])).unwrap();
    }
    b.finish(lsn, Default::default()).unwrap().0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mapper_matches_the_tables(
        txns in proptest::collection::vec((proptest::collection::vec(op(), 1..8), 0u8..10), 1..60),
        cheap in any::<bool>(),
    ) {
        let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("t.toml")).unwrap());
        let hash = config.mapping_hash();
        let r = rels();
        let mut mapper = Mapper::new(config.clone());
        let mut model = Model::default();
        let mut graph = bulk_of(&model, &r, &mut mapper, 1, cheap);
        let mut index = index(&mapper, cheap);
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&graph.view(), &index, None, hash, 0).unwrap();
        let log_dir = LogDir::open(&dir.path().join("log")).unwrap();
        let mut log = Some(LogWriter::open(&log_dir, Lsn(1), WriterOptions::new(hash)).unwrap());
        let mut lsn = 10u64;
        for (ops, action) in txns {
            let changes: Vec<RowChange> = ops.iter().filter_map(|o| step(&mut model, &r, o)).collect();
            lsn += 10;
            let txn = CommittedTxn {
                xid: lsn as u32,
                commit_lsn: Lsn(lsn - 1),
                end_lsn: Lsn(lsn),
                commit_time: PgTimestamp(0),
                changes,
                spilled: None,
            };
            let applied = mapper.apply_logged(&mut graph, &mut index, std::slice::from_ref(&txn)).unwrap();
            let record = sync::changelog::record::encode_changes(&applied, &[(txn.end_lsn, 0)]);
            log.as_ref().unwrap().append(txn.end_lsn, record).unwrap();
            check(&graph.view(), &mapper, &model)?;
            match action {
                // A snapshot (as a compaction writes), the log since the older kept one stays.
                0 => {
                    let previous = store.manifest().map(|m| sync::checkpoint::Fallback {
                        snapshot: m.snapshot,
                        rows: m.rows,
                        lsn: m.lsn,
                    });
                    let m = store.write(&graph.view(), &index, previous, hash, 0).unwrap();
                    log.as_ref().unwrap().remove_through(m.oldest()).unwrap();
                }
                1 => {
                    graph.compact().unwrap();
                    check(&graph.view(), &mapper, &model)?;
                }
                // A restart: the newest snapshot plus the log replayed is the same state.
                2 | 3 => {
                    let writer = log.take().unwrap();
                    prop_assert_eq!(writer.flush(std::time::Duration::from_secs(10)).unwrap(), Lsn(lsn));
                    drop(writer);
                    let (g, i, position) = sync::replicator::load(dir.path(), hash).unwrap().unwrap();
                    prop_assert_eq!(position, Lsn(lsn));
                    prop_assert_eq!(&i, &index);
                    prop_assert_eq!(g.view().node_count(), graph.view().node_count());
                    graph = g;
                    index = i;
                    mapper = Mapper::new(config.clone());
                    check(&graph.view(), &mapper, &model)?;
                    log = Some(LogWriter::open(&log_dir, position, WriterOptions::new(hash)).unwrap());
                }
                _ => {}
            }
        }
        // The initial copy's bulk build of the same rows is the same graph.
        let mut fresh = Mapper::new(config);
        let bulk = bulk_of(&model, &r, &mut fresh, lsn, cheap);
        check(&bulk.view(), &fresh, &model)?;
    }
}

/// A column an online reload renamed (`w` → `weight`) is still read under its old name from a
/// relation sent for changes made before the `ALTER TABLE … RENAME COLUMN`; without the rename
/// known, the same change is refused naming the column.
#[test]
fn a_renamed_column_is_read_under_its_old_name_from_earlier_relations() {
    let renamed = CONFIG.replace("weight = \"w\"", "weight = \"weight\"");
    let config = Arc::new(MappingConfig::parse(&renamed, Path::new("t.toml")).unwrap());
    let r = rels();
    let txn = |changes: Vec<RowChange>| CommittedTxn {
        xid: 7,
        commit_lsn: Lsn(19),
        end_lsn: Lsn(20),
        commit_time: PgTimestamp(0),
        changes,
        spilled: None,
    };
    let changes = || {
        vec![
            RowChange::Insert {
                rel: r.users.clone(),
                new: tuple(&[v(1), v(1), v("a")]),
            },
            RowChange::Insert {
                rel: r.users.clone(),
                new: tuple(&[v(2), v(1), v("b")]),
            },
            // `follows` as it was before the rename: its weight column is still `w`.
            RowChange::Insert {
                rel: r.follows.clone(),
                new: tuple(&[v(1), v(2), v(3.5)]),
            },
        ]
    };
    let model = Model::default();
    let mut plain = Mapper::new(config.clone());
    let mut graph = bulk_of(&model, &r, &mut plain, 1, false);
    let mut idx = index(&plain, false);
    let err = plain
        .apply_logged(&mut graph, &mut idx, &[txn(changes())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column \"weight\""), "{err}");
    let mut mapper =
        Mapper::new(config).with_renamed([("public.follows".to_string(), "w".to_string(), "weight".to_string())]);
    let mut graph = bulk_of(&model, &r, &mut mapper, 1, false);
    let mut idx = index(&mapper, false);
    mapper.apply_logged(&mut graph, &mut idx, &[txn(changes())]).unwrap();
    let mut want = Model::default();
    want.users.insert(1, (Some(1), "a".into()));
    want.users.insert(2, (Some(1), "b".into()));
    want.follows.insert((1, 2), 3.5);
    check(&graph.view(), &mapper, &want).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A batch of transactions applied as one graph transaction (the look-ahead stages its
    /// changes across transaction boundaries, some transactions empty, some longer than a
    /// group) gives each transaction the mutations and row index changes it gets applied alone,
    /// and ends where they all end.
    #[test]
    fn a_batch_is_its_transactions_one_by_one(
        txns in proptest::collection::vec(proptest::collection::vec(op(), 0..20), 1..12),
        cheap in any::<bool>(),
    ) {
        let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("t.toml")).unwrap());
        let r = rels();
        let mut model = Model::default();
        let batch: Vec<CommittedTxn> = txns
            .iter()
            .enumerate()
            .map(|(i, ops)| CommittedTxn {
                xid: i as u32,
                commit_lsn: Lsn(10 * i as u64 + 9),
                end_lsn: Lsn(10 * i as u64 + 10),
                commit_time: PgTimestamp(0),
                changes: ops.iter().filter_map(|o| step(&mut model, &r, o)).collect(),
                spilled: None,
            })
            .collect();
        let mut whole = Mapper::new(config.clone());
        let mut graph = bulk_of(&Model::default(), &r, &mut whole, 1, cheap);
        let mut idx = index(&whole, cheap);
        let applied = whole.apply_logged(&mut graph, &mut idx, &batch).unwrap();
        check(&graph.view(), &whole, &model)?;
        prop_assert_eq!(applied.ends.len(), batch.len());

        let mut single = Mapper::new(config);
        let mut graph = bulk_of(&Model::default(), &r, &mut single, 1, cheap);
        let mut idx = index(&single, cheap);
        let (mut m, mut x) = (0, 0);
        for (txn, &(m_end, x_end, _)) in batch.iter().zip(&applied.ends) {
            let one = single.apply_logged(&mut graph, &mut idx, std::slice::from_ref(txn)).unwrap();
            // As multisets: a TRUNCATE lists its edges in the row index's hash order, which
            // differs between two indexes.
            prop_assert_eq!(sorted(&applied.mutations[m..m_end]), sorted(&one.mutations));
            prop_assert_eq!(sorted(&applied.index_ops[x..x_end]), sorted(&one.index_ops));
            (m, x) = (m_end, x_end);
        }
        prop_assert_eq!((m, x), (applied.mutations.len(), applied.index_ops.len()));
        check(&graph.view(), &single, &model)?;
    }
}

/// Right after a start (no table planned yet), an update of an edge table and then, in a later
/// transaction of the same batch, an insert under a relation whose replica identity changed:
/// the batch fails, and applied one by one the update still applies and the insert is the one
/// refused (the look-ahead must not plan the insert's relation before the update's).
#[test]
fn a_changed_identity_later_in_a_batch_is_refused_there() {
    let config = Arc::new(MappingConfig::parse(CONFIG, Path::new("t.toml")).unwrap());
    let r = rels();
    let changed = rel(2, "follows", &[("a", 23, true), ("b", 23, true), ("w", 701, true)]);
    let txn = |xid: u32, change: RowChange| CommittedTxn {
        xid,
        commit_lsn: Lsn(10 * u64::from(xid) + 9),
        end_lsn: Lsn(10 * u64::from(xid) + 10),
        commit_time: PgTimestamp(0),
        changes: vec![change],
        spilled: None,
    };
    let update = txn(
        1,
        RowChange::Update {
            rel: r.follows.clone(),
            old: None,
            new: tuple(&[v(1), v(2), v(1.5)]),
        },
    );
    let insert = txn(
        2,
        RowChange::Insert {
            rel: changed,
            new: tuple(&[v(3), v(4), v(2.5)]),
        },
    );
    let mut mapper = Mapper::new(config);
    let mut graph = bulk_of(&Model::default(), &r, &mut mapper, 1, false);
    let mut idx = index(&mapper, false);
    let batch = [update, insert];
    let err = mapper.apply_logged(&mut graph, &mut idx, &batch).unwrap_err();
    assert!(matches!(err, MapError::IdentityChanged { .. }), "{err}");
    mapper.apply_logged(&mut graph, &mut idx, &batch[..1]).unwrap();
    let err = mapper.apply_logged(&mut graph, &mut idx, &batch[1..]).unwrap_err();
    assert!(matches!(err, MapError::IdentityChanged { .. }), "{err}");
}

fn sorted<T: std::fmt::Debug>(items: &[T]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    v.sort();
    v
}
