//! A run's changes read from real workspaces (commits, files, diff stat, uncommitted
//! edits, scope) and the push of its branch to a bare repository: refused out of scope,
//! never forced, and nothing but the branch lands.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use nightshift::runs::{RunId, RunResult};
use nightshift::worker::results::{self, ChangedFile, Commit, DiffStat, FileStatus, PushOutcome, ResultsError};
use nightshift::worker::workspace::{Cleanup, MirrorCache, Workspace, WorkspaceKind};

use crate::git::{commit_all, git, refs};

fn write(dir: &Path, file: &str, contents: impl AsRef<[u8]>) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// A bare repository `source.git` (so it accepts pushes) whose `main` holds the files
/// below, seeded from the clone `seed`, and where its mirror and workspaces go.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    seed: PathBuf,
    main: String,
    kind: WorkspaceKind,
}

/// The fixture three times: for worktree workspaces, clones, and overlays (clones again
/// where overlays cannot be mounted).
fn fixtures() -> [Fixture; 3] {
    [fixture(WorkspaceKind::Worktree), fixture(WorkspaceKind::Clone), fixture(WorkspaceKind::Overlay)]
}

fn fixture(kind: WorkspaceKind) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let (source, seed) = (root.join("source.git"), root.join("seed"));
    git(&root, &["init", "--quiet", "--bare", "source.git"]);
    git(&root, &["clone", "--quiet", "source.git", "seed"]);
    write(&seed, "README.md", "hello\n");
    write(&seed, ".gitignore", "target/\n");
    write(&seed, "src/lib.rs", "pub fn a() {}\npub fn b() {}\n");
    write(&seed, "old name.txt", "one\ntwo\nthree\nfour\n");
    write(&seed, "doomed.txt", "x\ny\nz\n");
    let main = commit_all(&seed, "initial");
    git(&seed, &["push", "--quiet", "origin", "main"]);
    Fixture { _dir: dir, root, source, seed, main, kind }
}

/// A workspace that is removed when the test is done with it, so no overlay stays mounted.
struct Removed(Workspace);

impl Deref for Removed {
    type Target = Workspace;

    fn deref(&self) -> &Workspace {
        &self.0
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        if let Err(error) = self.0.cleanup(Cleanup::Remove) {
            eprintln!("cannot remove {}: {error}", self.0.path().display());
        }
    }
}

impl Fixture {
    fn workspace(&self, run: u64, branch: &str) -> Removed {
        let cache = MirrorCache::new(&self.root.join("cache")).with_overlays(self.kind != WorkspaceKind::Worktree);
        let mirror = cache.mirror(self.source.to_str().unwrap()).unwrap();
        // Overlays cannot mount under a path with a comma: there workspaces are clones.
        let workspaces = if self.kind == WorkspaceKind::Clone { "work,spaces" } else { "workspaces" };
        let workspace = mirror.prepare(&self.root.join(workspaces), RunId(run), "main", branch);
        Removed(workspace.expect("the workspace prepares"))
    }
}

fn globs(globs: &[&str]) -> Vec<String> {
    globs.iter().map(|glob| glob.to_string()).collect()
}

fn commit(id: &str, subject: &str) -> Commit {
    Commit { id: id.to_string(), subject: subject.to_string() }
}

fn file(path: &str, status: FileStatus, old_path: Option<&str>, lines: Option<(u64, u64)>) -> ChangedFile {
    ChangedFile {
        path: path.to_string(),
        status,
        old_path: old_path.map(str::to_string),
        insertions: lines.map(|(added, _)| added),
        deletions: lines.map(|(_, deleted)| deleted),
    }
}

#[test]
fn a_run_that_changed_nothing_has_empty_changes_and_pushes_nothing() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/idle");
        // Ignored files (build output) are not changes.
        write(workspace.path(), "target/debug/out", "built");
        let before = refs(&f.source);

        let changes = results::collect(&workspace, &globs(&["src/**"])).unwrap();
        assert!(changes.is_empty());
        assert_eq!((changes.base.as_str(), changes.head.as_str()), (f.main.as_str(), f.main.as_str()));
        assert_eq!(changes.commits, []);
        assert_eq!(changes.files, []);
        assert_eq!(changes.diff_stat, DiffStat::default());
        assert_eq!(changes.uncommitted, Vec::<String>::new());
        assert_eq!(changes.out_of_scope, Vec::<String>::new());

        assert_eq!(results::push(&workspace, &changes).unwrap(), PushOutcome::NoCommits);
        assert_eq!(refs(&f.source), before);
    }
}

