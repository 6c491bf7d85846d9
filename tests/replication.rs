//! The decoder and the replication connection against a real PostgreSQL (the harness's shared
//! cluster): every DML kind, TOAST, replica identities, key changes, TRUNCATE, ALTER TABLE,
//! streamed and aborted transactions, two-phase, logical messages, keepalives across
//! `wal_sender_timeout`, resume without duplicates, and a missing slot.

mod common;

use common::*;
use pgoutput::{Decoder, Lsn, Message};
use pgrepl::{CreateSlotOptions, ReplError, ReplicationClient, ReplicationEvent, StartOptions, Streaming};
use pgtest::Cluster;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn opts() -> StartOptions {
    StartOptions::new("pub")
}

#[tokio::test]
async fn dml_kinds_toast_identities_and_key_changes() {
    let c = Cluster::shared();
    let db = database(
        c,
        "dml",
        "CREATE TABLE users (id int PRIMARY KEY, name text, bio text);
         ALTER TABLE users ALTER COLUMN bio SET STORAGE EXTERNAL;
         CREATE TABLE edges (src int, dst int, w float8, PRIMARY KEY (src, dst));
         ALTER TABLE edges REPLICA IDENTITY FULL;",
    );
    let mut s = start(c, &db, "s", &opts()).await;
    c.psql(
        &db,
        "INSERT INTO users VALUES (1, 'ann', repeat('b', 5000)), (2, 'bob', NULL);
         UPDATE users SET name = 'anne' WHERE id = 1;
         UPDATE users SET id = 20 WHERE id = 2;
         DELETE FROM users WHERE id = 20;
         INSERT INTO edges VALUES (1, 2, 0.5);
         UPDATE edges SET w = 1.5;
         DELETE FROM edges;",
    );
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 7).await;
    let rows: Vec<_> = without_repeated_relations(stable(&got))
        .into_iter()
        .filter(|j| j["type"] != "begin" && j["type"] != "commit")
        .collect();
    let bio = "b".repeat(5000);
    let users_rel = json!({"type":"relation","relation":"public.users","replica_identity":"default","columns":[
        {"name":"id","key":true},{"name":"name","key":false},{"name":"bio","key":false}]});
    let edges_rel = json!({"type":"relation","relation":"public.edges","replica_identity":"full","columns":[
        {"name":"src","key":true},{"name":"dst","key":true},{"name":"w","key":true}]});
    assert_eq!(
        rows,
        vec![
            users_rel,
            json!({"type":"insert","relation":"public.users","new":{"id":1,"name":"ann","bio":bio}}),
            json!({"type":"insert","relation":"public.users","new":{"id":2,"name":"bob","bio":null}}),
            // TOAST column untouched by the update: not sent.
            json!({"type":"update","relation":"public.users","new":{"id":1,"name":"anne","bio":{"unchanged_toast":true}}}),
            // Key change under REPLICA IDENTITY DEFAULT: the old key only.
            json!({"type":"update","relation":"public.users","old_kind":"key","old":{"id":2},"new":{"id":20,"name":"bob","bio":null}}),
            json!({"type":"delete","relation":"public.users","old_kind":"key","old":{"id":20}}),
            edges_rel,
            json!({"type":"insert","relation":"public.edges","new":{"src":1,"dst":2,"w":0.5}}),
            // REPLICA IDENTITY FULL: the whole old row, on every update and delete.
            json!({"type":"update","relation":"public.edges","old_kind":"full","old":{"src":1,"dst":2,"w":0.5},"new":{"src":1,"dst":2,"w":1.5}}),
            json!({"type":"delete","relation":"public.edges","old_kind":"full","old":{"src":1,"dst":2,"w":1.5}}),
        ]
    );
    // Begin/commit pairs carry consistent positions.
    for pair in got.windows(2) {
        if let (Message::Commit(cm), _) = (&pair[0].msg, &pair[1]) {
            assert!(cm.end_lsn > cm.commit_lsn);
        }
    }
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn truncate_two_tables_and_alter_table_between_inserts() {
    let c = Cluster::shared();
    let db = database(
        c,
        "trunc",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id serial PRIMARY KEY, a_id int REFERENCES a(id));
         CREATE TABLE e (id int PRIMARY KEY, x text);",
    );
    let mut s = start(c, &db, "s", &opts()).await;
    c.psql(&db, "INSERT INTO a VALUES (1); INSERT INTO b (a_id) VALUES (1)");
    c.psql(&db, "TRUNCATE a, b RESTART IDENTITY");
    c.psql(&db, "INSERT INTO e VALUES (1, 'one')");
    c.psql(&db, "ALTER TABLE e ADD COLUMN y int DEFAULT 5");
    c.psql(&db, "INSERT INTO e VALUES (2, 'two', 6)");
    let mut dec = Decoder::new();
    // Until the last insert's commit (PostgreSQL 14 also sends the ALTER's empty transaction,
    // so the number of commits before it depends on the version).
    let got = collect_until(&mut s, &mut dec, T, |d| {
        let last = d
            .iter()
            .rposition(|x| x.json["relation"] == "public.e" && x.json["new"]["id"] == 2);
        last.is_some_and(|i| d[i..].iter().any(|x| matches!(x.msg, Message::Commit(_))))
    })
    .await;
    let st = without_repeated_relations(stable(&got));
    let trunc: Vec<_> = st.iter().filter(|j| j["type"] == "truncate").collect();
    assert_eq!(trunc.len(), 1, "{st:#?}");
    let mut rels: Vec<String> = trunc[0]["relations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    rels.sort();
    assert_eq!(rels, ["public.a", "public.b"]);
    assert_eq!(trunc[0]["cascade"], false);
    assert_eq!(trunc[0]["restart_identity"], true);
    let e_rows: Vec<_> = st.iter().filter(|j| j["relation"] == "public.e").cloned().collect();
    assert_eq!(
        e_rows,
        vec![
            json!({"type":"relation","relation":"public.e","replica_identity":"default","columns":[{"name":"id","key":true},{"name":"x","key":false}]}),
            json!({"type":"insert","relation":"public.e","new":{"id":1,"x":"one"}}),
            json!({"type":"relation","relation":"public.e","replica_identity":"default","columns":[{"name":"id","key":true},{"name":"x","key":false},{"name":"y","key":false}]}),
            json!({"type":"insert","relation":"public.e","new":{"id":2,"x":"two","y":6}}),
        ]
    );
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn streamed_large_transaction_and_streamed_abort() {
    let c = Cluster::shared();
    let db = database(c, "stream", "CREATE TABLE big (id int PRIMARY KEY, p text)");
    let o = StartOptions {
        streaming: Streaming::On,
        ..opts()
    };
    let mut s = start(c, &db, "s", &o).await;
    assert!(s.proto_version() >= 2);
    // Far more than logical_decoding_work_mem (64kB): the server streams it in blocks.
    c.psql(
        &db,
        "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g",
    );
    c.psql(
        &db,
        "BEGIN; INSERT INTO big SELECT g, repeat('y', 200) FROM generate_series(5001, 8000) g; ROLLBACK",
    );
    c.psql(&db, "INSERT INTO big VALUES (9999, 'after')");
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 2).await;
    let kinds: Vec<&str> = got.iter().map(|d| d.msg.kind()).collect();
    assert!(kinds.iter().filter(|k| **k == "stream_start").count() >= 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "stream_commit").count(), 1);
    // PostgreSQL 18 no longer streams a transaction it already knows is aborted (the ROLLBACK
    // is in WAL before the walsender decodes it here); earlier versions stream it, then abort.
    let version: u32 = c.psql(&db, "SHOW server_version_num").trim().parse().unwrap();
    let aborts = kinds.iter().filter(|k| **k == "stream_abort").count();
    if version >= 180000 {
        assert!(aborts <= 1, "{kinds:?}");
    } else {
        assert_eq!(aborts, 1, "{kinds:?}");
    }
    // Stream blocks are well formed: start ... stop, rows only inside, each row carries the xid.
    let mut open = None;
    let mut committed_ids = Vec::new();
    let mut aborted_xid = None;
    let mut committed_xid = None;
    for d in &got {
        match &d.msg {
            Message::StreamStart(st) => {
                assert!(open.is_none());
                open = Some(st.xid);
            }
            Message::StreamStop => {
                assert!(open.take().is_some());
            }
            Message::Insert(ins) if open.is_some() => {
                assert!(ins.xid.is_some(), "rows inside a stream block carry their xid");
                let id = d.json["new"]["id"].as_i64().unwrap();
                let p = d.json["new"]["p"].as_str().unwrap();
                if id <= 3000 {
                    committed_ids.push(id);
                    assert_eq!(p, "x".repeat(200));
                } else {
                    assert_eq!(p, "y".repeat(200));
                }
            }
            Message::StreamCommit(sc) => committed_xid = Some(sc.xid),
            Message::StreamAbort(sa) => {
                assert_eq!(sa.xid, sa.subxid, "top-level abort");
                aborted_xid = Some(sa.xid);
            }
            _ => {}
        }
    }
    assert_eq!(committed_ids, (1..=3000).collect::<Vec<_>>());
    assert_ne!(committed_xid, None);
    assert_ne!(aborted_xid, committed_xid);
    assert_eq!(aborted_xid.is_some(), aborts == 1);
    let last: Vec<_> = stable(&got).into_iter().filter(|j| j["type"] == "insert").collect();
    assert!(last.contains(&json!({"type":"insert","relation":"public.big","new":{"id":9999,"p":"after"}})));
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn two_phase_prepared_transactions() {
    let c = Cluster::shared();
    let db = database(c, "twophase", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut client = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let created = client
        .create_slot(
            &slot_name("s", &db),
            CreateSlotOptions {
                two_phase: true,
                ..Default::default()
            },
        )
        .await;
    let version: u32 = c.psql(&db, "SHOW server_version_num").trim().parse().unwrap();
    if version < 150000 {
        // Two-phase slots over the replication protocol came with PostgreSQL 15: a typed
        // refusal before, never a half-made slot.
        assert!(matches!(created, Err(ReplError::Unsupported(_))), "{created:?}");
        return;
    }
    created.unwrap();
    let mut s = client
        .start_replication(
            &slot_name("s", &db),
            Lsn::INVALID,
            &StartOptions {
                two_phase: true,
                ..opts()
            },
        )
        .await
        .unwrap();
    c.psql(&db, "BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'g1'");
    c.psql(&db, "COMMIT PREPARED 'g1'");
    c.psql(&db, "BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'g2'");
    c.psql(&db, "ROLLBACK PREPARED 'g2'");
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 4).await;
    let st: Vec<_> = stable(&got).into_iter().filter(|j| j["type"] != "relation").collect();
    assert_eq!(
        st,
        vec![
            json!({"type":"begin_prepare","gid":"g1"}),
            json!({"type":"insert","relation":"public.t","new":{"id":1}}),
            json!({"type":"prepare","gid":"g1"}),
            json!({"type":"commit_prepared","gid":"g1"}),
            json!({"type":"begin_prepare","gid":"g2"}),
            json!({"type":"insert","relation":"public.t","new":{"id":2}}),
            json!({"type":"prepare","gid":"g2"}),
            json!({"type":"rollback_prepared","gid":"g2"}),
        ]
    );
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn logical_decoding_messages() {
    let c = Cluster::shared();
    let db = database(c, "messages", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut s = start(
        c,
        &db,
        "s",
        &StartOptions {
            messages: true,
            ..opts()
        },
    )
    .await;
    c.psql(&db, "SELECT pg_logical_emit_message(false, 'gs', 'outside')");
    c.psql(
        &db,
        "BEGIN; SELECT pg_logical_emit_message(true, 'gs', 'inside'); INSERT INTO t VALUES (1); COMMIT",
    );
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 1).await;
    let st: Vec<_> = stable(&got).into_iter().filter(|j| j["type"] != "relation").collect();
    assert_eq!(
        st,
        vec![
            json!({"type":"message","transactional":false,"prefix":"gs","content":"outside"}),
            json!({"type":"begin"}),
            json!({"type":"message","transactional":true,"prefix":"gs","content":"inside"}),
            json!({"type":"insert","relation":"public.t","new":{"id":1}}),
            json!({"type":"commit","flags":0}),
        ]
    );
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn stream_survives_idle_time_beyond_wal_sender_timeout() {
    let c = Cluster::shared();
    let db = database(c, "idle", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut config = repl_config(c, &db);
    config.options = Some("-c wal_sender_timeout=2s".into());
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert_eq!(
        client.simple_query("SHOW wal_sender_timeout").await.unwrap().rows[0][0].as_deref(),
        Some("2s")
    );
    client
        .create_slot(&slot_name("s", &db), Default::default())
        .await
        .unwrap();
    // A status interval far longer than the timeout: only answering keepalives keeps us alive.
    let o = StartOptions {
        status_interval: Duration::from_secs(60),
        ..opts()
    };
    let mut s = client
        .start_replication(&slot_name("s", &db), Lsn::INVALID, &o)
        .await
        .unwrap();
    let idle = Duration::from_secs(7); // 3.5 x wal_sender_timeout
    let mut reply_requests = 0;
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Err(_) => break,
            Ok(ev) => match ev.expect("stream must stay up while idle") {
                Some(ReplicationEvent::Keepalive {
                    reply_requested: true, ..
                }) => reply_requests += 1,
                Some(_) => {}
                None => panic!("server ended the stream"),
            },
        }
    }
    assert!(
        reply_requests >= 2,
        "the server should have asked for replies, got {reply_requests}"
    );
    c.psql(&db, "INSERT INTO t VALUES (42)");
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 1).await;
    assert!(stable(&got).contains(&json!({"type":"insert","relation":"public.t","new":{"id":42}})));
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn resume_from_confirmed_lsn_delivers_nothing_twice() {
    let c = Cluster::shared();
    let db = database(c, "resume", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut s = start(c, &db, "s", &opts()).await;
    c.psql(&db, "INSERT INTO t VALUES (1)");
    c.psql(&db, "INSERT INTO t VALUES (2)");
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 2).await;
    let end_of_first = got
        .iter()
        .find_map(|d| match &d.msg {
            Message::Commit(cm) => Some(cm.end_lsn),
            _ => None,
        })
        .unwrap();
    // Confirm only the first transaction, then disconnect.
    s.set_flushed(end_of_first);
    s.stop().await.unwrap().close().await;
    let confirmed: Lsn = c
        .psql(
            &db,
            &format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
                slot_name("s", &db)
            ),
        )
        .parse()
        .unwrap();
    assert_eq!(confirmed, end_of_first);

    c.psql(&db, "INSERT INTO t VALUES (3)");
    let client = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let mut s = client
        .start_replication(&slot_name("s", &db), Lsn::INVALID, &opts())
        .await
        .unwrap();
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 2).await;
    let ids: Vec<i64> = got.iter().filter_map(|d| d.json["new"]["id"].as_i64()).collect();
    assert_eq!(ids, [2, 3], "transaction 1 was confirmed and must not come again");
    s.stop().await.unwrap().close().await;
}

