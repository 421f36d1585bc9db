//! The `sweetspot` binary: the CLI library with every plugin crate of the workspace linked (see
//! `sweetspot_cli::link_builtin_plugins`).

mod alloc;

fn main() -> std::process::ExitCode {
    alloc::configure();
    sweetspot_cli::main()
}
