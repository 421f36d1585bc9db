//! Links every plugin crate of the workspace.
//!
//! A crate that nothing references is dropped by the linker, and its `inventory::submit!`
//! registrations with it. Each plugin crate is named here and its `link()` called, so every
//! binary built on this library (the `sweetspot` binary, or a third party's) holds them all. The
//! test `tests/registry.rs` checks the binary's registry against the workspace's `plugins/`.

/// Makes sure every built-in plugin crate is linked. Called from [`crate::main`].
pub fn link_builtin_plugins() {
    sweetspot_strategies::link();
    sweetspot_burn_sampler::link();
    sweetspot_burn_reward::link();
    sweetspot_losses::link();
    sweetspot_http::link();
}
