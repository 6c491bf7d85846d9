//! The change log's files: the segment format, and the log directory ([`LogDir`]): listing
//! segments, crash recovery (cutting a torn tail), scanning records in LSN order, pruning,
//! verifying without modifying, clearing.
//!
//! Format, version 1 (integers little-endian):
//!
//! ```text
//! file name: <START>.log, START = the segment's start LSN as 16 upper-case hex digits
//!   (e.g. 00000001A0000028.log); every record in it has lsn > START.
//!   Files with other names in the directory are ignored.
//! header, 40 bytes:
//!   magic            8 bytes b"GSLOG\0\0\0"
//!   format version   u32 = 1
//!   header length    u32 = 40
//!   mapping hash     u64 (opaque here: given by the caller)
//!   start LSN        u64 (same as in the name)
//!   header checksum  u64 = xxh3_64 of the preceding 32 bytes
//! then frames, back to back (frame overhead 20 bytes):
//!   payload length   u32 (at most MAX_PAYLOAD = 4 GiB - 1; larger is refused at append)
//!   lsn              u64
//!   checksum         u64 = xxh3_64 of (the 4 length bytes ++ the 8 lsn bytes ++ the payload)
//!   payload          (payload length bytes)
//! ```
//!
//! LSNs strictly increase across the whole log, within and across segments. The writer
//! starts a new segment named after the last record it wrote (or, for a fresh log, after the
//! position the log starts after), so a segment holds the records in
//! `(its start, the next segment's start]`.
//!
//! Crash recovery ([`LogDir::recover`]): only the newest segment can have been written to
//! without a completed fdatasync (a new segment's header, the file and the directory are
//! flushed before any frame goes into it). A damaged frame in the newest segment is a torn
//! tail when nothing valid follows it (its declared extent runs past the end of the file, or
//! its checksum fails and the bytes at the next frame position are not a valid frame with an
//! lsn greater than the last good one): the file is cut there. A newest segment whose header
//! is torn (shorter than 40 bytes, or exactly 40 bytes of which the magic or checksum is
//! wrong: it holds no frame) is deleted. Any other damage is [`LogError::Corrupt`].
//!
//! Not for: appending (`writer`), or what a payload means (to this module it is opaque
//! bytes).

use super::LogError;
use pgoutput::Lsn;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// The largest payload a record may have (1 GiB); larger ones are refused at append.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// A segment file's first 8 bytes.
pub(crate) const MAGIC: [u8; 8] = *b"GSLOG\0\0\0";
/// The segment format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub(crate) const HEADER_LEN: u64 = 40;
/// Bytes of a frame besides its payload.
pub(crate) const FRAME_OVERHEAD: usize = 20;
/// Read buffer of a scan: frames that fit are checked and visited in place.
const READ_BUF: usize = 1 << 20;

/// A segment's file name: its start LSN as 16 upper-case hex digits, then `.log`.
pub(crate) fn file_name(start: Lsn) -> String {
    format!("{:016X}.log", start.0)
}

/// The start LSN a segment file name stands for, or `None` for any other name.
pub(crate) fn parse_file_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(".log")?;
    let upper_hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    if hex.len() != 16 || !hex.bytes().all(upper_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

/// The 40 header bytes of a segment.
pub(crate) fn encode_header(mapping_hash: u64, start: Lsn) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&mapping_hash.to_le_bytes());
    h[24..32].copy_from_slice(&start.0.to_le_bytes());
    let sum = xxh3_64(&h[0..32]);
    h[32..40].copy_from_slice(&sum.to_le_bytes());
    h
}

/// The 20 bytes that precede `payload` in its frame. The caller has checked
/// `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn frame_head(lsn: Lsn, payload: &[u8]) -> [u8; FRAME_OVERHEAD] {
    let mut h = [0u8; FRAME_OVERHEAD];
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[4..12].copy_from_slice(&lsn.0.to_le_bytes());
    let sum = frame_checksum(&h[0..12], payload);
    h[12..20].copy_from_slice(&sum.to_le_bytes());
    h
}

