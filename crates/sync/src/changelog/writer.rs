//! Appending to the change log: [`LogWriter`] queues records and writes them on a thread of
//! its own in groups (everything queued that fits in the current segment, gathered into as
//! few writes as possible, then one fdatasync; records that arrive meanwhile form the next
//! group), and publishes the durable position (the last record of the last flushed group)
//! so callers confirm to the source only what is on disk.
//!
//! Disk full and I/O errors lose nothing: the segment is cut back to the end of the last
//! flushed group (never a partial frame in the middle of a file), the records stay queued,
//! [`LogWriter::error`] says what is wrong, and the thread retries with a backoff (100 ms
//! doubling to 2 s) until it works again. After a failed fdatasync everything since the
//! last good one is written again (Linux may drop dirty pages after a failed fsync).
//!
//! Not for: reading, recovery or pruning (`segment`), or what a payload means.

use super::segment::{create_segment, frame_head, open_for_append, FRAME_OVERHEAD, HEADER_LEN, MAX_PAYLOAD};
use super::{LogDir, LogError};
use pgoutput::Lsn;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First wait before retrying a failed write.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Frames are gathered into a buffer and written this many bytes at a time.
const WRITE_CHUNK: usize = 4 << 20;
/// Payloads at least this large are written from the caller's buffer, not copied.
const DIRECT_WRITE: usize = 1 << 20;

/// How a [`LogWriter`] writes.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The mapping hash written into (and checked in) segment headers.
    pub mapping_hash: u64,
    /// A new segment is started once the current one reaches this many bytes (default
    /// 64 MiB). A segment may exceed it by one record.
    pub segment_bytes: u64,
    /// The group-commit window: groups start at most this often (default
    /// [`DEFAULT_SYNC_INTERVAL`]), so a trickle of small batches costs at most 50 fdatasyncs a
    /// second, not one each (fsyncs on a disk shared with the server's WAL slow the server's
    /// commits). A record waits at most this long plus one fsync before it is durable; under
    /// load, records that arrive while a group is flushed form the next group anyway.
    pub sync_interval: Duration,
    /// Backpressure: an append blocks while its frame would take the bytes of frames not yet
    /// durable past this (default 256 MiB). A single larger record is accepted when nothing
    /// else is pending.
    pub max_queued_bytes: usize,
}

/// The default group-commit window. Each fdatasync costs the machine a device flush (on a
/// 2-core VM at 1,000 single-row transactions/s, syncing every 5 ms was a third of
/// graphsync's CPU); confirms go out every 100 ms at most, so 20 ms adds nothing to how far
/// the slot trails.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(20);

impl WriterOptions {
    /// The defaults for the given mapping hash.
    pub fn new(mapping_hash: u64) -> WriterOptions {
        WriterOptions {
            mapping_hash,
            segment_bytes: 64 << 20,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            max_queued_bytes: 256 << 20,
        }
    }
}

impl Default for WriterOptions {
    /// The defaults, with mapping hash 0: set the real one
    /// (`WriterOptions { mapping_hash, ..WriterOptions::default() }`).
    fn default() -> WriterOptions {
        WriterOptions::new(0)
    }
}

/// Test-only fault injection (see [`LogWriter::inject`]).
#[cfg(test)]
pub(crate) mod inject {
    /// No fault.
    pub const NONE: u8 = 0;
    /// Every write writes half its bytes, then fails with ENOSPC.
    pub const WRITE: u8 = 1;
    /// Writes succeed, every fdatasync fails with EIO.
    pub const SYNC: u8 = 2;
    /// On stop, the thread ends at once without writing what is queued (a crash).
    pub const CRASH: u8 = 3;
}

