//! The versioned overlay table: for every node changed since the base, a chain of versions of
//! its overlay state (edges added and deleted per direction, tombstone, data set after the
//! node's first), newest first, shared by every view of one base.
//!
//! A view is (table, sequence number): it reads, for a node, the newest version whose
//! sequence is at most its own. Committing a transaction installs one new version per node it
//! touched (one allocation and one pointer store each) and sets the node's marks, so its cost
//! is O(its changes) whatever the size of the graph or of the overlay — no tree is copied.
//! Marks (per node: overlay edges out, in; data changed; liveness changed; added absent) only
//! ever go from 0 to 1 within a table once a view holds the node, so a traversal learns
//! "unchanged here, for every view" from one bit in a dense array; a set mark makes it look for
//! the node's version (older views may find none). A placeholder (a node added and hidden by
//! one transaction) is marks only, with no version: it costs no allocation of its own.
//!
//! Memory: a version is freed when no live view can reach it. Views register their sequence
//! number while they exist (a [`Guard`]); installing a version for a node frees the versions
//! older than the newest one at or below the oldest live view's sequence, which no walk stops
//! past (`prune`). Everything else goes with the table, when the last view of its base does.
//!
//! Not for: what the versions hold (`delta`), or what a mutation means (`txn`).

use super::delta::{NodeDelta, NodeDeltas};
use crate::nodes::Slot;
use crate::query::Direction;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SEG_SHIFT: u32 = 16;
const SEG_NODES: usize = 1 << SEG_SHIFT;
const SEG_WORDS: usize = SEG_NODES / 64;
const SEGMENTS: usize = 1 << (32 - SEG_SHIFT);

/// A node's marks: what kind of change any version of it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Overlay edges, outgoing.
    Out = 0,
    /// Overlay edges, incoming.
    In = 1,
    /// Node data (label, key, tenant, properties) changed.
    Data = 2,
    /// Deleted or restored.
    Liveness = 3,
    /// Added absent (a placeholder): hidden unless a version restores it. Set, with no
    /// version, by the transaction that adds the node; see [`Table::mark`].
    Absent = 4,
}

/// Every mark, in bit order.
pub(super) const MARKS: [Mark; 5] = [Mark::Out, Mark::In, Mark::Data, Mark::Liveness, Mark::Absent];

