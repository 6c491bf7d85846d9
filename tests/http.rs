//! The HTTP API of `graphsync replicate`, driven over real sockets against the harness's
//! PostgreSQL: every endpoint, its errors, read-your-writes, tenants and the bearer token.

mod common;

use common::replica::{self, current_lsn, http_get, http_json};
use common::workload;
use pgtest::Cluster;
use serde_json::Value;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// A small graph with two tenants: users 1-3 in org 1 (1→2→3), users 10-11 in org 2 (10→11),
/// a cross-tenant edge 3→10, and post 100 by user 1.
const DATA: &str = "
INSERT INTO users VALUES (1, 1, 'ann', NULL), (2, 1, 'bob', NULL), (3, 1, 'cy', NULL), (10, 2, 'dee', NULL), (11, 2, 'ed', NULL);
INSERT INTO follows VALUES (1, 2, 1.0), (2, 3, 5.0), (1, 3, 10.0), (3, 10, 1.0), (10, 11, 1.0);
INSERT INTO posts VALUES (100, 1, 'hello');
";

fn names(j: &Value, field: &str) -> Vec<String> {
    let mut v: Vec<String> = j[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} missing in {j}"))
        .iter()
        .map(|n| {
            n.get("node")
                .and_then(Value::as_str)
                .or(n.as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_endpoint() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("http");
    cluster.psql(&db, workload::SCHEMA);
    cluster.psql(&db, DATA);
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    let mut r = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("data"),
        &["--api-token", "s3cret"],
    );
    let addr = r.addr();
    let lsn = current_lsn(cluster, &db);
    let get = |path: &str| -> (u16, Value) {
        let (code, body) = http_get(&addr, path, Some("s3cret"));
        (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    };
    // Health turns 200 once streaming (bounded wait on a condition).
    let healthy = pgtest::wait_for(DEADLINE, || http_json(&addr, "/health").0 == 200);
    assert!(healthy, "health: {:?}; log:\n{}", http_json(&addr, "/health"), r.log());
    let (_, h) = http_json(&addr, "/health");
    assert_eq!(h["status"], "streaming", "{h}");
    for k in [
        "applied_lsn",
        "confirmed_flush_lsn",
        "server_wal_lsn",
        "lag_bytes",
        "lag_seconds",
        "snapshot_lsn",
    ] {
        assert!(h.get(k).is_some(), "{k} missing: {h}");
    }

    // The bearer token guards everything but /health.
    let (code, body) = http_get(&addr, "/v1/status", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    assert_eq!(http_get(&addr, "/v1/status", Some("wrong")).0, 401);
    // Every route but /health is behind the token.
    for path in [
        "/metrics",
        "/v1/nodes/User/1",
        "/v1/neighbors?node=User:1",
        "/v1/traverse?start=User:1",
        "/v1/shortest-path?from=User:1&to=User:2",
        "/v1/components",
    ] {
        assert_eq!(http_get(&addr, path, None).0, 401, "{path} without the token");
    }
    assert_eq!(http_get(&addr, "/health", None).0, 200);
    let (code, s) = get("/v1/status");
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["slot"], format!("gs_{db}"));
    assert_eq!(s["nodes_per_label"]["User"], 5, "{s}");
    assert_eq!(s["nodes_per_label"]["Post"], 1, "{s}");
    assert!(
        s["versions"]["postgresql"].as_str().is_some_and(|v| v.starts_with("1")),
        "{s}"
    );
    assert!(
        s["versions"]["pgoutput_protocol"].as_u64().is_some_and(|v| v >= 1),
        "{s}"
    );
    // One streamed transaction (changing nothing) for the lag histograms to observe.
    cluster.psql(&db, "UPDATE users SET name = 'ann' WHERE id = 1");
    let observed = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("graphsync_commit_to_apply_seconds_count "))
            .is_some_and(|v| v.trim() != "0")
    };
    let streamed = pgtest::wait_for(DEADLINE, || observed(&http_get(&addr, "/metrics", Some("s3cret")).1));
    assert!(streamed, "no streamed transaction observed; log:\n{}", r.log());
    let (code, body) = http_get(&addr, "/metrics", Some("s3cret"));
    assert_eq!(code, 200);
    assert!(
        body.contains("graphsync_applied_lsn ") && body.contains("# TYPE graphsync_lag_bytes gauge"),
        "{body}"
    );
    for m in [
        "graphsync_apply_seconds_bucket{le=\"+Inf\"}",
        "graphsync_commit_to_apply_seconds_count",
        "graphsync_checkpoints_total",
        "graphsync_snapshot_bytes",
        "graphsync_compactions_total",
        "graphsync_receive_to_apply_seconds_count",
        "graphsync_commit_to_send_seconds_count",
        "graphsync_send_to_receive_seconds_count",
    ] {
        assert!(body.contains(m), "{m} missing:\n{body}");
    }
    // OpenMetrics text: ends with # EOF; a histogram's buckets are cumulative and +Inf is its count.
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let value = |line_start: &str| -> Vec<f64> {
        body.lines()
            .filter(|l| l.starts_with(line_start))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect()
    };
    let buckets = value("graphsync_commit_to_apply_seconds_bucket");
    assert!(
        buckets.len() >= 10 && buckets.windows(2).all(|w| w[0] <= w[1]),
        "{body}"
    );
    assert_eq!(
        buckets.last(),
        value("graphsync_commit_to_apply_seconds_count ").first(),
        "{body}"
    );
    // The lag's three parts observe every transaction the whole lag does.
    let applied = value("graphsync_commit_to_apply_seconds_count ");
    assert!(applied.first().is_some_and(|&n| n > 0.0), "{body}");
    for part in ["commit_to_send", "send_to_receive", "receive_to_apply"] {
        assert_eq!(
            value(&format!("graphsync_{part}_seconds_count ")),
            applied,
            "{part}: {body}"
        );
    }

    // Node lookup.
    let (code, n) = get(&format!("/v1/nodes/User/1?min_lsn={lsn}"));
    assert_eq!(code, 200, "{n}");
    assert_eq!(n["tenant"], "1");
    assert_eq!(n["properties"]["name"], "ann");
    assert_eq!(get("/v1/nodes/User/999").0, 404);
    let (code, e) = get("/v1/nodes/Nope/1");
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("unknown node label"), "{e}");
    assert_eq!(get("/v1/nodes/User/abc").0, 400);

    // Neighbours, with direction, label and tenant.
    let (code, j) = get("/v1/neighbors?node=User:1");
    assert_eq!(code, 200, "{j}");
    assert_eq!(names(&j, "neighbors"), ["User:2", "User:3"]);
    assert!(j["lsn"].as_str().unwrap().contains('/'));
    let (_, j) = get("/v1/neighbors?node=User:1&direction=in");
    assert_eq!(names(&j, "neighbors"), ["Post:100"]);
    let (_, j) = get("/v1/neighbors?node=User:3&direction=both&edge_label=FOLLOWS");
    assert_eq!(names(&j, "neighbors"), ["User:1", "User:10", "User:2"]);
    let (_, j) = get("/v1/neighbors?node=User:3&direction=both&tenant=1");
    assert_eq!(
        names(&j, "neighbors"),
        ["User:1", "User:2"],
        "tenant 1 never shows tenant 2"
    );
    // Pages: `limit` and the `next_cursor` each page returns, until none; together the whole list.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => "/v1/neighbors?node=User:3&direction=both&limit=2".to_string(),
            Some(c) => format!("/v1/neighbors?node=User:3&direction=both&limit=2&cursor={c}"),
        };
        let (code, j) = get(&path);
        assert_eq!(code, 200, "{j}");
        assert!(j["neighbors"].as_array().unwrap().len() <= 2, "{j}");
        assert_eq!(j["total"], 3, "{j}");
        paged.extend(names(&j, "neighbors"));
        cursor = j["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    paged.sort();
    assert_eq!(paged, ["User:1", "User:10", "User:2"]);
    assert_eq!(get("/v1/neighbors?node=User:3&limit=0").0, 400);
    assert_eq!(get("/v1/neighbors?node=User:3&cursor=x").0, 400);
    // A start node outside the tenant: the same 404 from every endpoint, naming the node as
    // Label:key (never an internal id), for a tenant that exists and for one no node has.
    for tenant in ["1", "999"] {
        for path in [
            format!("/v1/neighbors?node=User:10&tenant={tenant}"),
            format!("/v1/traverse?start=User:10&tenant={tenant}"),
            format!("/v1/components?node=User:10&tenant={tenant}"),
            format!("/v1/shortest-path?from=User:10&to=User:11&tenant={tenant}"),
        ] {
            let (code, e) = get(&path);
            assert_eq!(code, 404, "{path}: {e}");
            assert_eq!(e["error"], format!("node User:10 is not in tenant {tenant}"), "{path}");
        }
    }
    for (path, param) in [
        ("/v1/neighbors", "node"),
        ("/v1/neighbors?node=User", "node"),
        ("/v1/neighbors?node=User:1&direction=up", "direction"),
        ("/v1/neighbors?node=User:1&edge_label=LIKES", "edge_label"),
        ("/v1/neighbors?node=User:1&min_lsn=zz", "min_lsn"),
        ("/v1/traverse?start=User:1&max_depth=x", "max_depth"),
        ("/v1/shortest-path?from=User:1&to=User:3&weighted=maybe", "weighted"),
    ] {
        let (code, e) = get(path);
        assert_eq!(code, 400, "{path}: {e}");
        assert_eq!(e["parameter"], param, "{path}: {e}");
    }

    // Traversal: depth, tenant restriction.
    let (code, j) = get("/v1/traverse?start=User:1&max_depth=2");
    assert_eq!(code, 200, "{j}");
    assert_eq!(names(&j, "nodes"), ["User:1", "User:10", "User:2", "User:3"]);
    let (_, j) = get("/v1/traverse?start=User:1&max_depth=5&tenant=1");
    assert_eq!(names(&j, "nodes"), ["User:1", "User:2", "User:3"]);
    let (_, j) = get("/v1/traverse?start=User:1&max_depth=5&limit=2");
    assert_eq!(j["nodes"].as_array().unwrap().len(), 2);

    // Shortest paths: hops and weights.
    let (code, j) = get("/v1/shortest-path?from=User:1&to=User:3");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["nodes"], serde_json::json!(["User:1", "User:3"]));
    assert_eq!(j["hops"], 1);
    let (_, j) = get("/v1/shortest-path?from=User:1&to=User:3&weighted=true");
    assert_eq!(j["nodes"], serde_json::json!(["User:1", "User:2", "User:3"]), "{j}");
    assert_eq!(j["cost"], 6.0);
    assert_eq!(get("/v1/shortest-path?from=User:11&to=User:1").0, 404);
    assert_eq!(get("/v1/shortest-path?from=User:1&to=User:11&tenant=1").0, 404);

    // Components.
    let (_, j) = get("/v1/components?node=User:11");
    assert_eq!(j["size"], 6, "{j}");
    let (_, j) = get("/v1/components?node=User:11&tenant=2");
    assert_eq!(j["size"], 2, "{j}");
    let (_, j) = get("/v1/components");
    assert_eq!(j["count"], 1, "{j}");

    // Read-your-writes: insert, read the WAL position, query with it.
    cluster.psql(&db, "INSERT INTO follows VALUES (11, 1, 1.0)");
    let lsn = current_lsn(cluster, &db);
    let (code, j) = get(&format!("/v1/neighbors?node=User:11&min_lsn={lsn}&timeout_ms=30000"));
    assert_eq!(code, 200, "{j}");
    assert_eq!(names(&j, "neighbors"), ["User:1"], "the new edge is there");
    // A position far ahead times out with 504 and the current LSN.
    let (code, j) = get("/v1/neighbors?node=User:1&min_lsn=FF/0&timeout_ms=200");
    assert_eq!(code, 504, "{j}");
    assert!(j["lsn"].as_str().is_some(), "{j}");

    let (status, log) = r.stop();
    assert!(status.success(), "{log}");
}

