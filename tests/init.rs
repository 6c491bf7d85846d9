//! `graphsync init --discover` drafts a mapping that `replicate` accepts and whose graph equals
//! SQL; `graphsync teardown` drops the slot and the publication graphsync created.

mod common;

use common::replica::{self, current_lsn, Expected};
use pgtest::Cluster;
use std::process::Command;
use std::time::Duration;

const SCHEMA: &str = "
CREATE SCHEMA app;
CREATE TABLE app.users (id bigint PRIMARY KEY, org_id int, name text);
CREATE TABLE app.follows (follower_id bigint REFERENCES app.users ON DELETE CASCADE,
                          followee_id bigint REFERENCES app.users ON DELETE CASCADE,
                          weight float8, PRIMARY KEY (follower_id, followee_id));
CREATE TABLE app.posts (id uuid PRIMARY KEY, author_id bigint REFERENCES app.users ON DELETE SET NULL, title text);
CREATE TABLE app.logs (msg text);
INSERT INTO app.users SELECT g, g % 3, 'u' || g FROM generate_series(1, 50) g;
INSERT INTO app.follows SELECT g, g % 50 + 1, g FROM generate_series(1, 50) g;
INSERT INTO app.follows SELECT g, (g * 7) % 50 + 1, 1 FROM generate_series(1, 50) g ON CONFLICT DO NOTHING;
INSERT INTO app.posts SELECT md5(g::text)::uuid, g, 't' FROM generate_series(1, 20) g;
";

fn expected(cluster: &Cluster, db: &str) -> Expected {
    let mut e = Expected::default();
    for line in cluster.psql(db, "SELECT id, org_id FROM app.users").lines() {
        let (id, org) = line.split_once('|').unwrap();
        e.nodes
            .insert(format!("User:{id}"), (!org.is_empty()).then(|| org.to_string()));
    }
    for line in cluster.psql(db, "SELECT id FROM app.posts").lines() {
        e.nodes.insert(format!("Post:{line}"), None);
    }
    for line in cluster
        .psql(db, "SELECT follower_id, followee_id FROM app.follows")
        .lines()
    {
        let (a, b) = line.split_once('|').unwrap();
        e.edges
            .push((format!("User:{a}"), "FOLLOWS".into(), format!("User:{b}")));
    }
    for line in cluster
        .psql(db, "SELECT id, author_id FROM app.posts WHERE author_id IS NOT NULL")
        .lines()
    {
        let (p, a) = line.split_once('|').unwrap();
        e.edges
            .push((format!("Post:{p}"), "AUTHOR".into(), format!("User:{a}")));
    }
    e
}

#[test]
fn discover_replicate_teardown() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("discover");
    cluster.psql(&db, SCHEMA);
    let out = Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args([
            "init",
            "--discover",
            "--schema",
            "app",
            "--database-url",
            &cluster.conn_str(&db),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "table = \"app.users\"",
        "label = \"User\"",
        "tenant = \"org_id\"",
        "table = \"app.follows\"\nlabel = \"FOLLOWS\"",
        "weight = \"weight\"",
        "label = \"AUTHOR\"",
        "# skipped app.logs: no primary key",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graph.toml");
    std::fs::write(&config, text.replace("\"graphsync\"", &format!("\"gs_{db}\""))).unwrap();
    let data = dir.path().join("data");
    let mut r = replica::spawn(cluster, &db, &config, &data, &[]);
    cluster.psql(
        &db,
        "UPDATE app.posts SET author_id = NULL WHERE author_id < 5;
         UPDATE app.posts SET author_id = 40 WHERE author_id BETWEEN 5 AND 8;
         DELETE FROM app.users WHERE id IN (10, 11);
         UPDATE app.follows SET followee_id = 49 WHERE follower_id = 20 AND followee_id = 21;
         INSERT INTO app.users VALUES (100, 1, 'new');
         INSERT INTO app.follows VALUES (100, 1, 2.0);",
    );
    let last = current_lsn(cluster, &db);
    let addr = r.addr();
    let e = expected(cluster, &db);
    replica::compare_over_http(&addr, &e, last);
    r.wait_durable(last, Duration::from_secs(120));
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    replica::assert_graph_equals(&data, &config, &e);

    let out = Command::new(env!("CARGO_BIN_EXE_graphsync"))
        .args(["teardown", "--config"])
        .arg(&config)
        .args(["--database-url", &cluster.conn_str(&db)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("dropped replication slot") && stdout.contains("dropped publication"),
        "{stdout}"
    );
    assert_eq!(
        cluster.psql(
            &db,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'gs_{db}'")
        ),
        "0"
    );
    assert_eq!(cluster.psql(&db, "SELECT count(*) FROM pg_publication"), "0");
}

/// `init --discover --diff`: a mapping matching the catalog says so (exit 0); after a column
/// rename, a dropped table and a new table it proposes the changes (exit 1).
#[test]
fn discover_diff_proposes_what_changed() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("discover_diff");
    cluster.psql(&db, SCHEMA);
    let url = cluster.conn_str(&db);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_graphsync"))
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, draft) = run(&["init", "--discover", "--schema", "app"]);
    assert_eq!(code, Some(0));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graph.toml");
    let mapped = draft.replacen(
        "# other columns: org_id, name\nproperties = []",
        "properties = [\"name\"]",
        1,
    );
    assert_ne!(mapped, draft, "the draft maps users with a tenant:\n{draft}");
    std::fs::write(&config, &mapped).unwrap();
    let path = config.to_str().unwrap();
    let (code, text) = run(&["init", "--discover", "--schema", "app", "--diff", path]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing to change"), "{text}");
    cluster.psql(
        &db,
        "ALTER TABLE app.users RENAME COLUMN name TO full_name;
         DROP TABLE app.posts;
         CREATE TABLE app.tags (id int PRIMARY KEY, label text);",
    );
    let (code, text) = run(&["init", "--discover", "--schema", "app", "--diff", path]);
    assert_eq!(code, Some(1), "{text}");
    for want in [
        "- app.posts: the table no longer exists",
        "~ app.users: mapped column \"name\" no longer exists",
        "{ column = \"full_name\", name = \"name\" }",
        "+ app.tags: not mapped",
        "+ table = \"app.tags\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
