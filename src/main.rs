//! The `nightshift` binary: hands over to the CLI (which sets up logging).

use std::process::ExitCode;

/// mimalloc: the store and the rules allocate many short-lived buffers from many threads,
/// where it measured faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    nightshift::cli::run()
}
