//! Giving memory freed in a burst back to the operating system at once.
//!
//! The allocator (mimalloc, chosen by the binary) returns freed pages to
//! the system only after a delay, and only when the thread that holds them
//! allocates again. A shard that has just loaded its snapshot, or a
//! maintenance thread that has just written one, frees tens of megabytes
//! at once and may then sit idle: measured with a million instances
//! (bench-results/2026-12-07/release-freed-memory/), a restarted server
//! held 502–589 MB against the 343 MB it held running, and a COMPACT left
//! 70–90 MB behind it.
//!
//! The library does not name an allocator: the binary installs how to
//! release (`set_release_freed_memory`), and the shard code calls
//! `release_freed_memory` right after such a burst. Without an installed
//! hook (tests, the simulator) the call does nothing.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Install how this process gives freed memory back (once; later calls
/// are ignored).
pub fn set_release_freed_memory(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Give memory freed so far back to the system, if the binary said how.
/// Costs a walk of the calling thread's allocator pages: call it after a
/// burst of frees, never per request.
pub fn release_freed_memory() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    fn count_release() {
        RELEASED.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn the_installed_release_runs_on_each_call_and_a_second_install_is_ignored() {
        set_release_freed_memory(count_release);
        set_release_freed_memory(|| panic!("a second hook must not replace the first"));
        let before = RELEASED.load(Ordering::SeqCst);
        release_freed_memory();
        release_freed_memory();
        assert_eq!(RELEASED.load(Ordering::SeqCst), before + 2);
    }
}
