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
}

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
    /// when any is due). An empty result: nothing new up to `until`.
    pub fn read(&mut self, until: Lsn, max_bytes: usize) -> Result<Vec<(Lsn, Vec<u8>)>, TailError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while self.last < until && (out.is_empty() || bytes < max_bytes) {
            if self.at.is_none() && !self.open_segment()? {
                break;
            }
            let Some((file, path, _, off)) = self.at.as_mut() else {
                break;
            };
            match read_frame(file, path, *off, self.last, until)? {
                Frame::Past => break,
                Frame::Record(lsn, payload) => {
                    *off += (FRAME_OVERHEAD + payload.len()) as u64;
                    self.last = lsn;
                    bytes += payload.len();
                    out.push((lsn, payload));
                }
                // The end of this segment: the next one, once the writer started it (it
                // finishes a segment before starting the next).
                Frame::End => {
                    let start = self.at.as_ref().map_or(Lsn(0), |a| a.2);
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
            }
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

/// What is at an offset of a segment.
enum Frame {
    /// Nothing written yet (or the end of a finished segment).
    End,
    /// A record past the bound asked for (possibly still being written).
    Past,
    /// A checked record.
    Record(Lsn, Vec<u8>),
}

/// The checked frame at `off` (its lsn after `floor`), unless its lsn is past `until`.
fn read_frame(file: &File, path: &std::path::Path, off: u64, floor: Lsn, until: Lsn) -> Result<Frame, LogError> {
    let Some((lsn, len)) = frame_head(file, path, off)? else {
        return Ok(Frame::End);
    };
    if lsn > until {
        return Ok(Frame::Past);
    }
    let corrupt = |what: String| LogError::Corrupt {
        file: path.to_path_buf(),
        offset: off,
        what,
    };
    if lsn <= floor {
        return Err(corrupt(format!("record LSN {lsn} is not after {floor}")));
    }
    if len > MAX_PAYLOAD {
        return Err(corrupt(format!(
            "the record's length {len} exceeds the maximum {MAX_PAYLOAD}"
        )));
    }
    let mut h = [0u8; FRAME_OVERHEAD];
    file.read_exact_at(&mut h, off).map_err(LogError::io(path))?;
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, off + FRAME_OVERHEAD as u64)
        .map_err(|e| corrupt(format!("the record runs past the end of the file ({e})")))?;
    if frame_checksum(&h[0..12], &payload) != le_u64(&h[12..20]) {
        return Err(corrupt(format!(
            "checksum mismatch in the record (its header says LSN {lsn})"
        )));
    }
    Ok(Frame::Record(lsn, payload))
}
