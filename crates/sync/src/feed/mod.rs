//! The change feed's source: each applied transaction's changes to a subgraph — the whole
//! graph's or one tenant's (`graph::diff`) — read in commit order after a position, from
//! memory for recent change-log records and from the log on disk for older ones.
//!
//! The replicator [`Feed::push`]es every record it appends (a copy of the bytes; it never
//! waits on a reader). Readers decode a record once and render a transaction's event once per
//! scope; every subscriber of a tenant shares the text. What the feed can serve is what the
//! change log keeps: positions older than its first segment get [`FeedError::TooOld`] (the
//! client fetches the subgraph again).
//!
//! Not for: HTTP, waiting for new records (the caller watches the applied LSN), computing the
//! changes (`graph::diff`) or writing the log.

mod txn;

use crate::changelog::{LogDir, LogError};
use crate::replicator::GraphSchema;
use graph::EdgeLabel;
use pgoutput::Lsn;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;
pub use txn::FeedTxn;
use txn::Unreadable;

/// How much memory recent records may take by default (decoded and rendered forms included,
/// estimated); older ones are read from disk.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;

/// Most in-memory records one read looks at.
const ENTRIES_PER_READ: usize = 256;

/// Which subgraph a reader follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole graph: every visible node, every edge with both ends visible.
    All,
    /// One tenant (its value as text): its visible nodes, the edges with both ends in it.
    Tenant(String),
}

/// Why the feed cannot serve a read.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The position is older than the change log keeps.
    #[error(
        "position {from} is older than the change log keeps (oldest {oldest}); fetch the subgraph again and \
         follow from its lsn"
    )]
    TooOld {
        /// The position asked for.
        from: Lsn,
        /// The oldest position the feed can follow from.
        oldest: Lsn,
    },
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A record did not decode.
    #[error("change log record at {lsn} does not decode: {what}; run `graphsync log verify`")]
    Corrupt {
        /// The record's LSN.
        lsn: Lsn,
        /// What is wrong.
        what: String,
    },
}

/// What a read returns at most, and for which scope.
#[derive(Debug, Clone)]
pub struct Query {
    /// The subgraph.
    pub scope: Scope,
    /// Only edge changes of this label (node changes are all kept).
    pub edge_label: Option<EdgeLabel>,
    /// Most events per page.
    pub max_events: usize,
    /// Most bytes of event text per page (at least one event is returned).
    pub max_bytes: usize,
}

/// One transaction's event, as JSON text.
#[derive(Debug, Clone)]
pub struct Event {
    /// The transaction's end LSN.
    pub lsn: Lsn,
    /// The event.
    pub json: Arc<str>,
}

/// The events of one read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// In commit order.
    pub events: Vec<Event>,
    /// Where the next read starts: the last event's LSN, or the read's end when `complete`.
    pub next: Lsn,
    /// Whether the read reached its end (`upto`) rather than a limit.
    pub complete: bool,
}

struct Entry {
    lsn: Lsn,
    payload: Box<[u8]>,
    txns: OnceLock<Result<Arc<[FeedTxn]>, String>>,
}

struct Ring {
    /// Every record after this position is in `entries`.
    base: Lsn,
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
}

/// Who is woken for what: per scope followed, a watch of the position through which that
/// scope's new events were announced.
struct Dispatch {
    /// Every record through this position was looked at.
    next: Lsn,
    scopes: HashMap<Scope, watch::Sender<Lsn>>,
}

/// The feed of one replica's change log.
pub struct Feed {
    dir: LogDir,
    mapping_hash: u64,
    schema: Arc<GraphSchema>,
    cap: usize,
    ring: Mutex<Ring>,
    dispatch: Mutex<Dispatch>,
    /// Positions before this are refused ([`FeedError::TooOld`]): a feed opened on a rebuilt
    /// generation cannot describe changes relative to the graph clients held before it.
    floor: std::sync::atomic::AtomicU64,
    /// Set once another feed replaces this one (a background rebuild was swapped in): every
    /// read is refused with the new feed's floor, so clients refetch.
    superseded: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("dir", &self.dir.path()).finish()
    }
}

/// Why a scan of the log stopped early.
enum Stop {
    /// Past the last record wanted.
    Done,
    /// A page limit reached.
    Full,
    Err(FeedError),
}

impl From<LogError> for Stop {
    fn from(e: LogError) -> Self {
        Stop::Err(FeedError::Log(e))
    }
}

fn entry_cost(payload: usize) -> usize {
    // Decoded and rendered forms take a few times the encoded bytes.
    256 + payload * 4
}

