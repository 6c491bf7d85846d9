//! Tenant-scoped tokens (JWT) against the real binary: a token for tenant 1 reads nothing of
//! another tenant through any endpoint — node lookup, neighbours, traversal, paths, components,
//! subgraph, changes — while the operator's token reads everything; bad, expired and missing
//! tokens are 401, and no token appears in the log.

mod common;

use common::replica::{self, current_lsn, http_get};
use common::workload::{self, Workload};
use jsonwebtoken::{encode, EncodingKey, Header};
use pgtest::Cluster;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn token(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn get(addr: &str, path: &str, token: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path, Some(token));
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[test]
fn a_token_for_one_tenant_reads_nothing_of_another() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("jwt");
    cluster.psql(&db, workload::SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let mut w = Workload::new(0x70c3);
    cluster.psql(&db, &w.seed(300));
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = dir.path().join("data");
    let mut r = replica::spawn(
        cluster,
        &db,
        &config,
        &data,
        &[
            "--api-token",
            "operator-token",
            "--jwt-hs256-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let addr = r.addr();
    let lsn = current_lsn(cluster, &db);
    // Every user's tenant, from SQL.
    let tenant_of: BTreeMap<String, String> = cluster
        .psql(&db, "SELECT id, coalesce(org_id::text, '') FROM users")
        .lines()
        .map(|l| {
            let (id, org) = l.split_once('|').unwrap();
            (format!("User:{id}"), org.to_string())
        })
        .collect();
    let in_1: Vec<&String> = tenant_of.iter().filter(|(_, t)| *t == "1").map(|(n, _)| n).collect();
    let in_2: Vec<&String> = tenant_of.iter().filter(|(_, t)| *t == "2").map(|(n, _)| n).collect();
    // A tenant-1 user that follows someone of another tenant: the scoped token must not see it.
    let crossing = cluster.psql(
        &db,
        "SELECT f.follower_id, f.followee_id FROM follows f JOIN users a ON a.id = f.follower_id \
         JOIN users b ON b.id = f.followee_id WHERE a.org_id = 1 AND b.org_id = 2 LIMIT 1",
    );
    let (u1, u2) = crossing
        .lines()
        .next()
        .and_then(|l| l.split_once('|'))
        .expect("a crossing follow");
    let (u1, u2) = (format!("User:{u1}"), format!("User:{u2}"));
    let t1 = token(json!({"tenants": ["1"], "exp": now() + 600}), SECRET);
    let wait = format!("min_lsn={lsn}&timeout_ms=30000");

    // The operator sees the crossing edge; the tenant-1 token does not.
    let (code, v) = get(&addr, &format!("/v1/neighbors?node={u1}&{wait}"), "operator-token");
    assert_eq!(code, 200, "{v}");
    assert!(
        v["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == json!(u2)),
        "{v}"
    );
    let (code, v) = get(&addr, &format!("/v1/neighbors?node={u1}&direction=both&{wait}"), &t1);
    assert_eq!(code, 200, "{v}");
    for n in v["neighbors"].as_array().unwrap() {
        assert_eq!(tenant_of[n["node"].as_str().unwrap()], "1", "{n}");
    }
    // Each endpoint, tried outside the tenant.
    assert_eq!(get(&addr, &format!("/v1/nodes/User/{}?{wait}", &u2[5..]), &t1).0, 404);
    assert_eq!(get(&addr, &format!("/v1/nodes/User/{}?{wait}", &u1[5..]), &t1).0, 200);
    assert_eq!(get(&addr, &format!("/v1/neighbors?node={u2}&{wait}"), &t1).0, 404);
    assert_eq!(
        get(&addr, &format!("/v1/neighbors?node={u1}&tenant=2&{wait}"), &t1).0,
        403
    );
    assert_eq!(
        get(&addr, &format!("/v1/shortest-path?from={u1}&to={u2}&{wait}"), &t1).0,
        404
    );
    let (code, v) = get(
        &addr,
        &format!("/v1/traverse?start={u1}&max_depth=10&direction=both&{wait}"),
        &t1,
    );
    assert_eq!(code, 200, "{v}");
    let reached = v["nodes"].as_array().unwrap();
    assert!(!reached.is_empty());
    for n in reached {
        assert_eq!(tenant_of[n["node"].as_str().unwrap()], "1", "{n}");
    }
    let (code, v) = get(&addr, &format!("/v1/components?node={u1}&limit=100000&{wait}"), &t1);
    assert_eq!(code, 200, "{v}");
    for m in v["members"].as_array().unwrap() {
        assert_eq!(tenant_of[m.as_str().unwrap()], "1", "{m}");
    }
    let (code, v) = get(&addr, &format!("/v1/subgraph?{wait}"), &t1);
    assert_eq!(code, 200, "{v}");
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), in_1.len());
    assert!(nodes.iter().all(|n| tenant_of[*n] == "1"));
    assert_eq!(get(&addr, "/v1/subgraph?tenant=2", &t1).0, 403);
    // Other spellings of the parameter are the same parameter.
    assert_eq!(get(&addr, "/v1/subgraph?tenant=1&%74enant=2", &t1).0, 400);
    assert_eq!(get(&addr, "/v1/subgraph?%74enant=2", &t1).0, 403);
    // A key of another tenant and a key that does not exist look the same.
    let (_, a) = get(&addr, &format!("/v1/neighbors?node={u2}"), &t1);
    let (_, b) = get(&addr, "/v1/neighbors?node=User:99999999", &t1);
    assert_eq!(
        a["error"].as_str().unwrap().replace(&u2, "X"),
        b["error"].as_str().unwrap().replace("User:99999999", "X")
    );
    assert_eq!(get(&addr, "/v1/changes?tenant=2&wait_ms=0", &t1).0, 403);
    // The feed: a change in tenant 2 and one in tenant 1; only the latter reaches the token.
    let from = v["lsn"].as_str().unwrap().to_string();
    let (a2, a1) = (&in_2[0][5..], &in_1[0][5..]);
    cluster.psql(&db, &format!("UPDATE users SET name = 'seen by 2' WHERE id = {a2}"));
    cluster.psql(&db, &format!("UPDATE users SET name = 'seen by 1' WHERE id = {a1}"));
    let (code, v) = get(&addr, &format!("/v1/changes?from={from}&wait_ms=20000"), &t1);
    assert_eq!(code, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0]["changes"][0]["node"], json!(format!("User:{a1}")));
    // Operator-only and reduced answers.
    assert_eq!(get(&addr, "/metrics", &t1).0, 403);
    let (code, v) = get(&addr, "/v1/status", &t1);
    assert_eq!(code, 200);
    assert!(
        v.get("nodes_per_label").is_none() && v.get("applied_lsn").is_some(),
        "{v}"
    );
    assert!(get(&addr, "/v1/status", "operator-token")
        .1
        .get("nodes_per_label")
        .is_some());
    // A token for two tenants must say which.
    let t12 = token(json!({"tenants": ["1", 2], "exp": now() + 600}), SECRET);
    assert_eq!(get(&addr, "/v1/subgraph", &t12).0, 403);
    assert_eq!(get(&addr, "/v1/subgraph?tenant=2", &t12).0, 200);
    // Refused tokens.
    let expired = token(json!({"tenants": ["1"], "exp": now() - 3600}), SECRET);
    let forged = token(
        json!({"tenants": ["1"], "exp": now() + 600}),
        "another-secret-another-secret-xx",
    );
    let no_tenant = token(json!({"exp": now() + 600}), SECRET);
    let no_exp = token(json!({"tenants": ["1"]}), SECRET);
    for (what, t) in [
        ("expired", &expired),
        ("forged", &forged),
        ("no tenant", &no_tenant),
        ("no exp", &no_exp),
    ] {
        let (code, v) = get(&addr, "/v1/subgraph", t);
        assert_eq!(code, 401, "{what}: {v}");
    }
    assert_eq!(http_get(&addr, "/v1/subgraph", None).0, 401);
    // EventSource-style: the token as a query parameter.
    let (code, _) = http_get(&addr, &format!("/v1/changes?wait_ms=0&access_token={t1}"), None);
    assert_eq!(code, 200);
    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
    for t in [&t1, &expired, &forged, "operator-token"] {
        assert!(!log.contains(t), "a token appears in the log");
    }
}