impl Mark {
    pub(super) fn of(dir: Direction) -> Mark {
        if dir == Direction::In {
            Mark::In
        } else {
            Mark::Out
        }
    }

    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The node is deleted.
pub(super) const TOMBSTONE: u8 = 1;
/// The node was deleted in the base's dense bitset and is visible again.
pub(super) const RESTORED: u8 = 2;

/// A node's overlay state in one version.
#[derive(Debug, Clone, Default)]
pub(super) struct NodeState {
    /// [`TOMBSTONE`], [`RESTORED`].
    pub(super) flags: u8,
    pub(super) deltas: NodeDeltas,
    /// Data set on the node after its first (the base's columns, or an added node's first
    /// data in the node store), if any: it replaces that first data. Behind a pointer, so
    /// versions of nodes whose data never changed (most: edge changes) stay small.
    pub(super) data: Option<Arc<Slot>>,
}

impl NodeState {
    #[inline]
    pub(super) fn side(&self, dir: Direction) -> &NodeDelta {
        self.deltas.side(dir)
    }
}

/// One version of a node's state. The sequence number and the state lead so that a
/// traversal's prefetch of the first lines covers what it reads.
#[repr(C)]
#[derive(Debug)]
pub(super) struct Version {
    seq: u64,
    pub(super) state: NodeState,
    /// The next older version (null: none). Only the writer changes it, cutting what no live
    /// view reaches.
    prev: AtomicPtr<Version>,
    /// The oldest live sequence the chain below was pruned for: a later install with the same
    /// one has nothing to cut and skips the walk (a view held for long, a checkpoint's, would
    /// otherwise make every install on a hub walk every version since).
    pruned_for: u64,
}

/// The versions and marks of 65,536 consecutive node ids.
struct Segment {
    heads: [AtomicPtr<Version>; SEG_NODES],
    marks: [[AtomicU64; SEG_WORDS]; MARKS.len()],
}

/// Types whose all-zero bit pattern is a valid value.
///
/// # Safety
/// Only for types made of atomics (whose zero is a valid value).
unsafe trait Zeroable: Sized {}
// SAFETY: arrays of `AtomicPtr` (null) and `AtomicU64` (0).
unsafe impl Zeroable for Segment {}
// SAFETY: an array of `AtomicPtr` (null).
unsafe impl Zeroable for [AtomicPtr<Segment>; SEGMENTS] {}

/// A zeroed `T` on the heap, without building it on the stack first (these are large; the
/// allocator hands out zeroed pages lazily, so untouched parts cost no memory).
fn zeroed_box<T: Zeroable>() -> Box<T> {
    let layout = Layout::new::<T>();
    // SAFETY: both `Zeroable` types have a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` was allocated by the global allocator with `T`'s layout, and all-zero bytes
    // are a valid `T` (`Zeroable`).
    unsafe { Box::from_raw(p) }
}

/// The overlay versions of every view of one base.
pub(super) struct Table {
    segments: Box<[AtomicPtr<Segment>; SEGMENTS]>,
    /// Sequence numbers of live views, with how many guards each has.
    live: Mutex<BTreeMap<u64, usize>>,
    /// A `Graph` writes to this table: only one may (installs assume each version is newer
    /// than every one before it, and a single thread installing).
    writer: AtomicBool,
    /// The newest sequence number installed.
    top: AtomicU64,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").finish_non_exhaustive()
    }
}

impl Table {
    pub(super) fn new() -> Arc<Table> {
        Arc::new(Table {
            segments: zeroed_box(),
            live: Mutex::new(BTreeMap::new()),
            writer: AtomicBool::new(false),
            top: AtomicU64::new(0),
        })
    }

    #[inline]
    fn segment(&self, n: u32) -> Option<&Segment> {
        let p = self.segments[(n >> SEG_SHIFT) as usize].load(Ordering::Acquire);
        // SAFETY: a non-null segment pointer was stored (with Release) after the segment was
        // allocated and zeroed, and segments are freed only when the table is dropped.
        unsafe { p.as_ref() }
    }

    /// Whether any version of `n` carries mark `m`.
    #[inline]
    pub(super) fn marked(&self, n: u32, m: Mark) -> bool {
        match self.segment(n) {
            None => false,
            Some(s) => {
                let i = n as usize & (SEG_NODES - 1);
                s.marks[m as usize][i >> 6].load(Ordering::Relaxed) & (1 << (i & 63)) != 0
            }
        }
    }

    /// Whether any version of `n` has overlay edges in `dir` (either way for `Both`).
    #[inline]
    pub(super) fn marked_dir(&self, n: u32, dir: Direction) -> bool {
        self.marked_slot(n, dir).is_some()
    }

    /// The slot holding `n`'s newest version if `n` has overlay edges in `dir` in any version
    /// (one segment lookup for both).
    #[inline]
    pub(super) fn marked_slot(&self, n: u32, dir: Direction) -> Option<&AtomicPtr<Version>> {
        let s = self.segment(n)?;
        let i = n as usize & (SEG_NODES - 1);
        let (w, b) = (i >> 6, 1u64 << (i & 63));
        let word = |m: Mark| s.marks[m as usize][w].load(Ordering::Relaxed);
        let marked = match dir {
            Direction::Out => word(Mark::Out) & b != 0,
            Direction::In => word(Mark::In) & b != 0,
            Direction::Both => (word(Mark::Out) | word(Mark::In)) & b != 0,
        };
        marked.then(|| &s.heads[i])
    }

