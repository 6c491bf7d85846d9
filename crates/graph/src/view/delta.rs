//! One node's overlay edges in one direction, and how they are read and found.
//!
//! Layout (tiered by size, after Terrace and LiveGraph): up to [`INLINE`] additions live
//! inline in the node's entry and are copied on write (copying two records is cheaper than
//! any bookkeeping); past that, additions live in a shared append-only buffer
//! ([`Prefix`]), which a transaction extends in place, so adding an edge to a hub costs O(1)
//! whatever its degree. Deletions are positions in the node's combined list (base row `0..d`,
//! then shared additions `d..`) in a small sorted vector, or past [`SMALL_DELETIONS`] a
//! persistent ordered set (`imbl`): O(log n) per deletion, shared between views. A list with
//! no deletions is scanned with no check per edge (Sortledton). Inline additions are removed
//! by copying the two records without the removed one, so they are never in the deleted set.
//!
//! [`EdgeIndex`] is the writer's own: where an edge sits in a long list, so removing one edge
//! scans a list of 64+ edges at most eight times before its index is started, and one of
//! 4,096+ (a hub's) only beyond the stretch indexed so far (each search indexes up to
//! [`CATCH_UP`] more positions). It is derived state, checked against the list on every use.
//!
//! Not for: which nodes have entries (`tree`), or what a mutation means (`txn`).

use super::append::Prefix;
use super::IdMap;
use crate::query::Direction;
use crate::EdgeLabel;
use smallvec::SmallVec;
use std::sync::Arc;

/// An edge held in an overlay: the other endpoint, label and weight.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct EdgeRec {
    pub(super) other: u32,
    pub(super) label: EdgeLabel,
    pub(super) weight: f64,
}

impl EdgeRec {
    /// Same endpoint, label and weight (bitwise, so NaN and -0.0 are exact).
    #[inline]
    pub(super) fn same(&self, other: u32, label: EdgeLabel, weight: f64) -> bool {
        self.other == other && self.label == label && self.weight.to_bits() == weight.to_bits()
    }
}

/// Additions kept inline in a node's entry before they move to a shared buffer.
pub(super) const INLINE: usize = 2;
/// Deletions kept in a sorted vector (copied on write) before they move to a persistent set.
const SMALL_DELETIONS: usize = 32;
/// Lists at least this long are counted by [`EdgeIndex`] when an edge is looked up in them.
const INDEX_MIN: usize = 64;
/// Lookups by scan of a counted list before it is indexed, so a list looked up a few times (a
/// node off the hubs, under a delete or two) is never indexed.
const SCANS_BEFORE_INDEX: u8 = 8;
/// Lists at least this long start being indexed at their first lookup (a hub's, searched
/// under many deletes).
const INDEX_AT_ONCE: usize = 4096;
/// Positions a lookup adds to a list's index at most, the rest of the list scanned meanwhile.
/// Indexing a position costs far more than scanning it: building the whole index of a
/// 260,000-edge list at its first lookup held the writer for 110–200 ms (the e2e bench's hub
/// phase, a delete of one of that node's edges).
const CATCH_UP: usize = 4096;

/// A node's additions in one direction.
#[derive(Clone)]
pub(super) enum Added {
    Inline { len: u8, edges: [EdgeRec; INLINE] },
    Shared(Prefix<EdgeRec>),
}

impl Default for Added {
    fn default() -> Self {
        Added::Inline {
            len: 0,
            edges: [EdgeRec::default(); INLINE],
        }
    }
}

impl std::fmt::Debug for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Added {
    #[inline]
    pub(super) fn as_slice(&self) -> &[EdgeRec] {
        match self {
            Added::Inline { len, edges } => &edges[..*len as usize],
            Added::Shared(p) => p.as_slice(),
        }
    }

    /// Appends `e`; returns the shared positions (indexes into the shared buffer) that now
    /// hold entries they did not before (the moved inline ones too when the list moves to a
    /// shared buffer), or `None` while the list stays inline.
    fn push(&mut self, e: EdgeRec) -> Option<std::ops::Range<usize>> {
        match self {
            Added::Inline { len, edges } if (*len as usize) < INLINE => {
                edges[*len as usize] = e;
                *len += 1;
                None
            }
            Added::Inline { len, edges } => {
                let n = *len as usize;
                let mut p = Prefix::from_slice(&edges[..n], 4 * INLINE);
                p.push(e);
                *self = Added::Shared(p);
                Some(0..n + 1)
            }
            Added::Shared(p) => {
                p.push(e);
                Some(p.len() - 1..p.len())
            }
        }
    }
}

