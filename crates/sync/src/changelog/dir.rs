//! The log directory ([`LogDir`]): listing segments, crash recovery (cutting the newest
//! segment's torn tail after flushing it), scanning records from an LSN, pruning and
//! verifying.
//!
//! Not for: the byte format of headers and frames (`segment`) or appending (`writer`).

use super::segment::*;
use super::LogError;
use pgoutput::Lsn;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

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
#[path = "dir_tests.rs"]
mod tests;