    /// `n`'s newest version, whatever its sequence. Only for a caller holding a live view
    /// of this table (registered at some seq s) and walking with s, see [`Table::load`].
    #[inline]
    pub(super) fn head(&self, n: u32) -> Option<&Version> {
        Self::load(&self.segment(n)?.heads[n as usize & (SEG_NODES - 1)])
    }

    /// The version a head slot of this table points to. Only for a caller holding a live view
    /// of this table, registered at some seq s, that walks from it with s.
    #[inline]
    pub(super) fn load(slot: &AtomicPtr<Version>) -> Option<&Version> {
        let p = slot.load(Ordering::Acquire);
        // SAFETY: a head was fully written before it was stored (Release, paired with this
        // Acquire). A head is freed only once a newer version at or below the oldest live
        // sequence sits above it; the caller's view is live at s, and every version installed
        // after that view existed has a sequence above s, so the version loaded here (and any
        // the caller's walk reaches) stays allocated while the view lives.
        unsafe { p.as_ref() }
    }

    /// `n`'s state as a view at `seq` sees it.
    #[inline]
    pub(super) fn state(&self, n: u32, seq: u64) -> Option<&NodeState> {
        walk(self.head(n), seq).map(|v| &v.state)
    }

    fn segment_or_create(&self, n: u32) -> &Segment {
        let slot = &self.segments[(n >> SEG_SHIFT) as usize];
        if slot.load(Ordering::Acquire).is_null() {
            // Only the writer creates segments, so no other thread races this store.
            slot.store(Box::into_raw(zeroed_box::<Segment>()), Ordering::Release);
        }
        // Just checked or created.
        self.segment(n).expect("segment exists")
    }

    /// Installs `state` as `n`'s version at `seq` (newer than every version so far) with
    /// `marks` (bits of [`Mark`]), then frees `n`'s versions that no view at `min_live` or
    /// later can reach. Only the writer calls this.
    pub(super) fn install(&self, n: u32, seq: u64, state: NodeState, marks: u8, min_live: u64) {
        let seg = self.set_marks(n, marks);
        let i = n as usize & (SEG_NODES - 1);
        let old = seg.heads[i].load(Ordering::Acquire);
        // SAFETY: heads are live allocations; only this (the writer's) thread frees versions.
        let pruned = unsafe { old.as_ref() }.is_some_and(|o| o.pruned_for == min_live);
        let v = Box::into_raw(Box::new(Version {
            seq,
            state,
            prev: AtomicPtr::new(old),
            pruned_for: min_live,
        }));
        seg.heads[i].store(v, Ordering::Release);
        if !pruned {
            prune(old, min_live);
        }
    }

    /// Starts loading what installing a version of `n` frees (the version below its newest:
    /// under one live view, the one [`Table::install`] unlinks), so that a transaction's frees
    /// overlap instead of each waiting for its own cache miss. Only the writer calls this.
    #[inline]
    pub(super) fn prefetch_prunable(&self, n: u32) {
        // The head is read (the writer's view is live, and only the writer frees versions);
        // the older pointer is only prefetched, never read through here.
        if let Some(h) = self.head(n) {
            let p = h.prev.load(Ordering::Relaxed) as *const u8;
            if !p.is_null() {
                // Its state (dropped) and its link (read to free what is below it); versions
                // are 16-byte aligned, so they may span three lines.
                crate::query::prefetch_ptr(p);
                crate::query::prefetch_ptr(p.wrapping_add(64));
                crate::query::prefetch_ptr(p.wrapping_add(std::mem::size_of::<Version>() - 1));
            }
        }
    }

    /// Sets `marks` (bits of [`Mark`]) on `n` without a version. Only the writer calls this.
    pub(super) fn mark(&self, n: u32, marks: u8) {
        self.set_marks(n, marks);
    }

    fn set_marks(&self, n: u32, marks: u8) -> &Segment {
        let seg = self.segment_or_create(n);
        let i = n as usize & (SEG_NODES - 1);
        for m in MARKS {
            if marks & m.bit() != 0 {
                seg.marks[m as usize][i >> 6].fetch_or(1 << (i & 63), Ordering::Relaxed);
            }
        }
        seg
    }

