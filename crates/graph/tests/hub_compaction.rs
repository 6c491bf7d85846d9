//! A hub under a follow/unfollow load with background compactions, against a plain oracle.
//!
//! Models `tests/sync.rs::hub_heavy_pgbench_load_equals_sql` in the pure graph crate: users
//! are nodes, follows are edges (follower → followee) keyed (follower, followee) like the SQL
//! table. Each source transaction inserts a few follows from random followers to Zipf-chosen
//! followees (node 1 is a hub with long base and overlay lists), deletes one follow of a
//! Zipf-chosen followee the way the mapper does (`Txn::find_edge`, then `remove_edge` of that
//! exact edge) and updates a user; several source transactions go into one graph transaction
//! (as the replicator batches them), some graph transactions are dropped (an error path), and
//! compactions run as the replicator runs them: `begin_compaction`, more transactions
//! committed meanwhile, `CompactionJob::build`, `finish_compaction` (which replays them onto
//! the new base). Old views are held across compactions and released at random. After every
//! commit the hub's edges both ways (and a few other nodes') equal the oracle's.

use graph::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const HUB: u32 = 1;
const FOLLOWS: EdgeLabel = EdgeLabel(0);
const USER: NodeLabel = NodeLabel(0);

/// The follows table: (follower, followee) → weight (a key, so no parallel edges).
#[derive(Debug, Clone, Default)]
struct Oracle {
    follows: BTreeMap<(u32, u32), u64>,
    /// When each follow was inserted (a counter): SQL's `LIMIT 1` through the followee index
    /// returns about the oldest row.
    born: BTreeMap<(u32, u32), u64>,
}

impl Oracle {
    /// `n`'s edges per direction as (other, label, weight bits), sorted.
    fn sides(&self, n: u32) -> Sides {
        let out = self
            .follows
            .range((n, 0)..=(n, u32::MAX))
            .map(|(&(_, t), &w)| (t, FOLLOWS.0, w))
            .collect();
        let mut inc: Vec<_> = self
            .follows
            .iter()
            .filter(|(&(_, t), _)| t == n)
            .map(|(&(s, _), &w)| (s, FOLLOWS.0, w))
            .collect();
        inc.sort();
        [out, inc]
    }
}

/// A node's edges out and in as (other, label, weight bits), sorted.
type Sides = [Vec<(u32, u8, u64)>; 2];

fn sides(v: &GraphView, n: u32) -> Sides {
    let mut r = [Vec::new(), Vec::new()];
    for (i, dir) in [Direction::Out, Direction::In].into_iter().enumerate() {
        v.for_each_edge(NodeId(n), dir, |m, l, w| r[i].push((m.0, l.0, w.to_bits())));
        r[i].sort();
    }
    r
}

/// Panics with what differs (extra and missing edges) if `v` does not hold the oracle's
/// edges of `n`.
fn check_node(v: &GraphView, o: &Oracle, n: u32, what: &str) {
    let got = sides(v, n);
    let want = o.sides(n);
    for (i, dir) in ["out", "in"].into_iter().enumerate() {
        if got[i] != want[i] {
            let extra: Vec<_> = got[i].iter().filter(|e| !want[i].contains(e)).collect();
            let missing: Vec<_> = want[i].iter().filter(|e| !got[i].contains(e)).collect();
            panic!(
                "{what}: node {n} {dir}: {} edges, want {}; extra {extra:?}, missing {missing:?}",
                got[i].len(),
                want[i].len()
            );
        }
    }
}

fn edge(s: u32, t: u32, w: f64) -> EdgeInput {
    EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: FOLLOWS,
        weight: w,
    }
}

fn user(id: u32, version: i64) -> NodeData {
    let mut d = NodeData::bare(USER, NodeKey::Int(i64::from(id)));
    d.properties = Arc::from(vec![(Arc::<str>::from("v"), PropValue::Int(version))]);
    d
}

/// Knobs of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    users: u32,
    /// Follows of the hub in the first base.
    hub_base: u32,
    /// Source transactions.
    txns: u32,
    /// Overlay edge changes that start a compaction (the replicator's threshold).
    threshold: usize,
    /// A compaction in flight is finished after 0..this many graph transactions.
    max_in_flight: u32,
    /// 1 in this many graph transactions is dropped.
    drop_one_in: u32,
    /// Deletes the oldest follow of the followee (else a random one).
    fifo: bool,
}

struct Sim {
    rng: fastrand::Rng,
    p: Params,
    oracle: Oracle,
    lsn: u64,
    version: i64,
    born: u64,
}

impl Sim {
    /// A Zipf-like followee: the hub most often, then a few smaller hubs, then anyone.
    fn followee(&mut self) -> u32 {
        match self.rng.u32(0..100) {
            0..50 => HUB,
            50..70 => 2 + self.rng.u32(0..4),
            _ => self.rng.u32(0..self.p.users),
        }
    }

    fn weight(&mut self) -> f64 {
        // Mostly 1.0 (the replicator's unweighted follows), sometimes another exact weight.
        [1.0, 1.0, 1.0, 2.5][self.rng.usize(0..4)]
    }

