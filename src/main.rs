//! The `nightshift` binary: set up logging, then hand over to the CLI.

use std::process::ExitCode;

/// mimalloc: the store and the rules allocate many short-lived buffers from many threads,
/// where it measured faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIGHTSHIFT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    nightshift::cli::run()
}
