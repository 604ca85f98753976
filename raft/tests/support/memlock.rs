//! glommio registers its I/O memory with io_uring, which counts against
//! RLIMIT_MEMLOCK; the soft limit can be below what a few executors need.

/// Raise the soft locked-memory limit to the hard limit (as the server
/// does at start, src/runtime.rs).
pub fn raise_memlock_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}