    /// One source transaction into `t` and `o`.
    fn source_txn(&mut self, t: &mut Txn<'_>, o: &mut Oracle) {
        for _ in 0..3 {
            let (s, d) = (self.rng.u32(0..self.p.users), self.followee());
            if o.follows.contains_key(&(s, d)) {
                continue; // ON CONFLICT DO NOTHING
            }
            let w = self.weight();
            t.add_edge(edge(s, d, w)).unwrap();
            o.follows.insert((s, d), w.to_bits());
            self.born += 1;
            o.born.insert((s, d), self.born);
        }
        // Delete one follow of a Zipf-chosen followee, found like the mapper finds it.
        let d = self.followee();
        let followers: Vec<u32> = o.follows.keys().filter(|k| k.1 == d).map(|k| k.0).collect();
        if !followers.is_empty() {
            let s = if self.p.fifo {
                *followers
                    .iter()
                    .min_by_key(|&&s| o.born.get(&(s, d)).copied().unwrap_or(0))
                    .unwrap()
            } else {
                followers[self.rng.usize(0..followers.len())]
            };
            let e = t
                .find_edge(NodeId(s), NodeId(d), FOLLOWS)
                .unwrap_or_else(|| panic!("find_edge misses {s} -> {d}"));
            assert_eq!(e.weight.to_bits(), o.follows[&(s, d)], "find_edge found another weight");
            t.remove_edge(e).unwrap();
            o.follows.remove(&(s, d));
            o.born.remove(&(s, d));
        }
        // Update a user.
        self.version += 1;
        let u = self.rng.u32(0..self.p.users);
        t.upsert_node(user(u, self.version));
    }
}

fn run(seed: u64, p: Params) {
    let mut sim = Sim {
        rng: fastrand::Rng::with_seed(seed),
        p,
        oracle: Oracle::default(),
        lsn: 1,
        version: 0,
        born: 0,
    };
    // The first base: every user, the hub's followers, some other follows.
    let mut base = Vec::new();
    let mut followers: Vec<u32> = (0..p.users).filter(|&u| u != HUB).collect();
    sim.rng.shuffle(&mut followers);
    for &s in followers.iter().take(p.hub_base as usize) {
        sim.oracle.follows.insert((s, HUB), 1f64.to_bits());
    }
    for _ in 0..p.hub_base {
        let (s, d) = (sim.rng.u32(0..p.users), sim.followee());
        sim.oracle.follows.entry((s, d)).or_insert(1f64.to_bits());
    }
    for (&(s, d), &w) in &sim.oracle.follows {
        base.push(edge(s, d, f64::from_bits(w)));
    }
    let nodes = (0..p.users).map(|u| Some(user(u, 0))).collect();
    let policy = CompactionPolicy {
        soft_limit: p.threshold,
        hard_limit: 1 << 30,
    };
    let mut g = Graph::bulk(nodes, &base, false, 1, policy).unwrap();
    let mut job: Option<(CompactionJob, u32)> = None;
    let mut held: Vec<(Arc<GraphView>, Sides)> = Vec::new();
    let mut done = 0;
    while done < p.txns {
        // One graph transaction: a few source transactions back to back.
        let batch = 1 + sim.rng.u32(0..4);
        sim.lsn += 1;
        let mut next = sim.oracle.clone();
        let mut t = g.begin(sim.lsn).unwrap();
        for _ in 0..batch {
            sim.source_txn(&mut t, &mut next);
        }
        if p.drop_one_in > 0 && sim.rng.u32(0..p.drop_one_in) == 0 {
            drop(t);
        } else {
            let v = t.commit().unwrap();
            sim.oracle = next;
            done += batch;
            let what = format!("seed {seed}, lsn {}", v.lsn());
            check_node(&v, &sim.oracle, HUB, &what);
            for _ in 0..3 {
                let n = sim.rng.u32(0..p.users);
                check_node(&v, &sim.oracle, n, &what);
            }
            if sim.rng.u32(0..8) == 0 {
                held.push((v.clone(), sim.oracle.sides(HUB)));
            }
        }
        if !held.is_empty() && sim.rng.u32(0..6) == 0 {
            let (v, want) = held.swap_remove(sim.rng.usize(0..held.len()));
            assert_eq!(
                sides(&v, HUB),
                want,
                "seed {seed}: held view at lsn {} changed",
                v.lsn()
            );
        }
        // Compactions as the replicator runs them.
        match job.take() {
            None => {
                if g.needs_compaction() {
                    let j = g.begin_compaction();
                    job = Some((j, sim.rng.u32(0..=p.max_in_flight)));
                }
            }
            Some((j, 0)) => {
                let v = g.finish_compaction(j.build()).unwrap();
                let what = format!("seed {seed}, after compaction at lsn {}", v.lsn());
                check_node(&v, &sim.oracle, HUB, &what);
            }
            Some((j, n)) => job = Some((j, n - 1)),
        }
    }
    let v = g.view();
    for n in 0..p.users {
        check_node(&v, &sim.oracle, n, &format!("seed {seed}, at the end"));
    }
    for (v, want) in held {
        assert_eq!(
            sides(&v, HUB),
            want,
            "seed {seed}: held view at lsn {} changed",
            v.lsn()
        );
    }
}

/// Seeds per test unless `SEEDS` says (fewer in debug builds; hunt with `SEEDS=80 cargo test
/// --release -p graph --test hub_compaction`).
const DEFAULT_SEEDS: u64 = if cfg!(debug_assertions) { 1 } else { 4 };

const HUNT: Params = Params {
    users: 2300,
    hub_base: 1500,
    txns: 6000,
    threshold: 500,
    max_in_flight: 40,
    drop_one_in: 50,
    fifo: false,
};

const PGBENCH: Params = Params {
    users: 3000,
    hub_base: 0,
    txns: 8000,
    threshold: 5000,
    max_in_flight: 100,
    drop_one_in: 0,
    fifo: true,
};

#[test]
fn hunt_pgbench() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    for seed in 0..seeds {
        run(seed, PGBENCH);
    }
}

#[test]
fn hunt() {
    let seeds: u64 = std::env::var("SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    for seed in 0..seeds {
        run(seed, HUNT);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]
    #[test]
    fn small(seed in any::<u64>()) {
        run(seed, Params { users: 300, hub_base: 150, txns: 800, threshold: 60, max_in_flight: 20, drop_one_in: 20, fifo: false });
    }
}
