//! The change log's segment files: their format, and reading and checking their headers and
//! frames. The log directory built on it ([`super::LogDir`]: listing segments, crash recovery,
//! scanning in LSN order, pruning, verifying, clearing) is in `dir`.
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
//! Crash recovery ([`super::LogDir::recover`]): only the newest segment can have been written to
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

/// The largest payload a record may have (4 GiB - 1, what the length field holds); larger ones
/// are refused at append.
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
pub(super) const READ_BUF: usize = 1 << 20;

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
pub(super) fn frame_checksum(head: &[u8], payload: &[u8]) -> u64 {
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

pub(super) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(super) fn le_u64(b: &[u8]) -> u64 {
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
pub(super) enum HeaderProblem {
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
    pub(super) fn torn(&self, file_len: u64) -> bool {
        match self {
            HeaderProblem::Short(_) => true,
            HeaderProblem::Magic | HeaderProblem::Checksum => file_len == HEADER_LEN,
            _ => false,
        }
    }

    pub(super) fn what(&self, start: Lsn) -> String {
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
pub(super) fn read_header(file: &File, file_len: u64, start: Lsn) -> io::Result<Result<u64, HeaderProblem>> {
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
pub(super) fn open_checked(seg: &SegmentInfo, mapping_hash: u64) -> Result<File, LogError> {
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
pub(super) enum FrameProblem {
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
    pub(super) fn what(&self) -> String {
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
pub(super) struct Walk {
    pub(super) records: u64,
    pub(super) first: Option<Lsn>,
    pub(super) last: Option<Lsn>,
    /// The first problem: its offset and what it is.
    pub(super) problem: Option<(u64, FrameProblem)>,
}

impl Walk {
    /// The lsn a frame after the walk must exceed.
    pub(super) fn floor(&self, floor: Lsn) -> Lsn {
        self.last.unwrap_or(floor)
    }
}

/// Reads the frames of `file` (of `len` bytes, at `path`), checking each and that lsns
/// increase from above `floor`, calling `visit` for each good one, until the end or the first
/// problem.
pub(super) fn walk<E: From<LogError>>(
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
pub(super) fn valid_frame_at(file: &File, off: u64, len: u64, floor: Lsn) -> io::Result<bool> {
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
pub(super) fn valid_after(
    file: &File,
    off: u64,
    problem: &FrameProblem,
    len: u64,
    floor: Lsn,
) -> io::Result<Option<bool>> {
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
