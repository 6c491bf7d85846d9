//! Two independent parts of one job run side by side: the second on a scoped thread, or after
//! the first when no thread can be started (the job still completes, only slower).
//!
//! Not for pools, long-lived threads or producer/consumer pairs (those need both running).

use std::sync::Mutex;

/// Runs `a` on this thread and `b` beside it; returns both results. A panic in either
/// propagates as it would had they run one after the other.
pub(crate) fn both<RA, RB>(a: impl FnOnce() -> RA, b: impl FnOnce() -> RB + Send) -> (RA, RB)
where
    RB: Send,
{
    let b = Mutex::new(Some(b));
    let run_b = || b.lock().unwrap_or_else(|e| e.into_inner()).take().map(|f| f());
    std::thread::scope(|s| {
        let spawned = std::thread::Builder::new().spawn_scoped(s, run_b);
        let ra = a();
        let rb = match spawned {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            // Not started: the closure is still in the cell.
            Err(_) => run_b(),
        };
        (
            ra,
            rb.expect("`b` is taken exactly once: by the thread, or here when none started"),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_both_and_returns_their_results() {
        let v: Vec<u64> = (0..1000).collect();
        let (a, b) = super::both(|| v.iter().sum::<u64>(), || v.iter().max().copied());
        assert_eq!((a, b), (499_500, Some(999)));
    }
}