#[test]
fn commits_are_listed_oldest_first_with_their_files_and_line_counts() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/two");
        let dir = workspace.path();
        write(dir, "src/lib.rs", "pub fn a() {}\npub fn c() {}\npub fn d() {}\n");
        std::fs::remove_file(dir.join("doomed.txt")).unwrap();
        write(dir, "logo.png", b"\x89PNG\r\n\x1a\n\0\0\0binary");
        let first = commit_all(dir, "Change lib, drop doomed, add a logo");
        std::fs::create_dir(dir.join("docs")).unwrap();
        git(dir, &["mv", "old name.txt", "docs/new name.txt"]);
        write(dir, "with space/a b.txt", "spaced\n");
        let second = commit_all(dir, "Move and add files with spaces");

        let changes = results::collect(&workspace, &globs(&["**"])).unwrap();
        assert_eq!(
            changes.commits,
            [commit(&first, "Change lib, drop doomed, add a logo"), commit(&second, "Move and add files with spaces")]
        );
        assert_eq!(changes.head, second);
        assert_eq!(
            changes.files,
            [
                file("docs/new name.txt", FileStatus::Renamed, Some("old name.txt"), Some((0, 0))),
                file("doomed.txt", FileStatus::Deleted, None, Some((0, 3))),
                file("logo.png", FileStatus::Added, None, None),
                file("src/lib.rs", FileStatus::Modified, None, Some((2, 1))),
                file("with space/a b.txt", FileStatus::Added, None, Some((1, 0))),
            ]
        );
        assert_eq!(changes.diff_stat, DiffStat { files_changed: 5, insertions: 3, deletions: 4 });
        assert_eq!(changes.uncommitted, Vec::<String>::new());
        assert_eq!(changes.out_of_scope, Vec::<String>::new());
        assert!(!changes.is_empty());

        let mut result = RunResult { summary: "Done".into(), ..RunResult::default() };
        changes.record(&mut result);
        assert_eq!(result.summary, "Done");
        assert_eq!(result.details["commits"][1]["id"], second.as_str());
        assert_eq!(result.details["files"][0]["status"], "R");
        assert_eq!(result.details["files"][0]["old_path"], "old name.txt");
        assert_eq!(result.details["diff_stat"]["deletions"], 4);
        assert_eq!(result.details["out_of_scope"], serde_json::json!([]));
    }
}

#[test]
fn uncommitted_edits_are_reported_and_checked_against_the_paths() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/uncommitted");
        let dir = workspace.path();
        write(dir, "src/lib.rs", "edited\n");
        write(dir, "notes/new file.txt", "untracked\n");
        write(dir, "staged.txt", "staged\n");
        git(dir, &["add", "staged.txt"]);

        let changes = results::collect(&workspace, &globs(&["src/**"])).unwrap();
        assert_eq!(changes.commits, []);
        assert_eq!(changes.files, []);
        assert!(!changes.is_empty(), "uncommitted edits are changes");
        assert_eq!(changes.uncommitted, ["notes/new file.txt", "src/lib.rs", "staged.txt"]);
        assert_eq!(changes.out_of_scope, ["notes/new file.txt", "staged.txt"]);
    }
}

#[test]
fn a_change_outside_the_paths_is_out_of_scope_and_not_pushed() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/scope");
        write(workspace.path(), "src/lib.rs", "pub fn a() {}\n");
        write(workspace.path(), "README.md", "rewritten\n");
        commit_all(workspace.path(), "Touch the readme too");
        let before = refs(&f.source);

        let changes = results::collect(&workspace, &globs(&["src/**"])).unwrap();
        assert_eq!(changes.out_of_scope, ["README.md"]);
        let error = results::push(&workspace, &changes).unwrap_err();
        assert!(matches!(&error, ResultsError::OutOfScope { paths, .. } if paths == &["README.md"]), "{error:?}");
        assert!(error.to_string().contains("outside its `paths`: README.md"), "{error}");
        assert_eq!(refs(&f.source), before, "nothing reaches the repository");

        // No globs at all: every change is out of scope.
        let changes = results::collect(&workspace, &[]).unwrap();
        assert_eq!(changes.out_of_scope, ["README.md", "src/lib.rs"]);
        // A rename out of scope counts on both sides.
        git(workspace.path(), &["mv", "README.md", "src/README.md"]);
        commit_all(workspace.path(), "Move the readme");
        assert_eq!(results::collect(&workspace, &globs(&["src/**"])).unwrap().out_of_scope, ["README.md"]);
    }
}

