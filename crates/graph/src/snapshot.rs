//! Snapshot files: a compacted view written with rkyv, loaded with mmap and queried in place.
//!
//! Layout: a 64-byte header — magic `GRSYNCSN`, format version, flags (0), payload length,
//! xxh3 of the payload, xxh3 of the header's first 32 bytes, zero padding — then the rkyv
//! archive of the CSR arrays, the deleted-node bitset and the metadata (format version, config
//! hash, LSN, counts, creation time).
//!
//! Writing goes to a temporary file in the same directory, which is fsynced, renamed over the
//! target and followed by an fsync of the directory: a crash leaves the old file or the new
//! one, never a torn one, and a reader that mapped the old file keeps its inode (replacing a
//! mapped file in place would be SIGBUS).
//!
//! Loading checks, in order, the length, magic, version, header checksum, padding, payload
//! length, payload checksum, rkyv's structural check and every CSR invariant, and only then
//! hands out slices into the mapping (the payload checksum is computed on a second thread
//! beside the later checks, and its verdict is taken first). Any flipped byte or truncation
//! is refused with a [`SnapshotError`] that says which check failed.

use crate::csr::{Adjacency, Buf};
use crate::view::GraphView;
use crate::{Csr, CsrError, EdgeLabel};
use rkyv::rancor;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

#[cfg(target_endian = "big")]
compile_error!("snapshots map little-endian arrays in place; big-endian hosts are not supported");

/// The magic bytes that start every snapshot.
pub const MAGIC: &[u8; 8] = b"GRSYNCSN";
/// The snapshot format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 64;

/// What a snapshot says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Snapshot format version.
    pub format_version: u32,
    /// Hash of the mapping configuration the graph was built with (opaque here).
    pub config_hash: u64,
    /// LSN the graph reflects.
    pub lsn: u64,
    /// Node ids (`0..node_count`).
    pub node_count: u32,
    /// Edges stored (including those of deleted nodes).
    pub stored_edges: u64,
    /// Visible edges.
    pub visible_edges: u64,
    /// Creation time, milliseconds since the Unix epoch, as given by the caller.
    pub created_unix_ms: i64,
    /// File size in bytes.
    pub file_bytes: u64,
}