/// Deleted positions of a node's combined list, sorted.
#[derive(Debug, Clone)]
pub(super) enum DelSet {
    Small(Vec<u32>),
    Big(imbl::OrdSet<u32>),
}

impl DelSet {
    #[inline]
    fn contains(&self, p: u32) -> bool {
        match self {
            DelSet::Small(v) => v.binary_search(&p).is_ok(),
            DelSet::Big(s) => s.contains(&p),
        }
    }

    fn insert(&mut self, p: u32) {
        match self {
            DelSet::Small(v) => {
                if let Err(at) = v.binary_search(&p) {
                    v.insert(at, p);
                }
                if v.len() > SMALL_DELETIONS {
                    *self = DelSet::Big(v.iter().copied().collect());
                }
            }
            DelSet::Big(s) => {
                s.insert(p);
            }
        }
    }

    /// Calls `keep(p)` for every position `p` in `0..total` that is not deleted, in order.
    #[inline]
    fn for_each_kept(&self, total: u32, keep: impl FnMut(u32)) {
        fn walk(deleted: impl Iterator<Item = u32>, total: u32, mut keep: impl FnMut(u32)) {
            let mut next = 0;
            for d in deleted {
                if d >= total {
                    break;
                }
                (next..d).for_each(&mut keep);
                next = d + 1;
            }
            (next..total).for_each(keep);
        }
        match self {
            DelSet::Small(v) => walk(v.iter().copied(), total, keep),
            DelSet::Big(s) => walk(s.iter().copied(), total, keep),
        }
    }
}

/// Overlay state of one node in one direction.
#[derive(Debug, Clone, Default)]
pub(super) struct NodeDelta {
    /// Edges added since the base.
    pub(super) added: Added,
    /// Positions deleted since the base (none: scans check nothing).
    pub(super) deleted: Option<Arc<DelSet>>,
}

const _: () = assert!(std::mem::size_of::<NodeDelta>() <= 64);

/// A node's overlay edges, `[outgoing, incoming]`.
#[derive(Debug, Clone, Default)]
pub(super) struct NodeDeltas(pub(super) [NodeDelta; 2]);

impl NodeDeltas {
    #[inline]
    pub(super) fn side(&self, dir: Direction) -> &NodeDelta {
        &self.0[usize::from(dir == Direction::In)]
    }

    #[inline]
    pub(super) fn side_mut(&mut self, dir: Direction) -> &mut NodeDelta {
        &mut self.0[usize::from(dir == Direction::In)]
    }
}

/// A node's base CSR row in one direction: endpoints, labels, weights (none: all 1.0).
#[derive(Clone, Copy, Default)]
pub(super) struct Row<'a> {
    pub(super) nodes: &'a [u32],
    pub(super) labels: &'a [EdgeLabel],
    pub(super) weights: Option<&'a [f64]>,
}

impl Row<'_> {
    #[inline]
    fn rec(&self, i: usize) -> EdgeRec {
        EdgeRec {
            other: self.nodes[i],
            label: self.labels[i],
            weight: self.weights.map_or(1.0, |w| w[i]),
        }
    }
}

/// Calls `f(other, label, weight)` for each edge of a node in one direction: its base row
/// minus the deleted positions, plus its additions.
#[inline]
pub(super) fn for_each_edge(row: Row<'_>, delta: Option<&NodeDelta>, f: &mut impl FnMut(u32, EdgeLabel, f64)) {
    let added = delta.map_or(&[][..], |d| d.added.as_slice());
    match delta.and_then(|d| d.deleted.as_deref()) {
        None => {
            for i in 0..row.nodes.len() {
                f(row.nodes[i], row.labels[i], row.weights.map_or(1.0, |w| w[i]));
            }
            for e in added {
                f(e.other, e.label, e.weight);
            }
        }
        Some(deleted) => {
            let d = row.nodes.len();
            deleted.for_each_kept((d + added.len()) as u32, |p| {
                let e = if (p as usize) < d {
                    row.rec(p as usize)
                } else {
                    added[p as usize - d]
                };
                f(e.other, e.label, e.weight);
            });
        }
    }
}

