//! `sweetspot-quantile`: the sweetspot CLI with this crate's plugin linked in.

fn main() -> std::process::ExitCode {
    // Referencing the crate keeps the linker from dropping its `inventory` registration.
    let _ = std::hint::black_box(sweetspot_quantile::quantile as fn(&[f64], f64) -> f64);
    sweetspot_cli::main()
}
