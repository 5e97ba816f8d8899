//! Mirrors and workspaces against real git repositories on local paths: preparing from a
//! path and from a `file://` URL, concurrent runs, refreshes, refused refs, cleanup, and
//! a push that reaches the repository and nothing else. Every test runs twice, once per
//! `WorkspaceKind`; the overlay runs are skipped, with the reason printed, only where
//! overlays cannot be mounted (`.ci/run` makes that a failure where `mount` can).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use crate::git::{commit_all, git, git_command, git_with_global, refs};

use nightshift::runs::RunId;
use nightshift::worker::workspace::{
    Cleanup, Mirror, MirrorCache, Workspace, WorkspaceError, WorkspaceKind, overlay_support,
};

/// `name(kind)` as three tests, `name::worktree`, `name::clone` and `name::overlay`.
macro_rules! for_each_kind {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn worktree() {
                super::$name(nightshift::worker::workspace::WorkspaceKind::Worktree);
            }

            #[test]
            fn clone() {
                super::$name(nightshift::worker::workspace::WorkspaceKind::Clone);
            }

            #[test]
            fn overlay() {
                super::$name(nightshift::worker::workspace::WorkspaceKind::Overlay);
            }
        }
    )*};
}

for_each_kind!(
    a_workspace_from_a_local_path_is_a_new_branch_at_its_base,
    a_workspace_from_a_file_url,
    runs_on_one_repository_prepare_their_workspaces_concurrently,
    a_refresh_makes_new_commits_available_as_a_base,
    a_refresh_forgets_deleted_branches_but_keeps_workspace_branches,
    unknown_bases_and_existing_branches_are_refused_by_name,
    cleanup_removes_the_workspace_once_and_keep_leaves_it,
    a_retry_of_a_run_replaces_its_leftover_workspace,
    a_workspace_push_reaches_the_repository_and_nothing_else,
);

fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
    std::fs::write(dir.join(file), text).unwrap();
    commit_all(dir, message)
}

/// A repository `source` with `main` (two commits; tag `v1` on the first) and `feature`
/// (one more), beside the directories for the cache and the workspaces, whose
/// workspaces are all of one kind.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    source: PathBuf,
    first: String,
    main: String,
    feature: String,
    kind: WorkspaceKind,
}

/// The fixture, or `None` (the test is skipped) for overlays where they cannot be mounted.
/// `.ci/run` sets `NIGHTSHIFT_REQUIRE_OVERLAY` when `mount -t overlay` works on the
/// machine: then our own mounting must work too, and a skip would hide a bug.
fn fixture(kind: WorkspaceKind) -> Option<Fixture> {
    let f = repository(kind);
    if kind == WorkspaceKind::Overlay
        && let Err(reason) = overlay_support(&f.workspaces())
    {
        crate::requires::skip(crate::requires::REQUIRE_OVERLAY, &format!("overlays cannot be mounted here: {reason}"));
        return None;
    }
    Some(f)
}

fn repository(kind: WorkspaceKind) -> Fixture {
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
    Fixture { _dir: dir, root, source, first, main, feature, kind }
}

impl Fixture {
    fn cache(&self) -> MirrorCache {
        MirrorCache::new(&self.root.join("cache")).with_overlays(self.kind != WorkspaceKind::Worktree)
    }

    /// Clones are what workspaces are where overlays cannot mount: under a root whose
    /// path has a comma, which overlayfs cannot take in a layer's path.
    fn workspaces(&self) -> PathBuf {
        match self.kind {
            WorkspaceKind::Clone => self.root.join("work,spaces"),
            _ => self.root.join("workspaces"),
        }
    }

    fn mirror_of(&self, location: &str) -> Mirror {
        self.cache().mirror(location).expect("the mirror clones")
    }

    fn mirror(&self) -> Mirror {
        self.mirror_of(self.source.to_str().unwrap())
    }

    /// Prepares a workspace of whichever kind.
    fn prepare_any(&self, mirror: &Mirror, run: u64, base: &str, branch: &str) -> Workspace {
        mirror.prepare(&self.workspaces(), RunId(run), base, branch).unwrap()
    }

    /// Prepares a workspace, which must be of the fixture's kind.
    #[track_caller]
    fn prepare(&self, mirror: &Mirror, run: u64, base: &str, branch: &str) -> Result<Workspace, WorkspaceError> {
        let workspace = mirror.prepare(&self.workspaces(), RunId(run), base, branch)?;
        assert_eq!(workspace.kind(), self.kind, "run {run}");
        Ok(workspace)
    }
}

