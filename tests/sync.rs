//! The sync core end to end: the real `graphsync replicate` binary against the harness's
//! PostgreSQL, its graph compared with what SQL says.

mod common;

use common::replica::{self, assert_graph_equals, current_lsn};
use common::workload::{self, Workload};
use graph::{PropValue, Topology};
use pgtest::Cluster;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

fn setup(prefix: &str) -> (&'static Cluster, String, tempfile::TempDir, std::path::PathBuf) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix);
    cluster.psql(&db, workload::SCHEMA);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = workload::write_config(dir.path(), &db);
    (cluster, db, dir, config)
}

/// 2,000 random transactions (key and FK changes, untouched TOAST columns, a TRUNCATE, a
/// streamed transaction with a rolled-back savepoint, an aborted one) over seeded tables: the
/// graph at the last commit equals SQL, node by node, and TOASTed values survive updates that
/// did not send them.
#[test]
fn oracle_two_thousand_transactions() {
    let (cluster, db, dir, config) = setup("oracle");
    let mut w = Workload::new(0x5eed);
    cluster.psql(&db, &w.seed(300));
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    // Writes while the replicator starts (initial copy and streaming).
    for batch in 0..20 {
        let script = w.script(
            100,
            (batch == 10).then_some(50),
            (batch == 12).then_some(10),
            (batch == 5).then_some(3),
        );
        cluster.psql(&db, &script);
    }
    assert_eq!(w.txns, 2000);
    let last = current_lsn(cluster, &db);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
    assert!(log.contains("initial copy done"), "{log}");
    if std::env::var_os("GRAPHSYNC_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    let expected = workload::expected(cluster, &db);
    assert!(expected.nodes.len() > 3000, "{}", expected.nodes.len());
    let lsn = assert_graph_equals(&data, &config, &expected);
    assert!(lsn >= last);

    // TOAST: bio values (stored out of line) are kept across updates that did not send them.
    let store = sync::checkpoint::CheckpointStore::open(&data).unwrap();
    let cfg = sync::config::MappingConfig::load(&config).unwrap();
    let view = store.restore(cfg.mapping_hash()).unwrap().unwrap().graph.view();
    let mapper = sync::mapper::Mapper::new(std::sync::Arc::new(cfg));
    let user = mapper.node_label("User").unwrap();
    let mut long = 0;
    for line in cluster
        .psql(&db, "SELECT id, coalesce(length(bio), -1) FROM users")
        .lines()
    {
        let (id, len) = line.split_once('|').unwrap();
        let id = view
            .resolve(user, &graph::NodeKey::Int(id.parse().unwrap()))
            .expect("user in graph");
        assert!(view.is_visible(id));
        let d = view.node(id).unwrap();
        let bio = &d.properties.iter().find(|(n, _)| &**n == "bio").unwrap().1;
        let got: i64 = match bio {
            PropValue::Text(t) => t.chars().count() as i64,
            PropValue::Null => -1,
            other => panic!("bio is {other:?}"),
        };
        assert_eq!(got, len.parse::<i64>().unwrap(), "bio length of user {id:?}");
        if got > 2000 {
            long += 1;
        }
    }
    assert!(long > 50, "only {long} TOASTed bios checked");
}
