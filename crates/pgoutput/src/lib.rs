//! Pure decoder for PostgreSQL's `pgoutput` logical replication protocol, versions 1 to 4.
//!
//! What it is for: turning the bytes of one pgoutput message into a typed [`Message`]
//! ([`decode_message`]), keeping the relation cache and stream-block state that a stream of
//! messages needs ([`Decoder`]), converting tuple columns into typed [`Value`]s by type OID, and
//! rendering messages as JSON lines ([`json`]). [`encode`] is the inverse, for tests and tools.
//!
//! What it is not for: it does no I/O, reads no clock and knows nothing of connections or
//! transactions beyond single messages (see the `pgrepl` crate for the wire connection).
//! Garbage or truncated input yields a [`DecodeError`], never a panic, and allocations are
//! bounded by the input's length.

#![warn(missing_docs)]

pub mod encode;
mod error;
pub mod json;
mod lsn;
mod message;
mod reader;
mod relation;
pub mod time;
mod tuple;
pub mod value;

pub use error::DecodeError;
pub use lsn::{Lsn, ParseLsnError};
pub use message::*;
pub use relation::{Column, Relation, RelationCache, ReplicaIdentity};
pub use time::PgTimestamp;
pub use value::{PgText, Value};

use bytes::Bytes;
use std::sync::Arc;

/// Decodes a stream of pgoutput messages: tracks Stream Start/Stop blocks (inside which row
/// messages carry an xid) and caches Relation messages so rows can be typed.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    relations: RelationCache,
    in_stream: bool,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the next message and updates the decoder's state from it.
    pub fn decode(&mut self, data: &Bytes) -> Result<Message, DecodeError> {
        let msg = decode_message(data, self.in_stream)?;
        match &msg {
            Message::StreamStart(_) => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            Message::Relation(r) => {
                self.relations.insert_arc(r.clone());
            }
            _ => {}
        }
        Ok(msg)
    }

    /// The relations described so far.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// The relation a row message refers to, or [`DecodeError::UnknownRelation`].
    pub fn relation(&self, kind: &'static str, relation_id: u32) -> Result<&Arc<Relation>, DecodeError> {
        self.relations
            .get(relation_id)
            .ok_or(DecodeError::UnknownRelation { kind, relation_id })
    }

    /// Whether a Stream Start block is open.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }
}