/// As [`for_each_edge`], endpoints only.
#[inline]
pub(super) fn for_each_neighbor(row: &[u32], delta: Option<&NodeDelta>, f: &mut impl FnMut(u32)) {
    let added = delta.map_or(&[][..], |d| d.added.as_slice());
    match delta.and_then(|d| d.deleted.as_deref()) {
        None => {
            row.iter().for_each(|&m| f(m));
            added.iter().for_each(|e| f(e.other));
        }
        Some(deleted) => {
            let d = row.len();
            deleted.for_each_kept((d + added.len()) as u32, |p| {
                f(if (p as usize) < d {
                    row[p as usize]
                } else {
                    added[p as usize - d].other
                })
            });
        }
    }
}

/// Where a stored edge was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Found {
    /// The `i`-th inline addition.
    Inline(usize),
    /// A position of the combined list (base row, then shared additions).
    At(u32),
}

impl NodeDelta {
    /// Starts loading the reference counts a copy of this state updates: each update is a
    /// locked instruction, which later loads wait for, so their cache misses would not
    /// overlap otherwise.
    #[inline]
    pub(super) fn prefetch_shared(&self) {
        // std's `Arc` keeps its two counts just before the value it points to (a layout
        // detail: if it changes, this prefetches the wrong line and costs a miss, no more).
        const COUNTS: usize = 2 * std::mem::size_of::<usize>();
        if let Added::Shared(p) = &self.added {
            let (a, len) = p.header();
            crate::query::prefetch_ptr(a.wrapping_sub(COUNTS));
            crate::query::prefetch_ptr(a.wrapping_add(len - 1));
        }
        if let Some(d) = &self.deleted {
            crate::query::prefetch_ptr((Arc::as_ptr(d) as *const u8).wrapping_sub(COUNTS));
        }
    }

    /// Appends `e`; `index` learns its position when this list (`key`) is indexed (not merely
    /// counted) up to it.
    pub(super) fn add(&mut self, e: EdgeRec, base_degree: usize, index: &mut EdgeIndex, key: (u32, Direction)) {
        if let Some(moved) = self.added.push(e) {
            if let Some(Listed::Indexed { ix, upto }) = index.lists.get_mut(&IndexKey::from(key)) {
                let added = self.added.as_slice();
                for j in moved {
                    // A position below `upto` (reused after a dropped transaction) or right
                    // at it is indexed now; later ones wait for a lookup to catch up.
                    let p = base_degree + j;
                    if p <= *upto {
                        ix.entry(added[j].other).or_default().push(p as u32);
                        *upto = (*upto).max(p + 1);
                    }
                }
            }
        }
    }