impl Drop for Fixture {
    /// Detaches the overlays a test left mounted (workspaces it did not clean up), so its
    /// temporary directory can be removed and no mount outlives the test.
    fn drop(&mut self) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let inside = format!("{}/", self.root.display());
        let mount_points = mountinfo.lines().filter_map(|line| line.split(' ').nth(4));
        for mount_point in mount_points.filter(|point| point.starts_with(&inside)) {
            let path = std::ffi::CString::new(mount_point).unwrap();
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether something is mounted at `path`, from `/proc/self/mountinfo` (field 5).
fn mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(path))
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

fn a_workspace_from_a_local_path_is_a_new_branch_at_its_base(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
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

fn a_workspace_from_a_file_url(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
    let url = format!("file://{}", f.source.display());
    let mirror = f.mirror_of(&url);
    assert_eq!(mirror.location(), url);
    let workspace = f.prepare(&mirror, 1, "main", "agent/from-url").unwrap();
    check_workspace(&workspace, &f.main, &["README.md", "main.txt"], &url);
    assert_ne!(mirror.path(), f.mirror().path(), "a path and its URL are different locations");
}

/// Concurrent `git worktree add` on one mirror raced (git reads every registered
/// worktree while adding one) and failed about one time in six with four runs; eight
/// runs at once, three rounds with removals racing the next adds, made it near certain.
fn runs_on_one_repository_prepare_their_workspaces_concurrently(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
    let mirror = f.mirror();
    let runs = 8;
    let mut workspaces: Vec<Workspace> = Vec::new();
    for round in 0..3u64 {
        let start = Barrier::new(runs);
        let previous = std::mem::take(&mut workspaces);
        workspaces = std::thread::scope(|scope| {
            let cleanups: Vec<_> =
                previous.iter().map(|workspace| scope.spawn(move || workspace.cleanup(Cleanup::Remove))).collect();
            let threads: Vec<_> = (1..=runs as u64)
                .map(|n| {
                    let (f, mirror, start) = (&f, mirror.clone(), &start);
                    let run = round * 100 + n;
                    scope.spawn(move || {
                        start.wait();
                        f.prepare(&mirror, run, "main", &format!("agent/concurrent-{run}"))
                    })
                })
                .collect();
            for cleanup in cleanups {
                cleanup.join().unwrap().expect("every workspace is removed");
            }
            threads.into_iter().map(|thread| thread.join().unwrap().expect("every run prepares")).collect()
        });
        for workspace in &workspaces {
            check_workspace(workspace, &f.main, &["README.md", "main.txt"], f.source.to_str().unwrap());
        }
    }
    if kind == WorkspaceKind::Overlay {
        let bases: Vec<String> = std::fs::read_dir(mirror.path().with_extension("bases"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut bases = bases;
        bases.sort();
        assert_eq!(bases, [f.main.clone(), format!("{}.lock", f.main)], "one base checkout, made once");
    }
}

/// A `git worktree add` that fails for another reason (here the mirror's `worktrees`
/// directory cannot be made) is git's error, which a retry may get past, not "branch
/// exists", a permanent failure; and the branch it made is gone, so the retry works.
#[test]
fn a_failed_worktree_add_is_not_reported_as_an_existing_branch() {
    let f = repository(WorkspaceKind::Worktree);
    let mirror = f.mirror();
    let admin = mirror.path().join("worktrees");
    if admin.is_dir() {
        std::fs::remove_dir_all(&admin).unwrap();
    }
    std::fs::write(&admin, "in the way").unwrap();
    let error = f.prepare(&mirror, 1, "main", "agent/blocked").unwrap_err();
    assert!(matches!(error, WorkspaceError::Git { .. }), "{error:?}");
    assert!(error.to_string().contains("worktree add"), "{error}");
    assert_eq!(refs(mirror.path()).get("refs/heads/agent/blocked"), None, "the failed add's branch is removed");

    std::fs::remove_file(&admin).unwrap();
    let retried = f.prepare(&mirror, 1, "main", "agent/blocked").unwrap();
    check_workspace(&retried, &f.main, &["README.md", "main.txt"], f.source.to_str().unwrap());
}

fn a_refresh_makes_new_commits_available_as_a_base(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
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

fn a_refresh_forgets_deleted_branches_but_keeps_workspace_branches(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
    let mirror = f.mirror();
    let workspace = f.prepare(&mirror, 1, "feature", "agent/kept").unwrap();
    git(&f.source, &["branch", "--quiet", "-D", "feature"]);
    mirror.refresh().unwrap();
    let error = f.prepare(&mirror, 2, "feature", "agent/gone").unwrap_err();
    assert!(matches!(error, WorkspaceError::UnknownBase { .. }), "{error}");
    assert_eq!(refs(mirror.path()).get("refs/heads/agent/kept"), Some(&f.feature));
    assert_eq!(git(workspace.path(), &["rev-parse", "HEAD"]), f.feature);
}

fn unknown_bases_and_existing_branches_are_refused_by_name(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
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

fn cleanup_removes_the_workspace_once_and_keep_leaves_it(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
    let mirror = f.mirror();
    // A worktree is registered in the mirror; an overlay is mounted; a clone is there.
    let listed = |path: &Path| match kind {
        WorkspaceKind::Worktree => {
            git(mirror.path(), &["worktree", "list", "--porcelain"]).contains(path.to_str().unwrap())
        }
        WorkspaceKind::Overlay => mounted(path),
        WorkspaceKind::Clone => path.join(".git").is_dir(),
    };
    let layers = |path: &Path| path.with_extension("layers");

    let removed = f.prepare(&mirror, 1, "main", "agent/removed").unwrap();
    assert!(listed(removed.path()));
    removed.cleanup(Cleanup::Remove).unwrap();
    assert!(!removed.path().exists());
    assert!(!layers(removed.path()).exists());
    assert!(!listed(removed.path()));
    assert!(!refs(mirror.path()).contains_key("refs/heads/agent/removed"));
    removed.cleanup(Cleanup::Remove).expect("a second cleanup is fine");

    let kept = f.prepare(&mirror, 2, "main", "agent/kept").unwrap();
    std::fs::write(kept.path().join("notes.txt"), "what the agent left\n").unwrap();
    kept.cleanup(Cleanup::Keep).unwrap();
    assert!(kept.path().join("notes.txt").exists());
    assert!(listed(kept.path()), "a kept overlay stays mounted");
    if kind == WorkspaceKind::Overlay {
        assert!(layers(kept.path()).join("upper/notes.txt").exists(), "its changes are in its upper layer");
    }
    assert_eq!(git(kept.path(), &["symbolic-ref", "--short", "HEAD"]), "agent/kept");
    kept.cleanup(Cleanup::Remove).expect("a kept workspace can still be removed, changes and all");
    assert!(!kept.path().exists());
    assert!(!layers(kept.path()).exists());
    assert!(!listed(kept.path()));

    // A process still inside an overlay: it is detached lazily, and removed all the same.
    let busy = f.prepare(&mirror, 3, "main", "agent/busy").unwrap();
    let inside = File::open(busy.path().join("README.md")).unwrap();
    busy.cleanup(Cleanup::Remove).unwrap();
    assert!(!busy.path().exists() && !listed(busy.path()));
    drop(inside);
    assert!(!refs(mirror.path()).keys().any(|name| name.starts_with("refs/heads/")), "every branch is freed");
}

fn a_retry_of_a_run_replaces_its_leftover_workspace(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
    let mirror = f.mirror();
    let crashed = f.prepare(&mirror, 7, "main", "agent/retried").unwrap();
    commit(crashed.path(), "half.txt", "half done\n", "unfinished");
    let retry = f.prepare(&mirror, 7, "v1", "agent/retried").expect("the retry prepares");
    check_workspace(&retry, &f.first, &["README.md"], f.source.to_str().unwrap());

    // A leftover that git no longer recognises is removed too.
    let dot_git = retry.path().join(".git");
    if dot_git.is_dir() { std::fs::remove_dir_all(dot_git) } else { std::fs::remove_file(dot_git) }.unwrap();
    let again = f.prepare(&mirror, 7, "main", "agent/retried").expect("the second retry prepares");
    check_workspace(&again, &f.main, &["README.md", "main.txt"], f.source.to_str().unwrap());
}

fn a_workspace_push_reaches_the_repository_and_nothing_else(kind: WorkspaceKind) {
    let Some(f) = fixture(kind) else { return };
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
    match kind {
        // A worktree shares the mirror's refs; an overlay has its own.
        WorkspaceKind::Worktree => {
            mirror_expected.insert("refs/remotes/origin/agent/fix".into(), fix.clone());
            assert_eq!(refs(mirror.path()), mirror_expected, "only the pushed branch's tracking ref is new");
        }
        WorkspaceKind::Overlay | WorkspaceKind::Clone => {
            assert_eq!(refs(mirror.path()), mirror_expected, "the mirror's refs are untouched");
            assert_eq!(git(workspace.path(), &["rev-parse", "refs/remotes/origin/agent/fix"]), fix);
        }
    }

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

#[test]
fn overlay_workspaces_from_one_base_have_their_own_files_and_branches() {
    let Some(f) = fixture(WorkspaceKind::Overlay) else { return };
    let mirror = f.mirror();
    let one = f.prepare(&mirror, 1, "main", "agent/one").unwrap();
    let two = f.prepare(&mirror, 2, "main", "agent/two").unwrap();
    assert!(mounted(one.path()) && mounted(two.path()));

    std::fs::write(one.path().join("README.md"), "edited in one\n").unwrap();
    std::fs::write(one.path().join("new.txt"), "new in one\n").unwrap();
    std::fs::remove_file(one.path().join("main.txt")).unwrap();
    assert_eq!(std::fs::read_to_string(two.path().join("README.md")).unwrap(), "hello\n");
    assert!(!two.path().join("new.txt").exists());
    assert!(two.path().join("main.txt").exists());
    assert_eq!(git(two.path(), &["status", "--porcelain"]), "");

    git(one.path(), &["add", "-A"]);
    git(one.path(), &["commit", "--quiet", "-m", "one's work"]);
    let branches =
        |workspace: &Workspace| git(workspace.path(), &["for-each-ref", "--format=%(refname)", "refs/heads"]);
    assert_eq!(branches(&one), "refs/heads/agent/one");
    assert_eq!(branches(&two), "refs/heads/agent/two");
    assert_eq!(git(two.path(), &["rev-parse", "HEAD"]), f.main);
    assert_ne!(git(one.path(), &["rev-parse", "HEAD"]), f.main);

    // The base checkout under both is untouched.
    let base = mirror.path().with_extension("bases").join(&f.main);
    assert_eq!(std::fs::read_to_string(base.join("README.md")).unwrap(), "hello\n");
    assert!(!base.join("new.txt").exists() && base.join("main.txt").exists());

    one.cleanup(Cleanup::Remove).unwrap();
    assert!(!mounted(one.path()) && mounted(two.path()));
    assert_eq!(git(two.path(), &["status", "--porcelain"]), "");
    two.cleanup(Cleanup::Remove).unwrap();
    assert!(!mounted(two.path()) && !two.path().exists());
}

#[test]
fn where_overlays_cannot_mount_workspaces_are_clones() {
    let f = repository(WorkspaceKind::Overlay);
    let location = f.source.to_str().unwrap();
    // Overlayfs cannot take a layer whose path has a comma: the probe under this root fails.
    let workspaces = f.root.join("work,spaces");
    let mirror = f.mirror();
    let refused = mirror.prepare(&workspaces, RunId(1), "main", "agent/probe-refused").unwrap();
    assert_eq!(refused.kind(), WorkspaceKind::Clone);
    assert!(overlay_support(&workspaces).unwrap_err().contains("work,spaces"));
    check_workspace(&refused, &f.main, &["README.md", "main.txt"], location);

    // Here the probe passes but the lower layer, in a cache whose path has a comma, is
    // refused at mount time: the half-made overlay is removed and a clone made instead.
    let probed = overlay_support(&f.workspaces());
    let mirror = MirrorCache::new(&f.root.join("ca,che")).mirror(location).unwrap();
    let fallen_back = f.prepare_any(&mirror, 2, "main", "agent/mount-refused");
    assert_eq!(fallen_back.kind(), WorkspaceKind::Clone);
    check_workspace(&fallen_back, &f.main, &["README.md", "main.txt"], location);
    assert!(!fallen_back.path().with_extension("layers").join("upper").exists(), "no overlay is left");
    if probed.is_ok() {
        assert!(overlay_support(&f.workspaces()).unwrap_err().contains("ca,che"), "later runs go straight to clones");
    }
    fallen_back.cleanup(Cleanup::Remove).unwrap();
    assert!(!refs(mirror.path()).contains_key("refs/heads/agent/mount-refused"));
    assert!(!fallen_back.path().exists() && !fallen_back.path().with_extension("layers").exists());
}

#[test]
fn a_refresh_removes_base_checkouts_no_branch_or_workspace_uses() {
    let Some(f) = fixture(WorkspaceKind::Overlay) else { return };
    let mirror = f.mirror();
    let bases = mirror.path().with_extension("bases");
    let old = f.prepare(&mirror, 1, "main", "agent/old").unwrap();
    let newer = commit(&f.source, "later.txt", "later\n", "newer");
    mirror.refresh().unwrap();
    assert!(bases.join(&f.main).is_dir(), "a base that a mounted workspace uses is kept");

    old.cleanup(Cleanup::Remove).unwrap();
    let fresh = f.prepare(&mirror, 2, "main", "agent/new").unwrap();
    assert_eq!(fresh.base_commit(), newer);
    mirror.refresh().unwrap();
    assert!(!bases.join(&f.main).exists(), "the old base goes once no branch or workspace uses it");
    assert!(bases.join(&newer).is_dir(), "the branch tip's base stays");
    assert_eq!(std::fs::read_to_string(fresh.path().join("later.txt")).unwrap(), "later\n");
    fresh.cleanup(Cleanup::Remove).unwrap();
}
