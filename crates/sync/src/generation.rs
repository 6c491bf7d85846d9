//! Generations of a data directory: which subdirectory holds the replica state in force, and
//! which replication slot feeds it.
//!
//! A background rebuild builds a whole new state (snapshots, change log) beside the one that
//! serves, from a slot of its own; the swap is one atomic write of the `generation` pointer
//! file (`{"generation": N, "dir": "gen-N", "slot": "…"}`), so a restart finds either the old
//! state and slot or the new ones, never a mix. Without the file (every data directory before
//! the first background rebuild) the state is the directory itself and the slot the
//! configured one; `"dir": ""` names the directory itself too (a standby that took over the
//! slot of a leader's later generation: [`adopt_slot`]).
//!
//! Not for what is inside a generation (checkpoints, the change log).

use std::path::{Path, PathBuf};

const POINTER: &str = "generation";

/// One generation: where its state lives and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// 0 for the data directory itself.
    pub number: u64,
    /// The directory holding its snapshots and change log.
    pub dir: PathBuf,
    /// Its replication slot.
    pub slot: String,
}

/// Why the pointer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// Unreadable or malformed pointer file.
    #[error("{path}: {problem}; fix: restore it from a backup, or remove it and start with --rebuild")]
    Corrupt {
        /// The pointer file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] graph::fsio::WriteError),
}

/// The generation in force in `root` (`slot` is the configured slot name).
pub fn current(root: &Path, slot: &str) -> Result<Generation, GenerationError> {
    let path = root.join(POINTER);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Generation {
                number: 0,
                dir: root.to_path_buf(),
                slot: slot.to_string(),
            })
        }
        Err(e) => {
            return Err(GenerationError::Corrupt {
                path,
                problem: e.to_string(),
            })
        }
    };
    let corrupt = |problem: &str| GenerationError::Corrupt {
        path: path.clone(),
        problem: problem.to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(&e.to_string()))?;
    let number = v["generation"]
        .as_u64()
        .ok_or_else(|| corrupt("no generation number"))?;
    let dir = v["dir"].as_str().ok_or_else(|| corrupt("no dir"))?;
    let slot = v["slot"].as_str().ok_or_else(|| corrupt("no slot"))?;
    if dir.contains('/') || dir.starts_with('.') {
        return Err(corrupt("dir must be a plain name inside the data directory"));
    }
    if dir.is_empty() != (number == 0) {
        return Err(corrupt(
            "the data directory itself (dir \"\") is generation 0, and only it",
        ));
    }
    Ok(Generation {
        number,
        dir: if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(dir)
        },
        slot: slot.to_string(),
    })
}

/// The generation after `g` (`base_slot` is the configured slot name), its directory created
/// empty.
pub fn next(root: &Path, g: &Generation, base_slot: &str) -> std::io::Result<Generation> {
    // Past the slot in force too (one adopted from another replica may be `<slot>_g<N>`
    // with a lower generation number here).
    let adopted = g
        .slot
        .strip_prefix(base_slot)
        .and_then(|r| r.strip_prefix("_g"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let number = g.number.max(adopted) + 1;
    let dir = root.join(format!("gen-{number}"));
    if dir.exists() {
        // Left by a rebuild that did not finish: start it over.
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(Generation {
        number,
        dir,
        slot: format!("{base_slot}_g{number}"),
    })
}

/// Makes `g` the generation in force (one atomic write).
pub fn commit(root: &Path, g: &Generation) -> Result<(), GenerationError> {
    let dir = if g.dir == root {
        String::new()
    } else {
        g.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let text = serde_json::json!({"generation": g.number, "dir": dir, "slot": g.slot}).to_string();
    graph::fsio::atomic_write(&root.join(POINTER), &[text.as_bytes()])?;
    Ok(())
}

/// Makes the generation in force stream from `slot` (a standby taking over from a leader that
/// streamed from another of the configured slot's generations); `false` when it did already.
pub fn adopt_slot(root: &Path, base_slot: &str, slot: &str) -> Result<bool, GenerationError> {
    let mut g = current(root, base_slot)?;
    if g.slot == slot {
        return Ok(false);
    }
    g.slot = slot.to_string();
    commit(root, &g)?;
    Ok(true)
}

/// Deletes what generation `old` left in `root` once another is in force: its directory, or
/// for generation 0 the state files in `root` itself.
pub fn remove(root: &Path, old: &Generation) {
    if old.number > 0 {
        // Never the data directory itself (its state files are removed one by one below).
        if old.dir != root {
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let state = name == "checkpoint.json"
            || name == "initial-copy.started"
            || (name.starts_with("graph-") && name.ends_with(".snap"))
            || (name.starts_with("rows-") && name.ends_with(".idx"));
        if state {
            let _ = std::fs::remove_file(e.path());
        } else if name == "log" || name == "spill" {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The directory holding the state in force in `root` (for tools that read it).
pub fn state_dir(root: &Path) -> PathBuf {
    current(root, "").map(|g| g.dir).unwrap_or_else(|_| root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_follow_the_pointer() {
        let root = tempfile::tempdir().unwrap();
        let g0 = current(root.path(), "gs").unwrap();
        assert_eq!((g0.number, g0.dir.as_path(), g0.slot.as_str()), (0, root.path(), "gs"));
        std::fs::write(root.path().join("checkpoint.json"), b"{}").unwrap();
        std::fs::create_dir(root.path().join("log")).unwrap();
        let g1 = next(root.path(), &g0, "gs").unwrap();
        assert_eq!(g1.slot, "gs_g1");
        assert!(g1.dir.is_dir());
        // Not in force until committed.
        assert_eq!(current(root.path(), "gs").unwrap(), g0);
        commit(root.path(), &g1).unwrap();
        assert_eq!(current(root.path(), "gs").unwrap(), g1);
        assert_eq!(state_dir(root.path()), g1.dir);
        remove(root.path(), &g0);
        assert!(!root.path().join("checkpoint.json").exists() && !root.path().join("log").exists());
        assert!(g1.dir.is_dir());
        let g2 = next(root.path(), &g1, "gs").unwrap();
        commit(root.path(), &g2).unwrap();
        remove(root.path(), &g1);
        assert!(!g1.dir.exists());
        assert_eq!(current(root.path(), "gs").unwrap().slot, "gs_g2");
        std::fs::write(
            root.path().join(POINTER),
            b"{\"generation\": 3, \"dir\": \"../x\", \"slot\": \"s\"}",
        )
        .unwrap();
        assert!(current(root.path(), "gs")
            .unwrap_err()
            .to_string()
            .contains("plain name"));
    }

    #[test]
    fn a_taken_over_slot_is_adopted_in_place() {
        let root = tempfile::tempdir().unwrap();
        assert!(!adopt_slot(root.path(), "gs", "gs").unwrap());
        assert!(adopt_slot(root.path(), "gs", "gs_g4").unwrap());
        let g = current(root.path(), "gs").unwrap();
        assert_eq!((g.number, g.dir.as_path(), g.slot.as_str()), (0, root.path(), "gs_g4"));
        assert_eq!(state_dir(root.path()), root.path());
        // The next rebuild builds beside it, past the adopted slot's number.
        let g1 = next(root.path(), &g, "gs").unwrap();
        assert_eq!(g1.slot, "gs_g5");
        commit(root.path(), &g1).unwrap();
        assert_eq!(current(root.path(), "gs").unwrap(), g1);
        assert!(adopt_slot(root.path(), "gs", "gs_g7").unwrap());
        assert_eq!(current(root.path(), "gs").unwrap().dir, g1.dir);
    }
}
