//! graphsync's sync core: from a PostgreSQL logical replication slot to a graph that equals
//! what the mapped tables say, durably.
//!
//! - [`config`]: the mapping configuration (TOML), validated and hashed.
//! - [`rows`]: typed row values → node keys, tenant/filter values, properties, weights.
//! - [`change`] and [`assembly`]: pgoutput messages → whole committed transactions (plain,
//!   streamed, two-phase).
//! - [`mapper`]: committed transactions → one atomic graph transaction each, plus the row index
//!   that lets deletes find their edges; the bulk build of the initial copy.
//! - [`discover`] / [`discover_diff`]: a mapping drafted from the catalog, and what changed in
//!   the catalog since a mapping was written.
//! - [`mapping_change`]: what changed between two mappings and whether it applies online.
//! - [`copy`]: reading `COPY ... (FORMAT binary)` output.
//! - [`changelog`]: the durable change log's segment files: appending with group commit,
//!   crash recovery, scanning for replay.
//! - [`generation`]: which subdirectory and slot hold the state in force (background rebuilds
//!   build the next one beside it).
//! - [`checkpoint`]: durable checkpoints (snapshot + row index + manifest) and their recovery.
//! - [`catalog`]: start-up checks and set-up against the source database (tables, columns,
//!   replica identity, publication).
//! - [`replicator`]: the service loop: initial copy or restore, streaming, confirming only what
//!   is durable, reconnecting.
//!
//! What it is not for: wire protocol (pgrepl), decoding (pgoutput), graph storage and queries
//! (graph), or process concerns like CLI flags and HTTP (the binary).

#![warn(missing_docs)]

pub mod assembly;
mod background;
pub use background::blocking;
pub mod catalog;
pub mod change;
pub mod changelog;
pub mod checkpoint;
pub mod committed;
pub mod config;
pub mod copy;
pub mod discover;
pub mod discover_diff;
pub mod feed;
pub mod generation;
pub mod mapper;
pub mod mapping_change;
pub mod render;
pub mod replicator;
pub mod row_index;
pub mod rows;
pub mod spill;
