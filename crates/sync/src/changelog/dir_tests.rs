//! Tests of the log directory and the segment format.

use super::super::testutil::{opts, random_records, read, tmp, write, Recs, HASH};
use super::super::LogWriter;
use super::*;
use proptest::prelude::*;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// The offsets at which each record's frame starts, for records written into one segment.
fn offsets(recs: &[(Lsn, Vec<u8>)]) -> Vec<u64> {
    let mut at = HEADER_LEN;
    recs.iter()
        .map(|(_, p)| {
            let o = at;
            at += (FRAME_OVERHEAD + p.len()) as u64;
            o
        })
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).expect("read");
    b[at as usize] ^= 0x20;
    fs::write(path, b).expect("write");
}

#[test]
fn names_header_and_frame_layout() {
    assert_eq!(file_name(Lsn(0x1_A000_0028)), "00000001A0000028.log");
    assert_eq!(parse_file_name("00000001A0000028.log"), Some(Lsn(0x1_A000_0028)));
    for other in [
        "00000001a0000028.log",
        "1A0000028.log",
        "00000001A0000028.log.tmp",
        "x.log",
        ".00000001A0000028.log",
    ] {
        assert_eq!(parse_file_name(other), None, "{other}");
    }
    let h = encode_header(0x1122_3344_5566_7788, Lsn(0x1_A000_0028));
    assert_eq!(&h[0..8], b"GSLOG\0\0\0");
    assert_eq!(h[8..12], 1u32.to_le_bytes());
    assert_eq!(h[12..16], 40u32.to_le_bytes());
    assert_eq!(h[16..24], 0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(h[24..32], 0x1_A000_0028u64.to_le_bytes());
    assert_eq!(h[32..40], xxh3_64(&h[0..32]).to_le_bytes());
    // Both checksum paths (small frames hashed in one go, large ones streamed) compute
    // xxh3_64 of length ++ lsn ++ payload.
    for len in [0usize, 1, 228, 229, 240, 241, 5000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let f = frame_head(Lsn(77), &payload);
        assert_eq!(f[0..4], (len as u32).to_le_bytes());
        assert_eq!(f[4..12], 77u64.to_le_bytes());
        let mut all = f[0..12].to_vec();
        all.extend_from_slice(&payload);
        assert_eq!(f[12..20], xxh3_64(&all).to_le_bytes(), "len {len}");
    }
}

#[test]
fn round_trip_across_segments() {
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(1);
    let mut recs = random_records(&mut rng, 200, 100_000, Lsn(1000));
    // Records larger than the read buffer and written without copying.
    let big_at = recs.len() / 2;
    recs[big_at].1 = vec![0xAB; (READ_BUF * 3) / 2];
    recs[big_at + 1].1 = vec![0xCD; READ_BUF * 3 + 17];
    write(&dir, Lsn(1000), &recs, 1 << 20);
    let segs = dir.segments().expect("segments");
    assert!(segs.len() >= 5, "{} segments", segs.len());
    assert_eq!(segs[0].start, Lsn(1000));
    assert_eq!(
        dir.recover(HASH).expect("recover"),
        Recovery {
            last: Some(recs[recs.len() - 1].0),
            cut: None
        }
    );
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs);
    for i in [0, 1, 57, big_at, big_at + 1, recs.len() - 2, recs.len() - 1] {
        // From a record's lsn and from just below it.
        assert_eq!(read(&dir, recs[i].0).expect("scan"), recs[i + 1..]);
        assert_eq!(read(&dir, Lsn(recs[i].0 .0 - 1)).expect("scan"), recs[i..]);
    }
    let reports = dir.verify().expect("verify");
    assert_eq!(reports.len(), segs.len());
    assert!(reports
        .iter()
        .all(|r| r.problem.is_none() && r.mapping_hash == Some(HASH)));
    assert_eq!(reports.iter().map(|r| r.records).sum::<u64>(), recs.len() as u64);
    // Segment i holds (start_i, start_{i+1}]: each segment's last record is the next's start.
    for pair in reports.windows(2) {
        assert_eq!(pair[0].last, Some(pair[1].start));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn scan_returns_the_suffix(
        spec in prop::collection::vec((1u64..5000, prop::collection::vec(any::<u8>(), 0..300)), 1..60),
        segment_bytes in 40u64..3000,
        after_ix in any::<prop::sample::Index>(),
        cut_ix in any::<prop::sample::Index>(),
        start in 0u64..1000,
    ) {
        let (_t, dir) = tmp();
        let mut lsn = start;
        let recs: Recs = spec.into_iter().map(|(gap, p)| { lsn += gap; (Lsn(lsn), p) }).collect();
        write(&dir, Lsn(start), &recs, segment_bytes);
        prop_assert_eq!(dir.recover(HASH).expect("recover").last, recs.last().map(|r| r.0));
        let span = lsn + 10;
        let after = Lsn(after_ix.index(span as usize) as u64);
        let oracle: Recs = recs.iter().filter(|r| r.0 > after).cloned().collect();
        prop_assert_eq!(read(&dir, after).expect("scan"), oracle);
        let x = Lsn(cut_ix.index(span as usize) as u64);
        let before = dir.segments().expect("segments").len();
        let removed = dir.remove_through(x).expect("remove_through");
        prop_assert_eq!(dir.segments().expect("segments").len(), before - removed);
        prop_assert!(!dir.segments().expect("segments").is_empty());
        let oracle: Recs = recs.iter().filter(|r| r.0 > x).cloned().collect();
        prop_assert_eq!(read(&dir, x).expect("scan after removal"), oracle);
    }
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let (t, dir) = tmp();
    let recs: Recs = [10usize, 50, 300, 7, 64]
        .iter()
        .enumerate()
        .map(|(i, &n)| (Lsn(110 + 10 * i as u64), vec![i as u8 + 1; n]))
        .collect();
    write(&dir, Lsn(100), &recs, 1 << 20);
    let segs = dir.segments().expect("segments");
    assert_eq!(segs.len(), 1);
    let name = segs[0].path.file_name().expect("name").to_owned();
    let whole = fs::read(&segs[0].path).expect("read");
    let last_at = offsets(&recs)[4];
    assert_eq!(whole.len() as u64, last_at + 20 + 64);
    let check = |bytes: &[u8], case: &str| {
        let root = t.path().join("case");
        let _ = fs::remove_dir_all(&root);
        let dir = LogDir::open(&root).expect("open");
        let path = root.join(&name);
        fs::write(&path, bytes).expect("write");
        // verify reports it as a torn tail and modifies nothing.
        let reports = dir.verify().expect("verify");
        let p = reports[0].problem.clone().expect("a problem");
        assert!(p.torn_tail && p.offset == last_at, "{case}: {p:?}");
        assert_eq!(fs::metadata(&path).expect("meta").len(), bytes.len() as u64);
        let rec = dir.recover(HASH).expect("recover");
        assert_eq!(
            rec,
            Recovery {
                last: Some(recs[3].0),
                cut: Some(Cut {
                    file: path.clone(),
                    offset: last_at,
                    bytes: bytes.len() as u64 - last_at,
                    valid_after: false
                })
            },
            "{case}"
        );
        assert_eq!(fs::metadata(&path).expect("meta").len(), last_at);
        assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs[..4], "{case}");
        // A writer reopened after it appends, and everything reads back.
        let more = vec![(Lsn(1000), b"after the cut".to_vec())];
        write(&dir, recs[3].0, &more, 1 << 20);
        assert_eq!(dir.recover(HASH).expect("recover").cut, None, "{case}");
        let mut expect = recs[..4].to_vec();
        expect.extend(more);
        assert_eq!(read(&dir, Lsn(0)).expect("scan"), expect, "{case}");
    };
    for len in last_at + 1..whole.len() as u64 {
        check(&whole[..len as usize], &format!("truncated at {len}"));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..12 {
        let at = rng.usize(last_at as usize..whole.len());
        let mut b = whole.clone();
        b[at] ^= 1 << rng.u32(0..8);
        check(&b, &format!("byte {at} flipped"));
    }
    // Zeros where the last frame should be (the size reached the disk, the data not).
    let mut b = whole.clone();
    b[last_at as usize..].fill(0);
    check(&b, "zeroed last frame");
}

#[test]
fn torn_newest_header_is_deleted() {
    let (_t, dir) = tmp();
    let recs = vec![(Lsn(5), b"one".to_vec()), (Lsn(9), b"two".to_vec())];
    write(&dir, Lsn(1), &recs, 1 << 20);
    for bytes in [vec![], b"GSLOG\0".to_vec(), vec![0u8; 40]] {
        let torn = dir.path().join(file_name(Lsn(9)));
        fs::write(&torn, &bytes).expect("write");
        let rec = dir.recover(HASH).expect("recover");
        assert_eq!(
            rec,
            Recovery {
                last: Some(Lsn(9)),
                cut: Some(Cut {
                    file: torn.clone(),
                    offset: 0,
                    bytes: bytes.len() as u64,
                    valid_after: false
                })
            }
        );
        assert!(!torn.exists());
        assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs);
    }
    // The same damage in an older segment is corruption.
    let older = dir.path().join(file_name(Lsn(0)));
    fs::write(&older, [0u8; 40]).expect("write");
    let e = dir.recover(HASH).expect_err("corrupt");
    assert!(
        matches!(&e, LogError::Corrupt { file, offset: 0, .. } if *file == older),
        "{e}"
    );
}

