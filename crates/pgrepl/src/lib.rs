//! A PostgreSQL logical replication connection over tokio.
//!
//! What it is for: opening a `replication=database` connection (TCP, Unix socket or TLS with
//! rustls; trust, cleartext, md5 or SCRAM-SHA-256 authentication), running replication
//! commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`), and
//! streaming a slot with `START_REPLICATION ... LOGICAL` while answering keepalives and sending
//! standby status updates.
//!
//! What it is not for: it does not decode pgoutput (that is the `pgoutput` crate), does not
//! decide what is durable (the caller sets the flush position), and does not reconnect.
//! Passwords never appear in `Debug` output, logs or errors.

#![warn(missing_docs)]

mod client;
pub mod config;
mod conn;
mod error;
mod stream;
mod tls;

pub use client::{
    newest_proto_version, quote_ident, CreateSlotOptions, CreatedSlot, QueryResult, ReplicationClient, SlotSnapshot,
    StartOptions, Streaming, SystemIdentity,
};
pub use config::{Config, Host, Password, SslMode};
pub use error::{sqlstate, ReplError, ServerError};
pub use stream::{Feedback, Next, ReplicationEvent, ReplicationStream};
