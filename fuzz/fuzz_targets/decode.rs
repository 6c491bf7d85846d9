//! Any bytes as a stream of pgoutput messages: the first byte picks how the input is cut into
//! messages; decoding, typing every tuple and rendering JSON must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgoutput::{json, Decoder, Lsn, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut decoder = Decoder::new();
    // A few messages: lengths from the cut byte, so corpus entries can hold whole streams.
    let mut chunks: Vec<&[u8]> = Vec::new();
    if cut == 0 {
        chunks.push(rest);
    } else {
        let mut r = rest;
        while !r.is_empty() {
            let n = (usize::from(r[0]) * usize::from(cut) % 512).max(1).min(r.len());
            chunks.push(&r[..n]);
            r = &r[n..];
        }
    }
    for c in chunks {
        let b = Bytes::copy_from_slice(c);
        if let Ok(msg) = decoder.decode(&b) {
            let _ = json::message_to_json(Lsn(1), &msg, decoder.relations());
            let tuples = match &msg {
                Message::Insert(i) => vec![(i.relation_id, i.new.clone())],
                Message::Update(u) => vec![(u.relation_id, u.new.clone())],
                Message::Delete(d) => vec![(d.relation_id, d.old.clone())],
                _ => vec![],
            };
            for (rel, t) in tuples {
                if let Ok(r) = decoder.relation("fuzz", rel) {
                    let _ = r.typed_values(&t, "fuzz");
                }
            }
        }
    }
});
