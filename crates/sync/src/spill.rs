//! Spilling the changes of a large in-progress transaction to a temporary file, so buffering a
//! streamed transaction of any size takes bounded memory.
//!
//! A [`SpillFile`] is an unnamed temporary file (gone when dropped, even after a crash) holding
//! length-prefixed records: the change kind, the subtransaction that made it, the relation (an
//! index into the relations kept in memory) and the tuples' raw entries. Reading back checks
//! every record and rebuilds tuples with [`TupleData::from_entries`].

use crate::change::RowChange;
use bytes::Bytes;
use pgoutput::{OldKind, Relation, TupleData};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Why spilled changes could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The temporary file could not be created or written.
    #[error("cannot spill a large transaction to {dir}: {source} (free space there, or raise the spill threshold)")]
    Io {
        /// The spill directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record read back is malformed (the file was damaged).
    #[error("spilled transaction data is damaged: {0}")]
    Corrupt(&'static str),
}

/// Changes of one transaction on disk.
#[derive(Debug)]
pub struct SpillFile {
    file: BufWriter<File>,
    dir: String,
    relations: Vec<Arc<Relation>>,
    /// Subtransactions aborted after some of their changes were spilled.
    aborted: HashSet<u32>,
    /// Records written per subtransaction.
    per_subxact: std::collections::HashMap<u32, u64>,
    records: u64,
    bytes: u64,
}

fn put_tuple(out: &mut Vec<u8>, t: &TupleData) {
    out.extend_from_slice(&(t.len() as u16).to_le_bytes());
    out.extend_from_slice(&(t.buffer().len() as u32).to_le_bytes());
    out.extend_from_slice(t.buffer());
}

impl SpillFile {
    /// A new, empty spill file in `dir`.
    pub fn create(dir: &Path) -> Result<Self, SpillError> {
        let err = |source| SpillError::Io {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = tempfile::tempfile_in(dir).map_err(err)?;
        Ok(SpillFile {
            file: BufWriter::with_capacity(1 << 20, file),
            dir: dir.display().to_string(),
            relations: Vec::new(),
            aborted: HashSet::new(),
            per_subxact: Default::default(),
            records: 0,
            bytes: 0,
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Changes written so far and not aborted.
    pub fn records(&self) -> u64 {
        self.records
            - self
                .aborted
                .iter()
                .map(|s| self.per_subxact.get(s).copied().unwrap_or(0))
                .sum::<u64>()
    }

    fn rel_index(&mut self, rel: &Arc<Relation>) -> u32 {
        if let Some(i) = self.relations.iter().rposition(|r| Arc::ptr_eq(r, rel)) {
            return i as u32;
        }
        self.relations.push(rel.clone());
        (self.relations.len() - 1) as u32
    }

    /// Appends one change made by subtransaction `subxid`.
    pub fn push(&mut self, subxid: u32, change: &RowChange) -> Result<(), SpillError> {
        let mut rec = Vec::with_capacity(64);
        rec.extend_from_slice(&subxid.to_le_bytes());
        match change {
            RowChange::Insert { rel, new } => {
                rec.push(0);
                let i = self.rel_index(rel);
                rec.extend_from_slice(&i.to_le_bytes());
                put_tuple(&mut rec, new);
            }
            RowChange::Update { rel, old, new } => {
                rec.push(1);
                let i = self.rel_index(rel);
                rec.extend_from_slice(&i.to_le_bytes());
                match old {
                    None => rec.push(0),
                    Some((kind, t)) => {
                        rec.push(if *kind == OldKind::Key { 1 } else { 2 });
                        put_tuple(&mut rec, t);
                    }
                }
                put_tuple(&mut rec, new);
            }
            RowChange::Delete { rel, old } => {
                rec.push(2);
                let i = self.rel_index(rel);
                rec.extend_from_slice(&i.to_le_bytes());
                put_tuple(&mut rec, old);
            }
            RowChange::Truncate { rels } => {
                rec.push(3);
                rec.extend_from_slice(&(rels.len() as u32).to_le_bytes());
                for r in rels {
                    let i = self.rel_index(r);
                    rec.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
        let io = |source| SpillError::Io {
            dir: self.dir.clone(),
            source,
        };
        self.file.write_all(&(rec.len() as u32).to_le_bytes()).map_err(io)?;
        self.file.write_all(&rec).map_err(|source| SpillError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        self.records += 1;
        *self.per_subxact.entry(subxid).or_default() += 1;
        self.bytes += 4 + rec.len() as u64;
        Ok(())
    }

    /// Marks subtransaction `subxid` aborted: its spilled changes are skipped when read back.
    pub fn abort_subxact(&mut self, subxid: u32) {
        self.aborted.insert(subxid);
    }

    /// Flushes the writes so the file can be read back.
    pub fn finish(&mut self) -> Result<(), SpillError> {
        self.file.flush().map_err(|source| SpillError::Io {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Calls `f` with each spilled change, in order, skipping aborted subtransactions. Reads
    /// one record at a time (positioned reads into one reused buffer): memory stays bounded by the
    /// largest change whatever the file's size.
    pub fn for_each<E: From<SpillError>>(&self, mut f: impl FnMut(&RowChange) -> Result<(), E>) -> Result<(), E> {
        let file = self.file.get_ref();
        let mut pos = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let read = |pos: u64, n: usize, buf: &mut Vec<u8>| -> Result<(), SpillError> {
            buf.resize(n, 0);
            file.read_exact_at(buf, pos).map_err(|source| SpillError::Io {
                dir: self.dir.clone(),
                source,
            })
        };
        for _ in 0..self.records {
            read(pos, 4, &mut buf)?;
            let len = u32::from_le_bytes(buf[..4].try_into().map_err(|_| SpillError::Corrupt("length"))?) as usize;
            read(pos + 4, len, &mut buf)?;
            pos += 4 + len as u64;
            let rec = Bytes::copy_from_slice(&buf);
            let (subxid, change) = self.decode(rec)?;
            if !self.aborted.contains(&subxid) {
                f(&change)?;
            }
        }
        Ok(())
    }

    fn decode(&self, rec: Bytes) -> Result<(u32, RowChange), SpillError> {
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Result<Bytes, SpillError> {
            if rec.len() < *at + n {
                return Err(SpillError::Corrupt("record ends early"));
            }
            let b = rec.slice(*at..*at + n);
            *at += n;
            Ok(b)
        };
        let u32_ = |b: Bytes| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let rel = |i: u32| -> Result<Arc<Relation>, SpillError> {
            self.relations
                .get(i as usize)
                .cloned()
                .ok_or(SpillError::Corrupt("unknown relation"))
        };
        let tuple = |at: &mut usize| -> Result<TupleData, SpillError> {
            let natts = take(at, 2)?;
            let natts = u16::from_le_bytes([natts[0], natts[1]]);
            let len = u32_(take(at, 4)?) as usize;
            TupleData::from_entries(take(at, len)?, natts).ok_or(SpillError::Corrupt("tuple"))
        };
        let subxid = u32_(take(&mut at, 4)?);
        let kind = take(&mut at, 1)?[0];
        let change = match kind {
            0 => RowChange::Insert {
                rel: rel(u32_(take(&mut at, 4)?))?,
                new: tuple(&mut at)?,
            },
            1 => {
                let r = rel(u32_(take(&mut at, 4)?))?;
                let old = match take(&mut at, 1)?[0] {
                    0 => None,
                    1 => Some((OldKind::Key, tuple(&mut at)?)),
                    _ => Some((OldKind::Full, tuple(&mut at)?)),
                };
                RowChange::Update {
                    rel: r,
                    old,
                    new: tuple(&mut at)?,
                }
            }
            2 => RowChange::Delete {
                rel: rel(u32_(take(&mut at, 4)?))?,
                old: tuple(&mut at)?,
            },
            3 => {
                let n = u32_(take(&mut at, 4)?);
                let rels = (0..n)
                    .map(|_| rel(u32_(take(&mut at, 4)?)))
                    .collect::<Result<Vec<_>, _>>()?;
                RowChange::Truncate { rels }
            }
            _ => return Err(SpillError::Corrupt("unknown change kind")),
        };
        Ok((subxid, change))
    }
}
