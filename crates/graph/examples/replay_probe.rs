use graph::*;
use std::time::Instant;
fn main() {
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let updates: usize = std::env::var("U")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut list = Vec::new();
    let mut x: u64 = 12345;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for s in 0..n {
        for _ in 0..10 {
            list.push(EdgeInput {
                source: NodeId(s),
                target: NodeId((rnd() % n as u64) as u32),
                label: EdgeLabel(0),
                weight: 1.0,
            });
        }
    }
    let mut w = vec![1.0f64; list.len()];
    let mut g = Graph::with_policy(
        Csr::build(n, &list, false).unwrap(),
        1,
        CompactionPolicy {
            soft_limit: usize::MAX,
            hard_limit: usize::MAX,
        },
    );
    let mut muts = Vec::with_capacity(updates * 2);
    for _ in 0..updates {
        let i = (rnd() % list.len() as u64) as usize;
        let mut e = list[i].clone();
        e.weight = w[i];
        muts.push(Mutation::RemoveEdge(e.clone()));
        w[i] += 1.0;
        e.weight = w[i];
        muts.push(Mutation::AddEdge(e));
    }
    let t = Instant::now();
    let mut lsn = 2;
    for c in muts.chunks(1 << 18) {
        g.apply(lsn, c).unwrap();
        lsn += 1;
    }
    let s = t.elapsed().as_secs_f64();
    println!("{} mutations in {:.3}s: {:.0}/s", muts.len(), s, muts.len() as f64 / s);
}
