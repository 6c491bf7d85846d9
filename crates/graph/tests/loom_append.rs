//! Model check of the overlays' append-only buffer (`src/view/append.rs`) with loom: every
//! interleaving of a writer extending a buffer, a reader of a published prefix, and a second
//! writer appending from an older prefix (a dropped transaction's, or a view's). loom reports
//! any unsynchronised access to a slot, and the assertions check that each prefix reads what
//! was written for it.
//!
//! Runs only with `RUSTFLAGS="--cfg loom"`:
//! `RUSTFLAGS="--cfg loom" cargo test -p graph --test loom_append --release` (`.ci/run` does).
#![cfg(loom)]

/// loom's versions of what the buffer synchronises with.
mod shim {
    pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
    pub(crate) use loom::sync::Arc;

    pub(crate) struct Slot<T>(loom::cell::UnsafeCell<std::mem::MaybeUninit<T>>);

    impl<T: Copy> Slot<T> {
        pub(crate) fn empty() -> Self {
            Slot(loom::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()))
        }

        pub(crate) fn full(v: T) -> Self {
            Slot(loom::cell::UnsafeCell::new(std::mem::MaybeUninit::new(v)))
        }

        pub(crate) unsafe fn write(&self, v: T) {
            // SAFETY: the caller's contract, checked by loom.
            self.0.with_mut(|p| unsafe { (*p).write(v) });
        }

        pub(crate) unsafe fn read(&self) -> T {
            // SAFETY: the caller's contract, checked by loom.
            self.0.with(|p| unsafe { (*p).assume_init() })
        }
    }

    /// Not available under loom (its cells cannot be viewed as a slice); the model reads
    /// element by element.
    pub(crate) unsafe fn initialized<T>(_: &[Slot<T>], _: usize) -> &[T] {
        unreachable!("the loom model reads with Prefix::get")
    }
}

#[allow(dead_code)]
#[path = "../src/view/append.rs"]
mod append;

use append::Prefix;
use loom::sync::{Arc, Mutex};
use loom::thread;

fn values(p: &Prefix<u64>) -> Vec<u64> {
    (0..p.len()).map(|i| p.get(i)).collect()
}

/// A writer extends and publishes; a reader reads whatever is published; a stale writer
/// appends from the first prefix meanwhile.
#[test]
fn readers_see_whole_prefixes_and_stale_writers_copy() {
    loom::model(|| {
        let first = Prefix::from_slice(&[10u64], 2);
        let published = Arc::new(Mutex::new(first.clone()));
        let reader = {
            let published = published.clone();
            thread::spawn(move || {
                let p = published.lock().unwrap().clone();
                let v = values(&p);
                assert!(v == [10] || v == [10, 11] || v == [10, 11, 12], "read {v:?}");
            })
        };
        let stale = {
            let mut old = first.clone();
            thread::spawn(move || {
                old.push(99);
                assert_eq!(values(&old), [10, 99]);
            })
        };
        let mut p = first.clone();
        p.push(11);
        *published.lock().unwrap() = p.clone();
        p.push(12);
        *published.lock().unwrap() = p.clone();
        reader.join().unwrap();
        stale.join().unwrap();
        assert_eq!(values(&first), [10]);
        // Whichever writer claimed slot 1, the other got a copy.
        let v = values(&p);
        assert_eq!(v, [10, 11, 12]);
    });
}

/// Two writers append to the same prefix at once: exactly one writes in place.
#[test]
fn one_claim_per_slot() {
    loom::model(|| {
        let first = Prefix::from_slice(&[1u64], 4);
        let a = {
            let mut p = first.clone();
            thread::spawn(move || {
                p.push(2);
                p
            })
        };
        let mut q = first.clone();
        q.push(3);
        let p = a.join().unwrap();
        assert_eq!(values(&p), [1, 2]);
        assert_eq!(values(&q), [1, 3]);
        assert!(
            !(p.shares_buffer(&first) && q.shares_buffer(&first)),
            "both wrote slot 1 in place"
        );
        assert!(
            p.shares_buffer(&first) || q.shares_buffer(&first),
            "neither wrote in place"
        );
    });
}