#[test]
fn damage_before_valid_frames_in_the_newest_segment_is_cut_and_flagged() {
    let (_t, dir) = tmp();
    let recs: Recs = (1..=5)
        .map(|i| (Lsn(i * 100), vec![i as u8; 40 * i as usize]))
        .collect();
    write(&dir, Lsn(0), &recs, 1 << 20);
    let path = dir.segments().expect("segments")[0].path.clone();
    let len = fs::metadata(&path).expect("meta").len();
    let at = offsets(&recs)[1];
    flip(&path, at + 20 + 5);
    // Read only, before recovery: scan and verify name the damage.
    let e = read(&dir, Lsn(0)).expect_err("corrupt");
    let msg = e.to_string();
    assert!(matches!(&e, LogError::Corrupt { offset, .. } if *offset == at), "{msg}");
    for part in [
        "0000000000000000.log",
        &format!("byte {at}"),
        "--rebuild",
        "graphsync log verify",
    ] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
    let reports = dir.verify().expect("verify");
    assert_eq!(reports[0].records, 1);
    assert!(matches!(&reports[0].problem, Some(p) if p.offset == at && p.torn_tail && p.valid_after));
    // Recovery cuts at the damage (nothing after the last flush was confirmed by this log;
    // the caller checks the server's confirmed position) and says a valid frame followed.
    let r = dir.recover(HASH).expect("recover");
    assert_eq!(r.last, Some(Lsn(100)));
    assert_eq!(
        r.cut,
        Some(Cut {
            file: path.clone(),
            offset: at,
            bytes: len - at,
            valid_after: true
        })
    );
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs[..1].to_vec());
}

