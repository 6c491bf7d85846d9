//! The replicator inside this bench's process: catch-up of a backlog against
//! `pg_recvlogical`, and restart from a snapshot against the initial copy.

#[allow(unused_imports)]
use super::*;

pub(crate) struct Running {
    status: Arc<ReplicaStatus>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), replicator::SyncError>>,
}

pub(crate) fn start(rt: &tokio::runtime::Runtime, cluster: &Cluster, db: &str, cfg: &Path, data: &Path) -> Running {
    start_with(rt, cluster, db, cfg, data, false)
}

pub(crate) fn start_with(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    binary: bool,
) -> Running {
    let config = Arc::new(MappingConfig::load(cfg).unwrap());
    let conn = pgrepl::Config::parse(&cluster.conn_str(db)).unwrap();
    let mut opts = Options::new(config, conn, data.to_path_buf());
    opts.binary = binary;
    let status = ReplicaStatus::new();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = rt.spawn(replicator::run(opts, status.clone(), rx));
    Running { status, stop, task }
}

pub(crate) fn wait_applied(r: &Running, lsn: Lsn, timeout: Duration) -> Duration {
    let t = Instant::now();
    while r.status.snapshot().applied_lsn < lsn {
        assert!(
            t.elapsed() < timeout,
            "not caught up within {timeout:?}: {:?}",
            r.status.snapshot()
        );
        assert!(
            !r.task.is_finished(),
            "replicator stopped: {:?}",
            r.status.snapshot().last_error
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

pub(crate) fn stop(rt: &tokio::runtime::Runtime, r: Running) {
    let _ = r.stop.send(true);
    rt.block_on(r.task).unwrap().unwrap();
}

/// Catch-up of `rows` rows committed in 1,000-row transactions while nobody consumed:
/// graphsync (`slot` of the mapping) vs pg_recvlogical (its own slot, same options).
#[allow(clippy::too_many_arguments)]
pub(crate) fn catch_up(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    insert: &dyn Fn(u64, u64) -> String,
    rows: u64,
    out: &mut Vec<[String; 4]>,
    what: &str,
    binary: bool,
) {
    // Both slots exist before the writes; graphsync's has a checkpoint of the current state.
    let r = start(rt, cluster, db, cfg, data);
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(600));
    stop(rt, r);
    let recv_slot = format!("recv_{db}");
    cluster.psql(
        db,
        &format!("SELECT pg_create_logical_replication_slot('{recv_slot}', 'pgoutput')"),
    );
    let mut script = String::new();
    let mut i = 0;
    while i < rows {
        script.push_str(&format!("BEGIN;\n{}COMMIT;\n", insert(i, (i + 1000).min(rows))));
        i += 1000;
    }
    cluster.psql(db, &script);
    let target = current_lsn(cluster, db);

    let cpu0 = cpu_seconds("self");
    let r = start_with(rt, cluster, db, cfg, data, binary);
    let took = wait_applied(&r, target, Duration::from_secs(1800));
    let cpu = cpu_seconds("self") - cpu0;
    let snap = r.status.snapshot();
    let apply = snap.apply_seconds.sum;
    let compaction = snap.compaction_seconds;
    let walsender_cpu = cluster
        .psql(
            db,
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'gs_{db}'"),
        )
        .trim()
        .to_string();
    let ws_cpu = cpu_seconds(&walsender_cpu);
    stop(rt, r);

    let recvlogical = pgtest::tool("pg_recvlogical").expect("pg_recvlogical not found");
    let t = Instant::now();
    let status = std::process::Command::new(&recvlogical)
        .args([
            "-d",
            &cluster.conn_str(db),
            "--slot",
            &recv_slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-E", &target.to_string()])
        .args([
            "-o",
            "proto_version=3",
            "-o",
            &format!("publication_names=pub_{db}"),
            "-o",
            "streaming=on",
        ])
        .status()
        .unwrap();
    let recv = t.elapsed();
    assert!(status.success(), "pg_recvlogical failed");
    cluster.psql(db, &format!("SELECT pg_drop_replication_slot('{recv_slot}')"));
    let g = rows as f64 / took.as_secs_f64();
    let p = rows as f64 / recv.as_secs_f64();
    out.push([
        format!("catch-up {what}, {rows} rows"),
        format!("{:.0} rows/s ({:.2} s)", g, took.as_secs_f64()),
        format!("{:.0} rows/s ({:.2} s)", p, recv.as_secs_f64()),
        format!("ratio {:.2}", g / p),
    ]);
    out.push([
        format!("CPU per million changes, {what}"),
        format!("{:.2} s graphsync", cpu / rows as f64 * 1e6),
        format!("{:.2} s walsender", ws_cpu / rows as f64 * 1e6),
        format!(
            "of which applying {:.2} s, compacting {:.2} s",
            apply / rows as f64 * 1e6,
            compaction / rows as f64 * 1e6
        ),
    ]);
}

/// Time from process start to streaming from the checkpoint of the current graph, vs a fresh
/// initial copy of the same tables (on a second slot and data directory).
pub(crate) fn restart_vs_copy(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    db: &str,
    cfg: &Path,
    data: &Path,
    dir: &Path,
    out: &mut Vec<[String; 4]>,
) {
    let r = start(rt, cluster, db, cfg, data);
    wait_applied(&r, current_lsn(cluster, db), Duration::from_secs(1800));
    stop(rt, r);
    let t = Instant::now();
    let r = start(rt, cluster, db, cfg, data);
    while r.status.snapshot().phase != Phase::Streaming {
        std::thread::sleep(Duration::from_micros(200));
    }
    let restart = t.elapsed();
    let edges = r.status.graph().map_or(0, |g| g.view().edge_count());
    let replayed = r.status.snapshot().replayed_changes;
    stop(rt, r);
    let cfg2 = dir.join("copy.toml");
    std::fs::write(&cfg2, config(db).replace("slot = \"gs_", "slot = \"gs2_")).unwrap();
    let copy_dir = dir.join("copy");
    let _ = std::fs::remove_dir_all(&copy_dir);
    let t = Instant::now();
    let r = start(rt, cluster, db, &cfg2, &copy_dir);
    while r.status.snapshot().phase != Phase::Streaming {
        std::thread::sleep(Duration::from_micros(200));
    }
    let copy = t.elapsed();
    stop(rt, r);
    cluster.psql(db, &format!("SELECT pg_drop_replication_slot('gs2_{db}')"));
    let _ = std::fs::remove_dir_all(&copy_dir);
    out.push([
        format!("start to streaming, {edges} edges"),
        format!(
            "{:.1} ms from snapshot + {replayed} logged changes",
            restart.as_secs_f64() * 1e3
        ),
        format!("{:.0} ms initial copy", copy.as_secs_f64() * 1e3),
        format!("{:.0}x faster", copy.as_secs_f64() / restart.as_secs_f64()),
    ]);
}
