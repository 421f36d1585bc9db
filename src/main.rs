//! The `sweetspot` binary: the CLI library with every plugin crate of the workspace linked (see
//! `sweetspot_cli::link_builtin_plugins`).

/// mimalloc: the pairs stage allocates and frees millions of small strings across its reader
/// and writer threads, where it measured 1.6x faster than the system allocator (see
/// docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sweetspot_cli::main()
}
