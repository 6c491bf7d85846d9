//! How graphsync sets up glibc's allocator, first thing in `main`: one arena, and transparent
//! huge pages for the heap.
//!
//! Not for: anything after startup.

/// The glibc tunable that has malloc ask the kernel for transparent huge pages.
const TUNABLE: &str = "glibc.malloc.hugetlb=1";
/// Set while graphsync re-runs itself with [`TUNABLE`]: `GLIBC_TUNABLES` as it was before
/// (empty: unset), put back by the re-run.
const BEFORE: &str = "GRAPHSYNC_GLIBC_TUNABLES_BEFORE";

/// Transparent huge pages for the heap. Applying a change reads the key index, columns and
/// overlay versions of random nodes: with 4 kB pages nearly every one of those reads also
/// misses the TLB. Where the kernel's THP mode is `madvise` (Debian's and Ubuntu's default),
/// glibc's malloc asks for huge pages only under the `glibc.malloc.hugetlb=1` tunable, which
/// is read when a process starts: so graphsync runs itself again once (same process id, same
/// arguments) with it set. The apply bench on a 1.78 M-node graph applied 13-20% more changes
/// per second with it. Not done when `GRAPHSYNC_HUGE_PAGES=false`, when `GLIBC_TUNABLES`
/// already names the tunable, or when the THP mode is not `madvise` (`always` gives huge
/// pages anyway, `never` none). `GLIBC_TUNABLES` is put back as it was once running, so the
/// processes graphsync starts (the demo's PostgreSQL) do not inherit the tunable.
///
/// Returns why the re-run failed, if it was tried and did (graphsync then runs on without
/// huge pages); for a log line once logging is set up.
pub(crate) fn huge_pages() -> Option<String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(before) = std::env::var_os(BEFORE) {
            // The re-run, single-threaded still: put the variable back.
            std::env::remove_var(BEFORE);
            if before.is_empty() {
                std::env::remove_var("GLIBC_TUNABLES");
            } else {
                std::env::set_var("GLIBC_TUNABLES", before);
            }
            return None;
        }
        let off = std::env::var("GRAPHSYNC_HUGE_PAGES").is_ok_and(|v| matches!(v.as_str(), "false" | "0" | "off"));
        let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if off || current.to_string_lossy().contains("glibc.malloc.hugetlb") || !mode.contains("[madvise]") {
            return None;
        }
        let mut tunables = current.clone();
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(TUNABLE);
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // The executable's own path, not `/proc/self/exe`: the process's name (`ps`, `pgrep`,
        // systemd) is the file name run.
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                return Some(format!(
                    "cannot find the executable to run again with transparent huge pages ({e}); running without"
                ))
            }
        };
        // Only returns if it failed.
        let err = std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(BEFORE, current)
            .exec();
        return Some(format!(
            "cannot run again with transparent huge pages ({err}); running without (GRAPHSYNC_HUGE_PAGES=false skips the attempt)"
        ));
    }
    #[allow(unreachable_code)]
    None
}

/// One glibc malloc arena for the whole process (unless `MALLOC_ARENA_MAX` says otherwise).
/// Memory moves between threads (the replicator's, compaction's, the thread freeing retired
/// views, the HTTP workers), and with glibc's default of one arena per thread what one thread
/// freed was not reused by another: when the replicator was a task hopping between runtime
/// workers, applying a 2 GB spilled transaction peaked at 107 MB instead of about 60 MB
/// (`faults::large_streamed_transaction_in_bounded_memory` asserts the bound). CPU per change
/// measured the same either way.
pub(crate) fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists or anything
        // was allocated through another arena; `mallopt` only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