struct State {
    /// Appended, not yet taken by the thread.
    queue: VecDeque<(Lsn, Vec<u8>)>,
    /// Bytes of frames appended and not yet durable (queued or being written).
    queued_bytes: usize,
    /// The last appended lsn (`after` at first).
    last: Lsn,
    /// Whether the thread waits for work (appends wake it only then).
    idle: bool,
    /// Drop asked the thread to stop.
    stop: bool,
    /// The thread has ended.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits on it for records (and, backing off, for stop).
    work: Condvar,
    /// Appenders (backpressure) and flushers wait on it for the durable position.
    progress: Condvar,
    durable: AtomicU64,
    watch: watch::Sender<Lsn>,
    error: Mutex<Option<String>>,
    appended: AtomicU64,
    #[cfg(test)]
    inject: std::sync::atomic::AtomicU8,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends records on a thread of its own and flushes (fdatasync) them in groups.
pub struct LogWriter {
    dir: LogDir,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    max_queued: usize,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("durable", &self.durable())
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Opens `dir` for appending after [`LogDir::recover`]: `after` is the recovered last
    /// lsn or, for a fresh log, the position the log starts after (e.g. a snapshot's LSN).
    /// Starts a new segment named after `after` when the log has no segment or the newest
    /// has reached `segment_bytes`, else appends to the newest. `after` before the newest
    /// segment's start is [`LogError::OutOfOrder`]; a newest segment of another mapping is
    /// [`LogError::MappingChanged`].
    pub fn open(dir: &LogDir, after: Lsn, opts: WriterOptions) -> Result<LogWriter, LogError> {
        let segs = dir.segments()?;
        let seg = match segs.last() {
            Some(s) if after < s.start => {
                return Err(LogError::OutOfOrder {
                    lsn: after,
                    last: s.start,
                })
            }
            Some(s) => {
                let file = open_for_append(s, opts.mapping_hash)?;
                if s.bytes < opts.segment_bytes || s.start == after {
                    Some(Segment {
                        file,
                        path: s.path.clone(),
                        start: s.start,
                        len: s.bytes,
                    })
                } else {
                    None
                }
            }
            None => None,
        };
        let seg = match seg {
            Some(seg) => seg,
            None => {
                let (file, path) = create_segment(dir.path(), after, opts.mapping_hash)?;
                Segment {
                    file,
                    path,
                    start: after,
                    len: HEADER_LEN,
                }
            }
        };
        let (watch, _) = watch::channel(after);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                last: after,
                idle: false,
                stop: false,
                closed: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicU64::new(after.0),
            watch,
            error: Mutex::new(None),
            appended: AtomicU64::new(0),
            #[cfg(test)]
            inject: std::sync::atomic::AtomicU8::new(inject::NONE),
        });
        let worker = Worker {
            shared: shared.clone(),
            dir: dir.path().to_path_buf(),
            mapping_hash: opts.mapping_hash,
            segment_bytes: opts.segment_bytes,
            seg,
            durable: after,
            pending: VecDeque::new(),
            buf: Vec::new(),
            trim: false,
            reported: None,
            sync_interval: opts.sync_interval,
            last_group: None,
        };
        let thread = std::thread::Builder::new()
            .name("changelog-writer".into())
            .spawn(move || worker.run())
            .map_err(LogError::io(dir.path()))?;
        Ok(LogWriter {
            dir: dir.clone(),
            shared,
            thread: Some(thread),
            max_queued: opts.max_queued_bytes,
        })
    }

    /// Queues one record. Never waits for the disk, except while more than
    /// `max_queued_bytes` are not yet durable: then it blocks until the thread catches up.
    /// Errors: [`LogError::OutOfOrder`] (lsn not after the last appended one),
    /// [`LogError::TooLarge`], [`LogError::Closed`].
    pub fn append(&self, lsn: Lsn, payload: Vec<u8>) -> Result<(), LogError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(LogError::TooLarge { bytes: payload.len() });
        }
        let frame = FRAME_OVERHEAD + payload.len();
        let mut st = lock(&self.shared.state);
        loop {
            if st.closed || st.stop {
                return Err(LogError::Closed);
            }
            if lsn <= st.last {
                return Err(LogError::OutOfOrder { lsn, last: st.last });
            }
            if st.queued_bytes == 0 || st.queued_bytes.saturating_add(frame) <= self.max_queued {
                break;
            }
            st = self.shared.progress.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.queue.push_back((lsn, payload));
        st.queued_bytes += frame;
        st.last = lsn;
        let wake = st.idle;
        drop(st);
        self.shared.appended.fetch_add(frame as u64, Ordering::Relaxed);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Whether more than half of `max_queued_bytes` waits to be written: the caller should
    /// stop producing records for a while rather than block in [`LogWriter::append`].
    pub fn backlogged(&self) -> bool {
        lock(&self.shared.state).queued_bytes > self.max_queued / 2
    }

    /// The lsn of the newest record known flushed (the durable position); `after` at first.
    pub fn durable(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// The durable position as a watch, so an async loop can wake when it moves.
    pub fn watch(&self) -> watch::Receiver<Lsn> {
        self.shared.watch.subscribe()
    }

    /// The write or flush error the thread is retrying, if any (e.g. "No space left on
    /// device"); `None` once a retry succeeds.
    pub fn error(&self) -> Option<String> {
        lock(&self.shared.error).clone()
    }

    /// Bytes of frames (records plus their 20-byte frame headers) appended since the writer
    /// opened; only grows.
    pub fn appended_bytes(&self) -> u64 {
        self.shared.appended.load(Ordering::Relaxed)
    }

    /// Blocks until everything appended is durable or `timeout` passes; returns the durable
    /// lsn (compare it with the last appended one to tell which). [`LogError::Closed`] if the
    /// thread ended with records not written.
    pub fn flush(&self, timeout: Duration) -> Result<Lsn, LogError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        let target = st.last;
        loop {
            let durable = self.durable();
            if durable >= target {
                return Ok(durable);
            }
            if st.closed {
                return Err(LogError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(durable);
            }
            st = self
                .shared
                .progress
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// [`LogDir::remove_through`] on the directory written to (safe while writing: the
    /// segment being appended to is the newest, which is never removed).
    pub fn remove_through(&self, lsn: Lsn) -> Result<usize, LogError> {
        self.dir.remove_through(lsn)
    }

    /// Test-only fault injection: one of the [`inject`] modes.
    #[cfg(test)]
    pub(crate) fn inject(&self, mode: u8) {
        self.shared.inject.store(mode, Ordering::SeqCst);
    }
}

impl Drop for LogWriter {
    /// Stops the thread after it wrote (best effort: one more try if writing fails) what is
    /// queued.
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.work.notify_all();
        self.shared.progress.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The segment being appended to.
struct Segment {
    file: File,
    path: PathBuf,
    start: Lsn,
    /// Bytes known written and flushed: everything past it is cut before rewriting.
    len: u64,
}

/// Marks the writer closed when the thread ends (also by a panic), waking every waiter.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        self.0.progress.notify_all();
    }
}

/// The thread's state.
struct Worker {
    shared: Arc<Shared>,
    dir: PathBuf,
    mapping_hash: u64,
    segment_bytes: u64,
    seg: Segment,
    /// The last record flushed.
    durable: Lsn,
    /// Records taken from the queue, not yet flushed (the front ones are being written).
    pending: VecDeque<(Lsn, Vec<u8>)>,
    buf: Vec<u8>,
    /// A cut-back after a failure failed: cut the file at its end after the next write.
    trim: bool,
    /// The error last logged (each distinct one is logged once).
    reported: Option<String>,
    /// Groups start at most this often.
    sync_interval: Duration,
    /// When the last group started.
    last_group: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        let _closed = CloseOnExit(self.shared.clone());
        let mut backoff = FIRST_BACKOFF;
        loop {
            let stopping = {
                let mut st = lock(&self.shared.state);
                loop {
                    self.pending.extend(st.queue.drain(..));
                    if !self.pending.is_empty() || st.stop {
                        break;
                    }
                    st.idle = true;
                    st = self.shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                    st.idle = false;
                }
                st.stop
            };
            #[cfg(test)]
            if stopping && self.shared.inject.load(Ordering::SeqCst) == inject::CRASH {
                return;
            }
            if self.pending.is_empty() {
                return;
            }
            if !stopping {
                self.space_groups();
            }
            self.last_group = Some(Instant::now());
            match self.write_group() {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    if let Some(e) = self.reported.take() {
                        *lock(&self.shared.error) = None;
                        tracing::info!(durable = %self.durable, "change log writes work again (after: {e})");
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    *lock(&self.shared.error) = Some(msg.clone());
                    if self.reported.as_deref() != Some(msg.as_str()) {
                        tracing::error!(
                            error = %e,
                            "change log write failed; retrying; nothing past {} is confirmed",
                            self.durable
                        );
                        self.reported = Some(msg);
                    }
                    if stopping {
                        tracing::error!(
                            "change log writer stopping with {} records after {} not written",
                            self.pending.len(),
                            self.durable
                        );
                        return;
                    }
                    let deadline = Instant::now() + backoff;
                    let mut st = lock(&self.shared.state);
                    while !st.stop {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        st = self
                            .shared
                            .work
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Waits until `sync_interval` has passed since the last group started (or a stop is
    /// asked), then takes what was queued meanwhile into this group.
    fn space_groups(&mut self) {
        let Some(last) = self.last_group else { return };
        let due = last + self.sync_interval;
        let mut st = lock(&self.shared.state);
        while !st.stop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            st = self
                .shared
                .work
                .wait_timeout(st, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.pending.extend(st.queue.drain(..));
    }

    /// Writes and flushes a group: the pending records that fit in the current segment (at
    /// least one), starting a new segment first if the current one is full. On success the
    /// group is published durable; on failure the segment is cut back and nothing is lost.
    fn write_group(&mut self) -> Result<(), LogError> {
        if self.seg.len >= self.segment_bytes && self.seg.len > HEADER_LEN && self.durable > self.seg.start {
            // Every record written is flushed here: the new segment starts after the last.
            let (file, path) = create_segment(&self.dir, self.durable, self.mapping_hash)?;
            tracing::debug!(segment = %path.display(), "change log: new segment");
            self.seg = Segment {
                file,
                path,
                start: self.durable,
                len: HEADER_LEN,
            };
        }
        let mut at = self.seg.len;
        let written = self.write_frames(&mut at);
        let flushed = written.and_then(|(n, last)| {
            if self.trim {
                self.seg.file.set_len(at)?;
            }
            self.sync()?;
            Ok((n, last))
        });
        match flushed {
            Ok((n, last)) => {
                self.trim = false;
                self.seg.len = at;
                self.durable = last;
                let bytes: usize = self.pending.drain(..n).map(|(_, p)| FRAME_OVERHEAD + p.len()).sum();
                {
                    let mut st = lock(&self.shared.state);
                    st.queued_bytes = st.queued_bytes.saturating_sub(bytes);
                    // The watch first: whoever sees the new `durable()` sees it in the watch.
                    self.shared.watch.send_replace(last);
                    self.shared.durable.store(last.0, Ordering::Release);
                }
                self.shared.progress.notify_all();
                Ok(())
            }
            Err(source) => {
                // Never leave a partial frame: cut back to the end of the last flushed group.
                if let Err(e) = self.seg.file.set_len(self.seg.len) {
                    tracing::warn!(file = %self.seg.path.display(), error = %e, "cannot cut the change log back after a failed write; the next write overwrites it");
                    self.trim = true;
                }
                Err(LogError::Io {
                    path: self.seg.path.clone(),
                    source,
                })
            }
        }
    }

    /// Writes the frames of the group from offset `at` (advanced past them): how many records
    /// and the last one's lsn.
    fn write_frames(&mut self, at: &mut u64) -> std::io::Result<(usize, Lsn)> {
        let mut n = 0;
        let mut last = self.durable;
        self.buf.clear();
        for (lsn, payload) in &self.pending {
            self.buf.extend_from_slice(&frame_head(*lsn, payload));
            if payload.len() >= DIRECT_WRITE {
                put(&self.shared, &self.seg.file, &self.buf, at)?;
                self.buf.clear();
                put(&self.shared, &self.seg.file, payload, at)?;
            } else {
                self.buf.extend_from_slice(payload);
                if self.buf.len() >= WRITE_CHUNK {
                    put(&self.shared, &self.seg.file, &self.buf, at)?;
                    self.buf.clear();
                }
            }
            n += 1;
            last = *lsn;
            if *at + self.buf.len() as u64 >= self.segment_bytes {
                break;
            }
        }
        put(&self.shared, &self.seg.file, &self.buf, at)?;
        if self.buf.capacity() > 2 * WRITE_CHUNK {
            self.buf = Vec::new();
        }
        Ok((n, last))
    }

    fn sync(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.shared.inject.load(Ordering::SeqCst) == inject::SYNC {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.seg.file.sync_data()
    }
}

/// Writes `bytes` at `*at` of `file` and advances `at`.
fn put(shared: &Shared, file: &File, bytes: &[u8], at: &mut u64) -> std::io::Result<()> {
    #[cfg(test)]
    if shared.inject.load(Ordering::SeqCst) == inject::WRITE {
        let half = &bytes[..bytes.len() / 2];
        file.write_all_at(half, *at)?;
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    #[cfg(not(test))]
    let _ = shared;
    file.write_all_at(bytes, *at)?;
    *at += bytes.len() as u64;
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