#[test]
fn an_in_scope_push_lands_the_branch_and_nothing_else() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/fix");
        let dir = workspace.path();
        write(dir, "src/lib.rs", "pub fn fixed() {}\n");
        commit_all(dir, "Fix");
        write(dir, "src/more.rs", "\n");
        let head = commit_all(dir, "More");
        // A tag the agent made, and mirror config a workspace could write: neither changes
        // what is pushed, or where.
        git(dir, &["tag", "-a", "-m", "tag", "v9"]);
        git(dir, &["config", "push.followTags", "true"]);
        git(dir, &["config", "remote.origin.pushurl", f.root.join("elsewhere.git").to_str().unwrap()]);
        let before = refs(&f.source);

        let changes = results::collect(&workspace, &globs(&["src/**"])).unwrap();
        assert_eq!(changes.out_of_scope, Vec::<String>::new());
        let outcome = results::push(&workspace, &changes).unwrap();
        assert_eq!(outcome, PushOutcome::Pushed { branch: "agent/fix".into(), commit: head.clone() });
        let mut expected = before;
        expected.insert("refs/heads/agent/fix".into(), head.clone());
        assert_eq!(refs(&f.source), expected);
        assert_eq!(git(dir, &["rev-parse", "HEAD"]), head);
        assert!(!f.root.join("elsewhere.git").exists());
    }
}

#[test]
fn config_an_agent_writes_in_its_overlay_or_clone_cannot_redirect_the_push() {
    for kind in [WorkspaceKind::Clone, WorkspaceKind::Overlay] {
        config_cannot_redirect_the_push(kind);
    }
}

fn config_cannot_redirect_the_push(kind: WorkspaceKind) {
    let f = fixture(kind);
    let workspace = f.workspace(1, "agent/fix");
    if workspace.kind() != kind {
        crate::requires::skip(crate::requires::REQUIRE_OVERLAY, "overlays cannot be mounted here");
        return;
    }
    let dir = workspace.path();
    write(dir, "src/lib.rs", "pub fn fixed() {}\n");
    let head = commit_all(dir, "Fix");
    // Where an agent's config would send the push, were it read.
    let elsewhere = f.root.join("elsewhere.git");
    git(&f.root, &["init", "--quiet", "--bare", "elsewhere.git"]);
    let rewrite = format!("url.{}.insteadOf", elsewhere.display());
    git(dir, &["config", &rewrite, f.source.to_str().unwrap()]);

    let changes = results::collect(&workspace, &globs(&["src/**"])).unwrap();
    assert_eq!(changes.commits.len(), 1);
    results::push(&workspace, &changes).unwrap();
    assert_eq!(refs(&f.source).get("refs/heads/agent/fix"), Some(&head));
    assert!(refs(&elsewhere).is_empty(), "{kind:?}: nothing went where the agent's config pointed");
}

#[test]
fn a_push_is_never_forced_and_reports_why_git_refused() {
    for f in fixtures() {
        let workspace = f.workspace(1, "agent/raced");
        write(workspace.path(), "src/lib.rs", "ours\n");
        commit_all(workspace.path(), "Ours");
        // Someone else creates the branch in the repository meanwhile.
        git(&f.seed, &["switch", "--quiet", "-c", "agent/raced"]);
        write(&f.seed, "src/lib.rs", "theirs\n");
        let theirs = commit_all(&f.seed, "Theirs");
        git(&f.seed, &["push", "--quiet", "origin", "agent/raced"]);
        let before = refs(&f.source);

        let changes = results::collect(&workspace, &globs(&["**"])).unwrap();
        let error = results::push(&workspace, &changes).unwrap_err().to_string();
        assert!(error.contains("git push") && error.contains("rejected"), "{error}");
        assert_eq!(refs(&f.source), before);
        assert_eq!(before["refs/heads/agent/raced"], theirs);
    }
}