    /// Clears every mark of a node id no published view holds yet (a transaction that was
    /// dropped may have marked it absent). Only the writer calls this, before reusing the id.
    pub(super) fn unmark_unpublished(&self, n: u32) {
        if let Some(seg) = self.segment(n) {
            let i = n as usize & (SEG_NODES - 1);
            for m in MARKS {
                seg.marks[m as usize][i >> 6].fetch_and(!(1 << (i & 63)), Ordering::Relaxed);
            }
        }
    }

    /// Makes the caller this table's one writer, continuing from a view at `seq`: refused if
    /// another writer holds it or versions newer than `seq` were installed (a view that is not
    /// the newest of its table cannot be written on without reordering the chains).
    pub(super) fn claim(&self, seq: u64) -> bool {
        if self.writer.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.top.load(Ordering::Acquire) != seq {
            self.writer.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Gives up being the writer.
    pub(super) fn release(&self) {
        self.writer.store(false, Ordering::Release);
    }

    /// Records that versions at `seq` were installed (the writer, after each commit).
    pub(super) fn installed(&self, seq: u64) {
        self.top.store(seq, Ordering::Release);
    }

    /// Registers a view at `seq`; it counts as live until the guard is dropped.
    pub(super) fn register(self: &Arc<Self>, seq: u64) -> Arc<Guard> {
        *self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(seq)
            .or_default() += 1;
        Arc::new(Guard {
            table: self.clone(),
            seq,
        })
    }

    /// The oldest live view's sequence number.
    pub(super) fn min_live(&self) -> Option<u64> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .next()
            .copied()
    }
}

/// The newest version at or below `seq`, walking down from `v`.
#[inline]
pub(super) fn walk(mut v: Option<&Version>, seq: u64) -> Option<&Version> {
    while let Some(x) = v {
        if x.seq <= seq {
            return Some(x);
        }
        // SAFETY: a live view at `seq` stops at the newest version at or below `seq`, and
        // pruning frees only versions below the newest one at or below the oldest live view's
        // sequence: every version this walk visits is above or at that one, so not freed.
        v = unsafe { x.prev.load(Ordering::Acquire).as_ref() };
    }
    None
}

/// Frees the versions below the newest one at or below `min_live`, starting from `v`.
fn prune(mut v: *mut Version, min_live: u64) {
    // SAFETY (whole function): only the writer changes `prev` links and frees versions, and
    // every version reachable from a head is a live allocation from `Box::into_raw`.
    while let Some(x) = unsafe { v.as_ref() } {
        if x.seq <= min_live {
            free_chain(x.prev.swap(std::ptr::null_mut(), Ordering::AcqRel));
            return;
        }
        v = x.prev.load(Ordering::Acquire);
    }
}

/// Frees a chain of versions no view reaches any more.
fn free_chain(mut p: *mut Version) {
    while !p.is_null() {
        // SAFETY: `p` came from `Box::into_raw`, was unlinked from every chain (or its table is
        // being dropped) and no view can reach it, so this is its only owner.
        let b = unsafe { Box::from_raw(p) };
        p = b.prev.load(Ordering::Relaxed);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        for s in self.segments.iter() {
            let p = s.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: segments come from `Box::into_raw` in `segment_or_create`; the table is
            // being dropped, so no view uses it.
            let seg = unsafe { Box::from_raw(p) };
            for h in seg.heads.iter() {
                free_chain(h.load(Ordering::Acquire));
            }
        }
    }
}

/// A view's registration as live (see [`Table::register`]).
#[derive(Debug)]
pub(super) struct Guard {
    table: Arc<Table>,
    seq: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut live = self.table.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = live.get_mut(&self.seq) {
            *c -= 1;
            if *c == 0 {
                live.remove(&self.seq);
            }
        }
    }
}

// The table owns its versions through raw pointers: they must be shareable across threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Version>();
};