#[test]
fn damage_in_an_older_segment_is_corruption() {
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(3);
    let recs = random_records(&mut rng, 40, 200, Lsn(0));
    write(&dir, Lsn(0), &recs, 1000);
    let segs = dir.segments().expect("segments");
    assert!(segs.len() >= 3);
    // A frame of the oldest segment: scan finds it (recovery reads only headers there).
    let first = &segs[0];
    flip(&first.path, HEADER_LEN + 20 + 1);
    assert_eq!(dir.recover(HASH).expect("recover").cut, None);
    let e = read(&dir, Lsn(0)).expect_err("corrupt");
    let msg = e.to_string();
    assert!(matches!(e, LogError::Corrupt { offset: 40, .. }), "{msg}");
    assert!(
        msg.contains(&first.path.display().to_string()) && msg.contains("--rebuild"),
        "{msg}"
    );
    // Scanning from after that segment does not read it.
    let after = segs[1].start;
    let oracle: Recs = recs.iter().filter(|r| r.0 > after).cloned().collect();
    assert_eq!(read(&dir, after).expect("scan"), oracle);
    // A header of an older segment: recovery refuses.
    flip(&segs[1].path, 30);
    let e = dir.recover(HASH).expect_err("corrupt");
    assert!(
        matches!(&e, LogError::Corrupt { file, offset: 0, .. } if *file == segs[1].path),
        "{e}"
    );
    assert!(e.to_string().contains("--rebuild"));
}