impl Feed {
    /// A feed of the log in `dir` (records of `mapping_hash`), with nothing in memory yet:
    /// reads after `position` (the replica's position now) will come from [`Feed::push`].
    pub fn new(
        dir: &Path,
        mapping_hash: u64,
        schema: Arc<GraphSchema>,
        position: Lsn,
        memory_bytes: usize,
    ) -> Result<Feed, LogError> {
        Ok(Feed {
            dir: LogDir::open(dir)?,
            mapping_hash,
            schema,
            cap: memory_bytes,
            ring: Mutex::new(Ring {
                base: position,
                entries: VecDeque::new(),
                bytes: 0,
            }),
            dispatch: Mutex::new(Dispatch {
                next: position,
                scopes: HashMap::new(),
            }),
            floor: std::sync::atomic::AtomicU64::new(0),
            superseded: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Refuses positions before `lsn` from now on (a feed of a rebuilt graph starts at the swap).
    pub fn set_floor(&self, lsn: Lsn) {
        self.floor.store(lsn.0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses every read from now on, naming `oldest` (where the replacing feed starts), and
    /// wakes every watcher so open subscriptions learn it at once.
    pub fn supersede(&self, oldest: Lsn) {
        self.superseded
            .store(oldest.0.max(1), std::sync::atomic::Ordering::SeqCst);
        let d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        for tx in d.scopes.values() {
            tx.send_modify(|v| *v = Lsn(v.0.max(oldest.0)));
        }
    }

    /// A watch of `scope`'s position: it moves (to the applied position) when transactions
    /// with events in the scope were applied, so a subscriber wakes only for its own events.
    /// Read with [`Feed::read`] up to the watched value.
    pub fn watch(&self, scope: &Scope) -> watch::Receiver<Lsn> {
        let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let next = d.next;
        d.scopes
            .entry(scope.clone())
            .or_insert_with(|| watch::channel(next).0)
            .subscribe()
    }

    /// Wakes the watchers of every scope with events in the records after the last call
    /// through `upto` (an applied position). Each record is decoded once, here or by a
    /// reader, whichever comes first; with no watchers nothing is decoded.
    pub fn dispatch(&self, upto: Lsn) {
        // One caller (the replicator's dispatcher task); the lock is held only to read and
        // move the position and to wake, not while records are decoded: a scope watched from
        // now on starts at `upto` and needs no wake for what came before.
        let from = {
            let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            if upto <= d.next {
                return;
            }
            let from = std::mem::replace(&mut d.next, upto);
            d.scopes.retain(|_, tx| tx.receiver_count() > 0);
            if d.scopes.is_empty() {
                return;
            }
            from
        };
        let (base, entries, _) = self.entries(from, upto, usize::MAX);
        let mut touched: HashSet<Scope> = HashSet::new();
        // Records no longer in memory (or undecodable ones): wake everyone, readers sort it out.
        let mut everyone = from < base;
        for e in entries {
            match self.txns(&e) {
                Ok(txns) => {
                    for t in txns.iter().filter(|t| t.lsn > from) {
                        if t.has_global() {
                            touched.insert(Scope::All);
                        }
                        touched.extend(t.tenants().map(|k| Scope::Tenant(k.to_string())));
                    }
                }
                Err(_) => everyone = true,
            }
        }
        let d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        if everyone {
            for tx in d.scopes.values() {
                tx.send_replace(upto);
            }
        } else {
            for s in &touched {
                if let Some(tx) = d.scopes.get(s) {
                    tx.send_replace(upto);
                }
            }
        }
    }

    /// The ring's base and its first `max` entries with `from` < LSN ≤ `upto` (and whether
    /// there were more).
    fn entries(&self, from: Lsn, upto: Lsn, max: usize) -> (Lsn, Vec<Arc<Entry>>, bool) {
        let r = self.ring();
        let at = r.entries.partition_point(|e| e.lsn <= from);
        let mut it = r.entries.iter().skip(at).take_while(|e| e.lsn <= upto);
        let entries: Vec<Arc<Entry>> = it.by_ref().take(max).cloned().collect();
        let more = it.next().is_some();
        (r.base, entries, more)
    }

    /// An entry's transactions, decoded once.
    fn txns(&self, e: &Entry) -> Result<Arc<[FeedTxn]>, FeedError> {
        e.txns
            .get_or_init(|| match txn::decode(&e.payload) {
                Ok(t) => Ok(t.into()),
                Err(Unreadable::NotRecorded) => Err(String::new()),
                Err(Unreadable::Corrupt(w)) => Err(w),
            })
            .clone()
            .map_err(|what| self.unreadable(e.lsn, what))
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the record just appended to the log at `lsn`. `durable` is the log's durable
    /// position: only records at or before it leave memory (readers then find them on disk).
    pub fn push(&self, lsn: Lsn, payload: &[u8], durable: Lsn) {
        let mut r = self.ring();
        r.bytes += entry_cost(payload.len());
        r.entries.push_back(Arc::new(Entry {
            lsn,
            payload: payload.into(),
            txns: OnceLock::new(),
        }));
        while r.bytes > self.cap && r.entries.front().is_some_and(|e| e.lsn <= durable) {
            if let Some(e) = r.entries.pop_front() {
                r.bytes -= entry_cost(e.payload.len());
                r.base = e.lsn;
            }
        }
    }

    /// The schema events are rendered with.
    pub fn schema(&self) -> &Arc<GraphSchema> {
        &self.schema
    }

    /// The oldest position the feed can follow from.
    pub fn oldest(&self) -> Result<Lsn, FeedError> {
        let superseded = self.superseded.load(std::sync::atomic::Ordering::SeqCst);
        if superseded > 0 {
            return Ok(Lsn(superseded));
        }
        let base = self.ring().base;
        let segs = self.dir.segments()?;
        let floor = Lsn(self.floor.load(std::sync::atomic::Ordering::SeqCst));
        Ok(segs.first().map_or(base, |s| s.start.min(base)).max(floor))
    }

    /// The events of `q.scope` of the transactions with `from` < LSN ≤ `upto` (`upto` is a
    /// position the replica has applied), up to the query's limits. Reads the log on disk
    /// for what memory no longer holds (blocking file I/O: call from a blocking thread when
    /// `from` may be old; see [`Feed::in_memory`]).
    pub fn read(&self, q: &Query, from: Lsn, upto: Lsn) -> Result<Page, FeedError> {
        let mut page = Page {
            events: Vec::new(),
            next: from,
            complete: false,
        };
        let superseded = self.superseded.load(std::sync::atomic::Ordering::SeqCst);
        if superseded > 0 {
            return Err(FeedError::TooOld {
                from,
                oldest: Lsn(superseded),
            });
        }
        let floor = Lsn(self.floor.load(std::sync::atomic::Ordering::SeqCst));
        if from < floor {
            return Err(FeedError::TooOld { from, oldest: floor });
        }
        if from >= upto {
            page.complete = true;
            page.next = from.max(upto);
            return Ok(page);
        }
        // A bounded slice per read: the ring's lock is shared with the apply loop's pushes.
        let (base, entries, more) = self.entries(from, upto, ENTRIES_PER_READ);
        if from < base {
            let oldest = self.oldest()?;
            if from < oldest {
                return Err(FeedError::TooOld { from, oldest });
            }
            if !self.read_disk(q, base.min(upto), &mut page)? {
                return Ok(page);
            }
        }
        for e in entries {
            let txns = self.txns(&e)?;
            if !self.take(q, &txns, upto, &mut page) {
                return Ok(page);
            }
        }
        if more {
            return Ok(page);
        }
        page.complete = true;
        page.next = page.next.max(upto);
        Ok(page)
    }

    /// Whether a read from `from` is served from memory alone (no file I/O).
    pub fn in_memory(&self, from: Lsn) -> bool {
        from >= self.ring().base
    }

    fn unreadable(&self, lsn: Lsn, what: String) -> FeedError {
        if what.is_empty() {
            // A version 1 record: the feed starts after it.
            FeedError::TooOld { from: lsn, oldest: lsn }
        } else {
            FeedError::Corrupt { lsn, what }
        }
    }

    /// Adds the events of `txns` after `page.next` and at or before `upto`; false once a
    /// limit is reached.
    fn take(&self, q: &Query, txns: &[FeedTxn], upto: Lsn, page: &mut Page) -> bool {
        let mut bytes: usize = page.events.iter().map(|e| e.json.len()).sum();
        for t in txns {
            if t.lsn <= page.next {
                continue;
            }
            if t.lsn > upto {
                return true;
            }
            if let Some(json) = t.render(&self.schema, &q.scope, q.edge_label) {
                if !page.events.is_empty() && (page.events.len() >= q.max_events || bytes + json.len() > q.max_bytes) {
                    return false;
                }
                bytes += json.len();
                page.events.push(Event { lsn: t.lsn, json });
            }
            page.next = t.lsn;
        }
        true
    }

    /// Reads records after `page.next` through `limit` from disk; false once a limit is
    /// reached.
    fn read_disk(&self, q: &Query, limit: Lsn, page: &mut Page) -> Result<bool, FeedError> {
        let from = page.next;
        // Everything wanted (records at or before `limit`) is durable, but the newest segment
        // may end in a frame the writer is appending right now: a damaged frame is retried a
        // few times (the frame completes, or a failed write is cut back) before it counts.
        let mut attempt = 0;
        loop {
            match self.scan_disk(q, limit, page) {
                Err(FeedError::Log(LogError::Corrupt { .. })) if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(more) => {
                    // Segments pruned while this scan listed them: what came before is gone.
                    let oldest = self.oldest()?;
                    if from < oldest {
                        return Err(FeedError::TooOld { from, oldest });
                    }
                    return Ok(more);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn scan_disk(&self, q: &Query, limit: Lsn, page: &mut Page) -> Result<bool, FeedError> {
        let r = self.dir.scan(page.next, self.mapping_hash, |lsn, payload| {
            if lsn > limit {
                return Err(Stop::Done);
            }
            let txns = match txn::decode(payload) {
                Ok(t) => t,
                Err(Unreadable::NotRecorded) => return Err(Stop::Err(self.unreadable(lsn, String::new()))),
                Err(Unreadable::Corrupt(w)) => return Err(Stop::Err(self.unreadable(lsn, w))),
            };
            if self.take(q, &txns, limit, page) {
                Ok(())
            } else {
                Err(Stop::Full)
            }
        });
        match r {
            Ok(()) | Err(Stop::Done) => Ok(true),
            Err(Stop::Full) => Ok(false),
            Err(Stop::Err(e)) => Err(e),
        }
    }
}
