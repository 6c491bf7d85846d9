//! Tests of the change log writer: ordering, durability, segment rolls, injected disk errors,
//! backpressure.

use super::super::testutil::{opts, random_records, read, tmp, write, Recs, HASH};
use super::*;
use std::sync::atomic::AtomicUsize;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn refuses_out_of_order_and_too_large() {
    let (_t, dir) = tmp();
    let w = LogWriter::open(&dir, Lsn(100), opts(1 << 20)).expect("open");
    let e = w.append(Lsn(100), vec![1]).expect_err("not after `after`");
    assert!(
        matches!(
            e,
            LogError::OutOfOrder {
                lsn: Lsn(100),
                last: Lsn(100)
            }
        ),
        "{e}"
    );
    w.append(Lsn(101), vec![1]).expect("append");
    let e = w.append(Lsn(101), vec![2]).expect_err("repeated");
    assert!(
        matches!(
            e,
            LogError::OutOfOrder {
                lsn: Lsn(101),
                last: Lsn(101)
            }
        ),
        "{e}"
    );
    assert!(matches!(w.append(Lsn(50), vec![2]), Err(LogError::OutOfOrder { .. })));
    // Zeroed memory: not touched, so cheap.
    let e = w.append(Lsn(102), vec![0; MAX_PAYLOAD + 1]).expect_err("too large");
    assert!(
        matches!(e, LogError::TooLarge { bytes } if bytes == MAX_PAYLOAD + 1),
        "{e}"
    );
    w.append(Lsn(102), vec![3]).expect("append after refusals");
    assert_eq!(w.flush(Duration::from_secs(10)).expect("flush"), Lsn(102));
    assert_eq!(w.appended_bytes(), 2 * 21);
    drop(w);
    assert_eq!(
        read(&dir, Lsn(0)).expect("scan"),
        [(Lsn(101), vec![1]), (Lsn(102), vec![3])]
    );
    // Opening before the newest segment's start is refused too.
    let e = LogWriter::open(&dir, Lsn(99), opts(1 << 20)).expect_err("before the newest segment");
    assert!(
        matches!(
            e,
            LogError::OutOfOrder {
                lsn: Lsn(99),
                last: Lsn(100)
            }
        ),
        "{e}"
    );
}

#[test]
fn durable_watch_and_segments_at_open() {
    let (_t, dir) = tmp();
    let w = LogWriter::open(&dir, Lsn(7), opts(200)).expect("open");
    let mut rx = w.watch();
    assert_eq!(*rx.borrow_and_update(), Lsn(7));
    assert_eq!(w.durable(), Lsn(7));
    for i in 1..=10u64 {
        w.append(Lsn(7 + i), vec![i as u8; 50]).expect("append");
    }
    assert_eq!(w.flush(Duration::from_secs(10)).expect("flush"), Lsn(17));
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), Lsn(17));
    assert_eq!(w.appended_bytes(), 10 * 70);
    drop(w);
    // 70-byte frames, 200-byte segments: a segment ends with the frame that takes it to
    // 200 bytes or more (40 + 3 * 70), the next starts after that frame's lsn.
    let segs = dir.segments().expect("segments");
    let starts: Vec<Lsn> = segs.iter().map(|s| s.start).collect();
    assert_eq!(starts, [Lsn(7), Lsn(10), Lsn(13), Lsn(16)]);
    assert!(segs[..3].iter().all(|s| s.bytes == 250));
    // The newest has room: appending continues in it.
    write(&dir, Lsn(17), &[(Lsn(18), vec![1; 10])], 200);
    assert_eq!(dir.segments().expect("segments").len(), 4);
    // The newest is full: a new segment named after `after`.
    write(&dir, Lsn(18), &[(Lsn(19), vec![1; 10])], 100);
    let segs = dir.segments().expect("segments");
    assert_eq!(segs.len(), 5);
    assert_eq!(segs[4].start, Lsn(18));
    assert_eq!(read(&dir, Lsn(16)).expect("scan").len(), 3);
}

