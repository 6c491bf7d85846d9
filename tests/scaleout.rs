//! Scale-out on NATS JetStream against real servers (PostgreSQL and nats-server, started by the
//! tests): a leader (`replicate --publish`) and followers (`follow`) under a random workload
//! equal SQL; a follower SIGKILLed resumes from its own data directory; NATS going away leaves
//! the leader applying with nothing confirmed past what JetStream acknowledged, `/health`
//! saying why, and the backlog published when NATS returns; a follower the stream left behind
//! re-bootstraps from the newest snapshot and says so.

mod common;

use common::nats::Nats;
use common::replica::{self, compare_over_http, confirmed_flush, current_lsn, http_json};
use common::workload::{self, Workload};
use pgoutput::Lsn;
use pgtest::Cluster;
use std::time::{Duration, Instant};

/// A database of its own with the workload's schema and `rows` seeded, and a data directory
/// holding the mapping for it.
struct Setup {
    cluster: &'static Cluster,
    db: String,
    w: Workload,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(name: &str, seed: u64, rows: usize) -> Setup {
    let cluster = Cluster::shared();
    let db = cluster.create_database(name);
    cluster.psql(&db, workload::SCHEMA);
    let mut w = Workload::new(seed);
    cluster.psql(&db, &w.seed(rows));
    let dir = tempfile::tempdir().unwrap();
    let config = workload::write_config(dir.path(), &db);
    Setup {
        cluster,
        db,
        w,
        dir,
        config,
    }
}

fn wait_for(what: &str, r: &mut replica::Replicator, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if let Ok(Some(s)) = r.child.try_wait() {
            panic!("graphsync exited with {s} waiting for {what}; log:\n{}", r.log());
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The LSN of the stream's newest message, read from NATS itself.
fn stream_end(url: &str, db: &str) -> Lsn {
    let opts = scaleout::NatsOptions {
        url: url.to_string(),
        stream: scaleout::default_stream_name(&format!("gs_{db}")),
        creds_file: None,
        ca_file: None,
        replicas: 1,
        max_bytes: 0,
        max_age: Duration::ZERO,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(scaleout::stream_end(&opts))
        .expect("stream readable")
        .unwrap_or(Lsn(0))
}

fn health(addr: &str) -> serde_json::Value {
    http_json(addr, "/health").1
}

fn lsn_of(j: &serde_json::Value, key: &str) -> Lsn {
    j[key].as_str().and_then(|s| s.parse().ok()).unwrap_or(Lsn(0))
}

/// A leader publishing and two followers, under 600 random transactions (a TRUNCATE, a
/// streamed transaction, an abort): every follower equals SQL at the last commit, the slot
/// never confirmed past what JetStream acknowledged, one primary walsender; a follower
/// SIGKILLed resumes from its own data directory (no new download) and equals SQL again.
#[test]
fn followers_equal_sql_and_a_killed_follower_resumes() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_sql", 0x5ca1e, 200);
    let nats = Nats::start();
    let mut leader = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("leader"),
        &["--publish", &nats.url(), "--compaction-threshold", "400"],
    );
    let laddr = leader.addr();
    // Publishing starts with the first snapshot (the slot's creation point).
    wait_for("publishing", &mut leader, Duration::from_secs(60), || {
        health(&laddr)["published_lsn"].is_string()
    });
    let mut followers: Vec<replica::Replicator> = (0..2)
        .map(|i| {
            replica::spawn_follower(
                &nats.url(),
                &config,
                &dir.path().join(format!("follower{i}")),
                &["--compaction-threshold", "300", "--snapshot-after-changes", "400"],
            )
        })
        .collect();
    for batch in 0..6 {
        cluster.psql(
            &db,
            &w.script(
                100,
                (batch == 2).then_some(40),
                (batch == 4).then_some(7),
                (batch == 1).then_some(3),
            ),
        );
        // The slot never confirms what the stream does not hold (read from NATS itself).
        let confirmed = confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap_or(Lsn(0));
        let end = stream_end(&nats.url(), &db);
        assert!(confirmed <= end, "confirmed {confirmed} past the stream's end {end}");
    }
    let last = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    for f in followers.iter_mut() {
        let addr = f.addr();
        compare_over_http(&addr, &expected, last);
        let h = health(&addr);
        assert_eq!(h["role"], "follower", "{h}");
    }
    // One walsender, whatever the number of followers.
    let senders = cluster.psql(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = current_database()",
    );
    assert_eq!(senders.trim(), "1", "walsenders: {senders}");
    // SIGKILL a follower, write more, start it again on its data directory.
    let killed = followers.remove(0);
    let log = killed.kill();
    assert!(log.contains("downloaded the leader's snapshot"), "{log}");
    cluster.psql(&db, &w.script(100, None, None, None));
    let mut again = replica::spawn_follower(&nats.url(), &config, &dir.path().join("follower0"), &[]);
    let last = current_lsn(cluster, &db);
    let addr = again.addr();
    compare_over_http(&addr, &workload::expected(cluster, &db), last);
    let log = again.log();
    let run = log.rsplit("HTTP API listening").next().unwrap_or("");
    assert!(run.contains("restored"), "resumed from its own data directory:\n{log}");
    assert!(
        !run.contains("downloaded the leader's snapshot"),
        "downloaded again:\n{log}"
    );
    let (_, metrics) = replica::http_get(&addr, "/metrics", None);
    assert!(
        metrics.contains("graphsync_follower_records_applied_total"),
        "{metrics}"
    );
    for f in [again].into_iter().chain(followers) {
        let (status, log) = f.stop();
        assert!(status.success(), "follower exited with {status}; log:\n{log}");
    }
    let (status, log) = leader.stop();
    assert!(status.success(), "leader exited with {status}; log:\n{log}");
}

/// NATS killed under a writer: the leader keeps applying (queries at the newest commit answer),
/// `/health` says `publish_stalled`, the slot confirms nothing past what was acknowledged; when
/// NATS returns the backlog is published and a follower equals SQL.
#[test]
fn nats_away_holds_confirms_and_the_backlog_follows_when_it_returns() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_away", 0xa11a, 100);
    let mut nats = Nats::start();
    let mut leader = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("leader"),
        &["--publish", &nats.url()],
    );
    let laddr = leader.addr();
    let mut follower = replica::spawn_follower(&nats.url(), &config, &dir.path().join("follower"), &[]);
    let faddr = follower.addr();
    cluster.psql(&db, &w.script(50, None, None, None));
    let last = current_lsn(cluster, &db);
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    nats.stop();
    cluster.psql(&db, &w.script(100, None, None, None));
    let last = current_lsn(cluster, &db);
    // Applied locally: the leader answers at the newest commit.
    compare_over_http(&laddr, &workload::expected(cluster, &db), last);
    wait_for("publish_stalled", &mut leader, Duration::from_secs(60), || {
        health(&laddr)["status"] == "publish_stalled"
    });
    let h = health(&laddr);
    assert!(
        h["publish_error"]
            .as_str()
            .is_some_and(|e| e.contains("NATS") || e.contains("JetStream")),
        "{h}"
    );
    let published = lsn_of(&h, "published_lsn");
    assert!(
        published < last,
        "published {published} though NATS is away (last {last})"
    );
    // Several polls while NATS is away: the slot stays at or before what was acknowledged.
    for _ in 0..10 {
        let confirmed = confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap_or(Lsn(0));
        assert!(
            confirmed <= published,
            "confirmed {confirmed} past published {published}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nats.restart();
    wait_for("published again", &mut leader, Duration::from_secs(60), || {
        let h = health(&laddr);
        h["status"] == "streaming" && lsn_of(&h, "published_lsn") >= last
    });
    wait_for(
        "confirmed past the outage",
        &mut leader,
        Duration::from_secs(60),
        || confirmed_flush(cluster, &db, &format!("gs_{db}")).is_some_and(|c| c >= last),
    );
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    follower.stop();
    leader.stop();
}

/// A follower stopped while the stream (kept small) drops the records it would need next:
/// started again, it says it re-bootstraps, loads the newest snapshot and equals SQL.
#[test]
fn a_follower_the_stream_left_behind_rebootstraps() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_behind", 0xbe1d, 100);
    let nats = Nats::start();
    let mut leader = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("leader"),
        &["--publish", &nats.url(), "--stream-max-mb", "1"],
    );
    let laddr = leader.addr();
    let fdir = dir.path().join("follower");
    let mut follower = replica::spawn_follower(&nats.url(), &config, &fdir, &[]);
    let faddr = follower.addr();
    cluster.psql(&db, &w.script(20, None, None, None));
    compare_over_http(&faddr, &workload::expected(cluster, &db), current_lsn(cluster, &db));
    follower.stop();
    // Well over a megabyte of records (the stream drops the oldest), and snapshots meanwhile.
    for i in 0..6 {
        cluster.psql(
            &db,
            &format!(
                "INSERT INTO users SELECT g, g % 3, repeat('x', 200) || g, NULL FROM generate_series({a}, {b}) g",
                a = 1_000_000 + i * 2_000,
                b = 1_000_000 + i * 2_000 + 1_999
            ),
        );
    }
    let last = current_lsn(cluster, &db);
    wait_for("published", &mut leader, Duration::from_secs(60), || {
        lsn_of(&health(&laddr), "published_lsn") >= last
    });
    let mut follower = replica::spawn_follower(&nats.url(), &config, &fdir, &[]);
    let faddr = follower.addr();
    wait_for(
        "the follower at the last commit",
        &mut follower,
        Duration::from_secs(60),
        || lsn_of(&health(&faddr), "applied_lsn") >= last,
    );
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    let log = follower.log();
    assert!(
        log.contains("re-bootstrapping from the newest published snapshot"),
        "{log}"
    );
    let (_, metrics) = replica::http_get(&faddr, "/metrics", None);
    assert!(
        !metrics.contains("graphsync_follower_rebootstraps_total 0"),
        "{metrics}"
    );
    follower.stop();
    leader.stop();
}

