//! The writer's edge index against a plain scan: lists long enough to be indexed (a stretch
//! per lookup, as [`CATCH_UP`] does, here a few positions), appends, removals, and dropped
//! transactions whose appends the list forgets while the index keeps them.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add(u32, u8),
    /// Removes the edge to `other` with this label and weight, if stored.
    Remove(u32, u8, u8),
    /// What follows, up to the next `Commit`, is dropped at the next `Abort`.
    Begin,
    Commit,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..40, 0u8..2).prop_map(|(o, l)| Op::Add(o, l)),
        4 => (0u32..40, 0u8..2, 0u8..3).prop_map(|(o, l, w)| Op::Remove(o, l, w)),
        1 => Just(Op::Begin),
        1 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

/// Stored edges (other, label, weight bits), a multiset.
type Model = Vec<(u32, u8, u64)>;

/// A weight from a small set, so removals find edges often.
fn weight(w: u8) -> f64 {
    f64::from(w) / 2.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_index_finds_what_a_scan_finds(
        base_len in 0usize..150,
        catch_up in 1usize..20,
        ops in proptest::collection::vec(op(), 1..400),
    ) {
        let key = (7, Direction::Out);
        let nodes: Vec<u32> = (0..base_len as u32).map(|i| i * 7 % 40).collect();
        let labels: Vec<EdgeLabel> = (0..base_len).map(|i| EdgeLabel((i % 2) as u8)).collect();
        let weights: Vec<f64> = (0..base_len).map(|i| weight((i % 3) as u8)).collect();
        let row = Row { nodes: &nodes, labels: &labels, weights: Some(&weights) };
        let mut index = EdgeIndex { lists: IdMap::default(), catch_up };
        let mut delta = NodeDelta::default();
        let mut model: Model =
            (0..base_len).map(|i| (nodes[i], labels[i].0, weights[i].to_bits())).collect();
        let mut saved: Option<(NodeDelta, Model)> = None;
        let mut adds = 0u32;
        for op in ops {
            match op {
                Op::Add(other, l) => {
                    adds += 1;
                    let w = weight((adds % 3) as u8);
                    delta.add(EdgeRec { other, label: EdgeLabel(l), weight: w }, base_len, &mut index, key);
                    model.push((other, l, w.to_bits()));
                }
                Op::Remove(other, l, w) => {
                    let w = weight(w);
                    let found = index.find_by(key, row, Some(&delta), other, |e| e.same(other, EdgeLabel(l), w));
                    let at = model.iter().position(|&e| e == (other, l, w.to_bits()));
                    prop_assert_eq!(found.is_some(), at.is_some(), "edge to {} label {} weight {}", other, l, w);
                    if let (Some((f, e)), Some(i)) = (found, at) {
                        prop_assert!(e.same(other, EdgeLabel(l), w));
                        delta.remove(f);
                        model.swap_remove(i);
                    }
                }
                Op::Begin => saved = Some((delta.clone(), model.clone())),
                Op::Commit => saved = None,
                Op::Abort => {
                    if let Some((d, m)) = saved.take() {
                        delta = d;
                        model = m;
                    }
                }
            }
        }
        // Every stored edge is found, whichever part of the list it is in.
        for &(other, l, w) in &model {
            let w = f64::from_bits(w);
            let found = index.find_by(key, row, Some(&delta), other, |e| e.same(other, EdgeLabel(l), w));
            prop_assert!(found.is_some(), "stored edge to {} label {} weight {} not found", other, l, w);
        }
    }
}
