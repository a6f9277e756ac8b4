//! The `sidepool` binary: see [`sidepool::cli`].
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    sidepool::cli::main(&args)
}
