//! The `nightshift` binary: hands over to the CLI (which sets up logging).

use std::process::ExitCode;

/// mimalloc: the store and the rules allocate many short-lived buffers from many threads,
/// where it measured faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages on its arenas, so the first touch of each
    // 2 MiB region zeroes all of it. On a VM that made the first 100 runs ending at once
    // take a second to deliver (perf: 60% of both cores in clear_page; `serve_load notify`
    // round 0 drained in 1.0-1.2 s with them, 66 ms without). Small pages cost nothing
    // measurable elsewhere. Children inherit the setting; the jail gives agents the
    // system's default back (jail/helper.rs).
    let _ = nix::sys::prctl::set_thp_disable(true);
    nightshift::cli::run()
}
