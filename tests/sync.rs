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
    // A small compaction threshold: background compactions run (and replay what was applied
    // meanwhile) many times during the workload.
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--compaction-threshold", "300"]);
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
    // Every node's neighbours over the HTTP API, read at the last commit.
    let addr = r.addr();
    let expected = workload::expected(cluster, &db);
    replica::compare_over_http(&addr, &expected, last);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
    assert!(log.contains("initial copy done"), "{log}");
    assert!(
        log.matches("compacted overlays").count() >= 3,
        "too few compactions:\n{log}"
    );
    if std::env::var_os("GRAPHSYNC_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(expected.nodes.len() > 3000, "{}", expected.nodes.len());
    let lsn = assert_graph_equals(&data, &config, &expected);
    assert!(lsn >= last);

    // TOAST: bio values (stored out of line) are kept across updates that did not send them.
    let cfg = sync::config::MappingConfig::load(&config).unwrap();
    let view = sync::replicator::load(&data, cfg.mapping_hash())
        .unwrap()
        .unwrap()
        .0
        .view();
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

/// SIGKILL at 20 random moments while a writer runs, restarting each time: the final graph
/// equals SQL, and the slot's confirmed_flush_lsn never passes what the data directory holds
/// (the change log's last record, or the snapshot).
#[test]
fn crash_twenty_sigkills_lose_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let (cluster, db, dir, config) = setup("crash");
    let mut w = Workload::new(0xc4a5);
    cluster.psql(&db, &w.seed(2000));
    let data = dir.path().join("data");
    let slot = format!("gs_{db}");
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let s = w.script(20, None, None, None);
                cluster.psql(&db, &s);
            }
            w.txns
        })
    };
    let poller = {
        let (stop, db, data, slot, violations, polls) = (
            stop.clone(),
            db.clone(),
            data.clone(),
            slot.clone(),
            violations.clone(),
            polls.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // Confirmed first, the data directory second: what it holds durably only
                // moves forward (what the read sees may include records not yet fsynced, so
                // this is a necessary condition of confirmed <= durable). No snapshot yet
                // means the initial copy is running: nothing was confirmed by us.
                if let Some(confirmed) = replica::confirmed_flush(cluster, &db, &slot) {
                    if let Some(durable) = replica::log_position(&data) {
                        if confirmed > durable {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("confirmed {confirmed} > held on disk {durable}"));
                        }
                        polls.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut rng = fastrand::Rng::with_seed(0x9e3779b97f4a7c15);
    let mut logs = String::new();
    for _ in 0..20 {
        // Small compaction threshold: some kills land during background compactions.
        let r = replica::spawn(cluster, &db, &config, &data, &["--compaction-threshold", "200"]);
        // A random moment to kill at, not a synchronisation: anywhere from start-up through
        // initial copy to streaming and checkpointing.
        std::thread::sleep(Duration::from_millis(rng.u64(50..950)));
        logs.push_str(&r.kill());
    }
    stop.store(true, Ordering::SeqCst);
    let txns = writer.join().unwrap();
    poller.join().unwrap();
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let last = current_lsn(cluster, &db);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{} violations, e.g. {:?}", v.len(), &v[..v.len().min(5)]);
    // Each poll runs psql against a server the writer keeps busy: on a loaded 2-core machine
    // a few dozen in the whole run.
    let polled = polls.load(Ordering::SeqCst);
    assert!(polled >= 5, "the slot was hardly polled ({polled} times)");
    assert!(txns >= 20, "the writer ran {txns} transactions");
    eprintln!(
        "crash test: {txns} writer transactions, {} polls; across 20 killed runs: {} restores, {} initial copies, {} snapshots, {} torn records cut",
        polls.load(Ordering::SeqCst),
        logs.matches(" restored ").count(),
        logs.matches("initial copy done").count(),
        logs.matches("snapshot written").count(),
        logs.matches("cut a torn record").count()
    );
    assert!(logs.contains(" restored "), "no run ever restored:\n{logs}");
    let replayed = logs
        .lines()
        .filter_map(|l| {
            l.split("replayed_records=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .filter(|&n| n > 0)
        .count();
    assert!(replayed > 0, "no run replayed the change log:\n{logs}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// 1,000 transactions on an unmapped table: the slot's confirmed position passes them within
/// 30 s, so the server can recycle the WAL — both right after the initial copy (one
/// checkpoint) and after mapped changes (two checkpoints of different graphs: a copy of the
/// unchanged graph lets the fallback catch up).
#[test]
fn idle_slot_advances() {
    let (cluster, db, dir, config) = setup("idle");
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let slot = format!("gs_{db}");
    let mut w = Workload::new(0x1d1e);
    for round in 0..2 {
        if round == 1 {
            cluster.psql(&db, &w.script(20, None, None, None));
            r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        }
        let script: String = (0..1000)
            .map(|i| format!("INSERT INTO audit (note) VALUES ('r{round} n{i}');\n"))
            .collect();
        cluster.psql(&db, &script);
        let last = current_lsn(cluster, &db);
        let ok = pgtest::wait_for(Duration::from_secs(30), || {
            replica::confirmed_flush(cluster, &db, &slot).is_some_and(|c| c >= last)
        });
        assert!(
            ok,
            "round {round}: confirmed_flush_lsn {:?} did not pass {last} within 30 s; log:\n{}",
            replica::confirmed_flush(cluster, &db, &slot),
            r.log()
        );
    }
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// 40 single-row transactions 10 ms apart, to two replicas of one database: one that reads
/// at once applies them about one by one; one with `--apply-linger-ms 300` a few at a time (its
/// metrics count at most 10 applies, and a third of the other's at most). Both end equal to
/// SQL.
#[test]
fn a_trickle_is_applied_a_few_transactions_at_a_time() {
    let (cluster, db, dir, config) = setup("linger");
    let mut w = Workload::new(0x1199);
    cluster.psql(&db, &w.seed(20));
    let spawn = |name: &str, linger: &str| {
        let data = dir.path().join(name);
        // Each its own slot, so both stream the same transactions.
        let slot = format!("gs_{db}_{name}");
        let mut r = replica::spawn(
            cluster,
            &db,
            &config,
            &data,
            &["--apply-linger-ms", linger, "--slot", &slot],
        );
        r.wait_durable(current_lsn(cluster, &db), DEADLINE);
        r
    };
    let mut at_once = spawn("at_once", "0");
    let mut lingering = spawn("lingering", "300");
    let counts = |r: &mut replica::Replicator| -> (u64, u64) {
        let addr = r.addr();
        let value = |name: &str| replica::metric(&addr, name).unwrap_or_else(|| panic!("no {name}")) as u64;
        (
            value("graphsync_apply_seconds_count"),
            value("graphsync_commit_to_apply_seconds_count"),
        )
    };
    let before = [counts(&mut at_once), counts(&mut lingering)];
    let script: String = (0..40)
        .map(|i| {
            format!(
                "INSERT INTO users VALUES ({}, 1, 'u{i}', NULL);\nSELECT pg_sleep(0.01);\n",
                10_000 + i
            )
        })
        .collect();
    cluster.psql(&db, &script);
    let last = current_lsn(cluster, &db);
    let mut applies = Vec::new();
    for (r, before) in [&mut at_once, &mut lingering].into_iter().zip(before) {
        r.wait_durable(last, DEADLINE);
        let all = pgtest::wait_for(DEADLINE, || counts(r).1 - before.1 >= 40);
        let now = counts(r);
        assert!(all, "{:?} -> {now:?}; log:\n{}", before, r.log());
        applies.push(now.0 - before.0);
    }
    // Relative: a stall on a busy machine may merge a few of the first replica's too.
    assert!(
        applies[1] <= 10 && applies[1] * 3 <= applies[0],
        "applies of 40 transactions: {} lingering, {} reading at once",
        applies[1],
        applies[0]
    );
    for (r, data) in [
        (at_once, dir.path().join("at_once")),
        (lingering, dir.path().join("lingering")),
    ] {
        let (status, log) = r.stop();
        assert!(status.success(), "{log}");
        assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
    }
}

fn run_to_completion(cluster: &Cluster, db: &str, config: &std::path::Path, data: &std::path::Path, extra: &[&str]) {
    let mut r = replica::spawn(cluster, db, config, data, extra);
    r.wait_durable(current_lsn(cluster, db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
}

fn refused(cluster: &Cluster, db: &str, config: &std::path::Path, data: &std::path::Path) -> String {
    let r = replica::spawn(cluster, db, config, data, &[]);
    let (status, log) = r.wait(DEADLINE);
    assert!(!status.success(), "graphsync should have refused; log:\n{log}");
    log
}

/// A changed mapping is refused with the fix named, and rebuilt from source with --rebuild.
#[test]
fn mapping_change_refused_then_rebuilt() {
    let (cluster, db, dir, config) = setup("mapchange");
    let mut w = Workload::new(7);
    cluster.psql(&db, &w.seed(100));
    let data = dir.path().join("data");
    run_to_completion(cluster, &db, &config, &data, &[]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("properties = [\"title\"]", "properties = []")).unwrap();
    cluster.psql(&db, &w.script(50, None, None, None));
    let log = refused(cluster, &db, &config, &data);
    assert!(log.contains("mapping changed") && log.contains("--rebuild"), "{log}");
    run_to_completion(cluster, &db, &config, &data, &["--rebuild"]);
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// A dropped slot is reported with the fix, and rebuilt with --rebuild.
#[test]
fn dropped_slot_refused_then_rebuilt() {
    let (cluster, db, dir, config) = setup("dropped");
    let mut w = Workload::new(8);
    cluster.psql(&db, &w.seed(100));
    let data = dir.path().join("data");
    run_to_completion(cluster, &db, &config, &data, &[]);
    cluster.psql(&db, &format!("SELECT pg_drop_replication_slot('gs_{db}')"));
    cluster.psql(&db, &w.script(50, None, None, None));
    let log = refused(cluster, &db, &config, &data);
    assert!(log.contains("does not exist") && log.contains("--rebuild"), "{log}");
    // The config option does what --rebuild does.
    let text = std::fs::read_to_string(&config).unwrap();
    let pubname = format!("publication = \"gs_{db}\"");
    std::fs::write(&config, text.replace(&pubname, &format!("{pubname}\nrebuild = true"))).unwrap();
    run_to_completion(cluster, &db, &config, &data, &[]);
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A data directory older than what the slot confirmed is a gap: refused, never streamed over.
#[test]
fn restored_state_behind_the_slot_is_refused() {
    let (cluster, db, dir, config) = setup("gap");
    let mut w = Workload::new(9);
    cluster.psql(&db, &w.seed(50));
    let data = dir.path().join("data");
    run_to_completion(cluster, &db, &config, &data, &[]);
    let old = dir.path().join("old");
    copy_dir(&data, &old);
    // More changes, confirmed past the copy.
    for _ in 0..2 {
        cluster.psql(&db, &w.script(50, None, None, None));
        run_to_completion(cluster, &db, &config, &data, &[]);
    }
    let log = refused(cluster, &db, &config, &old);
    assert!(log.contains("confirmed") && log.contains("--rebuild"), "{log}");
}

/// Tables whose rows cannot be told apart are refused at start, naming the table and the
/// ALTER TABLE fix; so are unknown columns.
#[test]
fn tables_without_identity_or_columns_are_refused() {
    let (cluster, db, dir, config) = setup("noident");
    let data = dir.path().join("data");
    cluster.psql(&db, "ALTER TABLE follows DROP CONSTRAINT follows_pkey");
    let log = refused(cluster, &db, &config, &data);
    assert!(
        log.contains("public.follows") && log.contains("REPLICA IDENTITY FULL"),
        "{log}"
    );
    cluster.psql(&db, "ALTER TABLE follows ADD PRIMARY KEY (follower_id, followee_id)");
    cluster.psql(&db, "ALTER TABLE users REPLICA IDENTITY NOTHING");
    let log = refused(cluster, &db, &config, &data);
    assert!(
        log.contains("public.users") && log.contains("REPLICA IDENTITY NOTHING") && log.contains("ALTER TABLE"),
        "{log}"
    );
    cluster.psql(&db, "ALTER TABLE users REPLICA IDENTITY DEFAULT");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("properties = [\"title\"]", "properties = [\"headline\"]"),
    )
    .unwrap();
    let log = refused(cluster, &db, &config, &data);
    assert!(log.contains("public.posts") && log.contains("\"headline\""), "{log}");
}

/// A writer runs while the initial copy reads a 40,000-user / 80,000-follow graph: every write
/// lands exactly once (the copy's snapshot and the slot's start agree).
#[test]
fn initial_copy_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (cluster, db, dir, config) = setup("copyload");
    let mut w = Workload::new(0xc0b1);
    cluster.psql(&db, &w.seed_bulk(40_000));
    let data = dir.path().join("data");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let mut batches = 0;
            while !stop.load(Ordering::SeqCst) || batches < 3 {
                cluster.psql(&db, &w.script(20, None, None, None));
                batches += 1;
            }
            w.txns
        })
    };
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--binary"]);
    let copied = pgtest::wait_for(DEADLINE, || r.log().contains("initial copy done"));
    assert!(copied, "no initial copy; log:\n{}", r.log());
    stop.store(true, Ordering::SeqCst);
    let txns = writer.join().unwrap();
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    let copied_rows: u64 = log
        .lines()
        .find(|l| l.contains("initial copy done"))
        .and_then(|l| l.split("rows=").nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(copied_rows > 100_000, "copied {copied_rows} rows:\n{log}");
    assert!(txns >= 60, "{txns}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
}

/// The sample schema and mapping shipped in fixtures/ (used by docker-compose.yml) replicate.
#[test]
fn sample_fixture_replicates() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("fixture");
    cluster.psql(&db, include_str!("../fixtures/schemas/social.sql"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("social.toml");
    let text = include_str!("../fixtures/configs/social.toml").replace("\"graphsync\"", &format!("\"gs_{db}\""));
    std::fs::write(&config, text).unwrap();
    let mut r = replica::spawn(cluster, &db, &config, &dir.path().join("data"), &[]);
    cluster.psql(
        &db,
        "UPDATE users SET status = 'inactive' WHERE id = 1; DELETE FROM follows WHERE follower_id = 2;",
    );
    let last = current_lsn(cluster, &db);
    let addr = r.addr();
    let (code, j) = replica::http_json(&addr, &format!("/v1/nodes/User/1?min_lsn={last}"));
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["filters"]["status"], "inactive", "{j}");
    let (_, s) = replica::http_json(&addr, "/v1/status");
    assert_eq!(s["nodes_per_label"]["User"], 1000, "{s}");
    assert_eq!(s["nodes_per_label"]["Post"], 500, "{s}");
    let (_, j) = replica::http_json(&addr, "/v1/neighbors?node=User:2");
    assert_eq!(j["neighbors"].as_array().unwrap().len(), 0, "{j}");
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}

/// With a zero spill threshold every streamed change goes through a temporary file: large
/// transactions (with a rolled-back savepoint) still land exactly.
#[test]
fn streamed_transactions_spill_to_disk() {
    let (cluster, db, dir, config) = setup("spill");
    let mut w = Workload::new(0x5911);
    cluster.psql(&db, &w.seed(100));
    let data = dir.path().join("data");
    // Also with values in binary form: spilled tuples keep their column kinds.
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--spill-threshold-mb", "0", "--binary"]);
    // Streaming first, so both big transactions arrive through the stream.
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    cluster.psql(&db, &w.script(40, None, Some(5), Some(7)));
    cluster.psql(&db, &w.script(40, None, Some(30), None));
    let last = current_lsn(cluster, &db);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.matches("spilled to disk").count() >= 2,
        "no transaction was spilled:\n{log}"
    );
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
    // Spill files are unnamed temporary files: nothing is left in the directory.
    let left = std::fs::read_dir(data.join("spill")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

/// Partitioned tables: copied through their root, changes published as the root's (also
/// rows moving between partitions), the graph equals SQL.
#[test]
fn partitioned_tables_replicate() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("parts");
    cluster.psql(
        &db,
        "CREATE TABLE users (id bigint, org_id int, name text, bio text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
         CREATE TABLE users_lo PARTITION OF users FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE users_hi PARTITION OF users FOR VALUES FROM (1000) TO (MAXVALUE);
         CREATE TABLE follows (follower_id bigint, followee_id bigint, weight float8, PRIMARY KEY (follower_id, followee_id))
           PARTITION BY HASH (follower_id);
         CREATE TABLE follows_0 PARTITION OF follows FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE follows_1 PARTITION OF follows FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE posts (id bigint PRIMARY KEY, author_id bigint, title text);
         INSERT INTO users SELECT g, g % 3, 'u' || g, NULL FROM generate_series(990, 1010) g;
         INSERT INTO follows SELECT g, g + 1, 1 FROM generate_series(990, 1009) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    cluster.psql(
        &db,
        "UPDATE users SET id = 2000 WHERE id = 995;
         UPDATE users SET id = 5 WHERE id = 1005;
         DELETE FROM users WHERE id = 1008;
         INSERT INTO users VALUES (3000, 1, 'x', NULL);
         INSERT INTO follows VALUES (3000, 990, 2), (5, 3000, 1);
         UPDATE follows SET follower_id = 2000 WHERE follower_id = 995;
         DELETE FROM follows WHERE follower_id = 1000;",
    );
    let last = current_lsn(cluster, &db);
    replica::compare_over_http(&r.addr(), &workload::expected(cluster, &db), last);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &workload::expected(cluster, &db));
    // A publication of the user's that names partitions' changes by the partitions: refused.
    cluster.psql(&db, "CREATE PUBLICATION leafs FOR TABLE users, follows, posts");
    let r = replica::spawn(cluster, &db, &config, &data, &["--publication", "leafs"]);
    let (status, log) = r.wait(DEADLINE);
    assert!(!status.success());
    assert!(log.contains("publish_via_partition_root = true"), "{log}");
}

/// Composite keys (text + int), an edge table with a surrogate key (edges found through the row
/// index) whose endpoints move and whose key changes, numeric weights, text tenants.
#[test]
fn composite_keys_and_surrogate_edge_keys() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("composite");
    cluster.psql(
        &db,
        "CREATE TABLE accounts (region text, num int, org text, PRIMARY KEY (region, num));
         CREATE TABLE transfers (id bigint PRIMARY KEY, from_region text, from_num int, to_region text, to_num int, amount numeric);
         INSERT INTO accounts SELECT r, g, 'org-' || (g % 2) FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 20) g;
         INSERT INTO transfers SELECT g, 'eu', g % 20 + 1, 'us', (g * 3) % 20 + 1, g / 10.0 FROM generate_series(1, 40) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[source]
slot = "gs_{db}"
publication = "gs_{db}"

[[nodes]]
table = "public.accounts"
key = ["region", "num"]
label = "Account"
tenant = "org"

[[edges]]
table = "public.transfers"
label = "SENT"
source = {{ column = ["from_region", "from_num"], node = "Account" }}
target = {{ column = ["to_region", "to_num"], node = "Account" }}
weight = "amount"
"#
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    r.wait_durable(current_lsn(cluster, &db), DEADLINE);
    cluster.psql(
        &db,
        "UPDATE transfers SET to_num = 7 WHERE id BETWEEN 1 AND 5;
         UPDATE transfers SET from_region = 'us' WHERE id = 6;
         UPDATE transfers SET id = 1000 WHERE id = 7;
         UPDATE transfers SET amount = 99 WHERE id = 8;
         DELETE FROM transfers WHERE id = 9;
         UPDATE accounts SET num = 100 WHERE region = 'eu' AND num = 3;
         UPDATE accounts SET org = 'org-9' WHERE region = 'us' AND num = 4;
         DELETE FROM accounts WHERE region = 'us' AND num = 5;
         INSERT INTO transfers VALUES (2000, 'eu', 100, 'eu', 100, 1);",
    );
    let last = current_lsn(cluster, &db);
    let mut e = replica::Expected::default();
    for line in cluster.psql(&db, "SELECT region, num, org FROM accounts").lines() {
        let f: Vec<&str> = line.split('|').collect();
        e.nodes
            .insert(format!("Account:{},{}", f[0], f[1]), Some(f[2].to_string()));
    }
    for line in cluster
        .psql(&db, "SELECT from_region, from_num, to_region, to_num FROM transfers")
        .lines()
    {
        let f: Vec<&str> = line.split('|').collect();
        e.edges.push((
            format!("Account:{},{}", f[0], f[1]),
            "SENT".into(),
            format!("Account:{},{}", f[2], f[3]),
        ));
    }
    let addr = r.addr();
    replica::compare_over_http(&addr, &e, last);
    let (code, j) = replica::http_json(
        &addr,
        "/v1/shortest-path?from=Account:eu,100&to=Account:eu,100&weighted=true",
    );
    assert_eq!(code, 200, "{j}");
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    assert_graph_equals(&data, &config, &e);
    // The surrogate-keyed edge table needs the row index; it was logged and restored.
    let cfg = sync::config::MappingConfig::load(&config).unwrap();
    let (_, index, _) = sync::replicator::load(&data, cfg.mapping_hash()).unwrap().unwrap();
    let rows: usize = cluster
        .psql(&db, "SELECT count(*) FROM transfers")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(index.len(), rows, "every transfer row indexed");
}

/// A hub-heavy load from a real load generator: pgbench, 4 clients for a few seconds, each
/// transaction following three Zipf-distributed users (a few users get most follows), removing
/// one follow of a Zipf-distributed user and renaming a user, while graphsync streams with a
/// small compaction threshold (compactions replay onto fresh bases under load). Then every
/// node's neighbours over HTTP at the last commit, and the checkpoint, equal SQL — the hubs'
/// thousands of followers included.
#[test]
fn hub_heavy_pgbench_load_equals_sql() {
    let Some(pgbench) = pgtest::tool("pgbench") else {
        panic!("pgbench not found (apt-get install postgresql)");
    };
    let (cluster, db, dir, config) = setup("hubload");
    const USERS: u64 = 3000;
    cluster.psql(
        &db,
        &format!(
            "INSERT INTO users SELECT g, g % 7, 'u' || g FROM generate_series(1, {USERS}) g;
             CREATE INDEX follows_followee ON follows (followee_id);"
        ),
    );
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &["--compaction-threshold", "5000"]);
    let script = dir.path().join("hub.sql");
    let mut s = String::new();
    for i in 1..=4 {
        s.push_str(&format!(
            "\\set a{i} random(1, {USERS})\n\\set b{i} random_zipfian(1, {USERS}, 1.3)\n"
        ));
    }
    s.push_str("BEGIN;\n");
    for i in 1..=3 {
        s.push_str(&format!(
            "INSERT INTO follows VALUES (:a{i}, :b{i}, 1.0) ON CONFLICT DO NOTHING;\n"
        ));
    }
    s.push_str(
        "DELETE FROM follows WHERE (follower_id, followee_id) IN \
         (SELECT follower_id, followee_id FROM follows WHERE followee_id = :b4 LIMIT 1 FOR UPDATE SKIP LOCKED);\n\
         UPDATE users SET name = 'n' || :a4 WHERE id = :a4;\nEND;\n",
    );
    std::fs::write(&script, s).unwrap();
    let out = std::process::Command::new(&pgbench)
        .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6"])
        .args([
            "-h",
            cluster.host(),
            "-U",
            "postgres",
            "-p",
            &cluster.port().to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(&db)
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = current_lsn(cluster, &db);
    let top: i64 = cluster
        .psql(&db, "SELECT count(*) FROM follows WHERE followee_id = 1")
        .trim()
        .parse()
        .unwrap();
    let total: i64 = cluster
        .psql(&db, "SELECT count(*) FROM follows")
        .trim()
        .parse()
        .unwrap();
    // At least 20 times the mean in-degree (a share of all follows would not do: user 1 can
    // have at most USERS followers, while the total grows with the machine's speed).
    assert!(
        top > 500 && top > 20 * total / USERS as i64,
        "user 1 is not a hub: {top} of {total} follows among {USERS} users"
    );
    let addr = r.addr();
    let expected = workload::expected(cluster, &db);
    replica::compare_over_http(&addr, &expected, last);
    r.wait_durable(last, DEADLINE);
    let (status, log) = r.stop();
    assert!(status.success(), "graphsync exited with {status}; log:\n{log}");
    assert!(log.contains("compacted overlays"), "no compaction ran:\n{log}");
    assert_graph_equals(&data, &config, &expected);
}
