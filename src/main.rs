//! The `sidepool` binary: see [`sidepool::cli`].
use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: see the note on the dependency in Cargo.toml
/// and the measurements in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    sidepool::cli::main(&args)
}