/// `docs/openapi.json` describes exactly the routes the server registers, and every query
/// parameter a handler reads.
#[test]
fn openapi_describes_every_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(root.join("docs/openapi.json")).unwrap())
        .expect("docs/openapi.json is JSON");
    // Every file of the API module (the explorer's static routes are not API).
    let mut source = String::new();
    for e in std::fs::read_dir(root.join("bin/http")).unwrap() {
        source.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    let quoted_after = |marker: &str| -> Vec<String> {
        source
            .match_indices(marker)
            .filter_map(|(i, _)| {
                let rest = &source[i + marker.len()..];
                let end = rest.find('"')?;
                Some(rest[..end].to_string())
            })
            .collect()
    };
    let mut routes = quoted_after(".route(\"");
    routes.sort();
    let mut documented: Vec<String> = spec["paths"].as_object().unwrap().keys().cloned().collect();
    documented.sort();
    assert_eq!(routes, documented, "routes in bin/http/ vs paths in docs/openapi.json");
    let mut described = std::collections::BTreeSet::new();
    for op in spec["paths"].as_object().unwrap().values() {
        for p in op["get"]["parameters"].as_array().into_iter().flatten() {
            described.insert(p["name"].as_str().unwrap().to_string());
        }
    }
    let mut read: Vec<String> = quoted_after("p.get(\"");
    read.extend(quoted_after("required(&p, \""));
    read.extend(quoted_after("number(&p, \""));
    assert!(read.len() >= 10, "found too few parameters in the source: {read:?}");
    for name in read {
        assert!(
            described.contains(&name),
            "query parameter {name} is not in docs/openapi.json"
        );
    }
}
