//! Mirrors and workspaces against real git repositories on local paths: preparing from a
//! path and from a `file://` URL, concurrent runs, refreshes, refused refs, cleanup, and
//! a push that reaches the repository and nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;

use nightshift::runs::RunId;
use nightshift::worker::workspace::{Cleanup, Mirror, MirrorCache, Workspace, WorkspaceError};

/// A git command in `dir` that ignores the machine's config (`global` stands for the
/// user's) and commits as a test identity.
fn git_command(dir: &Path, global: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", global)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(["-c", "user.name=Nightshift Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args);
    command
}

/// Runs git in `dir` and returns what it printed; panics if it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    git_with_global(dir, Path::new("/dev/null"), args)
}

fn git_with_global(dir: &Path, global: &Path, args: &[&str]) -> String {
    let output = git_command(dir, global, args).output().expect("git runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "git {args:?} in {}: {stderr}", dir.display());
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
    std::fs::write(dir.join(file), text).unwrap();
    git(dir, &["add", file]);
    git(dir, &["commit", "--quiet", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Every ref of the repository at `git_dir` and its object.
fn refs(git_dir: &Path) -> BTreeMap<String, String> {
    let listing = git(git_dir, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    listing.lines().filter_map(|line| line.split_once(' ')).map(|(r, o)| (r.to_string(), o.to_string())).collect()
}

/// A repository `source` with `main` (two commits; tag `v1` on the first) and `feature`
/// (one more), beside the directories for the cache and the workspaces.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    first: String,
    main: String,
    feature: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let source = root.join("source");
    std::fs::create_dir(&source).unwrap();
    git(&source, &["init", "--quiet"]);
    git(&source, &["config", "user.name", "Nightshift Test"]);
    git(&source, &["config", "user.email", "test@example.com"]);
    let first = commit(&source, "README.md", "hello\n", "first");
    git(&source, &["tag", "v1"]);
    let main = commit(&source, "main.txt", "main\n", "second");
    git(&source, &["switch", "--quiet", "-c", "feature"]);
    let feature = commit(&source, "feature.txt", "feature\n", "feature");
    git(&source, &["switch", "--quiet", "main"]);
    Fixture { _dir: dir, root, source, first, main, feature }
}

impl Fixture {
    fn cache(&self) -> MirrorCache {
        MirrorCache::new(&self.root.join("cache"))
    }

    fn workspaces(&self) -> PathBuf {
        self.root.join("workspaces")
    }

    fn mirror_of(&self, location: &str) -> Mirror {
        self.cache().mirror(location).expect("the mirror clones")
    }

    fn mirror(&self) -> Mirror {
        self.mirror_of(self.source.to_str().unwrap())
    }

    fn prepare(&self, mirror: &Mirror, run: u64, base: &str, branch: &str) -> Result<Workspace, WorkspaceError> {
        mirror.prepare(&self.workspaces(), RunId(run), base, branch)
    }
}

/// The workspace is a clean checkout of `commit` on its own branch, holding `files`,
/// whose `origin` is `location`.
#[track_caller]
fn check_workspace(workspace: &Workspace, commit: &str, files: &[&str], location: &str) {
    let dir = workspace.path();
    assert_eq!(git(dir, &["symbolic-ref", "--short", "HEAD"]), workspace.branch());
    assert_eq!(git(dir, &["rev-parse", "HEAD"]), commit);
    assert_eq!(workspace.base_commit(), commit);
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".git")
        .collect();
    present.sort();
    assert_eq!(present, files);
    assert_eq!(git(dir, &["remote", "get-url", "origin"]), location);
}

#[test]
fn a_workspace_from_a_local_path_is_a_new_branch_at_its_base() {
    let f = fixture();
    let mirror = f.mirror();
    let location = f.source.to_str().unwrap();
    assert_eq!(mirror.location(), location);
    let short_first = &f.first[..10];
    for (run, base, commit, files) in [
        (1, "main", &f.main, &["README.md", "main.txt"][..]),
        (2, "v1", &f.first, &["README.md"]),
        (3, "feature", &f.feature, &["README.md", "feature.txt", "main.txt"]),
        (4, short_first, &f.first, &["README.md"]),
        (5, f.main.as_str(), &f.main, &["README.md", "main.txt"]),
    ] {
        let workspace = f.prepare(&mirror, run, base, &format!("agent/run-{run}")).expect(base);
        assert_eq!(workspace.path(), f.workspaces().join(format!("r{run}")));
        check_workspace(&workspace, commit, files, location);
    }
    // No mirror refspec: a push from a workspace never pushes every ref.
    let mirror_setting =
        git_command(mirror.path(), Path::new("/dev/null"), &["config", "remote.origin.mirror"]).output();
    assert!(!mirror_setting.unwrap().status.success());
}

#[test]
fn a_workspace_from_a_file_url() {
    let f = fixture();
    let url = format!("file://{}", f.source.display());
    let mirror = f.mirror_of(&url);
    assert_eq!(mirror.location(), url);
    let workspace = f.prepare(&mirror, 1, "main", "agent/from-url").unwrap();
    check_workspace(&workspace, &f.main, &["README.md", "main.txt"], &url);
    assert_ne!(mirror.path(), f.mirror().path(), "a path and its URL are different locations");
}

#[test]
fn runs_on_one_repository_prepare_their_workspaces_concurrently() {
    let f = fixture();
    let mirror = f.mirror();
    let runs = 4;
    let start = Barrier::new(runs);
    let workspaces: Vec<Workspace> = std::thread::scope(|scope| {
        let threads: Vec<_> = (1..=runs as u64)
            .map(|run| {
                let (f, mirror, start) = (&f, mirror.clone(), &start);
                scope.spawn(move || {
                    start.wait();
                    f.prepare(&mirror, run, "main", &format!("agent/concurrent-{run}"))
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join().unwrap().expect("every run prepares")).collect()
    });
    for workspace in &workspaces {
        check_workspace(workspace, &f.main, &["README.md", "main.txt"], f.source.to_str().unwrap());
    }
}

#[test]
fn a_refresh_makes_new_commits_available_as_a_base() {
    let f = fixture();
    let mirror = f.mirror();
    let newer = commit(&f.source, "later.txt", "later\n", "third");
    let before = f.prepare(&mirror, 1, &newer, "agent/too-early").unwrap_err();
    assert!(matches!(before, WorkspaceError::UnknownBase { .. }), "{before}");
    assert_eq!(f.prepare(&mirror, 2, "main", "agent/stale").unwrap().base_commit(), f.main);

    mirror.refresh().unwrap();
    let by_branch = f.prepare(&mirror, 3, "main", "agent/fresh").unwrap();
    check_workspace(&by_branch, &newer, &["README.md", "later.txt", "main.txt"], f.source.to_str().unwrap());
    assert_eq!(f.prepare(&mirror, 4, &newer, "agent/by-commit").unwrap().base_commit(), newer);
}

#[test]
fn a_refresh_forgets_deleted_branches_but_keeps_workspace_branches() {
    let f = fixture();
    let mirror = f.mirror();
    let workspace = f.prepare(&mirror, 1, "feature", "agent/kept").unwrap();
    git(&f.source, &["branch", "--quiet", "-D", "feature"]);
    mirror.refresh().unwrap();
    let error = f.prepare(&mirror, 2, "feature", "agent/gone").unwrap_err();
    assert!(matches!(error, WorkspaceError::UnknownBase { .. }), "{error}");
    assert_eq!(refs(mirror.path()).get("refs/heads/agent/kept"), Some(&f.feature));
    assert_eq!(git(workspace.path(), &["rev-parse", "HEAD"]), f.feature);
}

#[test]
fn unknown_bases_and_existing_branches_are_refused_by_name() {
    let f = fixture();
    let mirror = f.mirror();
    let location = f.source.to_str().unwrap();
    let check = |run: u64, base: &str, branch: &str, named: &str| {
        let error = f.prepare(&mirror, run, base, branch).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(location) && text.contains(&format!("`{named}`")), "{text}");
        assert!(!f.workspaces().join(format!("r{run}")).exists(), "{text}");
        error
    };

    let unknown = check(1, "no-such-base", "agent/x", "no-such-base");
    assert!(matches!(unknown, WorkspaceError::UnknownBase { .. }), "{unknown}");
    assert!(unknown.to_string().contains("fatal: Needed a single revision"), "{unknown}");

    let of_repository = check(2, "main", "feature", "feature");
    assert!(matches!(of_repository, WorkspaceError::BranchExists { .. }), "{of_repository}");
    assert!(of_repository.to_string().contains(&f.feature), "{of_repository}");

    f.prepare(&mirror, 3, "main", "agent/taken").unwrap();
    let of_workspace = check(4, "main", "agent/taken", "agent/taken");
    assert!(matches!(of_workspace, WorkspaceError::BranchExists { .. }), "{of_workspace}");
    assert!(of_workspace.to_string().contains("already exists"), "{of_workspace}");

    let unsafe_ref = check(5, "main", "agent/a..b", "agent/a..b");
    assert!(matches!(unsafe_ref, WorkspaceError::BadRef { .. }), "{unsafe_ref}");
}

#[test]
fn cleanup_removes_the_workspace_once_and_keep_leaves_it() {
    let f = fixture();
    let mirror = f.mirror();
    let listed =
        |path: &Path| git(mirror.path(), &["worktree", "list", "--porcelain"]).contains(path.to_str().unwrap());

    let removed = f.prepare(&mirror, 1, "main", "agent/removed").unwrap();
    assert!(listed(removed.path()));
    removed.cleanup(Cleanup::Remove).unwrap();
    assert!(!removed.path().exists());
    assert!(!listed(removed.path()));
    assert!(!refs(mirror.path()).contains_key("refs/heads/agent/removed"));
    removed.cleanup(Cleanup::Remove).expect("a second cleanup is fine");

    let kept = f.prepare(&mirror, 2, "main", "agent/kept").unwrap();
    std::fs::write(kept.path().join("notes.txt"), "what the agent left\n").unwrap();
    kept.cleanup(Cleanup::Keep).unwrap();
    assert!(kept.path().join("notes.txt").exists());
    assert_eq!(git(kept.path(), &["symbolic-ref", "--short", "HEAD"]), "agent/kept");
    kept.cleanup(Cleanup::Remove).expect("a kept workspace can still be removed, changes and all");
    assert!(!kept.path().exists());
    assert!(!listed(kept.path()));
}

#[test]
fn a_retry_of_a_run_replaces_its_leftover_workspace() {
    let f = fixture();
    let mirror = f.mirror();
    let crashed = f.prepare(&mirror, 7, "main", "agent/retried").unwrap();
    commit(crashed.path(), "half.txt", "half done\n", "unfinished");
    let retry = f.prepare(&mirror, 7, "v1", "agent/retried").expect("the retry prepares");
    check_workspace(&retry, &f.first, &["README.md"], f.source.to_str().unwrap());

    // A leftover that git no longer recognises is removed too.
    std::fs::remove_file(retry.path().join(".git")).unwrap();
    let again = f.prepare(&mirror, 7, "main", "agent/retried").expect("the second retry prepares");
    check_workspace(&again, &f.main, &["README.md", "main.txt"], f.source.to_str().unwrap());
}

#[test]
fn a_workspace_push_reaches_the_repository_and_nothing_else() {
    let f = fixture();
    let origin = f.root.join("origin.git");
    git(&f.root, &["clone", "--quiet", "--bare", f.source.to_str().unwrap(), origin.to_str().unwrap()]);
    let mirror = f.mirror_of(origin.to_str().unwrap());

    let workspace = f.prepare(&mirror, 1, "main", "agent/fix").unwrap();
    let fix = commit(workspace.path(), "fix.txt", "fixed\n", "fix");
    assert_eq!(git(workspace.path(), &["rev-parse", "agent/fix"]), fix);
    assert_eq!(git(workspace.path(), &["rev-parse", "HEAD^"]), f.main);

    let origin_before = refs(&origin);
    let mirror_before = refs(mirror.path());
    git(workspace.path(), &["push", "--quiet", "origin", "agent/fix"]);
    let mut origin_expected = origin_before.clone();
    origin_expected.insert("refs/heads/agent/fix".into(), fix.clone());
    assert_eq!(refs(&origin), origin_expected);
    let mut mirror_expected = mirror_before;
    mirror_expected.insert("refs/remotes/origin/agent/fix".into(), fix.clone());
    assert_eq!(refs(mirror.path()), mirror_expected, "only the pushed branch's tracking ref is new");

    // A bare `git push origin` pushes the current branch only, even where the user's
    // config says `matching` (which would push `agent/fix`'s unpushed commit too).
    commit(workspace.path(), "more.txt", "more\n", "not pushed");
    let other = f.prepare(&mirror, 2, "main", "agent/other").unwrap();
    let other_commit = commit(other.path(), "other.txt", "other\n", "other");
    let matching = f.root.join("matching.gitconfig");
    std::fs::write(&matching, "[push]\n\tdefault = matching\n").unwrap();
    git_with_global(other.path(), &matching, &["push", "--quiet", "origin"]);
    origin_expected.insert("refs/heads/agent/other".into(), other_commit);
    assert_eq!(refs(&origin), origin_expected);
}