/// xxh3_64 of `head` (the 12 length and lsn bytes) followed by `payload`.
fn frame_checksum(head: &[u8], payload: &[u8]) -> u64 {
    // Up to 240 bytes xxh3 hashes in one go; copying a small frame to the stack is cheaper
    // than the streaming state.
    const SMALL: usize = 240;
    if head.len() + payload.len() <= SMALL {
        let mut b = [0u8; SMALL];
        b[..head.len()].copy_from_slice(head);
        b[head.len()..head.len() + payload.len()].copy_from_slice(payload);
        xxh3_64(&b[..head.len() + payload.len()])
    } else {
        let mut h = Xxh3Default::new();
        h.update(head);
        h.update(payload);
        h.digest()
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Flushes a directory (its entries: files created, renamed or removed in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(LogError::io(dir))
}

/// What is wrong with a segment header.
#[derive(Debug)]
enum HeaderProblem {
    Short(u64),
    Magic,
    Checksum,
    Version(u32),
    Length(u32),
    Start(Lsn),
}

impl HeaderProblem {
    /// Whether, in the newest segment, this is a header torn by a crash while the segment was
    /// being created (no frame can follow it: frames are written only after the header is
    /// flushed).
    fn torn(&self, file_len: u64) -> bool {
        match self {
            HeaderProblem::Short(_) => true,
            HeaderProblem::Magic | HeaderProblem::Checksum => file_len == HEADER_LEN,
            _ => false,
        }
    }

    fn what(&self, start: Lsn) -> String {
        match self {
            HeaderProblem::Short(n) => format!("the file is {n} bytes, shorter than its 40-byte header"),
            HeaderProblem::Magic => "the header does not start with the change log magic".into(),
            HeaderProblem::Checksum => "the header checksum does not match".into(),
            HeaderProblem::Version(v) => {
                format!("segment format version {v}; this build reads version {FORMAT_VERSION} (written by a newer graphsync?)")
            }
            HeaderProblem::Length(n) => format!("header length {n}; this build reads 40"),
            HeaderProblem::Start(found) => {
                format!("the header's start LSN {found} differs from the file name's {start}")
            }
        }
    }
}

/// Reads and checks a segment's header: its mapping hash, or what is wrong with it.
fn read_header(file: &File, file_len: u64, start: Lsn) -> io::Result<Result<u64, HeaderProblem>> {
    if file_len < HEADER_LEN {
        return Ok(Err(HeaderProblem::Short(file_len)));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0)?;
    if h[0..8] != MAGIC {
        return Ok(Err(HeaderProblem::Magic));
    }
    if le_u64(&h[32..40]) != xxh3_64(&h[0..32]) {
        return Ok(Err(HeaderProblem::Checksum));
    }
    let version = le_u32(&h[8..12]);
    if version != FORMAT_VERSION {
        return Ok(Err(HeaderProblem::Version(version)));
    }
    let len = le_u32(&h[12..16]);
    if u64::from(len) != HEADER_LEN {
        return Ok(Err(HeaderProblem::Length(len)));
    }
    let found = Lsn(le_u64(&h[24..32]));
    if found != start {
        return Ok(Err(HeaderProblem::Start(found)));
    }
    Ok(Ok(le_u64(&h[16..24])))
}

/// Opens a segment for reading and checks its header strictly (any problem is
/// [`LogError::Corrupt`]) and its mapping hash.
fn open_checked(seg: &SegmentInfo, mapping_hash: u64) -> Result<File, LogError> {
    let file = File::open(&seg.path).map_err(LogError::io(&seg.path))?;
    match read_header(&file, seg.bytes, seg.start).map_err(LogError::io(&seg.path))? {
        Ok(found) if found == mapping_hash => Ok(file),
        Ok(found) => Err(LogError::MappingChanged {
            file: seg.path.clone(),
            found,
            expected: mapping_hash,
        }),
        Err(p) => Err(LogError::Corrupt {
            file: seg.path.clone(),
            offset: 0,
            what: p.what(seg.start),
        }),
    }
}

/// Creates the segment starting at `start` in `dir` for appending: header written, file and
/// directory flushed. A file of that name holding no frame (left by a failed creation) is
/// replaced; one with frames is an error.
pub(crate) fn create_segment(dir: &Path, start: Lsn, mapping_hash: u64) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(file_name(start));
    let open = |new: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if new {
            o.create_new(true);
        } else {
            o.truncate(true);
        }
        o.open(&path)
    };
    let file = match open(true) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let len = fs::metadata(&path).map_err(LogError::io(&path))?.len();
            if len > HEADER_LEN {
                return Err(LogError::Io { path, source: e });
            }
            open(false).map_err(LogError::io(&path))?
        }
        Err(e) => return Err(LogError::Io { path, source: e }),
    };
    let written = file
        .write_all_at(&encode_header(mapping_hash, start), 0)
        .and_then(|()| file.sync_all())
        .map_err(LogError::io(&path))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = written {
        // Best effort: a header-only or torn file is harmless (recovery deletes a torn one),
        // but do not leave it behind when we can help it.
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok((file, path))
}

