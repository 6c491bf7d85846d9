//! Schema changes while replicating: a mapped column renamed mid-stream pauses replication
//! before the transaction that no longer fits (`mapping_broken` on /health, naming the column),
//! while the API keeps answering every poll from the graph as applied; a reload that does not fit
//! the table is refused and changes nothing; the fixed mapping, reloaded by SIGHUP, applies
//! online — nothing copied (log and `graphsync_copies_total`) — and the graph equals SQL, also
//! after a restart. Changes to the graph itself (a table added or no longer mapped) rebuild in
//! the background while the old graph answers every poll, then swap.

mod common;

use common::replica::{
    self, compare_over_http, current_lsn, http_json, lsn_poller, poller, wait_health, wait_rebuilds,
};
use common::workload::{self, writer};
use pgtest::Cluster;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Metric `name` of the replica at `addr` (it must have it).
fn metric(addr: &str, name: &str) -> f64 {
    replica::metric(addr, name).unwrap_or_else(|| panic!("no metric {name} at {addr}"))
}

#[test]
fn renamed_column_pauses_with_the_api_up_and_a_compatible_reload_continues_without_a_copy() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_rename");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 200) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 200) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    assert_eq!(
        metric(&addr, "graphsync_copies_total"),
        3.0,
        "users, posts, follows copied once"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1000));
    let polls = poller(addr.clone(), stop.clone());
    let w = writer(cluster, db.clone(), stop.clone(), next.clone());
    // Some transactions before the rename, then the rename while the writer goes on.
    let target = next.load(Ordering::SeqCst) + 20;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.psql(&db, "ALTER TABLE users RENAME COLUMN name TO full_name");
    let h = wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    let err = h["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("public.users") && err.contains("\"name\"") && err.contains("full_name"),
        "the error names the table, the column and what it has now: {err}"
    );
    assert_eq!(metric(&addr, "graphsync_mapping_broken"), 1.0);
    // Nothing after the pause is applied or confirmed: the applied position stays put.
    let paused_at = h["applied_lsn"].as_str().unwrap().to_string();

    // A fix that does not fit the table is refused (checked against the catalog); still paused.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "properties = [\"name\", \"bio\"]",
            "properties = [{ column = \"fullname\", name = \"name\" }, \"bio\"]",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(["reload", "--listen", &addr])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "refused: {said}");
    assert!(said.contains("refused") && said.contains("\"fullname\""), "{said}");
    let h = wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(5));
    assert_eq!(h["applied_lsn"].as_str().unwrap(), paused_at);

    // The compatible fix: read the renamed column under the graph's name; SIGHUP.
    std::fs::write(
        &config,
        text.replace(
            "properties = [\"name\", \"bio\"]",
            "properties = [{ column = \"full_name\", name = \"name\" }, \"bio\"]",
        ),
    )
    .unwrap();
    r.signal(libc::SIGHUP);
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    assert!(r.log().contains("applied online, nothing copied"), "log:\n{}", r.log());
    // Let the writer run on the new mapping, then stop it and catch up.
    let target = next.load(Ordering::SeqCst) + 20;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let (polled, failed) = polls.join().unwrap();
    assert!(polled > 10, "the API was polled ({polled})");
    assert!(
        failed.is_empty(),
        "{} of {polled} polls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        metric(&addr, "graphsync_copies_total"),
        3.0,
        "nothing copied by the reload"
    );
    assert_eq!(metric(&addr, "graphsync_mapping_reloads_total"), 1.0);
    assert_eq!(metric(&addr, "graphsync_mapping_broken"), 0.0);

    let lsn = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    compare_over_http(&addr, &expected, lsn);
    // The property keeps its name and follows the renamed column, before and after the rename.
    for id in [5, 1005, next.load(Ordering::SeqCst) - 1] {
        let sql = cluster.psql(&db, &format!("SELECT full_name FROM users WHERE id = {id}"));
        let (code, j) = http_json(&addr, &format!("/v1/nodes/User/{id}?min_lsn={lsn}"));
        assert_eq!(code, 200, "{j}");
        assert_eq!(j["properties"]["name"].as_str(), Some(sql.trim()), "User:{id}: {j}");
    }

    // A restart with the fixed mapping restores (same graph shape): no copy either.
    let (status, _) = r.stop();
    assert!(status.success());
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    assert_eq!(metric(&addr, "graphsync_copies_total"), 0.0, "restored, not copied");
    compare_over_http(&addr, &expected, lsn);
    r.stop();
}

