//! The `sweetspot` binary: the CLI library with every plugin crate of the workspace linked (see
//! `sweetspot_cli::link_builtin_plugins`).

fn main() -> std::process::ExitCode {
    sweetspot_cli::main()
}
