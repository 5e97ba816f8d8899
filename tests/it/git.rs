//! Git for the tests that build real repositories: commands that ignore the machine's
//! config and commit as a test identity.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A git command in `dir` that ignores the machine's config (`global` stands for the
/// user's) and commits as a test identity.
pub fn git_command(dir: &Path, global: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", global)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(["-c", "user.name=Nightshift Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
        .args(["-c", "init.defaultBranch=main", "-c", "tag.gpgsign=false"])
        .args(args);
    command
}

/// Runs git in `dir` and returns what it printed; panics if it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_with_global(dir, Path::new("/dev/null"), args)
}

/// `git`, with `global` as the user's git config.
pub fn git_with_global(dir: &Path, global: &Path, args: &[&str]) -> String {
    let output = git_command(dir, global, args).output().expect("git runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "git {args:?} in {}: {stderr}", dir.display());
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Commits everything in `dir` and returns the commit.
pub fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "--all"]);
    git(dir, &["commit", "--quiet", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Every ref of the repository at `git_dir` and its object.
pub fn refs(git_dir: &Path) -> BTreeMap<String, String> {
    let listing = git(git_dir, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    listing.lines().filter_map(|line| line.split_once(' ')).map(|(r, o)| (r.to_string(), o.to_string())).collect()
}
