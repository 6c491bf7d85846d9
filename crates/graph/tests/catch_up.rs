//! A compaction that runs while many transactions are applied: its thread replays them onto
//! the fresh base in rounds while the writer keeps committing, the writer replays the rest
//! when it swaps the result in, and every node's edges equal a plain oracle afterwards —
//! also after removals that go through the edge index the compaction's thread built.

use graph::*;
use std::collections::BTreeMap;

const N: u32 = 200;

/// Multiset of edges (source, target, weight bits) → count.
type Oracle = BTreeMap<(u32, u32, u64), u32>;

fn edge(s: u32, t: u32, w: f64) -> EdgeInput {
    EdgeInput {
        source: NodeId(s),
        target: NodeId(t),
        label: EdgeLabel(0),
        weight: w,
    }
}

struct Load {
    x: u64,
    oracle: Oracle,
    lsn: u64,
}

impl Load {
    fn next(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// One transaction: `adds` edges, half of them on node 0 (a hub), and about a third as
    /// many removals of existing edges.
    fn txn(&mut self, g: &mut Graph, adds: usize) {
        let mut muts = Vec::new();
        let mut o = self.oracle.clone();
        for i in 0..adds {
            let s = if i % 2 == 0 {
                0
            } else {
                (self.next() % u64::from(N)) as u32
            };
            let t = (self.next() % u64::from(N)) as u32;
            let w = (self.next() % 4) as f64;
            *o.entry((s, t, w.to_bits())).or_default() += 1;
            muts.push(Mutation::AddEdge(edge(s, t, w)));
            if i % 3 == 0 && !o.is_empty() {
                let k = (self.next() as usize) % o.len();
                let (&(s, t, w), _) = o.iter().nth(k).expect("in range");
                let c = o.get_mut(&(s, t, w)).expect("present");
                *c -= 1;
                if *c == 0 {
                    o.remove(&(s, t, w));
                }
                muts.push(Mutation::RemoveEdge(edge(s, t, f64::from_bits(w))));
            }
        }
        self.lsn += 1;
        g.apply(self.lsn, &muts).expect("valid transaction");
        self.oracle = o;
    }

    fn check(&self, v: &GraphView, what: &str) {
        let mut got = Oracle::new();
        for n in 0..N {
            v.for_each_edge(NodeId(n), Direction::Out, |m, _, w| {
                *got.entry((n, m.0, w.to_bits())).or_default() += 1;
            });
        }
        assert_eq!(got, self.oracle, "{what}: out-edges differ from the oracle");
        let mut got_in = Oracle::new();
        for n in 0..N {
            v.for_each_edge(NodeId(n), Direction::In, |m, _, w| {
                *got_in.entry((m.0, n, w.to_bits())).or_default() += 1;
            });
        }
        assert_eq!(got_in, self.oracle, "{what}: in-edges differ from the oracle");
    }
}

#[test]
fn a_compaction_catches_up_in_rounds_while_the_writer_commits() {
    let no_auto = CompactionPolicy {
        soft_limit: usize::MAX,
        hard_limit: usize::MAX,
    };
    let mut g = Graph::with_policy(Csr::build(N, &[], false).expect("empty base"), 1, no_auto);
    let mut load = Load {
        x: 0x9e37_79b9,
        oracle: Oracle::new(),
        lsn: 1,
    };
    for _ in 0..20 {
        load.txn(&mut g, 500);
    }
    for round in 0..2 {
        let job = g.begin_compaction();
        // More than one catch-up round's worth before the job runs, then more while it runs.
        for _ in 0..60 {
            load.txn(&mut g, 500);
        }
        let worker = std::thread::spawn(move || job.build());
        for _ in 0..40 {
            load.txn(&mut g, 500);
        }
        let done = worker.join().expect("the compaction thread");
        // Left for the writer to replay at the swap.
        for _ in 0..5 {
            load.txn(&mut g, 500);
        }
        let before = g.view();
        let view = g.finish_compaction(done).expect("swapped in");
        assert_eq!(view.lsn(), load.lsn, "round {round}: the swap publishes the newest LSN");
        load.check(&view, &format!("round {round}, after the swap"));
        // Removals after the swap find edges through the index the compaction's thread built.
        for _ in 0..10 {
            load.txn(&mut g, 500);
        }
        load.check(&g.view(), &format!("round {round}, after more transactions"));
        drop(before);
    }
}