#[test]
fn another_mapping_is_refused() {
    let (_t, dir) = tmp();
    write(&dir, Lsn(0), &[(Lsn(1), b"x".to_vec())], 1 << 20);
    let other = HASH ^ 1;
    let e = dir.recover(other).expect_err("mapping");
    assert!(
        matches!(e, LogError::MappingChanged { found: HASH, expected, .. } if expected == other),
        "{e}"
    );
    let e = dir
        .scan(Lsn(0), other, |_, _| Ok::<(), LogError>(()))
        .expect_err("mapping");
    assert!(matches!(e, LogError::MappingChanged { .. }), "{e}");
    let e = LogWriter::open(&dir, Lsn(1), super::super::WriterOptions::new(other)).expect_err("mapping");
    assert!(matches!(e, LogError::MappingChanged { .. }), "{e}");
    assert!(e.to_string().contains("--rebuild"));
}

#[test]
fn listing_pruning_and_clearing() {
    let (_t, dir) = tmp();
    assert_eq!(dir.recover(HASH).expect("recover"), Recovery::default());
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), vec![]);
    write(&dir, Lsn(10), &[(Lsn(20), vec![1; 100])], 50);
    write(&dir, Lsn(20), &[(Lsn(30), vec![2; 100])], 50);
    write(&dir, Lsn(30), &[(Lsn(40), vec![3; 100])], 50);
    // Ignored: other names.
    fs::write(dir.path().join("notes.txt"), b"x").expect("write");
    fs::write(dir.path().join("000000000000001e.log"), b"x").expect("write");
    let starts: Vec<Lsn> = dir.segments().expect("segments").iter().map(|s| s.start).collect();
    assert_eq!(starts, [Lsn(10), Lsn(20), Lsn(30)]);
    assert_eq!(dir.recover(HASH).expect("recover").last, Some(Lsn(40)));
    assert_eq!(dir.remove_through(Lsn(19)).expect("remove"), 0);
    assert_eq!(dir.remove_through(Lsn(20)).expect("remove"), 1);
    assert_eq!(
        read(&dir, Lsn(20)).expect("scan"),
        [(Lsn(30), vec![2; 100]), (Lsn(40), vec![3; 100])]
    );
    assert_eq!(dir.remove_through(Lsn(u64::MAX)).expect("remove"), 1);
    assert_eq!(dir.segments().expect("segments").len(), 1, "never the newest");
    dir.clear().expect("clear");
    assert!(dir.segments().expect("segments").is_empty());
    assert!(dir.path().join("notes.txt").exists());
    // A fresh log after clearing starts where it is told.
    let w = LogWriter::open(&dir, Lsn(500), opts(1 << 20)).expect("open");
    w.append(Lsn(501), vec![]).expect("append");
    assert_eq!(w.flush(Duration::from_secs(10)).expect("flush"), Lsn(501));
    drop(w);
    assert_eq!(dir.segments().expect("segments")[0].start, Lsn(500));
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), [(Lsn(501), vec![])]);
}