/// A writer dropped without flush (as by a crash) never claimed more than the disk holds.
#[test]
fn durable_never_exceeds_what_is_on_disk() {
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(11);
    let recs = random_records(&mut rng, 20_000, 300, Lsn(0));
    let w = LogWriter::open(&dir, Lsn(0), opts(256 << 10)).expect("open");
    let mut seen = Vec::new();
    std::thread::scope(|s| {
        let w = &w;
        let recs = &recs;
        s.spawn(move || {
            for (lsn, p) in recs {
                w.append(*lsn, p.clone()).expect("append");
            }
        });
        for _ in 0..50 {
            seen.push(w.durable());
            std::thread::sleep(Duration::from_micros(300));
        }
    });
    let snapshot = w.durable();
    seen.push(snapshot);
    assert!(seen.windows(2).all(|p| p[0] <= p[1]), "durable went back");
    w.inject(inject::CRASH);
    drop(w);
    assert_eq!(dir.recover(HASH).expect("recover").cut, None);
    let back = read(&dir, Lsn(0)).expect("scan");
    let durable = recs.iter().filter(|r| r.0 <= snapshot).count();
    assert!(
        back.len() >= durable,
        "{} records read back, {durable} were durable",
        back.len()
    );
    assert_eq!(back[..], recs[..back.len()], "not a prefix");
}

fn survives_disk_errors(mode: u8) {
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(u64::from(mode));
    let mut recs = random_records(&mut rng, 300, 2000, Lsn(0));
    // One written without copying.
    recs[150].1 = vec![0x5A; DIRECT_WRITE + 3];
    let w = LogWriter::open(&dir, Lsn(0), opts(64 << 10)).expect("open");
    for (lsn, p) in &recs[..100] {
        w.append(*lsn, p.clone()).expect("append");
    }
    let before = w.flush(Duration::from_secs(10)).expect("flush");
    assert_eq!(before, recs[99].0);
    assert_eq!(w.error(), None);
    w.inject(mode);
    for (lsn, p) in &recs[100..200] {
        w.append(*lsn, p.clone()).expect("appends are accepted while failing");
    }
    wait_for("an error", || w.error().is_some());
    let msg = w.error().unwrap_or_default();
    let os = if mode == inject::WRITE {
        "No space left on device"
    } else {
        "Input/output error"
    };
    assert!(msg.contains(os) && msg.contains(".log"), "{msg}");
    // Two more failed retries (100 ms, then 200 ms apart).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(w.durable(), before, "durable moved while failing");
    // Between retries the files end at the last flushed record: no partial frame left.
    let files = dir.verify().expect("verify");
    assert!(files.iter().all(|r| r.problem.is_none()), "{files:?}");
    assert_eq!(files.iter().filter_map(|r| r.last).max(), Some(before));
    assert_eq!(w.flush(Duration::from_millis(50)).expect("flush"), before);
    for (lsn, p) in &recs[200..] {
        w.append(*lsn, p.clone()).expect("appends are accepted while failing");
    }
    assert!(w.error().is_some());
    w.inject(inject::NONE);
    let last = recs[recs.len() - 1].0;
    assert_eq!(w.flush(Duration::from_secs(20)).expect("flush"), last);
    assert_eq!(w.error(), None);
    drop(w);
    let verified = dir.verify().expect("verify");
    assert!(verified.iter().all(|r| r.problem.is_none()), "{verified:?}");
    assert_eq!(
        dir.recover(HASH).expect("recover"),
        super::super::Recovery {
            last: Some(last),
            cut: None
        }
    );
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs);
}

#[test]
fn failed_writes_lose_nothing() {
    survives_disk_errors(inject::WRITE);
}

#[test]
fn failed_fsyncs_lose_nothing() {
    survives_disk_errors(inject::SYNC);
}

#[test]
fn appends_block_when_too_much_is_queued() {
    let (_t, dir) = tmp();
    let w = LogWriter::open(
        &dir,
        Lsn(0),
        WriterOptions {
            max_queued_bytes: 1000,
            ..opts(1 << 20)
        },
    )
    .expect("open");
    w.inject(inject::WRITE);
    let done = AtomicUsize::new(0);
    let recs: Recs = (1..=100u64).map(|i| (Lsn(i), vec![i as u8; 80])).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (lsn, p) in &recs {
                w.append(*lsn, p.clone()).expect("append");
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for("an error", || w.error().is_some());
        std::thread::sleep(Duration::from_millis(200));
        // 100-byte frames: at most 10 fit in 1000 bytes.
        let n = done.load(Ordering::SeqCst);
        assert!((1..=10).contains(&n), "{n} appends returned with nothing durable");
        w.inject(inject::NONE);
    });
    assert_eq!(done.load(Ordering::SeqCst), 100);
    assert_eq!(w.flush(Duration::from_secs(10)).expect("flush"), Lsn(100));
    drop(w);
    assert_eq!(read(&dir, Lsn(0)).expect("scan"), recs);
}