#[tokio::test]
async fn missing_slot_and_slot_in_use_are_typed_errors() {
    let c = Cluster::shared();
    let db = database(c, "noslot", "CREATE TABLE t (id int PRIMARY KEY)");
    let client = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let err = client
        .start_replication("does_not_exist", Lsn::INVALID, &opts())
        .await
        .unwrap_err();
    assert!(err.is_slot_missing(), "{err:?}");
    assert!(err.to_string().contains("does_not_exist"), "{err}");

    let s = start(c, &db, "busy", &opts()).await;
    let other = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let err = other
        .start_replication(&slot_name("busy", &db), Lsn::INVALID, &opts())
        .await
        .unwrap_err();
    assert!(err.is_slot_in_use(), "{err:?}");
    s.stop().await.unwrap().close().await;

    let mut client = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let err = client
        .create_slot(&slot_name("busy", &db), Default::default())
        .await
        .unwrap_err();
    assert!(err.is_duplicate(), "{err:?}");
    client.drop_slot(&slot_name("busy", &db), false).await.unwrap();
    let err = client.drop_slot(&slot_name("busy", &db), false).await.unwrap_err();
    assert!(err.is_slot_missing(), "{err:?}");
    // The connection is still usable after errors.
    let id = client.identify_system().await.unwrap();
    assert!(id.xlog_pos > Lsn::INVALID);
    assert_eq!(id.dbname.as_deref(), Some(db.as_str()));
    client.close().await;
}

