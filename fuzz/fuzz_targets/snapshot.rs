//! Any bytes as a snapshot file: loading must refuse or accept, never panic, and an accepted
//! graph must answer a traversal.
#![no_main]

use graph::{query, Direction, EdgeFilter, NodeId, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("graphsync-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.snap");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(loaded) = graph::snapshot::load(&path) {
        let v = &loaded.view;
        if v.node_count() > 0 {
            let mut s = query::Scratch::default();
            let _ = query::k_hop(v, &mut s, NodeId(0), Direction::Both, EdgeFilter::default(), 3, 1000);
        }
    }
});
