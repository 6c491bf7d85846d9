//! `graphsync demo`: a throw-away PostgreSQL with a small multi-tenant social graph, replicated
//! live while a writer changes it, with the HTTP API up and example queries printed. Ctrl-C
//! stops everything and removes what it made (slot, publication, cluster, temp files).

mod server;

use anyhow::{anyhow, Context};
use pgrepl::ReplicationClient;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::replicator::{self, Options, Phase, ReplicaStatus};

/// Arguments of `graphsync demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Address of the HTTP API (an ephemeral port is used if this one is taken).
    #[arg(long, env = "GRAPHSYNC_LISTEN", default_value = "127.0.0.1:9187")]
    pub listen: std::net::SocketAddr,
    /// Users in the sample graph.
    #[arg(long, env = "GRAPHSYNC_DEMO_USERS", default_value_t = 1000)]
    pub users: u32,
}

const CONFIG: &str = r#"
[source]
slot = "graphsync_demo"
publication = "graphsync_demo"

[[nodes]]
table = "public.users"
key = "id"
label = "User"
tenant = "org_id"
properties = ["name"]

[[nodes]]
table = "public.posts"
key = "id"
label = "Post"
properties = ["title"]

[[edges]]
table = "public.follows"
label = "FOLLOWS"
source = { column = "follower_id", node = "User" }
target = { column = "followee_id", node = "User" }
weight = "weight"

[[edges]]
table = "public.posts"
label = "AUTHORED_BY"
source = { column = "id", node = "Post" }
target = { column = "author_id", node = "User" }
"#;

fn schema(n: u32) -> String {
    format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, org_id int NOT NULL, name text NOT NULL);
         CREATE TABLE follows (follower_id bigint, followee_id bigint, weight float8 NOT NULL DEFAULT 1,
                               PRIMARY KEY (follower_id, followee_id));
         CREATE TABLE posts (id bigint PRIMARY KEY, author_id bigint, title text);
         INSERT INTO users SELECT g, 1 + g % 3, 'user ' || g FROM generate_series(1, {n}) g;
         INSERT INTO follows SELECT g, 1 + (g * 7 + 3) % {n}, 1 + g % 5 FROM generate_series(1, {n}) g ON CONFLICT DO NOTHING;
         INSERT INTO follows SELECT g, 1 + (g * 13 + 5) % {n}, 2 FROM generate_series(1, {n}) g ON CONFLICT DO NOTHING;
         INSERT INTO follows SELECT g, 1 + (g + 3) % {n}, 1 FROM generate_series(1, {n}, 3) g ON CONFLICT DO NOTHING;
         INSERT INTO posts SELECT g, 1 + g % {n}, 'post ' || g FROM generate_series(1, {half}) g;",
        half = n / 2
    )
}