#[test]
fn graph_changes_rebuild_in_the_background_while_the_old_graph_answers() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_rebuild");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "CREATE TABLE likes (user_id bigint, post_id bigint, PRIMARY KEY (user_id, post_id)); \
         INSERT INTO users SELECT i, i % 3, 'user ' || i, 'bio ' || i FROM generate_series(1, 300) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 300) i; \
         INSERT INTO posts SELECT i, i % 300 + 1, 'post ' || i FROM generate_series(1, 100) i; \
         INSERT INTO likes SELECT i, i % 100 + 1 FROM generate_series(1, 300) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));

    let stop = Arc::new(AtomicBool::new(false));
    let polls = lsn_poller(addr.clone(), stop.clone());
    // The writer parks between transactions when asked, so SQL can be compared at one point.
    let pause = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    let w = {
        let (db, stop, pause, parked) = (db.clone(), stop.clone(), pause.clone(), parked.clone());
        std::thread::spawn(move || {
            let mut id = 1000;
            while !stop.load(Ordering::SeqCst) {
                parked.store(pause.load(Ordering::SeqCst), Ordering::SeqCst);
                if pause.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                    continue;
                }
                id += 1;
                cluster.psql(
                    &db,
                    &format!(
                        "BEGIN; INSERT INTO users VALUES ({id}, {org}, 'user {id}', NULL); \
                         INSERT INTO follows VALUES ({id}, 1, 1.0); \
                         INSERT INTO likes VALUES ({id}, {post}); \
                         DELETE FROM likes WHERE user_id = {old}; COMMIT;",
                        org = id % 3,
                        post = id % 100 + 1,
                        old = id % 300 + 1
                    ),
                );
            }
        })
    };

    // 1. An edge table added to the mapping: rebuilt in the background, swapped in.
    let text = std::fs::read_to_string(&config).unwrap();
    let likes = "\n[[edges]]\ntable = \"public.likes\"\nlabel = \"LIKES\"\nsource = { column = \"user_id\", node = \"User\" }\ntarget = { column = \"post_id\", node = \"Post\" }\n";
    std::fs::write(&config, format!("{text}{likes}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(["reload", "--listen", &addr])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("rebuilding"), "{said}");
    assert!(said.contains("public.likes"), "{said}");
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    // Right after the swap, with the writer parked: the graph equals SQL, likes included.
    pause.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !parked.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the writer did not park");
        std::thread::yield_now();
    }
    let lsn = current_lsn(cluster, &db);
    let mut expected = workload::expected(cluster, &db);
    for line in cluster.psql(&db, "SELECT user_id, post_id FROM likes").lines() {
        let (u, p) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{u}"), "LIKES".into(), format!("Post:{p}")));
    }
    compare_over_http(&addr, &expected, lsn);
    pause.store(false, Ordering::SeqCst);
    assert_eq!(
        metric(&addr, "graphsync_copies_total"),
        3.0 + 1.0,
        "likes alone was copied"
    );
    // 300 users + 299 follows + 100 posts at first, then likes (300 and the writer's).
    let rows = metric(&addr, "graphsync_copied_rows_total");
    assert!((999.0..3000.0).contains(&rows), "rows copied: {rows}");

    // 2. A property renamed in the graph and one removed: rewritten from what the graph
    // holds, nothing copied.
    let with_likes = format!("{text}{likes}");
    let renamed = with_likes.replace(
        "properties = [\"name\", \"bio\"]",
        "properties = [{ column = \"name\", name = \"display_name\" }]",
    );
    std::fs::write(&config, &renamed).unwrap();
    r.signal(libc::SIGHUP);
    wait_rebuilds(&mut r, &addr, 2, Duration::from_secs(120));
    assert_eq!(
        metric(&addr, "graphsync_copies_total"),
        4.0,
        "nothing copied for a rename"
    );
    let (_, j) = http_json(&addr, "/v1/nodes/User/5");
    assert_eq!(j["properties"], serde_json::json!({"display_name": "user 5"}), "{j}");
    // 3. A property newly mapped: the users table's node rows are copied again, alone.
    let added = with_likes.replace(
        "properties = [\"name\", \"bio\"]",
        "properties = [{ column = \"name\", name = \"display_name\" }, \"bio\"]",
    );
    std::fs::write(&config, &added).unwrap();
    r.signal(libc::SIGHUP);
    wait_rebuilds(&mut r, &addr, 3, Duration::from_secs(120));
    assert_eq!(metric(&addr, "graphsync_copies_total"), 5.0, "users alone was copied");
    let (_, j) = http_json(&addr, "/v1/nodes/User/5");
    assert_eq!(
        j["properties"],
        serde_json::json!({"display_name": "user 5", "bio": "bio 5"}),
        "{j}"
    );

    // 4. A table no longer mapped (follows): its edges go, by a rebuild too.
    let without_follows = added.replace(
        "[[edges]]\ntable = \"public.follows\"\nlabel = \"FOLLOWS\"\nsource = { column = \"follower_id\", node = \"User\" }\ntarget = { column = \"followee_id\", node = \"User\" }\nweight = \"weight\"\n",
        "",
    );
    assert!(!without_follows.contains("FOLLOWS"), "{without_follows}");
    std::fs::write(&config, &without_follows).unwrap();
    r.signal(libc::SIGHUP);
    wait_rebuilds(&mut r, &addr, 4, Duration::from_secs(120));

    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let (polled, failed) = polls.join().unwrap();
    assert!(polled > 10, "the API was polled ({polled})");
    assert!(
        failed.is_empty(),
        "{} of {polled} polls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let lsn = current_lsn(cluster, &db);
    let mut expected = workload::expected(cluster, &db);
    expected.edges.retain(|(_, l, _)| l != "FOLLOWS");
    for line in cluster.psql(&db, "SELECT user_id, post_id FROM likes").lines() {
        let (u, p) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{u}"), "LIKES".into(), format!("Post:{p}")));
    }
    compare_over_http(&addr, &expected, lsn);
    // The old generations' slots are gone: only the one in force holds WAL.
    let slots = cluster.psql(
        &db,
        &format!("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'gs_{db}%' ORDER BY 1"),
    );
    assert_eq!(slots.trim(), format!("gs_{db}_g4"), "slots left: {slots}");
    // Adding likes copied likes only; dropping follows from the mapping copied the rest.
    // Initial copy 3, likes 1, the rename 0, bio 1 (users), follows removed 3 (a whole rebuild).
    assert_eq!(metric(&addr, "graphsync_copies_total"), 3.0 + 1.0 + 0.0 + 1.0 + 3.0);
    assert!(
        r.log().contains("copying only what it newly reads"),
        "log:\n{}",
        r.log()
    );

    // A restart resumes the generation in force (no copy).
    let (status, _) = r.stop();
    assert!(status.success());
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    assert_eq!(metric(&addr, "graphsync_copies_total"), 0.0, "restored, not copied");
    compare_over_http(&addr, &expected, lsn);
    r.stop();
}

#[test]
fn a_key_type_change_rebuilds_in_the_background_while_old_answers_keep_coming() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_keytype");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 200) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 200) i; \
         INSERT INTO posts SELECT i, i, 'post ' || i FROM generate_series(1, 50) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let polls = lsn_poller(addr.clone(), stop.clone());
    let next = Arc::new(AtomicU64::new(1000));
    let w = {
        let (db, stop, next) = (db.clone(), stop.clone(), next.clone());
        // Quoted ids: valid for bigint and text columns alike.
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                cluster.psql(
                    &db,
                    &format!(
                        "BEGIN; INSERT INTO users VALUES ('{id}', {org}, 'user {id}', NULL); \
                         INSERT INTO follows VALUES ('{id}', '1', 1.0); COMMIT;",
                        org = id % 3
                    ),
                );
            }
        })
    };
    let target = next.load(Ordering::SeqCst) + 10;
    while next.load(Ordering::SeqCst) < target {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every key and endpoint column becomes text, in one transaction (locking the tables in
    // the writer's order).
    cluster.psql(
        &db,
        "BEGIN; ALTER TABLE users ALTER COLUMN id TYPE text; \
         ALTER TABLE follows ALTER COLUMN follower_id TYPE text, ALTER COLUMN followee_id TYPE text; \
         ALTER TABLE posts ALTER COLUMN author_id TYPE text; COMMIT;",
    );
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    assert!(
        r.log().contains("changed type from integer to text"),
        "log:\n{}",
        r.log()
    );
    let target = next.load(Ordering::SeqCst) + 10;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let (polled, failed) = polls.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {polled} polls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    let lsn = current_lsn(cluster, &db);
    compare_over_http(&addr, &workload::expected(cluster, &db), lsn);
    r.stop();
}

#[test]
fn a_restart_while_the_mapping_is_broken_serves_the_graph_and_waits_for_a_fix() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_restart");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 100) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 100) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(
        &db,
        "ALTER TABLE users RENAME COLUMN name TO full_name; INSERT INTO users VALUES (500, 1, 'x', NULL);",
    );
    wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    let (status, _) = r.stop();
    assert!(status.success());
    // Restarted with the same (broken) mapping: the graph is served, replication waits.
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    let h = wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    assert!(h["last_error"].as_str().unwrap_or_default().contains("\"name\""), "{h}");
    let (code, j) = http_json(&addr, "/v1/nodes/User/7");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["properties"]["name"], "user 7");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "properties = [\"name\", \"bio\"]",
            "properties = [{ column = \"full_name\", name = \"name\" }, \"bio\"]",
        ),
    )
    .unwrap();
    r.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, h) = http_json(&addr, "/health");
        if h["status"] == "streaming" && h["rebuild"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never streaming again: {h}; log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let lsn = current_lsn(cluster, &db);
    compare_over_http(&addr, &workload::expected(cluster, &db), lsn);
    let (code, j) = http_json(&addr, &format!("/v1/nodes/User/500?min_lsn={lsn}"));
    assert_eq!((code, j["properties"]["name"].as_str()), (200, Some("x")), "{j}");
    r.stop();
}

