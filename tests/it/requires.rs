//! What a test needs from the machine (a program, overlay or tmpfs mounts, user namespaces): found, or a loud skip
//! that `.ci/run` turns into a failure by setting the requirement's variable.

use std::io::Write;
use std::path::PathBuf;

/// Set by `.ci/run`, which installs every program the tests use: a missing one fails.
pub const REQUIRE_PROGRAMS: &str = "NIGHTSHIFT_REQUIRE_PROGRAMS";
/// Set by `.ci/run` where `mount -t overlay` works: overlay tests must run.
pub const REQUIRE_OVERLAY: &str = "NIGHTSHIFT_REQUIRE_OVERLAY";
/// Set by `.ci/run` where `mount -t tmpfs` works: the full-disk test must run.
pub const REQUIRE_MOUNTS: &str = "NIGHTSHIFT_REQUIRE_MOUNTS";
/// Set by `.ci/run` where user namespaces work (as root and as uid 65534): the jail tests
/// must run, as both users.
pub const REQUIRE_JAIL: &str = "NIGHTSHIFT_REQUIRE_JAIL";

/// The first of `names` on `PATH` (or in /usr/bin), which Debian's `package` provides.
/// Without it the calling test is skipped, loudly, or fails where `REQUIRE_PROGRAMS` is set.
#[track_caller]
pub fn program(package: &str, names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]).collect();
    let found = names.iter().find_map(|name| dirs.iter().map(|dir| dir.join(name)).find(|path| path.is_file()));
    if found.is_none() {
        skip(
            REQUIRE_PROGRAMS,
            &format!(
                "none of {names:?} is on PATH: install Debian's `{package}` (`apt-get install {package}`, as .ci/run does)"
            ),
        );
    }
    found
}

/// Skips the calling test with a line the test harness does not capture, or fails it
/// when the machine is known to have what it needs (`require` is set).
#[track_caller]
pub fn skip(require: &str, why: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    assert!(std::env::var_os(require).is_none(), "{test}: {why} ({require} is set, so this is a failure)");
    // Straight to the process's stderr: `eprintln!` would be captured and hidden.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