/// GET `path` from our own API; the body, or the error.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        Ok::<_, std::io::Error>(text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or(text))
    };
    match tokio::time::timeout(Duration::from_secs(10), fetch).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => format!("(request failed: {e})"),
        Err(_) => "(request timed out)".into(),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut cluster = server::DemoServer::start().map_err(|e| {
        anyhow!(
            "graphsync demo needs PostgreSQL 15+ server binaries (initdb, pg_ctl, postgres) to start a throw-away \
             server: {e:#}\ninstall them with: apt-get install -y postgresql (Debian/Ubuntu), dnf install \
             postgresql-server (Fedora), brew install postgresql@16 (macOS), or set PG_BIN to their directory"
        )
    })?;
    let db = "demo";
    let work = tempfile::Builder::new()
        .prefix("graphsync-demo-")
        .tempdir()
        .context("temp dir")?;
    let config_path = work.path().join("demo.toml");
    std::fs::write(&config_path, CONFIG).context("write the demo config")?;
    let config = Arc::new(sync::config::MappingConfig::load(&config_path)?);
    let conn = pgrepl::Config::parse(&cluster.conn_str(db))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let admin = pgrepl::Config::parse(&cluster.conn_str("postgres"))?;
        let mut c = ReplicationClient::connect_sql(&admin).await?;
        c.simple_query(&format!("CREATE DATABASE {db}")).await?;
        c.close().await;
        anyhow::Ok(())
    })
    .context("cannot create the demo database")?;
    let result = rt.block_on(demo(
        &args,
        config,
        conn.clone(),
        work.path(),
        cluster.root(),
        &cluster.conn_str(db),
    ));
    // Leave nothing behind: the slot and publication (the cluster goes too, but a failure
    // above may have happened before that matters), then the server and the files.
    let _ = rt.block_on(async {
        let mut c = ReplicationClient::connect_sql(&conn).await?;
        sync::catalog::teardown(&mut c, "graphsync_demo", "graphsync_demo").await?;
        c.close().await;
        anyhow::Ok(())
    });
    let root = cluster.root().to_path_buf();
    cluster.stop()?;
    let dir = work.path().to_path_buf();
    drop(work);
    match result {
        Ok(()) => {
            println!(
                "demo stopped: slot and publication dropped, PostgreSQL stopped, {} and {} removed",
                root.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

async fn demo(
    args: &DemoArgs,
    config: Arc<sync::config::MappingConfig>,
    conn: pgrepl::Config,
    work: &std::path::Path,
    cluster_root: &std::path::Path,
    conn_str: &str,
) -> anyhow::Result<()> {
    let mut sql = ReplicationClient::connect_sql(&conn).await?;
    sql.simple_query(&schema(args.users.max(10))).await?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let status = ReplicaStatus::new();
    let api = crate::http::Api {
        status: status.clone(),
        token: None,
        started: Instant::now(),
        max_lag_seconds: 30.0,
        feed: Default::default(),
        jwt: None,
        admin: None,
    };
    let server = crate::http::spawn(listener, api, rx.clone());
    let mut opts = Options::new(config, conn, work.join("data"));
    opts.snapshot_after_changes = Some(200_000);
    let replication = tokio::spawn(replicator::run(opts, status.clone(), rx.clone()));

    // Ctrl-C / SIGTERM.
    let signals = crate::replicate::stop_on_signal(tx.clone());

    let deadline = Instant::now() + Duration::from_secs(120);
    while status.snapshot().phase != Phase::Streaming {
        if replication.is_finished() || *rx.borrow() {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "replication did not start within 120 s: {:?}",
                status.snapshot().last_error
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if status.snapshot().phase == Phase::Streaming {
        let base = format!("http://{addr}");
        println!("explorer: {base}/#node=User:1   (open it in a browser: the graph redraws live)");
        println!("graphsync demo is running.");
        println!(
            "  PostgreSQL (throw-away): {conn_str}   (files: {})",
            cluster_root.display()
        );
        println!("  mapping:                 {}", work.join("demo.toml").display());
        println!("  checkpoints:             {}", work.join("data").display());
        println!("  HTTP API:                {base}   (health: {base}/health, metrics: {base}/metrics)");
        println!("A writer keeps changing the tables; every query reads the live graph.\n");
        for (what, path) in [
            ("who does User:1 follow?", "/v1/neighbors?node=User:1&direction=out"),
            (
                "two hops from User:1, tenant 2 only",
                "/v1/traverse?start=User:1&max_depth=2&tenant=2&limit=10",
            ),
            (
                "cheapest path between User:1 and User:50, any direction",
                "/v1/shortest-path?from=User:1&to=User:50&weighted=true&direction=both",
            ),
            ("components", "/v1/components"),
            ("health and lag", "/health"),
        ] {
            println!("# {what}\ncurl '{base}{path}'");
            println!("{}\n", get(addr, path).await.trim());
        }
        println!("Press Ctrl-C to stop; everything the demo made is removed.");
    }

    // The live writer.
    let mut rng = fastrand::Rng::new();
    let n = u64::from(args.users.max(10));
    let mut last_report = Instant::now();
    while !*rx.borrow() && !replication.is_finished() {
        let (a, b, c) = (rng.u64(1..=n), rng.u64(1..=n), rng.u64(1..=n));
        let w = rng.u64(1..=9);
        let stmt = format!(
            "BEGIN; INSERT INTO follows VALUES ({a}, {b}, {w}) ON CONFLICT DO NOTHING;
             DELETE FROM follows WHERE follower_id = {c} AND followee_id = (SELECT min(followee_id) FROM follows WHERE follower_id = {c});
             UPDATE users SET name = 'user {b} (edited)' WHERE id = {b}; COMMIT;"
        );
        if let Err(e) = sql.simple_query(&stmt).await {
            tracing::warn!(error = %e, "demo writer");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let s = status.snapshot();
            println!(
                "[demo] applied {} ({} transactions), lag {} bytes",
                s.applied_lsn,
                s.transactions,
                s.server_wal_end.0.saturating_sub(s.applied_lsn.0)
            );
        }
        let mut stop = rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    let _ = tx.send(true);
    sql.close().await;
    let res = replication.await.map_err(|e| anyhow!("replication task: {e}"))?;
    signals.abort();
    let _ = server.await;
    res?;
    Ok(())
}