/// Scan speed on a 1 M record log (run with `--ignored --nocapture`, in release).
#[test]
#[ignore]
fn scan_speed() {
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(5);
    let recs = random_records(&mut rng, 1_000_000, 200, Lsn(0));
    let w = LogWriter::open(&dir, Lsn(0), WriterOptions::new(HASH)).expect("open");
    let t = Instant::now();
    for (lsn, p) in recs {
        w.append(lsn, p).expect("append");
    }
    w.flush(Duration::from_secs(600)).expect("flush");
    let wrote = t.elapsed();
    drop(w);
    let bytes: u64 = dir.segments().expect("segments").iter().map(|s| s.bytes).sum();
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0u64;
        let mut sum = 0u64;
        dir.scan(Lsn(0), HASH, |_, p| {
            n += 1;
            sum += p.len() as u64;
            Ok::<(), LogError>(())
        })
        .expect("scan");
        let took = t.elapsed();
        println!(
            "write {:?}; scan of {n} records, {bytes} bytes ({sum} payload): {:?} = {:.0} MB/s",
            wrote,
            took,
            bytes as f64 / took.as_secs_f64() / 1e6
        );
    }
}

/// A tail following a writer across segment rolls returns every record once, in order, never
/// past the durable position; one started in the middle resumes after its position; pruned
/// records are an error, not a silent skip.
#[test]
fn tail_follows_the_writer_across_segments() {
    use super::super::{LogTail, TailError};
    let (_t, dir) = tmp();
    let mut rng = fastrand::Rng::with_seed(5);
    let recs = random_records(&mut rng, 3_000, 200, Lsn(0));
    let w = LogWriter::open(&dir, Lsn(0), opts(16 << 10)).expect("open");
    let mut tail = LogTail::new(dir.clone(), HASH, Lsn(0));
    let mut got: Recs = Vec::new();
    for (i, (lsn, p)) in recs.iter().enumerate() {
        w.append(*lsn, p.clone()).expect("append");
        if i % 97 == 0 {
            let durable = w.durable();
            for (l, p) in tail.read(durable, 4096).expect("tail") {
                assert!(l <= durable, "{l} past the durable {durable}");
                got.push((l, p));
            }
        }
    }
    let durable = w.flush(Duration::from_secs(10)).expect("flush");
    loop {
        let more = tail.read(durable, 1 << 20).expect("tail");
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    assert!(
        dir.segments().expect("segments").len() > 3,
        "the test must cross segments"
    );
    assert_eq!(got, recs);
    // From the middle.
    let mid = recs[1_234].0;
    let mut tail = LogTail::new(dir.clone(), HASH, mid);
    let rest = tail.read(durable, usize::MAX).expect("tail");
    assert_eq!(rest, recs[1_235..].to_vec());
    // Pruned.
    let segs = dir.segments().expect("segments");
    dir.remove_through(segs[2].start).expect("prune");
    let e = LogTail::new(dir.clone(), HASH, Lsn(0))
        .read(durable, 1)
        .expect_err("pruned");
    assert!(matches!(e, TailError::Pruned { .. }), "{e}");
}

/// Records larger than the tail's read chunk (1 MiB) between small ones come out whole.
#[test]
fn tail_reads_records_larger_than_its_buffer() {
    use super::super::LogTail;
    let (_t, dir) = tmp();
    let w = LogWriter::open(&dir, Lsn(0), opts(64 << 20)).expect("open");
    let recs: Recs = (1..=6u64)
        .map(|i| (Lsn(i * 10), vec![i as u8; if i % 2 == 0 { 1_500_000 } else { 100 }]))
        .collect();
    for (l, p) in &recs {
        w.append(*l, p.clone()).expect("append");
    }
    let durable = w.flush(Duration::from_secs(10)).expect("flush");
    let mut tail = LogTail::new(dir.clone(), HASH, Lsn(0));
    let mut got = Vec::new();
    loop {
        let more = tail.read(durable, 1 << 20).expect("tail");
        if more.is_empty() {
            break;
        }
        got.extend(more);
    }
    assert_eq!(got, recs);
}
