//! graphsync's sync core: from row changes of configured tables to graph mutations.
//!
//! What it is for (as it grows): the mapping configuration ([`config`]), the translation of
//! pgoutput row changes into node and edge mutations, the initial copy, transaction assembly,
//! checkpoints and restart. Today: the mapping configuration ([`config`] — parsed, structurally
//! validated, and hashed so a snapshot built under another mapping is never reused) and the
//! conversion of typed row values into node keys, tenant/filter values, properties and
//! weights ([`rows`]).
//!
//! What it is not for: wire protocol (pgrepl), decoding (pgoutput), graph storage and queries
//! (graph), or process concerns like CLI and HTTP (the binary).

#![warn(missing_docs)]

pub mod config;
pub mod rows;
