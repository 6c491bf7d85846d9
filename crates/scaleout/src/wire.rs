//! The stream's layout: its name, the subject records go to, the snapshot bucket, and the
//! headers each message carries. Documented in docs/scaleout.md; followers of other versions
//! read it, so it changes only with a version header bump.
//!
//! One message per change-log record (its payload is the record's, byte for byte), or several
//! parts of one record when it is larger than the server's max payload:
//!
//! - `Nats-Msg-Id`: `<lineage>-<LSN>` in hex (`-<part>` appended for parts after the first),
//!   then the publishing session's nonce; fence markers end in `-fence-<term>`: unique across
//!   graphs, sessions and leaders (a replicated stream keeps a refused message's id in its
//!   duplicate window).
//! - `Nats-Expected-Last-Sequence` (a session's first message) and
//!   `Nats-Expected-Last-Msg-Id` (every later one): the stream's end as the publisher last
//!   saw it; a publisher whose idea of the end is stale (a deposed leader) is refused instead
//!   of interleaving, pipelined messages included.
//! - `Graphsync-Term`: the leadership term; a standby that takes over writes a fence marker
//!   one term higher, and a publisher that finds a higher term than its own stops for good
//!   (absent: 0).
//! - `Graphsync-Slot`: the replication slot the leader streams from (a standby watches it and
//!   takes it over; background rebuilds change it).
//! - `Graphsync-Lsn`, `Graphsync-Prev-Lsn`: the record's LSN and the previous record's (a
//!   follower at the previous one applies it; anything else is a gap).
//! - `Graphsync-Hash`: the mapping hash (16 hex digits): a follower of another mapping refuses.
//! - `Graphsync-Lineage`: the graph's lineage (16 hex digits, see `lineage`): records apply
//!   only to a graph of the same lineage.
//! - `Graphsync-Part`: `i/n` when the record is split (parts are consecutive; a part 0 starts
//!   the record over).

use async_nats::HeaderMap;
use pgoutput::Lsn;

pub(crate) const H_LSN: &str = "Graphsync-Lsn";
pub(crate) const H_PREV: &str = "Graphsync-Prev-Lsn";
pub(crate) const H_HASH: &str = "Graphsync-Hash";
pub(crate) const H_PART: &str = "Graphsync-Part";
pub(crate) const H_LINEAGE: &str = "Graphsync-Lineage";
pub(crate) const H_VERSION: &str = "Graphsync-Version";
pub(crate) const H_TERM: &str = "Graphsync-Term";
pub(crate) const H_SLOT: &str = "Graphsync-Slot";
/// This layout's version.
pub(crate) const VERSION: &str = "1";

/// Names derived from the stream name.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The stream.
    pub stream: String,
    /// The subject records are published to.
    pub subject: String,
    /// The object store bucket snapshots go to.
    pub bucket: String,
}

impl Layout {
    /// The layout of stream `stream`.
    pub fn new(stream: &str) -> Layout {
        Layout {
            stream: stream.to_string(),
            subject: format!("graphsync.{stream}.log"),
            bucket: format!("{stream}_snapshots"),
        }
    }
}

/// The default stream name for a slot: `GRAPHSYNC_<slot>`, with characters NATS does not
/// allow in names replaced by `_`.
pub fn default_stream_name(slot: &str) -> String {
    let clean: String = slot
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("GRAPHSYNC_{clean}")
}

/// The message id of part `part` of the record at `lsn` in graph lineage `lineage`.
pub(crate) fn message_id(lineage: u64, lsn: Lsn, part: usize) -> String {
    if part == 0 {
        format!("{lineage:016x}-{:016X}", lsn.0)
    } else {
        format!("{lineage:016x}-{:016X}-{part}", lsn.0)
    }
}

/// What a stream message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) lsn: Lsn,
    pub(crate) prev: Lsn,
    pub(crate) hash: u64,
    pub(crate) lineage: u64,
    /// (part, parts)
    pub(crate) part: (usize, usize),
    /// The leadership term.
    pub(crate) term: u64,
}

impl Meta {
    pub(crate) fn headers(&self, id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(H_VERSION, VERSION);
        h.insert(H_LSN, self.lsn.to_string().as_str());
        h.insert(H_PREV, self.prev.to_string().as_str());
        h.insert(H_HASH, format!("{:016x}", self.hash).as_str());
        h.insert(H_LINEAGE, format!("{:016x}", self.lineage).as_str());
        h.insert(H_TERM, self.term.to_string().as_str());
        if self.part.1 > 1 {
            h.insert(H_PART, format!("{}/{}", self.part.0, self.part.1).as_str());
        }
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        h
    }

    /// Where the stream's chain ends when this is its last message: its record, or (a record
    /// cut short, its last parts never sent) the record before it.
    pub(crate) fn chain_end(&self) -> Lsn {
        if self.part.0 + 1 == self.part.1 {
            self.lsn
        } else {
            self.prev
        }
    }

