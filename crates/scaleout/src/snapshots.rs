//! Snapshots in the JetStream object store: the leader uploads each new snapshot (the graph
//! file and its row index, chunked by the object store), then points `latest` at it; a
//! follower bootstraps from what `latest` names. The two newest are kept.

use crate::wire::Layout;
use crate::ScaleoutError;
use async_nats::jetstream::{self, object_store::ObjectStore};
use pgoutput::Lsn;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A download or pointer read making no progress for this long fails (and is retried).
const STALL: Duration = Duration::from_secs(20);

/// The object naming the newest snapshot.
const LATEST: &str = "latest";

/// What `latest` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Latest {
    pub(crate) lsn: Lsn,
    pub(crate) mapping_hash: u64,
    pub(crate) lineage: u64,
}

fn names(lsn: Lsn) -> (String, String) {
    (
        sync::checkpoint::CheckpointStore::snapshot_name(lsn),
        format!("rows-{:016X}.idx", lsn.0),
    )
}

/// The snapshot bucket, created if missing.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    layout: &Layout,
    replicas: usize,
) -> Result<ObjectStore, ScaleoutError> {
    match js.get_object_store(&layout.bucket).await {
        Ok(b) => Ok(b),
        Err(_) => js
            .create_object_store(jetstream::object_store::Config {
                bucket: layout.bucket.clone(),
                description: Some("graphsync snapshots for followers to bootstrap from".into()),
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| ScaleoutError::js("object store creation")(e.to_string())),
    }
}

/// What `latest` names, if anything.
pub(crate) async fn latest(b: &ObjectStore) -> Result<Option<Latest>, ScaleoutError> {
    let mut o = match b.get(LATEST).await {
        Ok(o) => o,
        Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ScaleoutError::js("snapshot pointer read")(e.to_string())),
    };
    let mut buf = Vec::new();
    tokio::time::timeout(STALL, o.read_to_end(&mut buf))
        .await
        .map_err(|_| ScaleoutError::js("snapshot pointer read")("timed out".into()))?
        .map_err(|e| ScaleoutError::js("snapshot pointer read")(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&buf)
        .map_err(|e| ScaleoutError::Stream(format!("the snapshot pointer is not JSON: {e}")))?;
    let lsn = v["lsn"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ScaleoutError::Stream("the snapshot pointer has no lsn".into()))?;
    let mapping_hash = v["mapping_hash"]
        .as_str()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| ScaleoutError::Stream("the snapshot pointer has no mapping_hash".into()))?;
    let lineage = v["lineage"]
        .as_str()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| ScaleoutError::Stream("the snapshot pointer has no lineage".into()))?;
    Ok(Some(Latest {
        lsn,
        mapping_hash,
        lineage,
    }))
}

/// Uploads the snapshot at `lsn` from `dir` and points `latest` at it; removes snapshots older
/// than `keep_after` (the previous one stays for followers still downloading it).
pub(crate) async fn upload(
    b: &ObjectStore,
    dir: &Path,
    lsn: Lsn,
    mapping_hash: u64,
    lineage: u64,
    keep_after: Option<Lsn>,
) -> Result<u64, ScaleoutError> {
    let (snap, rows) = names(lsn);
    let mut bytes = 0;
    for name in [&rows, &snap] {
        let mut f = tokio::fs::File::open(dir.join(name))
            .await
            .map_err(|e| ScaleoutError::Stream(format!("cannot read {name} to upload it: {e}")))?;
        // Already there (an earlier session's upload): replacing it would purge it under a
        // follower reading it. Files of one name never change.
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(u64::MAX);
        if b.info(name.as_str())
            .await
            .is_ok_and(|i| !i.deleted && i.size as u64 == len)
        {
            bytes += len;
            continue;
        }
        let info = b
            .put(name.as_str(), &mut f)
            .await
            .map_err(|e| ScaleoutError::js("snapshot upload")(e.to_string()))?;
        bytes += info.size as u64;
    }
    // Never back: a newer snapshot of this graph may already be the one named.
    if latest(b).await?.is_some_and(|l| l.lineage == lineage && l.lsn > lsn) {
        return Ok(bytes);
    }
    let pointer = serde_json::json!({
        "lsn": lsn.to_string(),
        "mapping_hash": format!("{mapping_hash:016x}"),
        "lineage": format!("{lineage:016x}"),
        "snapshot": snap,
        "rows": rows,
    })
    .to_string();
    b.put(LATEST, &mut pointer.as_bytes())
        .await
        .map_err(|e| ScaleoutError::js("snapshot pointer write")(e.to_string()))?;
    if let Some(keep) = keep_after {
        // Pruning is best effort: the snapshot and its pointer are in place, and what stays
        // is removed by a later upload.
        let mut list = match b.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the published snapshots to remove old ones failed; they are removed after a later upload");
                return Ok(bytes);
            }
        };
        let mut old = Vec::new();
        while let Some(Ok(o)) = futures_util::StreamExt::next(&mut list).await {
            let hex = o
                .name
                .strip_prefix("graph-")
                .and_then(|s| s.strip_suffix(".snap"))
                .or_else(|| o.name.strip_prefix("rows-").and_then(|s| s.strip_suffix(".idx")));
            if let Some(l) = hex.and_then(|h| u64::from_str_radix(h, 16).ok()) {
                if Lsn(l) < keep {
                    old.push(o.name.clone());
                }
            }
        }
        for name in old {
            let _ = b.delete(&name).await;
        }
    }
    Ok(bytes)
}

/// Downloads the snapshot at `lsn` into `dir` (written to temporary files, flushed, then
/// renamed).
pub(crate) async fn download(b: &ObjectStore, dir: &Path, lsn: Lsn) -> Result<u64, ScaleoutError> {
    let (snap, rows) = names(lsn);
    let mut bytes = 0;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ScaleoutError::Stream(format!("cannot create {}: {e}", dir.display())))?;
    for name in [&rows, &snap] {
        let io = |e: std::io::Error| ScaleoutError::Stream(format!("cannot write {name} into {}: {e}", dir.display()));
        let mut o = b
            .get(name.as_str())
            .await
            .map_err(|e| ScaleoutError::js("snapshot download")(format!("{name}: {e}")))?;
        let tmp = dir.join(format!(".{name}.download"));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        // An object replaced while it is read (its chunks purged) never ends: no progress for
        // STALL is an error, and the caller retries.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match tokio::time::timeout(STALL, o.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ScaleoutError::js("snapshot download")(format!("{name}: {e}"))),
                Err(_) => {
                    return Err(ScaleoutError::js("snapshot download")(format!(
                        "{name}: no data for {} s (replaced while it was read?)",
                        STALL.as_secs()
                    )))
                }
            };
            f.write_all(&buf[..n]).await.map_err(io)?;
            bytes += n as u64;
        }
        f.flush().await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        drop(f);
        tokio::fs::rename(&tmp, dir.join(name)).await.map_err(io)?;
    }
    Ok(bytes)
}