    /// Removes what [`EdgeIndex::find_by`] found.
    pub(super) fn remove(&mut self, at: Found) {
        match at {
            Found::Inline(i) => {
                if let Added::Inline { len, edges } = &mut self.added {
                    edges.copy_within(i + 1..*len as usize, i);
                    *len -= 1;
                }
            }
            Found::At(p) => {
                Arc::make_mut(self.deleted.get_or_insert_with(|| Arc::new(DelSet::Small(Vec::new())))).insert(p);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IndexKey(u32, bool);

impl From<(u32, Direction)> for IndexKey {
    fn from((n, dir): (u32, Direction)) -> Self {
        IndexKey(n, dir == Direction::In)
    }
}

/// The writer's index of long edge lists: per (node, direction), other endpoint → positions
/// in the combined list. Started when an edge is looked up in a list of at least
/// [`INDEX_AT_ONCE`] edges, or of at least [`INDEX_MIN`] looked up [`SCANS_BEFORE_INDEX`]
/// times already; extended by each lookup ([`CATCH_UP`] positions at most) and, once it has
/// caught up, by [`NodeDelta::add`]. Every candidate is checked
/// against the list itself (range, deletion, endpoint, label, weight), so entries left by a
/// dropped transaction or a view built on another branch are harmless; it must be cleared
/// when the base changes (positions are relative to the base row).
#[derive(Debug)]
pub(super) struct EdgeIndex {
    lists: IdMap<IndexKey, Listed>,
    /// [`CATCH_UP`], smaller in unit tests.
    catch_up: usize,
}

impl Default for EdgeIndex {
    fn default() -> Self {
        EdgeIndex {
            lists: IdMap::default(),
            catch_up: CATCH_UP,
        }
    }
}

/// A long list's entry in the [`EdgeIndex`].
#[derive(Debug)]
enum Listed {
    /// Looked up this many times by a scan.
    Scanned(u8),
    /// Other endpoint → positions. Every position below `upto` is in `ix` with the entry the
    /// list holds there (stale ones may be too); positions from `upto` on are scanned, and
    /// each lookup indexes up to [`CATCH_UP`] more of them.
    Indexed {
        ix: IdMap<u32, SmallVec<[u32; 2]>>,
        upto: usize,
    },
}

impl EdgeIndex {
    /// Finds one stored edge to `other` that `pred` accepts among a node's edges in one
    /// direction (`key`): inline additions first, then the combined list (by a linear scan
    /// when short, through the index when long). Returns where it is and the edge.
    pub(super) fn find_by(
        &mut self,
        key: (u32, Direction),
        row: Row<'_>,
        delta: Option<&NodeDelta>,
        other: u32,
        pred: impl Fn(&EdgeRec) -> bool,
    ) -> Option<(Found, EdgeRec)> {
        let ok = |e: &EdgeRec| e.other == other && pred(e);
        let (shared, deleted) = match delta {
            Some(d) => match &d.added {
                Added::Inline { .. } => {
                    let inline = d.added.as_slice();
                    if let Some(i) = inline.iter().position(ok) {
                        return Some((Found::Inline(i), inline[i]));
                    }
                    (&[][..], d.deleted.as_deref())
                }
                Added::Shared(p) => (p.as_slice(), d.deleted.as_deref()),
            },
            None => (&[][..], None),
        };
        let base = row.nodes.len();
        let at = |p: usize| if p < base { row.rec(p) } else { shared[p - base] };
        let hit = |p: usize| {
            let e = at(p);
            (ok(&e) && !deleted.is_some_and(|s| s.contains(p as u32))).then_some((Found::At(p as u32), e))
        };
        let total = base + shared.len();
        // Positions `from..` of the combined list. Endpoints first (one array, the only one a
        // miss costs): labels, weights and deletions are read at matching positions only.
        let scan = |from: usize| {
            let (in_row, in_shared) = (from.min(base), from.saturating_sub(base).min(shared.len()));
            (row.nodes[in_row..].iter().enumerate())
                .filter(|&(_, &m)| m == other)
                .find_map(|(i, _)| hit(in_row + i))
                .or_else(|| {
                    (shared[in_shared..].iter().enumerate())
                        .filter(|(_, e)| e.other == other)
                        .find_map(|(j, _)| hit(base + in_shared + j))
                })
        };
        if total < INDEX_MIN {
            return scan(0);
        }
        let listed = self.lists.entry(IndexKey::from(key)).or_insert(Listed::Scanned(0));
        if let Listed::Scanned(scans) = listed {
            if *scans < SCANS_BEFORE_INDEX && total < INDEX_AT_ONCE {
                *scans += 1;
                return scan(0);
            }
            *listed = Listed::Indexed {
                ix: IdMap::default(),
                upto: 0,
            };
        }
        let Listed::Indexed { ix, upto } = listed else {
            return scan(0);
        };
        let to = total.min(*upto + self.catch_up);
        for p in *upto..to {
            ix.entry(at(p).other).or_default().push(p as u32);
        }
        *upto = (*upto).max(to);
        // Newest first: when an edge is updated again and again (removed, added back with a
        // new weight), the older positions are all deleted and the live one is last. Which of
        // several matching edges is found is not observable: they are the same edge record
        // (or, for a weight-blind search, any stored edge of that endpoint and label).
        (ix.get(&other).map_or(&[][..], |ps| &ps[..]).iter().rev())
            .map(|&p| p as usize)
            .filter(|&p| p < total)
            .find_map(hit)
            .or_else(|| scan(*upto))
    }
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
