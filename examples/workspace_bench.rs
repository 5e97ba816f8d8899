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
use std::process::Command;
use std::time::{Duration, Instant};

use nightshift::runs::RunId;
use nightshift::worker::workspace::{Cleanup, Mirror, MirrorCache, WorkspaceKind, overlay_support};

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 100;

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

/// `DIRS` directories of `FILES_PER_DIR` files of a few hundred bytes, in one commit on
/// `main`.
fn make_repository(source: &Path) {
    for d in 0..DIRS {
        let dir = source.join(format!("module_{d:03}"));
        std::fs::create_dir_all(&dir).expect("a directory");
        for f in 0..FILES_PER_DIR {
            let text = format!("// module {d}, file {f}\n{}", "pub fn value() -> u64 { 42 }\n".repeat(10));
            std::fs::write(dir.join(format!("file_{f:03}.rs")), text).expect("a file");
        }
    }
    git(source, &["init", "--quiet", "--initial-branch=main"]);
    git(source, &["add", "--all"]);
    git(source, &["commit", "--quiet", "-m", "10,000 files"]);
}

/// Runs git in `dir`, ignoring the machine's config; panics if it fails.
fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "user.name=Bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let p90 = samples[(samples.len() * 9).div_ceil(10) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<17} n={:<3} median {:>8.1} ms  p90 {:>8.1} ms  min {:>8.1} ms  max {:>8.1} ms",
        samples.len(),
        ms(median(samples)),
        ms(p90),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}