#[tokio::test]
async fn exported_snapshot_sees_exactly_the_rows_before_the_consistent_point() {
    let c = Cluster::shared();
    let db = database(c, "snapshot", "CREATE TABLE t (id int PRIMARY KEY)");
    c.psql(&db, "INSERT INTO t VALUES (1)");
    let mut client = ReplicationClient::connect(&repl_config(c, &db)).await.unwrap();
    let slot = client
        .create_slot(
            &slot_name("s", &db),
            CreateSlotOptions {
                snapshot: pgrepl::SlotSnapshot::Export,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let snap = slot.snapshot_name.expect("exported snapshot");
    assert!(slot.consistent_point > Lsn::INVALID);
    c.psql(&db, "INSERT INTO t VALUES (2)");
    let seen = c.psql(
        &db,
        &format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'; SELECT string_agg(id::text, ',') FROM t; COMMIT"),
    );
    assert_eq!(seen, "1");
    let mut s = client
        .start_replication(&slot_name("s", &db), slot.consistent_point, &opts())
        .await
        .unwrap();
    let mut dec = Decoder::new();
    let got = collect_until(&mut s, &mut dec, T, |d| ends(d) == 1).await;
    let ids: Vec<i64> = got.iter().filter_map(|d| d.json["new"]["id"].as_i64()).collect();
    assert_eq!(ids, [2]);
    s.stop().await.unwrap().close().await;
}