/// Opens the existing segment `seg` for appending after checking its header and mapping.
pub(crate) fn open_for_append(seg: &SegmentInfo, mapping_hash: u64) -> Result<File, LogError> {
    drop(open_checked(seg, mapping_hash)?);
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg.path)
        .map_err(LogError::io(&seg.path))
}

/// What is wrong with a frame.
#[derive(Debug)]
enum FrameProblem {
    /// The frame's declared extent runs past the end of the file.
    PastEnd { declared: u64, present: u64 },
    /// Its payload length exceeds [`MAX_PAYLOAD`].
    TooLong { len: u32 },
    /// Its checksum does not match.
    Checksum { len: u32, lsn: Lsn },
    /// Its checksum matches but its lsn is not after the previous one (or the segment start).
    Order { lsn: Lsn, floor: Lsn },
}

impl FrameProblem {
    fn what(&self) -> String {
        match self {
            FrameProblem::PastEnd { declared, present } => {
                format!("the record runs past the end of the file ({declared} bytes declared, {present} present)")
            }
            FrameProblem::TooLong { len } => {
                format!("the record's length {len} exceeds the maximum {MAX_PAYLOAD}")
            }
            FrameProblem::Checksum { lsn, .. } => {
                format!("checksum mismatch in the record (its header says LSN {lsn})")
            }
            FrameProblem::Order { lsn, floor } => format!("record LSN {lsn} is not after {floor}"),
        }
    }
}

/// One step of reading a segment's frames.
enum Step<'a> {
    End,
    Frame { lsn: Lsn, payload: &'a [u8] },
    Bad(FrameProblem),
}

/// Buffered reading of a segment's frames: frames that fit in the buffer are checked and
/// handed out in place; larger ones are read into one reused buffer.
struct Frames<'f> {
    file: &'f File,
    /// The file's length when reading began: reading stops there.
    len: u64,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// File offset of `buf[pos]`: where the next frame starts.
    off: u64,
    big: Vec<u8>,
}

