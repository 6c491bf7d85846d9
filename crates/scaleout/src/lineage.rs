//! A graph's lineage: a random id a data directory's graph gets when it is first published,
//! carried by every message and snapshot of the stream, and taken over by the followers and
//! standbys that bootstrap from it. Records apply only to a graph of the same lineage (they
//! name node ids): a leader whose graph was rebuilt (a new generation), or whose data
//! directory was replaced, or that copied its graph afresh in place (`--rebuild`: clearing the
//! checkpoints deletes the lineage), has another lineage and is refused by the stream instead
//! of continuing it with records that do not fit.

use crate::ScaleoutError;
use std::path::Path;

const FILE: &str = sync::checkpoint::LINEAGE_FILE;

/// The lineage in `dir`, if it has one.
pub(crate) fn read(dir: &Path) -> Result<Option<u64>, ScaleoutError> {
    match std::fs::read_to_string(dir.join(FILE)) {
        Ok(s) => u64::from_str_radix(s.trim(), 16).map(Some).map_err(|_| {
            ScaleoutError::Stream(format!(
                "{} is not a lineage (16 hex digits); restore it or remove the data directory (it then bootstraps again)",
                dir.join(FILE).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ScaleoutError::Stream(format!("cannot read {}: {e}", dir.join(FILE).display()))),
    }
}

/// Records `lineage` in `dir` (written to a temporary file, flushed, renamed).
pub(crate) fn write(dir: &Path, lineage: u64) -> Result<(), ScaleoutError> {
    let err = |e: std::io::Error| ScaleoutError::Stream(format!("cannot write {}: {e}", dir.join(FILE).display()));
    let tmp = dir.join(".lineage.tmp");
    std::fs::write(&tmp, format!("{lineage:016x}\n")).map_err(err)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(err)?;
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(err)
}

/// The lineage in `dir`, created (random) if it has none.
pub(crate) fn get_or_create(dir: &Path) -> Result<u64, ScaleoutError> {
    if let Some(l) = read(dir)? {
        return Ok(l);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let l = fastrand::Rng::with_seed(seed).u64(1..);
    write(dir, l)?;
    Ok(l)
}
