//! Load tool for workspaces: how long `Mirror::prepare` takes, from the call to a
//! workspace ready for the agent, on a repository of 10,000 files with a warm mirror (and,
//! for overlays, a warm base checkout), against a fresh `git clone file://` of the same
//! repository.
//!
//! ```text
//! cargo build --release --example workspace_bench
//! target/release/examples/workspace_bench [PREPARES=20] [CLONES=5]
//! ```
//! Interleaves `PREPARES` overlay prepares, `PREPARES` worktree prepares (each followed by
//! its cleanup, timed apart) and `CLONES` fresh clones, and prints the median and p90 of
//! each and the ratio fresh-clone median / overlay-prepare median. Overlays need root (or
//! `CAP_SYS_ADMIN`); without, the overlay figures are worktrees and the tool says so.
//! Everything lives in a temporary directory; the repository's size is fixed.

use std::path::Path;
use std::time::{Duration, Instant};

use nightshift::runs::RunId;
use nightshift::worker::workspace::{Cleanup, Mirror, MirrorCache, WorkspaceKind, overlay_support};
use support::{DIRS, FILES_PER_DIR, git, make_repository, median, report};

#[path = "support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1);
    let prepares: usize = args.next().map_or(20, |n| n.parse().expect("PREPARES is a number"));
    let clones: usize = args.next().map_or(5, |n| n.parse().expect("CLONES is a number"));
    assert!((1..=1000).contains(&prepares) && (1..=100).contains(&clones), "PREPARES ≤ 1000, CLONES ≤ 100");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().canonicalize().expect("its path");
    let source = root.join("source");
    let started = Instant::now();
    make_repository(&source);
    println!("repository: {} files in {} ms", DIRS * FILES_PER_DIR, started.elapsed().as_millis());

    let cache = MirrorCache::new(&root.join("cache"));
    let location = source.to_str().expect("a UTF-8 path");
    let started = Instant::now();
    let overlays = cache.mirror(location).expect("the mirror clones");
    let worktrees = cache.clone().with_overlays(false).mirror(location).expect("the same mirror");
    println!("mirror clone: {} ms", started.elapsed().as_millis());
    let workspaces = root.join("workspaces");
    if let Err(reason) = overlay_support(&workspaces) {
        println!("WARNING: overlays unavailable, the overlay figures are worktrees: {reason}");
    }

    let mut run = 0;
    let mut next_run = || {
        run += 1;
        run
    };
    let cold = time_prepare(&overlays, &workspaces, next_run(), None);
    println!("first overlay prepare (makes the base checkout): {} ms", cold.0.as_millis());
    time_prepare(&worktrees, &workspaces, next_run(), None);

    let (mut overlay, mut overlay_cleanup, mut worktree, mut worktree_cleanup, mut clone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..prepares.max(clones) {
        if i < prepares {
            let (prepared, cleaned) = time_prepare(&overlays, &workspaces, next_run(), Some(WorkspaceKind::Overlay));
            overlay.push(prepared);
            overlay_cleanup.push(cleaned);
            let (prepared, cleaned) = time_prepare(&worktrees, &workspaces, next_run(), Some(WorkspaceKind::Worktree));
            worktree.push(prepared);
            worktree_cleanup.push(cleaned);
        }
        if i < clones {
            let target = root.join(format!("clone-{i}"));
            let started = Instant::now();
            git(&root, &["clone", "--quiet", &format!("file://{location}"), target.to_str().expect("UTF-8")]);
            clone.push(started.elapsed());
            std::fs::remove_dir_all(&target).expect("the clone is removed");
        }
    }

    report("overlay prepare", &mut overlay);
    report("overlay cleanup", &mut overlay_cleanup);
    report("worktree prepare", &mut worktree);
    report("worktree cleanup", &mut worktree_cleanup);
    report("fresh clone", &mut clone);
    let ratio = median(&clone).as_secs_f64() / median(&overlay).as_secs_f64();
    println!("fresh-clone median / overlay-prepare median: {ratio:.1}x");
}

/// Prepares a workspace on `main` and removes it; how long each took. With `expected`,
/// the workspace must be of that kind (overlays fall back to worktrees where they cannot
/// mount; the warning above says so, and then only worktrees are expected).
fn time_prepare(mirror: &Mirror, root: &Path, run: u64, expected: Option<WorkspaceKind>) -> (Duration, Duration) {
    let started = Instant::now();
    let workspace =
        mirror.prepare(root, RunId(run), "main", &format!("agent/bench-{run}")).expect("the workspace prepares");
    let prepared = started.elapsed();
    if let Some(expected) = expected
        && overlay_support(root).is_ok()
    {
        assert_eq!(workspace.kind(), expected);
    }
    let started = Instant::now();
    workspace.cleanup(Cleanup::Remove).expect("the workspace is removed");
    (prepared, started.elapsed())
}