impl<'f> Frames<'f> {
    /// Reads the frames after the header of `file`, of length `len`.
    fn new(file: &'f File, len: u64) -> io::Result<Frames<'f>> {
        let mut f = file;
        io::Seek::seek(&mut f, io::SeekFrom::Start(HEADER_LEN))?;
        Ok(Frames {
            file,
            len,
            buf: vec![0; READ_BUF],
            pos: 0,
            end: 0,
            off: HEADER_LEN,
            big: Vec::new(),
        })
    }

    /// Makes at least `n` (≤ the buffer's size) bytes from `pos` available.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.end - self.pos >= n {
            return Ok(());
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        while self.end < n {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file became shorter while it was read",
                    ))
                }
                Ok(r) => self.end += r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The frame at `off`, checked (length, extent, checksum; not its lsn's order).
    fn next(&mut self) -> io::Result<Step<'_>> {
        let left = self.len.saturating_sub(self.off);
        if left == 0 {
            return Ok(Step::End);
        }
        if left < FRAME_OVERHEAD as u64 {
            return Ok(Step::Bad(FrameProblem::PastEnd {
                declared: FRAME_OVERHEAD as u64,
                present: left,
            }));
        }
        self.fill(FRAME_OVERHEAD)?;
        let h = &self.buf[self.pos..self.pos + FRAME_OVERHEAD];
        let len = le_u32(&h[0..4]);
        let lsn = Lsn(le_u64(&h[4..12]));
        let sum = le_u64(&h[12..20]);
        if len as usize > MAX_PAYLOAD {
            return Ok(Step::Bad(FrameProblem::TooLong { len }));
        }
        let total = FRAME_OVERHEAD + len as usize;
        if total as u64 > left {
            return Ok(Step::Bad(FrameProblem::PastEnd {
                declared: total as u64,
                present: left,
            }));
        }
        if total <= self.buf.len() {
            self.fill(total)?;
            let start = self.pos;
            let frame = &self.buf[start..start + total];
            if frame_checksum(&frame[0..12], &frame[FRAME_OVERHEAD..]) != sum {
                return Ok(Step::Bad(FrameProblem::Checksum { len, lsn }));
            }
            self.pos += total;
            self.off += total as u64;
            return Ok(Step::Frame {
                lsn,
                payload: &self.buf[start + FRAME_OVERHEAD..start + total],
            });
        }
        // Larger than the buffer: the buffered bytes after the header all belong to it.
        let mut head = [0u8; 12];
        head.copy_from_slice(&self.buf[self.pos..self.pos + 12]);
        self.big.clear();
        self.big
            .extend_from_slice(&self.buf[self.pos + FRAME_OVERHEAD..self.end]);
        self.pos = self.end;
        let have = self.big.len();
        self.big.resize(len as usize, 0);
        self.file.read_exact(&mut self.big[have..])?;
        if frame_checksum(&head, &self.big) != sum {
            // Reading stops at a problem, so the position need not stay at the frame.
            return Ok(Step::Bad(FrameProblem::Checksum { len, lsn }));
        }
        self.off += total as u64;
        Ok(Step::Frame {
            lsn,
            payload: &self.big,
        })
    }
}

/// What walking a segment's frames found.
struct Walk {
    records: u64,
    first: Option<Lsn>,
    last: Option<Lsn>,
    /// The first problem: its offset and what it is.
    problem: Option<(u64, FrameProblem)>,
}

impl Walk {
    /// The lsn a frame after the walk must exceed.
    fn floor(&self, floor: Lsn) -> Lsn {
        self.last.unwrap_or(floor)
    }
}

/// Reads the frames of `file` (of `len` bytes, at `path`), checking each and that lsns
/// increase from above `floor`, calling `visit` for each good one, until the end or the first
/// problem.
fn walk<E: From<LogError>>(
    path: &Path,
    file: &File,
    len: u64,
    floor: Lsn,
    mut visit: impl FnMut(Lsn, &[u8]) -> Result<(), E>,
) -> Result<Walk, E> {
    let io = |e| E::from(LogError::io(path)(e));
    let mut w = Walk {
        records: 0,
        first: None,
        last: None,
        problem: None,
    };
    let mut frames = Frames::new(file, len).map_err(io)?;
    let mut prev = floor;
    loop {
        let offset = frames.off;
        match frames.next().map_err(io)? {
            Step::End => break,
            Step::Bad(p) => {
                w.problem = Some((offset, p));
                break;
            }
            Step::Frame { lsn, payload } => {
                if lsn <= prev {
                    w.problem = Some((offset, FrameProblem::Order { lsn, floor: prev }));
                    break;
                }
                visit(lsn, payload)?;
                prev = lsn;
                w.records += 1;
                w.first.get_or_insert(lsn);
                w.last = Some(lsn);
            }
        }
    }
    Ok(w)
}

/// Whether a valid frame with an lsn greater than `floor` starts at `off` of `file` (of
/// `len` bytes).
fn valid_frame_at(file: &File, off: u64, len: u64, floor: Lsn) -> io::Result<bool> {
    let Some(payload_at) = off.checked_add(FRAME_OVERHEAD as u64).filter(|&p| p <= len) else {
        return Ok(false);
    };
    let mut h = [0u8; FRAME_OVERHEAD];
    file.read_exact_at(&mut h, off)?;
    let n = le_u32(&h[0..4]) as usize;
    let lsn = Lsn(le_u64(&h[4..12]));
    if n > MAX_PAYLOAD || lsn <= floor || payload_at + n as u64 > len {
        return Ok(false);
    }
    let mut payload = vec![0u8; n];
    file.read_exact_at(&mut payload, payload_at)?;
    Ok(frame_checksum(&h[0..12], &payload) == le_u64(&h[12..20]))
}

