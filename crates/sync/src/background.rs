//! Background work (checkpoint writes, compactions) on its own thread at a lower CPU priority
//! than applying, so that on a busy machine the scheduler runs the apply loop first and a
//! checkpoint never starves it (profiled under a hub-heavy load on 2 cores: the checkpoint's
//! compaction and file writes took half of graphsync's CPU, preempting the apply thread).
//!
//! Also [`blocking`]: blocking work run from async code, on whichever runtime the caller is.
//!
//! Not for: deciding when to checkpoint or compact (the replicator does).

/// How much lower background threads run (`nice` +10: about a tenth of a CPU-bound
/// normal-priority thread's share when both want the same core).
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: libc::c_int = 10;

/// Runs blocking work `f` (file I/O, a compaction, a restore) from async code. On a
/// multi-thread runtime through `block_in_place`, so the worker's other tasks move elsewhere
/// meanwhile; on a current-thread runtime (the binary runs the replicator on a thread of its
/// own, whose few side tasks can wait) or outside any runtime, directly.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs `f` on a fresh thread at background priority; the handle resolves to its result (a
/// panic surfaces as the handle's `JoinError`, as with `spawn_blocking`). If no thread can be
/// started, `f` runs on the blocking pool at normal priority.
pub(crate) fn spawn<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let f = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
        let job = f.clone();
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            lower_priority();
            if let Some(f) = job.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(f());
            }
        });
        match thread {
            Ok(t) => {
                if let Err(panic) = t.join() {
                    std::panic::resume_unwind(panic);
                }
                rx.recv()
                    .expect("the background thread sends its result before it ends")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a {name} thread; running it at normal priority");
                let f = f.lock().unwrap_or_else(|e| e.into_inner()).take();
                f.expect("not taken: the thread never started")()
            }
        }
    })
}

/// Lowers the calling thread's CPU priority (a thread is never raised back: that would need
/// privileges, which is why background work gets threads of its own).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority have no memory-safety preconditions; on Linux,
        // PRIO_PROCESS with a thread id sets that thread's nice value.
        let r = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE)
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocking work runs on every kind of runtime, and outside one.
    #[test]
    fn blocking_runs_on_any_runtime() {
        assert_eq!(blocking(|| 1), 1);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert_eq!(
            multi.block_on(async { tokio::spawn(async { blocking(|| 2) }).await.unwrap() }),
            2
        );
        let current = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(current.block_on(async { blocking(|| 3) }), 3);
    }
}