#[test]
fn a_renamed_table_pauses_and_its_new_name_in_the_mapping_rebuilds() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_tablerename");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 100) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 100) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    // Renamed, then written to under the new name: without the check these rows would be
    // ignored as an unmapped table's.
    cluster.psql(
        &db,
        "ALTER TABLE follows RENAME TO follows2; INSERT INTO follows2 VALUES (5, 7, 1.0);",
    );
    let h = wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    let err = h["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("public.follows") && err.contains("public.follows2"), "{h}");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("table = \"public.follows\"", "table = \"public.follows2\""),
    )
    .unwrap();
    r.signal(libc::SIGHUP);
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(&db, "INSERT INTO follows2 VALUES (6, 7, 1.0);");
    let lsn = current_lsn(cluster, &db);
    let mut expected = workload::expected_with(cluster, &db, "follows2");
    expected.edges.sort();
    compare_over_http(&addr, &expected, lsn);
    r.stop();
}

#[test]
fn a_dropped_table_pauses_and_removing_it_from_the_mapping_rebuilds_without_it() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_droptable");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 100) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 100) i; \
         INSERT INTO posts SELECT i, i, 'post ' || i FROM generate_series(1, 30) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(&db, "DROP TABLE posts;");
    // Nothing comes through replication for a DROP TABLE: the catalog check notices.
    let h = wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    assert!(
        h["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("public.posts (dropped)"),
        "{h}"
    );
    let (code, _) = http_json(&addr, "/v1/nodes/User/3");
    assert_eq!(code, 200, "the API answers while paused");
    let text = std::fs::read_to_string(&config).unwrap();
    let without: String = text
        .split("\n[[")
        .filter(|block| !block.contains("public.posts"))
        .collect::<Vec<_>>()
        .join("\n[[");
    assert!(
        !without.contains("posts") && without.contains("public.follows"),
        "{without}"
    );
    std::fs::write(&config, without).unwrap();
    r.signal(libc::SIGHUP);
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(&db, "INSERT INTO users VALUES (500, 1, 'x', NULL);");
    let lsn = current_lsn(cluster, &db);
    let mut expected = replica::Expected::default();
    for line in cluster.psql(&db, "SELECT id, org_id FROM users").lines() {
        let (id, org) = line.split_once('|').unwrap();
        expected
            .nodes
            .insert(format!("User:{id}"), (!org.is_empty()).then(|| org.to_string()));
    }
    for line in cluster
        .psql(&db, "SELECT follower_id, followee_id FROM follows")
        .lines()
    {
        let (a, b) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{a}"), "FOLLOWS".into(), format!("User:{b}")));
    }
    compare_over_http(&addr, &expected, lsn);
    let (code, _) = http_json(&addr, "/v1/nodes/Post/3");
    assert_ne!(code, 200, "the dropped table's nodes are gone");
    r.stop();
}