/// Whether something valid follows the damaged frame at `off` of the newest segment (then
/// the damage may be bit rot rather than a torn write). `None`: the damage cannot come from a
/// crash at all (a checksum-valid frame out of order).
fn valid_after(file: &File, off: u64, problem: &FrameProblem, len: u64, floor: Lsn) -> io::Result<Option<bool>> {
    match problem {
        FrameProblem::PastEnd { .. } => Ok(Some(false)),
        FrameProblem::Order { .. } => Ok(None),
        FrameProblem::TooLong { len: n } | FrameProblem::Checksum { len: n, .. } => {
            let next = off + FRAME_OVERHEAD as u64 + u64::from(*n);
            valid_frame_at(file, next, len, floor).map(Some)
        }
    }
}

/// A segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its path.
    pub path: PathBuf,
    /// Its start LSN (every record in it is after it).
    pub start: Lsn,
    /// Its length in bytes.
    pub bytes: u64,
}

/// Part of a file that [`LogDir::recover`] removed as a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The segment file (deleted when its header was torn).
    pub file: PathBuf,
    /// Where it was cut (0: the file was deleted).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes: u64,
    /// A valid frame followed the damaged one: pages of the last unflushed group reached the
    /// disk out of order, or (if the server had confirmed past the cut) the file was damaged.
    pub valid_after: bool,
}

/// What [`LogDir::recover`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The last valid record's lsn; `None` if the log holds no record.
    pub last: Option<Lsn>,
    /// The torn tail removed, if any.
    pub cut: Option<Cut>,
}

/// The first problem [`LogDir::verify`] found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Byte offset of the damaged header (0) or frame.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// Whether recovery would treat it as a torn tail (cut it) rather than as corruption.
    pub torn_tail: bool,
    /// A valid frame follows it.
    pub valid_after: bool,
}

/// What [`LogDir::verify`] found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The segment file.
    pub path: PathBuf,
    /// Its start LSN.
    pub start: Lsn,
    /// Its length in bytes.
    pub bytes: u64,
    /// The mapping hash in its header (`None` if the header is damaged).
    pub mapping_hash: Option<u64>,
    /// Good records before the first problem (all of them if none).
    pub records: u64,
    /// The first good record's lsn.
    pub first: Option<Lsn>,
    /// The last good record's lsn.
    pub last: Option<Lsn>,
    /// The first problem found, if any.
    pub problem: Option<Problem>,
}

