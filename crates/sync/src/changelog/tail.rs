//! Following a change log another thread appends to: the records after a position, read from
//! where the last read stopped (a file offset), never past a bound the caller knows is durable.
//! For the publisher, which sends every durable record to JetStream while the replicator keeps
//! appending.
//!
//! Not for: restart (`replay` reads the whole log after a snapshot), or anything that writes.

use super::segment::{frame_checksum, le_u32, le_u64, open_checked, FRAME_OVERHEAD, HEADER_LEN, MAX_PAYLOAD};
use super::{LogDir, LogError};
use pgoutput::Lsn;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A reader positioned after a record of the log.
#[derive(Debug)]
pub struct LogTail {
    dir: LogDir,
    mapping_hash: u64,
    /// The segment being read, its start and the offset of the next frame in it.
    at: Option<(File, PathBuf, Lsn, u64)>,
    /// The LSN of the last record returned (or the position the tail started after).
    last: Lsn,
    /// Read buffer.
    buf: Vec<u8>,
}

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;

/// Why the tail cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The log no longer holds records right after the position (its segments were pruned).
    #[error("the change log in {dir} no longer holds the records after {after} (its oldest segment starts at {first}); they were pruned")]
    Pruned {
        /// The log directory.
        dir: String,
        /// The position wanted.
        after: Lsn,
        /// The oldest segment's start.
        first: Lsn,
    },
    /// Reading failed or a record is damaged.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl LogTail {
    /// A tail that returns the records with lsn > `after`.
    pub fn new(dir: LogDir, mapping_hash: u64, after: Lsn) -> LogTail {
        LogTail {
            dir,
            mapping_hash,
            at: None,
            last: after,
            buf: Vec::new(),
        }
    }

    /// The LSN of the last record returned (or where the tail started).
    pub fn position(&self) -> Lsn {
        self.last
    }

    /// Moves the position to `lsn` when no record lies between (a position published that
    /// is not in the log: the next records read are those after it).
    pub fn skip_to(&mut self, lsn: Lsn) {
        self.last = self.last.max(lsn);
    }

    /// The next records with lsn ≤ `until` (every one of them must be completely written:
    /// the writer's durable position), at most `max_bytes` of payload (at least one record
    /// when any is due). An empty result: nothing new up to `until`. Reads the segment in
    /// large chunks (one system call for many small records).
    pub fn read(&mut self, until: Lsn, max_bytes: usize) -> Result<Vec<(Lsn, Vec<u8>)>, TailError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'segments: while self.last < until && (out.is_empty() || bytes < max_bytes) {
            if self.at.is_none() && !self.open_segment()? {
                break;
            }
            let Some((file, path, start, off)) = self.at.as_mut() else {
                break;
            };
            let n = fill(file, path, *off, &mut self.buf)?;
            let mut pos = 0usize;
            let mut progressed = false;
            while pos + FRAME_OVERHEAD <= n {
                let h = &self.buf[pos..pos + FRAME_OVERHEAD];
                let len = le_u32(&h[0..4]) as usize;
                let lsn = Lsn(le_u64(&h[4..12]));
                let sum = le_u64(&h[12..20]);
                if len == 0 && lsn == Lsn(0) {
                    break;
                }
                if lsn > until {
                    break 'segments;
                }
                let corrupt = |what: String| LogError::Corrupt {
                    file: path.clone(),
                    offset: *off,
                    what,
                };
                if lsn <= self.last {
                    return Err(corrupt(format!("record LSN {lsn} is not after {}", self.last)).into());
                }
                if len > MAX_PAYLOAD {
                    return Err(corrupt(format!("the record's length {len} exceeds the maximum {MAX_PAYLOAD}")).into());
                }
                let total = FRAME_OVERHEAD + len;
                let payload = if pos + total <= n {
                    self.buf[pos + FRAME_OVERHEAD..pos + total].to_vec()
                } else if pos == 0 {
                    // Larger than the buffer: read it whole, once its length is known to fit
                    // the file (a damaged length never allocates gigabytes).
                    let size = file
                        .metadata()
                        .map_err(|e| corrupt(format!("cannot read its size ({e})")))?
                        .len();
                    if *off + total as u64 > size {
                        return Err(corrupt(format!(
                            "the record's length {len} runs past the end of the file ({size} bytes)"
                        ))
                        .into());
                    }
                    let mut p = vec![0u8; len];
                    file.read_exact_at(&mut p, *off + FRAME_OVERHEAD as u64)
                        .map_err(|e| corrupt(format!("the record runs past the end of the file ({e})")))?;
                    p
                } else {
                    // Continues past this chunk: read on from it.
                    break;
                };
                let mut head = [0u8; 12];
                head.copy_from_slice(&self.buf[pos..pos + 12]);
                if frame_checksum(&head, &payload) != sum {
                    return Err(corrupt(format!("checksum mismatch in the record (its header says LSN {lsn})")).into());
                }
                *off += total as u64;
                pos += total;
                progressed = true;
                self.last = lsn;
                bytes += len;
                out.push((lsn, payload));
                if bytes >= max_bytes {
                    break 'segments;
                }
            }
            if progressed {
                continue;
            }
            // The end of what this segment holds: the next one, once the writer started it
            // (it finishes a segment before starting the next).
            let start = *start;
            let Some(next) = self.dir.segments()?.into_iter().find(|s| s.start > start) else {
                break;
            };
            if next.bytes < HEADER_LEN {
                // Being created: its header is not written yet.
                break;
            }
            let file = open_checked(&next, self.mapping_hash)?;
            self.at = Some((file, next.path, next.start, HEADER_LEN));
        }
        Ok(out)
    }

    /// Opens the segment holding the records right after `last` and skips to them. `false`
    /// when the log has no segment yet.
    fn open_segment(&mut self) -> Result<bool, TailError> {
        let segs = self.dir.segments()?;
        let Some(first) = segs.first() else {
            return Ok(false);
        };
        if first.start > self.last {
            return Err(TailError::Pruned {
                dir: self.dir.path().display().to_string(),
                after: self.last,
                first: first.start,
            });
        }
        // Segment i holds the records in (start_i, start_{i+1}].
        let i = (0..segs.len())
            .find(|&i| segs.get(i + 1).is_none_or(|next| next.start > self.last))
            .unwrap_or(segs.len() - 1);
        let seg = &segs[i];
        if seg.bytes < HEADER_LEN {
            // Being created: its header is not written yet.
            return Ok(false);
        }
        let file = open_checked(seg, self.mapping_hash)?;
        let mut off = HEADER_LEN;
        // Skip the records at or before `last`.
        while let Some((lsn, len)) = frame_head(&file, &seg.path, off)? {
            if lsn > self.last {
                break;
            }
            off += (FRAME_OVERHEAD + len) as u64;
        }
        self.at = Some((file, seg.path.clone(), seg.start, off));
        Ok(true)
    }
}

/// The lsn and payload length of the frame at `off`, or `None` past the end of what is written.
fn frame_head(file: &File, path: &std::path::Path, off: u64) -> Result<Option<(Lsn, usize)>, LogError> {
    let mut h = [0u8; FRAME_OVERHEAD];
    match file.read_exact_at(&mut h, off) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(LogError::io(path)(e)),
    }
    let len = le_u32(&h[0..4]) as usize;
    if len == 0 && le_u64(&h[4..12]) == 0 {
        // Preallocated or not yet written.
        return Ok(None);
    }
    Ok(Some((Lsn(le_u64(&h[4..12])), len)))
}

/// Reads from `off` into `buf` (its whole capacity, or up to the end of the file); returns
/// how many bytes were read.
fn fill(file: &File, path: &std::path::Path, off: u64, buf: &mut Vec<u8>) -> Result<usize, LogError> {
    if buf.len() < READ_CHUNK {
        buf.resize(READ_CHUNK, 0);
    }
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LogError::io(path)(e)),
        }
    }
    Ok(n)
}