/// A leader, two standbys (`replicate --publish` on the same slot, each its own data
/// directory) and a follower under a writer; the leader SIGKILLed mid-load: one standby takes
/// over the slot and the stream's chain while the other keeps following, the follower equals
/// SQL with no record lost or applied twice (either would break the chain: it never
/// re-bootstraps), and the old leader started again stands by.
#[test]
fn the_standby_takes_over_when_the_leader_is_killed() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_failover", 0xfa11, 150);
    let nats = Nats::start();
    let publish = ["--publish", &nats.url()];
    let mut leader = replica::spawn(cluster, &db, &config, &dir.path().join("leader"), &publish);
    let laddr = leader.addr();
    wait_for("publishing", &mut leader, Duration::from_secs(60), || {
        health(&laddr)["published_lsn"].is_string()
    });
    // Two standbys: one takes over, the other keeps following it.
    let mut standbys: Vec<(replica::Replicator, String)> = ["standby1", "standby2"]
        .iter()
        .map(|name| {
            let mut s = replica::spawn(cluster, &db, &config, &dir.path().join(name), &publish);
            let addr = s.addr();
            wait_for("a standby following", &mut s, Duration::from_secs(60), || {
                let h = health(&addr);
                h["role"] == "follower" && h["status"] == "streaming"
            });
            (s, addr)
        })
        .collect();
    let mut follower = replica::spawn_follower(&nats.url(), &config, &dir.path().join("follower"), &[]);
    let faddr = follower.addr();
    // The writer runs through the kill.
    let scripts: Vec<String> = (0..60).map(|_| w.script(15, None, None, None)).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            for s in scripts {
                cluster.psql(&db, &s);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    wait_for("a third of the load", &mut follower, Duration::from_secs(60), || {
        done.load(std::sync::atomic::Ordering::SeqCst) >= 20
    });
    let log = leader.kill();
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst) < 60,
        "the writer finished before the kill"
    );
    let roles = |standbys: &[(replica::Replicator, String)]| -> Vec<String> {
        standbys
            .iter()
            .map(|(_, a)| {
                let h = health(a);
                format!(
                    "{}/{}",
                    h["role"].as_str().unwrap_or("?"),
                    h["status"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let winner = loop {
        let r = roles(&standbys);
        if let Some(i) = r.iter().position(|r| r == "leader/streaming") {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no standby leads: {r:?}\n{}\n{}",
            standbys[0].0.log(),
            standbys[1].0.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    let last = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    for (_, addr) in &standbys {
        compare_over_http(addr, &expected, last);
    }
    compare_over_http(&faddr, &expected, last);
    // One leader: the other standby still follows.
    let r = roles(&standbys);
    assert_eq!(
        r.iter().filter(|r| r.starts_with("leader")).count(),
        1,
        "{r:?}\n{}\n{}",
        standbys[0].0.log(),
        standbys[1].0.log()
    );
    // The new leader publishes and confirms past the kill.
    let (standby, saddr) = &mut standbys[winner];
    wait_for("confirmed by the new leader", standby, Duration::from_secs(60), || {
        confirmed_flush(cluster, &db, &format!("gs_{db}")).is_some_and(|c| c >= last)
    });
    let slog = standby.log();
    assert!(
        slog.contains("taking over the slot"),
        "standby log:\n{slog}\nleader log:\n{log}"
    );
    let saddr = saddr.clone();
    let (_, metrics) = replica::http_get(&faddr, "/metrics", None);
    assert!(
        metrics.contains("graphsync_follower_rebootstraps_total 0"),
        "the follower's chain broke:\n{metrics}\n{}",
        follower.log()
    );
    // The old leader, started again, finds the slot taken and stands by.
    let mut old = replica::spawn(cluster, &db, &config, &dir.path().join("leader"), &publish);
    let oaddr = old.addr();
    wait_for("the old leader standing by", &mut old, Duration::from_secs(60), || {
        health(&oaddr)["role"] == "follower"
    });
    cluster.psql(&db, &w.script(30, None, None, None));
    let last = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    compare_over_http(&faddr, &expected, last);
    compare_over_http(&saddr, &expected, last);
    for (s, _) in standbys {
        let (status, log) = s.stop();
        assert!(status.success(), "{log}");
    }
    old.kill();
    follower.stop();
}

/// Sends `signal` (`STOP`, `CONT`) to a replica's process.
fn signal(r: &replica::Replicator, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &r.child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{signal} failed");
}

/// The process streaming from `slot`, if any.
fn slot_holder(cluster: &Cluster, db: &str, slot: &str) -> Option<u32> {
    cluster
        .psql(
            db,
            &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )
        .trim()
        .parse()
        .ok()
}

/// The leader frozen (SIGSTOP) and its walsender terminated, as a network cut would leave it,
/// twice, under load: the standby takes over and fences the stream; the old leader, resumed
/// with records in its log the stream never got, is refused, finds the stream fenced, releases
/// the slot and stands by (no publishing trouble reported) instead of publishing after the
/// fence. One process leads at the end; both and a follower equal SQL, the follower's chain
/// never broke (nothing published twice or out of order), and the slot never confirmed past
/// the stream's end.
#[test]
fn a_leader_cut_off_from_its_slot_is_fenced_and_stands_by() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_cutoff", 0xc07, 120);
    let nats = Nats::start();
    let publish = ["--publish", &nats.url()];
    let slot = format!("gs_{db}");
    let mut a = replica::spawn(cluster, &db, &config, &dir.path().join("a"), &publish);
    let aaddr = a.addr();
    wait_for("publishing", &mut a, Duration::from_secs(60), || {
        health(&aaddr)["published_lsn"].is_string()
    });
    let mut b = replica::spawn(cluster, &db, &config, &dir.path().join("b"), &publish);
    let baddr = b.addr();
    wait_for("the standby following", &mut b, Duration::from_secs(60), || {
        let h = health(&baddr);
        h["role"] == "follower" && h["status"] == "streaming"
    });
    let mut follower = replica::spawn_follower(&nats.url(), &config, &dir.path().join("follower"), &[]);
    let faddr = follower.addr();
    let (mut leader, mut standby) = ((&mut a, aaddr.clone()), (&mut b, baddr.clone()));
    for round in 0..2 {
        // The writer runs through the cut.
        let scripts: Vec<String> = (0..30).map(|_| w.script(10, None, None, None)).collect();
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for s in scripts {
                    cluster.psql(&db, &s);
                }
            })
        };
        let pid = {
            let mut pid = None;
            wait_for("the leader streaming", leader.0, Duration::from_secs(60), || {
                pid = slot_holder(cluster, &db, &slot);
                pid.is_some() && health(&leader.1)["role"] == "leader"
            });
            pid.unwrap()
        };
        signal(leader.0, "STOP");
        cluster.psql(&db, &format!("SELECT pg_terminate_backend({pid})"));
        wait_for(
            &format!("the standby leading (round {round})"),
            standby.0,
            Duration::from_secs(60),
            || {
                let h = health(&standby.1);
                h["role"] == "leader" && h["status"] == "streaming"
            },
        );
        signal(leader.0, "CONT");
        wait_for(
            &format!("the old leader standing by (round {round})"),
            leader.0,
            Duration::from_secs(60),
            || {
                let h = health(&leader.1);
                h["role"] == "follower" && h["status"] == "streaming"
            },
        );
        writer.join().unwrap();
        let last = current_lsn(cluster, &db);
        let expected = workload::expected(cluster, &db);
        for addr in [&standby.1, &leader.1, &faddr] {
            compare_over_http(addr, &expected, last);
        }
        // The one standing by reports no publishing of its own.
        let h = health(&leader.1);
        assert!(
            h["published_lsn"].is_null() && h["status"] != "publish_stalled",
            "round {round}: {h}\n{}",
            leader.0.log()
        );
        let llog = leader.0.log();
        assert!(
            llog.contains("took over the stream") || llog.contains("another process took the slot"),
            "round {round}: {llog}"
        );
        std::mem::swap(&mut leader, &mut standby);
    }
    // The leader (a again) publishes and confirms what was written, never past the stream.
    cluster.psql(&db, &w.script(20, None, None, None));
    let last = current_lsn(cluster, &db);
    wait_for("confirmed past the cuts", leader.0, Duration::from_secs(60), || {
        confirmed_flush(cluster, &db, &slot).is_some_and(|c| c >= last)
    });
    let end = stream_end(&nats.url(), &db);
    let confirmed = confirmed_flush(cluster, &db, &slot).unwrap_or(Lsn(0));
    assert!(confirmed <= end, "confirmed {confirmed} past the stream's end {end}");
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    let (_, metrics) = replica::http_get(&faddr, "/metrics", None);
    assert!(
        metrics.contains("graphsync_follower_rebootstraps_total 0"),
        "the follower's chain broke:\n{metrics}\n{}",
        follower.log()
    );
    follower.stop();
    a.stop();
    b.stop();
}

/// A three-node NATS cluster with the stream replicated three times; the node the clients
/// talk to first is killed mid-load: publishing goes on through the others, nothing is lost
/// (the follower equals SQL, its chain unbroken), and confirms pass the outage.
#[test]
fn one_nats_node_of_three_killed_loses_nothing() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_r3", 0x3333, 100);
    let mut nodes = Nats::cluster(3);
    let urls = Nats::urls(&nodes);
    let mut leader = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("leader"),
        &["--publish", &urls, "--stream-replicas", "3"],
    );
    let laddr = leader.addr();
    wait_for(
        "publishing (the cluster elects its JetStream leaders first)",
        &mut leader,
        Duration::from_secs(90),
        || health(&laddr)["published_lsn"].is_string(),
    );
    let mut follower = replica::spawn_follower(&urls, &config, &dir.path().join("follower"), &[]);
    let faddr = follower.addr();
    let scripts: Vec<String> = (0..40).map(|_| w.script(15, None, None, None)).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            for s in scripts {
                cluster.psql(&db, &s);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    wait_for("a quarter of the load", &mut follower, Duration::from_secs(60), || {
        done.load(std::sync::atomic::Ordering::SeqCst) >= 10
    });
    nodes[0].stop();
    writer.join().unwrap();
    let last = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    // After the node's loss the stream's and the bucket's leaders are elected again, and a
    // snapshot download cut there is retried after its stall timeout (20 s): on a loaded
    // machine catching up can take longer than the comparison's own wait. This test asserts
    // that nothing is lost, not how fast; a follower that never gets there prints its log.
    wait_for(
        "the follower at the last commit after the outage",
        &mut follower,
        Duration::from_secs(120),
        || lsn_of(&health(&faddr), "applied_lsn") >= last,
    );
    compare_over_http(&faddr, &expected, last);
    wait_for(
        "confirmed past the outage",
        &mut leader,
        Duration::from_secs(90),
        || confirmed_flush(cluster, &db, &format!("gs_{db}")).is_some_and(|c| c >= last),
    );
    let (_, metrics) = replica::http_get(&faddr, "/metrics", None);
    assert!(
        metrics.contains("graphsync_follower_rebootstraps_total 0"),
        "the follower's chain broke; follower log:\n{}\nleader log:\n{}",
        follower.log(),
        leader.log()
    );
    follower.stop();
    leader.stop();
}

/// A leader whose graph is rebuilt (`--rebuild` with a usable data directory: a new
/// generation, other node ids) does not continue the old chain with records that do not fit:
/// it starts a new one from its new snapshot, the follower re-bootstraps from that snapshot
/// (it says so) and equals SQL again; confirms never pass what is published. A standby then
/// started takes over the rebuild's slot when the leader is killed.
#[test]
fn a_rebuilt_leader_starts_a_new_chain_and_followers_rebootstrap() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_rebuilt", 0x4eb, 100);
    let nats = Nats::start();
    let ldir = dir.path().join("leader");
    let leader = replica::spawn(cluster, &db, &config, &ldir, &["--publish", &nats.url()]);
    let mut follower = replica::spawn_follower(&nats.url(), &config, &dir.path().join("follower"), &[]);
    let faddr = follower.addr();
    cluster.psql(&db, &w.script(30, None, None, None));
    let before = current_lsn(cluster, &db);
    compare_over_http(&faddr, &workload::expected(cluster, &db), before);
    let (status, log) = leader.stop();
    assert!(status.success(), "{log}");
    let mut leader = replica::spawn(cluster, &db, &config, &ldir, &["--publish", &nats.url(), "--rebuild"]);
    let laddr = leader.addr();
    wait_for("the rebuild swapped in", &mut leader, Duration::from_secs(120), || {
        let j = http_json(&laddr, "/v1/status").1;
        j["rebuilds"].as_u64() == Some(1) && j["rebuild"].is_null()
    });
    cluster.psql(&db, &w.script(40, None, None, None));
    let last = current_lsn(cluster, &db);
    let deadline = Instant::now() + Duration::from_secs(90);
    while lsn_of(&health(&faddr), "applied_lsn") < last {
        assert!(
            Instant::now() < deadline,
            "the follower did not reach {last}; follower log:\n{}\nleader log:\n{}",
            follower.log(),
            leader.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    let flog = follower.log();
    assert!(
        flog.contains("another graph lineage") || flog.contains("records of graph lineage"),
        "{flog}"
    );
    let (_, metrics) = replica::http_get(&faddr, "/metrics", None);
    assert!(
        !metrics.contains("graphsync_follower_rebootstraps_total 0"),
        "{metrics}"
    );
    let llog = leader.log();
    assert!(llog.contains("starting a new chain"), "{llog}");
    // The slot first, then the publisher: both only move forward, and positions keep being
    // published while idle, so the other order races a legitimate confirm.
    let g1 = format!("gs_{db}_g1");
    for _ in 0..5 {
        let confirmed = confirmed_flush(cluster, &db, &g1).unwrap_or(Lsn(0));
        let published = lsn_of(&health(&laddr), "published_lsn");
        assert!(
            confirmed <= published,
            "confirmed {confirmed} past published {published}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A standby watches the slot the leader streams from (its rebuild's, the configured one
    // is gone) and, the leader killed, takes over that one.
    let mut standby = replica::spawn(
        cluster,
        &db,
        &config,
        &dir.path().join("standby"),
        &["--publish", &nats.url()],
    );
    let saddr = standby.addr();
    wait_for("the standby following", &mut standby, Duration::from_secs(60), || {
        let h = health(&saddr);
        h["role"] == "follower" && h["status"] == "streaming"
    });
    let llog = leader.kill();
    wait_for("the standby leading", &mut standby, Duration::from_secs(60), || {
        let h = health(&saddr);
        h["role"] == "leader" && h["status"] == "streaming"
    });
    cluster.psql(&db, &w.script(20, None, None, None));
    let last = current_lsn(cluster, &db);
    wait_for(
        "confirmed by the new leader",
        &mut standby,
        Duration::from_secs(60),
        || confirmed_flush(cluster, &db, &g1).is_some_and(|c| c >= last),
    );
    compare_over_http(&saddr, &workload::expected(cluster, &db), last);
    compare_over_http(&faddr, &workload::expected(cluster, &db), last);
    let slog = standby.log();
    assert!(
        slog.contains("taking over the slot the last leader streamed from"),
        "standby log:\n{slog}\nleader log:\n{llog}"
    );
    follower.stop();
    standby.stop();
}

/// The leader SIGKILLed mid-load and started again on its data directory (no standby): it
/// publishes what its log holds beyond the stream and continues the chain; two followers
/// equal SQL without re-bootstrapping, and the slot never confirmed past the stream's end.
#[test]
fn a_leader_killed_and_restarted_continues_the_chain() {
    let Setup {
        cluster,
        db,
        mut w,
        dir,
        config,
    } = setup("scaleout_restart", 0x7e57, 150);
    let nats = Nats::start();
    let ldir = dir.path().join("leader");
    let mut leader = replica::spawn(cluster, &db, &config, &ldir, &["--publish", &nats.url()]);
    let laddr = leader.addr();
    wait_for("publishing", &mut leader, Duration::from_secs(60), || {
        health(&laddr)["published_lsn"].is_string()
    });
    let mut followers: Vec<replica::Replicator> = (0..2)
        .map(|i| replica::spawn_follower(&nats.url(), &config, &dir.path().join(format!("f{i}")), &[]))
        .collect();
    let scripts: Vec<String> = (0..60).map(|_| w.script(15, None, None, None)).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            for s in scripts {
                cluster.psql(&db, &s);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    wait_for(
        "a third of the load",
        &mut followers[0],
        Duration::from_secs(60),
        || done.load(std::sync::atomic::Ordering::SeqCst) >= 20,
    );
    leader.kill();
    let confirmed = confirmed_flush(cluster, &db, &format!("gs_{db}")).unwrap_or(Lsn(0));
    let end = stream_end(&nats.url(), &db);
    assert!(confirmed <= end, "confirmed {confirmed} past the stream's end {end}");
    let mut leader = replica::spawn(cluster, &db, &config, &ldir, &["--publish", &nats.url()]);
    writer.join().unwrap();
    let last = current_lsn(cluster, &db);
    let expected = workload::expected(cluster, &db);
    for f in followers.iter_mut() {
        let addr = f.addr();
        compare_over_http(&addr, &expected, last);
        let (_, metrics) = replica::http_get(&addr, "/metrics", None);
        assert!(
            metrics.contains("graphsync_follower_rebootstraps_total 0"),
            "the chain broke:\n{metrics}\n{}",
            f.log()
        );
    }
    let laddr = leader.addr();
    wait_for(
        "confirmed past the restart",
        &mut leader,
        Duration::from_secs(60),
        || confirmed_flush(cluster, &db, &format!("gs_{db}")).is_some_and(|c| c >= last),
    );
    for f in followers {
        f.stop();
    }
    let h = health(&laddr);
    assert_eq!(h["role"], "leader", "{h}");
    leader.stop();
}