/// The log directory.
#[derive(Debug, Clone)]
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    /// Opens the log directory `dir`, creating it (and flushing its parent) if missing.
    pub fn open(dir: &Path) -> Result<LogDir, LogError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(LogError::io(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(LogDir {
            path: dir.to_path_buf(),
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segments, sorted by start LSN.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>, LogError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(LogError::io(&self.path))? {
            let entry = entry.map_err(LogError::io(&self.path))?;
            let Some(start) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let path = entry.path();
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // Removed since it was listed (pruning).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LogError::Io { path, source: e }),
            };
            if meta.is_file() {
                out.push(SegmentInfo {
                    path,
                    start,
                    bytes: meta.len(),
                });
            }
        }
        out.sort_by_key(|s| s.start);
        Ok(out)
    }

    /// Crash recovery, run once before a writer opens: checks every segment's header and the
    /// frames of the newest segment, and flushes the newest segment (a crashed writer's last
    /// group may sit in the page cache only). The first damaged frame in the newest segment
    /// is a torn tail (everything from it was written after the last completed flush, so this
    /// log never confirmed it): the file is cut there (and flushed) and the cut reported, with
    /// whether a valid frame followed (pages reaching the disk out of order, or damage: the
    /// caller's check against what the server confirmed tells which). A newest segment whose header is torn (shorter than 40 bytes, or 40
    /// bytes with a wrong magic or checksum) is deleted and reported as a cut. Any other
    /// damage is [`LogError::Corrupt`]; a header of another mapping is
    /// [`LogError::MappingChanged`]. Returns the last valid record's lsn (`None` if the log
    /// holds no record) and the cut.
    pub fn recover(&self, mapping_hash: u64) -> Result<Recovery, LogError> {
        let mut segs = self.segments()?;
        let Some(newest) = segs.len().checked_sub(1) else {
            return Ok(Recovery::default());
        };
        // Every check first, so that nothing is modified when the log cannot be used.
        let mut torn_header = false;
        for (i, s) in segs.iter().enumerate() {
            let file = File::open(&s.path).map_err(LogError::io(&s.path))?;
            match read_header(&file, s.bytes, s.start).map_err(LogError::io(&s.path))? {
                Ok(found) if found != mapping_hash => {
                    return Err(LogError::MappingChanged {
                        file: s.path.clone(),
                        found,
                        expected: mapping_hash,
                    })
                }
                Ok(_) => {}
                Err(p) if i == newest && p.torn(s.bytes) => torn_header = true,
                Err(p) => {
                    return Err(LogError::Corrupt {
                        file: s.path.clone(),
                        offset: 0,
                        what: p.what(s.start),
                    })
                }
            }
        }
        let mut cut = None;
        if torn_header {
            if let Some(s) = segs.pop() {
                fs::remove_file(&s.path).map_err(LogError::io(&s.path))?;
                sync_dir(&self.path)?;
                cut = Some(Cut {
                    file: s.path,
                    offset: 0,
                    bytes: s.bytes,
                    valid_after: false,
                });
            }
        }
        // The newest segment's frames, with the torn-tail rule; if it holds no record, the
        // last record is in an older one (fully flushed before the newest was created, so
        // any damage there is corruption).
        let mut tail_rule = !torn_header;
        for s in segs.iter().rev() {
            let file = File::open(&s.path).map_err(LogError::io(&s.path))?;
            let w = walk(&s.path, &file, s.bytes, s.start, |_, _| Ok::<(), LogError>(()))?;
            if let Some((offset, p)) = &w.problem {
                // In the newest segment, whatever follows the first damaged frame was written
                // after the last completed fdatasync (frames are only ever appended), so it
                // was never confirmed by this log: cut there. If the server had confirmed
                // past the cut, the start refuses it as a gap (the slot is ahead).
                let after = if tail_rule {
                    valid_after(&file, *offset, p, s.bytes, w.floor(s.start)).map_err(LogError::io(&s.path))?
                } else {
                    None
                };
                let Some(valid_after) = after else {
                    return Err(LogError::Corrupt {
                        file: s.path.clone(),
                        offset: *offset,
                        what: p.what(),
                    });
                };
                drop(file);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .map_err(LogError::io(&s.path))?;
                file.set_len(*offset)
                    .and_then(|()| file.sync_all())
                    .map_err(LogError::io(&s.path))?;
                cut = Some(Cut {
                    file: s.path.clone(),
                    offset: *offset,
                    bytes: s.bytes - offset,
                    valid_after,
                });
            }
            if tail_rule {
                // What a crashed writer left in the page cache may not be on disk yet: flush
                // it before anything counts it as durable (and confirms it).
                File::open(&s.path)
                    .and_then(|f| f.sync_all())
                    .map_err(LogError::io(&s.path))?;
                sync_dir(&self.path)?;
            }
            tail_rule = false;
            if w.last.is_some() {
                return Ok(Recovery { last: w.last, cut });
            }
        }
        Ok(Recovery { last: None, cut })
    }

    /// Calls `visit(lsn, payload)` for every record with lsn > `after`, in order, reading
    /// only the segments that can hold such records. Every frame read is checked: a damaged
    /// one is [`LogError::Corrupt`] (run [`LogDir::recover`] first, which cuts a torn tail);
    /// a segment of another mapping is [`LogError::MappingChanged`]. Stops at and returns the
    /// visitor's first error.
    pub fn scan<E, F>(&self, after: Lsn, mapping_hash: u64, mut visit: F) -> Result<(), E>
    where
        E: From<LogError>,
        F: FnMut(Lsn, &[u8]) -> Result<(), E>,
    {
        let segs = self.segments()?;
        // Segment i holds records in (start_i, start_{i+1}]: skip those whose successor
        // starts at or before `after`.
        let first = (0..segs.len())
            .find(|&i| segs.get(i + 1).is_none_or(|next| next.start > after))
            .unwrap_or(segs.len());
        let mut prev: Option<Lsn> = None;
        for s in &segs[first..] {
            let file = open_checked(s, mapping_hash)?;
            let floor = prev.map_or(s.start, |p| p.max(s.start));
            let w = walk(&s.path, &file, s.bytes, floor, |lsn, payload| {
                if lsn > after {
                    visit(lsn, payload)
                } else {
                    Ok(())
                }
            })?;
            if let Some((offset, p)) = w.problem {
                return Err(E::from(LogError::Corrupt {
                    file: s.path.clone(),
                    offset,
                    what: p.what(),
                }));
            }
            prev = w.last.or(prev);
        }
        Ok(())
    }

    /// Deletes the segments none of whose records has lsn > `lsn` (every segment whose next
    /// segment starts at or before `lsn`; never the newest), then flushes the directory.
    /// Returns how many were removed.
    pub fn remove_through(&self, lsn: Lsn) -> Result<usize, LogError> {
        let segs = self.segments()?;
        let mut removed = 0;
        for pair in segs.windows(2) {
            if pair[1].start > lsn {
                break;
            }
            match fs::remove_file(&pair[0].path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LogError::Io {
                        path: pair[0].path.clone(),
                        source: e,
                    })
                }
            }
        }
        if removed > 0 {
            sync_dir(&self.path)?;
        }
        Ok(removed)
    }

    /// Checks every segment frame by frame without modifying anything: per segment its
    /// start, length, mapping hash, records, first and last lsn, and the first problem found
    /// (with whether recovery would cut it as a torn tail).
    pub fn verify(&self) -> Result<Vec<SegmentReport>, LogError> {
        let segs = self.segments()?;
        let mut reports = Vec::with_capacity(segs.len());
        let mut prev: Option<Lsn> = None;
        for (i, s) in segs.iter().enumerate() {
            let newest = i + 1 == segs.len();
            let mut report = SegmentReport {
                path: s.path.clone(),
                start: s.start,
                bytes: s.bytes,
                mapping_hash: None,
                records: 0,
                first: None,
                last: None,
                problem: None,
            };
            let file = File::open(&s.path).map_err(LogError::io(&s.path))?;
            match read_header(&file, s.bytes, s.start).map_err(LogError::io(&s.path))? {
                Ok(hash) => report.mapping_hash = Some(hash),
                Err(p) => {
                    report.problem = Some(Problem {
                        offset: 0,
                        what: p.what(s.start),
                        torn_tail: newest && p.torn(s.bytes),
                        valid_after: false,
                    });
                    reports.push(report);
                    continue;
                }
            }
            let floor = prev.map_or(s.start, |p| p.max(s.start));
            let w = walk(&s.path, &file, s.bytes, floor, |_, _| Ok::<(), LogError>(()))?;
            if let Some((offset, p)) = &w.problem {
                let after = valid_after(&file, *offset, p, s.bytes, w.floor(floor)).map_err(LogError::io(&s.path))?;
                report.problem = Some(Problem {
                    offset: *offset,
                    what: p.what(),
                    torn_tail: newest && after.is_some(),
                    valid_after: after == Some(true),
                });
            }
            report.records = w.records;
            report.first = w.first;
            report.last = w.last;
            prev = w.last.or(prev);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Deletes every segment (before a rebuild), then flushes the directory.
    pub fn clear(&self) -> Result<(), LogError> {
        for s in self.segments()? {
            match fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LogError::Io {
                        path: s.path,
                        source: e,
                    })
                }
            }
        }
        sync_dir(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{opts, random_records, read, write, Recs, HASH};
    use super::super::LogWriter;
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn tmp() -> (tempfile::TempDir, LogDir) {
        let t = tempfile::tempdir().expect("tempdir");
        let d = LogDir::open(&t.path().join("log")).expect("open log dir");
        (t, d)
    }

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
}