/// Why a snapshot could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is shorter than its header or than the payload the header announces.
    #[error("snapshot is truncated: {got} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        got: u64,
        /// Bytes needed.
        expected: u64,
    },
    /// The file does not start with the snapshot magic.
    #[error("not a graphsync snapshot (wrong magic bytes)")]
    BadMagic,
    /// Written by an incompatible build.
    #[error(
        "snapshot format version {found} is not supported (this build reads version {supported}); rebuild the snapshot"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The header's checksum, flags or padding are wrong.
    #[error("snapshot header is corrupt: {0}")]
    HeaderCorrupt(&'static str),
    /// More bytes than the header announces.
    #[error("snapshot has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Extra bytes.
        extra: u64,
    },
    /// The payload checksum does not match: some byte changed.
    #[error("snapshot payload checksum mismatch (file corrupt): stored {stored:016x}, computed {computed:016x}")]
    ChecksumMismatch {
        /// Checksum in the header.
        stored: u64,
        /// Checksum of the bytes read.
        computed: u64,
    },
    /// The payload is not a valid archive (should be caught by the checksum first).
    #[error("snapshot payload is malformed: {0}")]
    Malformed(String),
    /// The archive is well formed but the graph in it is not.
    #[error("snapshot graph is invalid: {0}")]
    InvalidGraph(#[from] CsrError),
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct AdjData {
    offsets: Vec<u32>,
    nodes: Vec<u32>,
    labels: Vec<u8>,
    weights: Option<Vec<f64>>,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct MetaData {
    format_version: u32,
    config_hash: u64,
    lsn: u64,
    node_count: u32,
    stored_edges: u64,
    visible_edges: u64,
    created_unix_ms: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct SnapshotData {
    meta: MetaData,
    forward: AdjData,
    reverse: AdjData,
    deleted: Option<Vec<u64>>,
    /// Node data (labels, keys, tenants, filters, properties, index) as columns.
    nodes: crate::nodes::NodeColumns,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn adj_data(a: &Adjacency) -> AdjData {
    AdjData {
        offsets: a.offsets.to_vec(),
        nodes: a.nodes.to_vec(),
        labels: a.labels.iter().map(|l| l.0).collect(),
        weights: a.weights.as_ref().map(|w| w.to_vec()),
    }
}

/// Writes `view` (compacting it first if it has overlays) to `path` atomically and durably.
/// `config_hash` and `created_unix_ms` are stored as given.
pub fn write(
    view: &GraphView,
    path: &Path,
    config_hash: u64,
    created_unix_ms: i64,
) -> Result<SnapshotMeta, SnapshotError> {
    let compacted;
    let csr = if view.has_overlay() {
        compacted = view.compact_edges()?;
        &compacted
    } else {
        view.base()
    };
    let deleted = view.deleted_bits();
    let mut meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        config_hash,
        lsn: view.lsn(),
        node_count: csr.node_count(),
        stored_edges: csr.edge_count() as u64,
        visible_edges: view.edge_count() as u64,
        created_unix_ms,
        file_bytes: 0,
    };
    let data = SnapshotData {
        meta: MetaData {
            format_version: meta.format_version,
            config_hash: meta.config_hash,
            lsn: meta.lsn,
            node_count: meta.node_count,
            stored_edges: meta.stored_edges,
            visible_edges: meta.visible_edges,
            created_unix_ms: meta.created_unix_ms,
        },
        forward: adj_data(csr.forward()),
        reverse: adj_data(csr.reverse()),
        deleted: deleted.iter().any(|&w| w != 0).then_some(deleted),
        nodes: view.node_columns(),
    };
    let payload = rkyv::to_bytes::<rancor::Error>(&data).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let mut header = [0u8; HEADER];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[24..32].copy_from_slice(&xxh3_64(&payload).to_le_bytes());
    let header_sum = xxh3_64(&header[0..32]);
    header[32..40].copy_from_slice(&header_sum.to_le_bytes());

    crate::fsio::atomic_write(path, &[&header, &payload]).map_err(|e| SnapshotError::Io {
        path: e.path,
        source: e.source,
    })?;
    meta.file_bytes = (HEADER + payload.len()) as u64;
    Ok(meta)
}

/// A validated snapshot, mapped in memory.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// What the file says about itself.
    pub meta: SnapshotMeta,
    /// The graph, reading the mapped arrays in place.
    pub view: GraphView,
}

/// Maps `path`, validates everything, and returns a view over the mapped arrays.
pub fn load(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: the file is opened read-only and graphsync replaces snapshots only by renaming a
    // new file over the name, never by writing to an existing one, so the mapped bytes do not
    // change under us.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?);
    let bytes: &[u8] = &map;
    let len = bytes.len() as u64;
    if bytes.len() < HEADER {
        return Err(SnapshotError::Truncated {
            got: len,
            expected: HEADER as u64,
        });
    }
    if &bytes[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let word = |a: usize| u64::from_le_bytes(bytes[a..a + 8].try_into().unwrap_or_default());
    if xxh3_64(&bytes[0..32]) != word(32) {
        return Err(SnapshotError::HeaderCorrupt("header checksum mismatch"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if bytes[12..16] != [0; 4] || bytes[40..HEADER].iter().any(|&b| b != 0) {
        return Err(SnapshotError::HeaderCorrupt("flags or padding are not zero"));
    }
    let payload_len = word(16);
    let expected = HEADER as u64 + payload_len;
    if len < expected {
        return Err(SnapshotError::Truncated { got: len, expected });
    }
    if len > expected {
        return Err(SnapshotError::TrailingBytes { extra: len - expected });
    }
    let payload = &bytes[HEADER..];
    // The payload's checksum is computed beside the structural checks and the node store's
    // build (a fifth of a load's time on its own). Its verdict still comes first: a mismatch
    // is reported whatever the other checks found, and nothing is returned from bytes that
    // fail it.
    let (loaded, computed) = crate::par::both(|| open_payload(&map, payload, len), || xxh3_64(payload));
    if computed != word(24) {
        return Err(SnapshotError::ChecksumMismatch {
            stored: word(24),
            computed,
        });
    }
    loaded
}

/// The checks after the checksum (rkyv's structural check, the metadata, every CSR
/// invariant, the deleted-node bitset, the node store), and the view over the mapped arrays.
fn open_payload(map: &Arc<memmap2::Mmap>, payload: &[u8], len: u64) -> Result<LoadedSnapshot, SnapshotError> {
    let archived = rkyv::access::<ArchivedSnapshotData, rancor::Error>(payload)
        .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let m = &archived.meta;
    let meta = SnapshotMeta {
        format_version: m.format_version.to_native(),
        config_hash: m.config_hash.to_native(),
        lsn: m.lsn.to_native(),
        node_count: m.node_count.to_native(),
        stored_edges: m.stored_edges.to_native(),
        visible_edges: m.visible_edges.to_native(),
        created_unix_ms: m.created_unix_ms.to_native(),
        file_bytes: len,
    };
    if meta.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Malformed(
            "format version in the archive differs from the header's".into(),
        ));
    }
    // SAFETY (for every `Buf::mapped` below): the slices come from a validated rkyv archive
    // inside `map`, so they are in bounds and aligned for their archived types; `u32_le`,
    // `u64_le` and `f64_le` have the layout of `u32`, `u64` and `f64` on little-endian hosts
    // (the only ones this module compiles for), and `EdgeLabel` is a transparent `u8`.
    let mapped_adj = |a: &ArchivedAdjData| -> Adjacency {
        unsafe {
            Adjacency {
                offsets: Buf::mapped(map.clone(), a.offsets.as_slice().as_ptr().cast(), a.offsets.len()),
                nodes: Buf::mapped(map.clone(), a.nodes.as_slice().as_ptr().cast(), a.nodes.len()),
                labels: Buf::mapped(
                    map.clone(),
                    a.labels.as_slice().as_ptr().cast::<EdgeLabel>(),
                    a.labels.len(),
                ),
                weights: a
                    .weights
                    .as_ref()
                    .map(|w| Buf::mapped(map.clone(), w.as_slice().as_ptr().cast(), w.len())),
            }
        }
    };
    let csr = Csr {
        node_count: meta.node_count,
        forward: mapped_adj(&archived.forward),
        reverse: mapped_adj(&archived.reverse),
    };
    csr.validate()?;
    if csr.edge_count() as u64 != meta.stored_edges {
        return Err(SnapshotError::Malformed("edge count differs from the metadata".into()));
    }
    let deleted: Option<Vec<u64>> = archived
        .deleted
        .as_ref()
        .map(|d| d.iter().map(|w| w.to_native()).collect());
    if deleted
        .as_ref()
        .is_some_and(|d| d.len() != (meta.node_count as usize).div_ceil(64))
    {
        return Err(SnapshotError::Malformed(
            "deleted-node bitset has the wrong size".into(),
        ));
    }
    let nodes = crate::nodes::NodeStore::from_archived(&archived.nodes, meta.node_count)
        .map_err(|e| SnapshotError::Malformed(format!("node data: {e}")))?;
    let view = GraphView::from_parts(csr, deleted, nodes, meta.visible_edges as usize, meta.lsn);
    Ok(LoadedSnapshot { meta, view })
}
