//! The decoder's error type.

/// Why a pgoutput message (or a value inside it) could not be decoded.
///
/// Every variant names the message kind and the byte offset inside the message where decoding
/// stopped, so a bad capture can be located and reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field it announced.
    #[error("{kind} message truncated at offset {offset}: {needed} more byte(s) needed")]
    Truncated {
        /// Message kind being decoded.
        kind: &'static str,
        /// Offset where the missing field starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The first byte is not a pgoutput message type.
    #[error("unknown pgoutput message type byte 0x{byte:02x} at offset 0")]
    UnknownMessageType {
        /// The offending byte.
        byte: u8,
    },
    /// The message is empty.
    #[error("empty pgoutput message")]
    Empty,
    /// A field holds a value the protocol does not allow.
    #[error("{kind} message invalid at offset {offset}: {reason}")]
    Invalid {
        /// Message kind being decoded.
        kind: &'static str,
        /// Offset of the offending field.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Bytes are left over after a complete message.
    #[error("{kind} message has {extra} unexpected trailing byte(s) at offset {offset}")]
    TrailingBytes {
        /// Message kind decoded.
        kind: &'static str,
        /// Offset where the trailing bytes start.
        offset: usize,
        /// Number of trailing bytes.
        extra: usize,
    },
    /// A row message names a relation no Relation message has described.
    #[error("{kind} message refers to relation id {relation_id}, which no Relation message has described (the stream must be read from the start of a transaction)")]
    UnknownRelation {
        /// Message kind decoded.
        kind: &'static str,
        /// The relation OID.
        relation_id: u32,
    },
    /// A row's column count differs from its relation's.
    #[error("{kind} message for relation {relation} has {got} column(s) but its Relation message declared {expected}")]
    ColumnCountMismatch {
        /// Message kind decoded.
        kind: &'static str,
        /// `schema.table`.
        relation: String,
        /// Columns in the tuple.
        got: usize,
        /// Columns in the relation.
        expected: usize,
    },
    /// A column value is not valid for its declared type.
    #[error("column {column:?} of type OID {type_oid}: {reason}")]
    InvalidValue {
        /// Column name.
        column: String,
        /// Declared type OID.
        type_oid: u32,
        /// What is wrong.
        reason: String,
    },
}