/// A migration sequence as a team would run it, under a writer and a poller: a column renamed
/// (online), a table added (copied alone), a property renamed in the graph (rewritten), an edge
/// weight column renamed (online), a table dropped from the mapping and then from the
/// database (rebuilt). Every poll answers; the graph equals SQL at the end.
#[test]
fn a_migration_sequence_keeps_answering_and_ends_equal_to_sql() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_sequence");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "CREATE TABLE likes (user_id bigint, post_id bigint, PRIMARY KEY (user_id, post_id)); \
         INSERT INTO users SELECT i, i % 3, 'user ' || i, 'bio ' || i FROM generate_series(1, 200) i; \
         INSERT INTO follows SELECT i, 1, 1.0 FROM generate_series(2, 200) i; \
         INSERT INTO posts SELECT i, i % 200 + 1, 'post ' || i FROM generate_series(1, 50) i; \
         INSERT INTO likes SELECT i, i % 50 + 1 FROM generate_series(1, 200) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let polls = lsn_poller(addr.clone(), stop.clone());
    // Column-agnostic writes (positional inserts, deletes by ctid), parked around DDL.
    let pause = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let w = {
        let (db, stop, pause, parked, commits) =
            (db.clone(), stop.clone(), pause.clone(), parked.clone(), commits.clone());
        std::thread::spawn(move || {
            let mut id = 1000;
            while !stop.load(Ordering::SeqCst) {
                parked.store(pause.load(Ordering::SeqCst), Ordering::SeqCst);
                if pause.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                    continue;
                }
                id += 1;
                cluster.psql(
                    &db,
                    &format!(
                        "BEGIN; INSERT INTO users VALUES ({id}, {org}, 'user {id}', 'bio {id}'); \
                         INSERT INTO follows VALUES ({id}, {to}, 1.0); \
                         INSERT INTO likes VALUES ({id}, {post}) ON CONFLICT DO NOTHING; \
                         DELETE FROM follows WHERE ctid IN (SELECT ctid FROM follows LIMIT 1); COMMIT;",
                        org = id % 3,
                        to = id % 200 + 1,
                        post = id % 50 + 1
                    ),
                );
                commits.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let park = |on: bool| {
        pause.store(on, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while on && !parked.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the writer did not park");
            std::thread::yield_now();
        }
    };
    let reload = |r: &mut replica::Replicator, text: &str| {
        std::fs::write(&config, text).unwrap();
        r.signal(libc::SIGHUP);
    };
    let mut text = std::fs::read_to_string(&config).unwrap();

    // 1. A mapped column renamed: paused, then the alias applies online.
    cluster.psql(&db, "ALTER TABLE users RENAME COLUMN name TO full_name;");
    wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    text = text.replace(
        "properties = [\"name\", \"bio\"]",
        "properties = [{ column = \"full_name\", name = \"name\" }, \"bio\"]",
    );
    reload(&mut r, &text);
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    // 2. A table added: copied alone.
    text.push_str("\n[[edges]]\ntable = \"public.likes\"\nlabel = \"LIKES\"\nsource = { column = \"user_id\", node = \"User\" }\ntarget = { column = \"post_id\", node = \"Post\" }\n");
    reload(&mut r, &text);
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    // 3. A property renamed in the graph: rewritten, nothing copied.
    text = text.replace(
        "{ column = \"full_name\", name = \"name\" }",
        "{ column = \"full_name\", name = \"display_name\" }",
    );
    reload(&mut r, &text);
    wait_rebuilds(&mut r, &addr, 2, Duration::from_secs(120));
    // 4. The weight column renamed: online.
    park(true);
    cluster.psql(&db, "ALTER TABLE follows RENAME COLUMN weight TO w;");
    park(false);
    wait_health(&mut r, &addr, "mapping_broken", Duration::from_secs(60));
    text = text.replace("weight = \"weight\"", "weight = \"w\"");
    reload(&mut r, &text);
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    // 5. Posts leave the mapping (and its edges), then the database.
    let without: String = text
        .split("\n[[")
        .filter(|block| !block.contains("public.posts") && !block.contains("public.likes"))
        .collect::<Vec<_>>()
        .join("\n[[");
    reload(&mut r, &without);
    wait_rebuilds(&mut r, &addr, 3, Duration::from_secs(120));
    park(true);
    cluster.psql(&db, "DROP TABLE posts;");
    park(false);

    // A few more transactions after the last change, then stop.
    let target = commits.load(Ordering::SeqCst) + 5;
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits.load(Ordering::SeqCst) < target {
        assert!(Instant::now() < deadline, "the writer is stuck");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let (polled, failed) = polls.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {polled} polls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    let lsn = current_lsn(cluster, &db);
    let mut expected = replica::Expected::default();
    for line in cluster.psql(&db, "SELECT id, org_id FROM users").lines() {
        let (id, org) = line.split_once('|').unwrap();
        expected
            .nodes
            .insert(format!("User:{id}"), (!org.is_empty()).then(|| org.to_string()));
    }
    for line in cluster
        .psql(&db, "SELECT follower_id, followee_id FROM follows")
        .lines()
    {
        let (a, b) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{a}"), "FOLLOWS".into(), format!("User:{b}")));
    }
    compare_over_http(&addr, &expected, lsn);
    let (_, j) = http_json(&addr, &format!("/v1/nodes/User/1001?min_lsn={lsn}"));
    assert_eq!(
        j["properties"],
        serde_json::json!({"display_name": "user 1001", "bio": "bio 1001"}),
        "{j}"
    );
    r.stop();
}

#[test]
fn a_replica_identity_change_rebuilds_so_deletes_still_find_their_edges() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_identity");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(
        &db,
        "CREATE TABLE likes (user_id bigint, post_id bigint, PRIMARY KEY (user_id, post_id)); \
         INSERT INTO users SELECT i, i % 3, 'user ' || i, NULL FROM generate_series(1, 100) i; \
         INSERT INTO posts SELECT i, i, 'post ' || i FROM generate_series(1, 20) i; \
         INSERT INTO likes SELECT i, i % 20 + 1 FROM generate_series(1, 100) i; \
         INSERT INTO follows SELECT i, i % 50 + 1, 1.5 FROM generate_series(1, 100) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    // A label of its own shared by two tables: its rows are found through the row index.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[edges]]\ntable = \"public.likes\"\nlabel = \"LIKES\"\nsource = { column = \"user_id\", node = \"User\" }\ntarget = { column = \"post_id\", node = \"Post\" }\n");
    text.push_str("\n[[edges]]\ntable = \"public.follows\"\nlabel = \"LIKES\"\nsource = { column = \"follower_id\", node = \"User\" }\ntarget = { column = \"followee_id\", node = \"User\" }\n");
    std::fs::write(&config, &text).unwrap();
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(
        &db,
        "ALTER TABLE follows REPLICA IDENTITY FULL; DELETE FROM follows WHERE follower_id <= 10;",
    );
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    assert!(
        r.log().contains("replica identity the graph finds"),
        "log:\n{}",
        r.log()
    );
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(
        &db,
        "DELETE FROM follows WHERE follower_id BETWEEN 11 AND 20; INSERT INTO follows VALUES (1, 2, 3.0);",
    );
    let lsn = current_lsn(cluster, &db);
    let mut expected = workload::expected(cluster, &db);
    for line in cluster.psql(&db, "SELECT user_id, post_id FROM likes").lines() {
        let (u, p) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{u}"), "LIKES".into(), format!("Post:{p}")));
    }
    for line in cluster
        .psql(&db, "SELECT follower_id, followee_id FROM follows")
        .lines()
    {
        let (a, b) = line.split_once('|').unwrap();
        expected
            .edges
            .push((format!("User:{a}"), "LIKES".into(), format!("User:{b}")));
    }
    compare_over_http(&addr, &expected, lsn);
    r.stop();
}

#[test]
fn a_partition_attached_rebuilds_so_its_rows_arrive() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("schema_partition");
    cluster.psql(
        &db,
        "CREATE TABLE events (id bigint, k int, name text, PRIMARY KEY (id, k)) PARTITION BY LIST (k); \
         CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1); \
         INSERT INTO events SELECT i, 1, 'e' || i FROM generate_series(1, 50) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("events.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nslot = \"gs_{db}\"\npublication = \"gs_{db}\"\n\n[[nodes]]\ntable = \"public.events\"\nkey = [\"id\", \"k\"]\nlabel = \"Event\"\nproperties = [\"name\"]\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    let addr = r.addr();
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    // Rows written to a table, then the table attached: nothing of them comes through
    // replication.
    cluster.psql(
        &db,
        "CREATE TABLE events_2 (id bigint, k int, name text, PRIMARY KEY (id, k)); \
         INSERT INTO events_2 SELECT i, 2, 'f' || i FROM generate_series(1, 30) i; \
         ALTER TABLE events ATTACH PARTITION events_2 FOR VALUES IN (2);",
    );
    wait_rebuilds(&mut r, &addr, 1, Duration::from_secs(120));
    assert!(
        r.log().contains("partitions were attached or detached"),
        "log:\n{}",
        r.log()
    );
    wait_health(&mut r, &addr, "streaming", Duration::from_secs(60));
    cluster.psql(&db, "INSERT INTO events VALUES (100, 2, 'g');");
    let lsn = current_lsn(cluster, &db);
    let mut expected = replica::Expected::default();
    for line in cluster.psql(&db, "SELECT id, k FROM events").lines() {
        let (id, k) = line.split_once('|').unwrap();
        expected.nodes.insert(format!("Event:{id},{k}"), None);
    }
    assert_eq!(expected.nodes.len(), 81);
    compare_over_http(&addr, &expected, lsn);
    r.stop();
}
