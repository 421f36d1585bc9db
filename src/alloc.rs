//! The allocator of the `sweetspot` binary, and its settings. The benchmarks include this file
//! (`#[path]`), so they time what the binary runs.
//!
//! mimalloc: the pairs stage allocates and frees millions of small strings across its reader and
//! writer threads, where it measured 1.6x faster than the system allocator (docs/benchmarks.md).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_t` value in the mimalloc 3 the
/// `libmimalloc-sys` crate builds by default; the crate names no constant for it). A test below
/// checks that the option at this index has that option's default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc gives it back to the system
/// (milliseconds; mimalloc's default is 1,000).
///
/// Inference on the CPU frees and allocates buffers of many megabytes at every layer (every
/// burn-flex operation allocates its output), and the batches' sizes change from one batch to
/// the next. With a second's delay, memory freed by one batch was given back before a later one
/// asked for as much again, which then came back as fresh pages the kernel zeroes: 7 to 13% of
/// the CPU time of scoring in profiles, and 10 s of system time over two rounds of the reward
/// benchmark, 2 s with this delay (docs/benchmarks.md). The peak resident memory is the same
/// either way (what is kept is reused before anything new is asked of the system); memory the
/// process no longer uses still goes back to the system, ten seconds later.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Applies the settings above; call first thing in `main`. A delay set in the environment
/// (`MIMALLOC_PURGE_DELAY`, mimalloc's own variable) is left as it is.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: setting an option is a plain store in mimalloc's option table; any value is valid
    // for this one (a delay in milliseconds, or -1 for never).
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // mimalloc read it: not the default
        }
        // SAFETY: reading an option is a plain load.
        let (before, numa) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::PURGE_DELAY),
                libmimalloc_sys::mi_option_get(libmimalloc_sys::mi_option_use_numa_nodes),
            )
        };
        // mimalloc 3's defaults: the purge delay 1,000 ms, the option after it 0 (every node).
        assert_eq!(before, 1_000, "not mimalloc's purge delay at index 15");
        assert_eq!(
            libmimalloc_sys::mi_option_use_numa_nodes,
            super::PURGE_DELAY + 1
        );
        assert_eq!(numa, 0);
        super::configure();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(after, super::PURGE_DELAY_MS);
    }
}
