//! The one way graphsync writes a file that must survive a crash whole or not at all:
//! [`atomic_write`] (temporary file, data flushed, rename, directory flushed).
//!
//! Large files are flushed as they are written, a few MB at a time, so a snapshot never holds
//! hundreds of MB of dirty pages: a burst of dirty pages makes the kernel throttle every
//! writer on the device, and PostgreSQL's WAL writes on the same disk then stall (seen as
//! commit → receive delays of ~1 s at the end of each checkpoint under load).
//!
//! Not for: files appended to over time, or reading.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes written between two flushes of a file being written.
const FLUSH_EVERY: usize = 4 << 20;

/// A failed write: the file and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    /// The file (or directory) the operation was on.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Writes the concatenation of `parts` to `path` atomically and durably: into `.NAME.tmp` in
/// the same directory, flushed, renamed over `path`, then the directory flushed. A crash
/// leaves either the old file or the new one, never a mix; a stale temporary file from a
/// crash is overwritten by the next write.
pub fn atomic_write(path: &Path, parts: &[&[u8]]) -> Result<(), WriteError> {
    let err = |p: &Path| {
        let path = p.to_path_buf();
        move |source| WriteError { path, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(err(&tmp))?;
    let mut unflushed = 0;
    for part in parts {
        for chunk in part.chunks(FLUSH_EVERY) {
            f.write_all(chunk).map_err(err(&tmp))?;
            unflushed += chunk.len();
            if unflushed >= FLUSH_EVERY {
                f.sync_data().map_err(err(&tmp))?;
                unflushed = 0;
            }
        }
    }
    f.sync_all().map_err(err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))?;
    Ok(())
}
