//! Helpers shared by the integration tests: connection settings for the harness's server and
//! bounded collection of decoded replication messages.
#![allow(dead_code)]

pub mod nats;
pub mod proxy;
pub mod replica;
pub mod workload;

use bytes::Bytes;
use pgoutput::{json, Decoder, Lsn, Message};
use pgrepl::{Config, ReplicationClient, ReplicationEvent, ReplicationStream, StartOptions};
use pgtest::Cluster;
use serde_json::Value as Json;
use std::time::Duration;

/// Replication connection settings for `db` on `cluster`, as the superuser over TCP.
pub fn repl_config(cluster: &Cluster, db: &str) -> Config {
    Config::parse(&cluster.conn_str(db)).expect("valid connection string")
}

/// A database with a publication `pub` for all tables, after running `schema`.
pub fn database(cluster: &Cluster, prefix: &str, schema: &str) -> String {
    let db = cluster.create_database(prefix);
    cluster.psql(&db, schema);
    cluster.psql(&db, "CREATE PUBLICATION pub FOR ALL TABLES");
    db
}

/// One decoded message: its LSN, the message, and its JSON form.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub lsn: Lsn,
    pub msg: Message,
    pub json: Json,
}

/// Reads the stream until `done` says so, or panics after `timeout`.
pub async fn collect_until(
    stream: &mut ReplicationStream,
    decoder: &mut Decoder,
    timeout: Duration,
    mut done: impl FnMut(&[Decoded]) -> bool,
) -> Vec<Decoded> {
    let mut out = Vec::new();
    let fut = async {
        loop {
            match stream.next().await.expect("stream error") {
                Some(ReplicationEvent::XLogData { start, data, .. }) => {
                    out.push(decode(decoder, start, &data));
                    if done(&out) {
                        return;
                    }
                }
                Some(ReplicationEvent::Keepalive { .. }) => {}
                None => panic!("stream ended unexpectedly"),
            }
        }
    };
    if tokio::time::timeout(timeout, fut).await.is_err() {
        panic!(
            "timed out after {timeout:?}; collected so far: {:#?}",
            out.iter().map(|d| d.json.to_string()).collect::<Vec<_>>()
        );
    }
    out
}

/// Decodes one message and renders it.
pub fn decode(decoder: &mut Decoder, lsn: Lsn, data: &Bytes) -> Decoded {
    let msg = decoder
        .decode(data)
        .unwrap_or_else(|e| panic!("decode failed at {lsn}: {e}"));
    let text = json::message_to_json(lsn, &msg, decoder.relations()).expect("render");
    let json: Json = serde_json::from_str(&text).expect("valid JSON");
    Decoded { lsn, msg, json }
}

/// Number of transaction ends (commit, stream commit, prepare, commit/rollback prepared).
pub fn ends(d: &[Decoded]) -> usize {
    d.iter()
        .filter(|d| {
            matches!(
                d.msg,
                Message::Commit(_)
                    | Message::StreamCommit(_)
                    | Message::Prepare(_)
                    | Message::CommitPrepared(_)
                    | Message::RollbackPrepared(_)
                    | Message::StreamPrepare(_)
            )
        })
        .count()
}

/// The JSON of each message with positions, times, xids and OIDs removed, so tests can
/// compare content exactly.
pub fn stable(d: &[Decoded]) -> Vec<Json> {
    const VOLATILE: &[&str] = &[
        "lsn",
        "xid",
        "subxid",
        "final_lsn",
        "commit_lsn",
        "end_lsn",
        "commit_time",
        "relation_id",
        "prepare_lsn",
        "prepare_time",
        "prepare_end_lsn",
        "rollback_end_lsn",
        "rollback_time",
        "message_lsn",
        "abort_lsn",
        "abort_time",
        "type_oid",
        "type_modifier",
    ];
    fn strip(v: &mut Json) {
        match v {
            Json::Object(m) => {
                for k in VOLATILE {
                    m.remove(*k);
                }
                m.values_mut().for_each(strip);
            }
            Json::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    d.iter()
        .map(|d| {
            let mut j = d.json.clone();
            // Column descriptions keep names and key flags only.
            strip(&mut j);
            j
        })
        .collect()
}

/// Creates slot `slot`_`db` (slot names are cluster-wide) and starts streaming it with `opts`.
pub async fn start(cluster: &Cluster, db: &str, slot: &str, opts: &StartOptions) -> ReplicationStream {
    let slot = &slot_name(slot, db);
    let config = repl_config(cluster, db);
    let mut client = ReplicationClient::connect(&config).await.expect("connect");
    client.create_slot(slot, Default::default()).await.expect("create slot");
    client
        .start_replication(slot, Lsn::INVALID, opts)
        .await
        .expect("start replication")
}

/// A cluster-wide unique slot name for `slot` in database `db`.
pub fn slot_name(slot: &str, db: &str) -> String {
    format!("{slot}_{db}")
}

/// Drops a Relation message identical to the last one seen for the same relation: pgoutput
/// re-sends a relation's description whenever its cache entry is invalidated (autovacuum,
/// analyze, TOAST table creation...), so how often an unchanged one appears is not part of
/// the stream's meaning.
pub fn without_repeated_relations(v: Vec<Json>) -> Vec<Json> {
    let mut last: std::collections::HashMap<String, Json> = std::collections::HashMap::new();
    v.into_iter()
        .filter(|j| {
            if j["type"] != "relation" {
                return true;
            }
            let name = j["relation"].as_str().unwrap_or_default().to_string();
            let fresh = last.get(&name) != Some(j);
            last.insert(name, j.clone());
            fresh
        })
        .collect()
}
