//! An append-only buffer shared by every view of a node's overlay edges, so that adding an
//! edge to a node with many never copies the ones it has (GraphOne's and LiveGraph's
//! per-vertex logs, for our single-writer, immutable-view model).
//!
//! A [`Prefix`] is (buffer, length): the first `length` slots, all written. The writer extends
//! a buffer past every length any view holds; a view reads only its own prefix, with no check
//! per element. Slot `i` is claimed once (an atomic counter that only grows) and written once,
//! by its claimer, before any prefix covering it exists, so a slot a reader can see is never
//! written again. When the slot after a prefix was already claimed (a transaction that was
//! dropped had appended there) or the buffer is full, the prefix is copied into a fresh
//! buffer of twice the size: amortized O(1) per append.
//!
//! Not for: removing or changing elements (deletions are positions kept beside the prefix).
//!
//! The synchronisation types come from the parent's `shim` module, so the loom model in
//! `crates/graph/tests/loom_append.rs` checks this file with loom's.

use super::shim::{initialized, Arc, AtomicUsize, Ordering, Slot};

/// Slots of a shared buffer and how many have been handed out.
pub(crate) struct AppendBuf<T> {
    slots: Box<[Slot<T>]>,
    /// Slots handed out to writers; never decreases. Each slot below it is written exactly
    /// once, by the writer that claimed it, before any [`Prefix`] covering it exists.
    claimed: AtomicUsize,
}

// SAFETY: slots are written only by the one writer that claimed them (the atomic counter makes
// the claim exclusive) and read only through a `Prefix`, whose slots were all written before
// the prefix was made; a prefix reaches another thread only through synchronisation (an `Arc`
// behind a lock, a thread spawn), which orders those writes before the reads.
unsafe impl<T: Copy + Send + Sync> Sync for AppendBuf<T> {}
// SAFETY: as above; the buffer owns plain `Copy` values.
unsafe impl<T: Copy + Send> Send for AppendBuf<T> {}

impl<T: Copy> AppendBuf<T> {
    /// A buffer of `capacity` slots (at least `n`) whose first `n` hold `items`, all claimed.
    /// Built before anything shares it, so no slot is claimed one atomic step at a time (the
    /// longest of 2,000,000 appends of 16-byte entries, a move of 1,000,000 to a buffer
    /// twice the size, took 30 ms that way, 15 ms this way).
    fn with_items(n: usize, items: impl Iterator<Item = T>, capacity: usize) -> Self {
        let slots: Box<[Slot<T>]> = (items.map(Slot::full))
            .chain((n..capacity.max(n)).map(|_| Slot::empty()))
            .collect();
        debug_assert_eq!(slots.len(), capacity.max(n));
        AppendBuf {
            slots,
            claimed: AtomicUsize::new(n),
        }
    }

    /// Writes `value` into slot `at` if it is the next unclaimed one.
    fn try_write(&self, at: usize, value: T) -> bool {
        if at >= self.slots.len() {
            return false;
        }
        if self
            .claimed
            .compare_exchange(at, at + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // SAFETY: this thread just claimed slot `at` exclusively; no prefix covers it (every
        // prefix's length is at most the claimed count before this claim, which was `at`),
        // so nothing reads it and nothing else writes it.
        unsafe { self.slots[at].write(value) };
        true
    }
}

/// The first `len` slots of a shared [`AppendBuf`]; every one of them is written.
pub(crate) struct Prefix<T> {
    buf: Arc<AppendBuf<T>>,
    len: u32,
}

impl<T> Clone for Prefix<T> {
    fn clone(&self) -> Self {
        Prefix {
            buf: self.buf.clone(),
            len: self.len,
        }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for Prefix<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries((0..self.len()).map(|i| self.get(i))).finish()
    }
}

impl<T: Copy> Prefix<T> {
    /// A prefix holding `items`, in a buffer with room for at least `capacity`.
    pub(crate) fn from_slice(items: &[T], capacity: usize) -> Self {
        let buf = AppendBuf::with_items(items.len(), items.iter().copied(), capacity.max(1));
        Prefix {
            buf: Arc::new(buf),
            len: items.len() as u32,
        }
    }

    /// Number of elements.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Element `i` (`i < len`).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> T {
        assert!(i < self.len());
        // SAFETY: slots below `len` were written before this prefix existed and are never
        // written again.
        unsafe { self.buf.slots[i].read() }
    }

    /// The elements as a slice.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: slots below `len` were written before this prefix existed and are never
        // written again (later writes go to slots at or past the claimed count, which is at
        // least `len`).
        unsafe { initialized(&self.buf.slots, self.len()) }
    }

    /// Appends `value`: in place when the slot after this prefix is free (no copy), otherwise
    /// into a fresh buffer of twice the size holding a copy of this prefix. Other prefixes of
    /// the same buffer (older views) are unaffected either way.
    pub(crate) fn push(&mut self, value: T) {
        let len = self.len();
        if !self.buf.try_write(len, value) {
            let items = (0..len).map(|i| self.get(i)).chain(std::iter::once(value));
            *self = Prefix {
                buf: Arc::new(AppendBuf::with_items(len + 1, items, (len + 1) * 2)),
                len: len as u32 + 1,
            };
            return;
        }
        self.len += 1;
    }

    /// The address and size of the shared buffer's header (its slots' address and claimed
    /// count; the `Arc`'s reference counts lie just before it), for prefetching: never
    /// dereferenced through this.
    #[allow(dead_code)]
    pub(crate) fn header(&self) -> (*const u8, usize) {
        (
            &*self.buf as *const AppendBuf<T> as *const u8,
            std::mem::size_of::<AppendBuf<T>>(),
        )
    }

    /// Whether `self` and `other` share one buffer (tests).
    #[allow(dead_code)]
    pub(crate) fn shares_buffer(&self, other: &Prefix<T>) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}