    /// Reads the headers of a stream message; `Err` names what is missing or wrong.
    pub(crate) fn parse(h: &HeaderMap) -> Result<Meta, String> {
        let get = |k: &str| h.get(k).map(|v| v.as_str()).ok_or_else(|| format!("no {k} header"));
        let version = get(H_VERSION)?;
        if version != VERSION {
            return Err(format!(
                "layout version {version}; this build reads {VERSION} (upgrade graphsync on the followers first)"
            ));
        }
        let lsn = |k: &str| -> Result<Lsn, String> { get(k)?.parse().map_err(|_| format!("{k} is not an LSN")) };
        let hash = u64::from_str_radix(get(H_HASH)?, 16).map_err(|_| format!("{H_HASH} is not hex"))?;
        let lineage = u64::from_str_radix(get(H_LINEAGE)?, 16).map_err(|_| format!("{H_LINEAGE} is not hex"))?;
        let part = match h.get(H_PART) {
            None => (0, 1),
            Some(v) => {
                let (i, n) = v.as_str().split_once('/').ok_or("bad part header")?;
                let (i, n) = (i.parse().map_err(|_| "bad part")?, n.parse().map_err(|_| "bad parts")?);
                if i >= n {
                    return Err("bad part header".into());
                }
                (i, n)
            }
        };
        let term = match h.get(H_TERM) {
            None => 0,
            Some(v) => v.as_str().parse().map_err(|_| format!("{H_TERM} is not a number"))?,
        };
        Ok(Meta {
            lsn: lsn(H_LSN)?,
            prev: lsn(H_PREV)?,
            hash,
            lineage,
            part,
            term,
        })
    }
}

/// Joins the parts of split records as they arrive: consecutive parts of one record, at most
/// the largest record the change log holds.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    at: Option<(Meta, Vec<u8>)>,
}

impl Parts {
    /// The whole record once its last part arrived.
    pub(crate) fn push(&mut self, m: Meta, payload: &bytes::Bytes) -> Option<(Meta, bytes::Bytes)> {
        if m.part.1 == 1 {
            self.at = None;
            return Some((m, payload.clone()));
        }
        if m.part.0 == 0 {
            self.at = Some((m, payload.to_vec()));
        } else {
            match &mut self.at {
                Some((last, buf))
                    if last.lsn == m.lsn
                        && last.part.1 == m.part.1
                        && last.part.0 + 1 == m.part.0
                        && buf.len() + payload.len() <= sync::changelog::MAX_PAYLOAD =>
                {
                    buf.extend_from_slice(payload);
                    last.part = m.part;
                }
                // A part without its predecessor (republished after a crash mid-record): wait
                // for the record to start over.
                _ => {
                    self.at = None;
                    return None;
                }
            }
        }
        if m.part.0 + 1 == m.part.1 {
            let (mut first, buf) = self.at.take()?;
            first.part = (0, m.part.1);
            return Some((first, buf.into()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_join_and_restart() {
        let m = |i, n| Meta {
            lsn: Lsn(9),
            prev: Lsn(3),
            hash: 1,
            lineage: 0xabc,
            part: (i, n),
            term: 3,
        };
        let mut p = Parts::default();
        assert!(p.push(m(0, 3), &bytes::Bytes::from_static(b"ab")).is_none());
        assert!(p.push(m(1, 3), &bytes::Bytes::from_static(b"cd")).is_none());
        // Started over (a republish): the earlier parts are dropped.
        assert!(p.push(m(0, 3), &bytes::Bytes::from_static(b"AB")).is_none());
        assert!(p.push(m(1, 3), &bytes::Bytes::from_static(b"CD")).is_none());
        let (meta, whole) = p.push(m(2, 3), &bytes::Bytes::from_static(b"E")).expect("whole");
        assert_eq!((meta.lsn, &whole[..]), (Lsn(9), &b"ABCDE"[..]));
        // A part skipped: the record is dropped until it starts over.
        assert!(p.push(m(0, 3), &bytes::Bytes::from_static(b"a")).is_none());
        assert!(p.push(m(2, 3), &bytes::Bytes::from_static(b"c")).is_none());
        assert!(p.push(m(1, 3), &bytes::Bytes::from_static(b"b")).is_none());
        // A part without its beginning is not a record.
        assert!(p.push(m(2, 3), &bytes::Bytes::from_static(b"x")).is_none());
        let h = m(1, 3).headers("id");
        assert_eq!(Meta::parse(&h), Ok(m(1, 3)));
    }

    #[test]
    fn names() {
        assert_eq!(default_stream_name("graph.sync slot"), "GRAPHSYNC_graph_sync_slot");
        assert_eq!(message_id(0xab, Lsn(0x1A), 0), "00000000000000ab-000000000000001A");
        assert_eq!(message_id(0xab, Lsn(0x1A), 2), "00000000000000ab-000000000000001A-2");
        assert_eq!(
            crate::redact("nats://u:p@h:4222,nats://h2:4222"),
            "nats://***@h:4222,nats://h2:4222"
        );
    }
}
