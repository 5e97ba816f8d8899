//! Repository mirrors and per-run workspaces: one bare mirror per repository location in
//! a cache directory, refreshed by fetching, and one workspace per run, on a new branch at
//! the run's base, whose `origin` is the real repository.
//!
//! A workspace is an overlay mount where it can be (`overlay.rs`), else a `git worktree`
//! of the mirror. An overlay's lower layer is the base checkout of its commit, made once
//! and shared by every run from that commit; mounting one takes milliseconds where a
//! worktree writes every file. Its branch lives in its own repository (the base
//! checkout's, seen through the overlay), so runs never see each other's branches.
//!
//! Layout: `{cache_root}/mirrors/{slug}-{hash}.git` (its lock file beside it, as `.lock`),
//! the base checkouts in `{slug}-{hash}.bases/{commit}` beside it, and
//! `{workspaces_root}/r{id}` (an overlay's layers beside it, in `r{id}.layers`). A mirror
//! keeps the repository's branches under `refs/remotes/origin/*` and its tags under
//! `refs/tags/*`; its `refs/heads/*` holds only the workspaces' branches (an overlay's
//! there only reserves its name), so a refresh never moves or deletes a run's work.
//! Worktrees share the mirror's config, which is how a workspace's `origin` is the real
//! repository: the mirror's `origin` is; a base checkout has the same `origin` and
//! `push.default` in its own config.
//!
//! Git runs as a child process that never prompts, never finds its repository from the
//! environment or the working directory, and runs with the settings in `CONFIG` whatever
//! the operator's own git config says.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sha2::{Digest, Sha256};

use super::overlay;
use crate::parallel::Held as HeldCommit;
use crate::rules::{check_branch_name, check_repo_location};
use crate::runs::RunId;

/// Where a mirror keeps the repository's branches, and its tags. Workspace branches live
/// in `refs/heads/*`, which no refspec here writes.
const BRANCHES_REFSPEC: &str = "+refs/heads/*:refs/remotes/origin/*";
const TAGS_REFSPEC: &str = "+refs/tags/*:refs/tags/*";

/// How long a follow-up's workspace waits for the run it follows to free its branch.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a base checkout takes from the mirror: the repository's branches and tags.
const BASE_REFSPECS: &[&str] = &["+refs/remotes/origin/*:refs/remotes/origin/*", TAGS_REFSPEC];

/// How long a held commit (`refs/nightshift/held/*`) is kept after it was held: its
/// parent has used it long before (a parent's children end within hours); a refresh
/// forgets older ones.
pub const HELD_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 60 * 60);

/// In an overlay's layers directory: the branch the workspace reserved in the mirror.
const BRANCH_FILE: &str = "branch";

/// Settings for every git command here, over the operator's global and system config.
const CONFIG: &[&str] = &[
    // A configured fsmonitor or hook is a program git would start on our behalf.
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    // A workspace holds the files as committed.
    "core.autocrlf=false",
    // Auto gc after a fetch finishes inside the fetch's exclusive lock, not after it.
    "gc.autoDetach=false",
    // Defence in depth: `check_repo_location` already refuses transports that run commands.
    "protocol.ext.allow=never",
    "fetch.recurseSubmodules=false",
    "submodule.recurse=false",
    // An HTTP transfer slower than 1 KB/s for a minute is given up: a stalled fetch would
    // hold the mirror's lock, and every run of the repository, while heartbeats go on.
    "http.lowSpeedLimit=1000",
    "http.lowSpeedTime=60",
    // Silences `git init`'s hint; a mirror's HEAD is never used.
    "init.defaultBranch=main",
];

/// Environment variables that would point git at another repository or inject config.
const REPOSITORY_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
];

/// Why a mirror or a workspace could not be made, refreshed or removed. Every message
/// names the repository; git's own message comes last, trimmed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{reason}")]
    Location { location: String, reason: String },
    #[error("{repo}: {reason}")]
    BadRef { repo: String, reason: String },
    #[error("{repo}: base `{base}` is not a branch, tag or commit of the repository (as of the last refresh): {git}")]
    UnknownBase { repo: String, base: String, git: String },
    #[error("{repo}: held commit of {run}: {reason}")]
    Held { repo: String, run: RunId, reason: String },
    #[error("{repo}: cannot create branch `{branch}`, it already exists: {detail}")]
    BranchExists { repo: String, branch: String, detail: String },
    #[error("{repo}: `git {command}` failed: {stderr}")]
    Git { repo: String, command: String, stderr: String },
    #[error("{repo}: cannot run `git {command}`: {cause}")]
    Spawn { repo: String, command: String, cause: std::io::Error },
    #[error("{repo}: {path}: {cause}")]
    Io { repo: String, path: PathBuf, cause: std::io::Error },
}

/// The mirrors under `{cache_root}/mirrors`, one per repository location.
#[derive(Debug, Clone)]
pub struct MirrorCache {
    dir: PathBuf,
    overlays: bool,
}

impl MirrorCache {
    /// Its mirrors prepare overlay workspaces where they can be mounted.
    pub fn new(cache_root: &Path) -> MirrorCache {
        MirrorCache { dir: cache_root.join("mirrors"), overlays: true }
    }

    /// With `false`, every workspace is a `git worktree`, even where overlays work.
    pub fn with_overlays(self, overlays: bool) -> MirrorCache {
        MirrorCache { overlays, ..self }
    }

    /// The mirror of `location` (a local path, a `file://` URL or a remote URL), cloned on
    /// first use. An existing mirror is not fetched: `Mirror::refresh` does that.
    pub fn mirror(&self, location: &str) -> Result<Mirror, WorkspaceError> {
        let location = normalize_location(location)?;
        let dir = create_absolute_dir(&self.dir).map_err(|cause| io_error(&location, &self.dir, cause))?;
        let mirror = Mirror::new(location, &dir, self.overlays);
        if !mirror.path.exists() {
            let _lock = mirror.exclusive()?;
            if !mirror.path.exists() {
                mirror.create()?;
            }
        }
        Ok(mirror)
    }
}

/// A bare mirror of one repository. Clones share the mirror's lock.
#[derive(Debug, Clone)]
pub struct Mirror {
    location: String,
    path: PathBuf,
    lock_file: PathBuf,
    lock: Arc<RwLock<()>>,
    /// Serializes `git worktree` add, remove and prune on this mirror: git reads every
    /// registered worktree's admin files while adding one, and fails on one half-made by
    /// a concurrent add ("failed to read worktrees/r4/commondir").
    worktrees_lock_file: PathBuf,
    worktrees_lock: Arc<RwLock<()>>,
    overlays: bool,
}

/// A mirror's lock, held: the in-process lock, then the lock file for other processes
/// (released in the opposite order, as fields drop in order). Refreshing takes it
/// exclusively; preparing and cleaning up share it.
struct Held<G> {
    _file: File,
    _in_process: G,
}

impl Mirror {
    fn new(location: String, mirrors: &Path, overlays: bool) -> Mirror {
        let name = mirror_name(&location);
        let path = mirrors.join(format!("{name}.git"));
        let lock_file = mirrors.join(format!("{name}.lock"));
        let worktrees_lock_file = mirrors.join(format!("{name}.worktrees.lock"));
        Mirror {
            lock: in_process_lock(&path),
            lock_file,
            worktrees_lock: in_process_lock(&worktrees_lock_file),
            worktrees_lock_file,
            location,
            path,
            overlays,
        }
    }

    /// The repository's location as the mirror's `origin` records it (a local path made
    /// absolute).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The mirror's directory (a bare repository).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fetches the repository's branches and tags, deleting those it no longer has, then
    /// removes the base checkouts nothing needs any more.
    pub fn refresh(&self) -> Result<(), WorkspaceError> {
        let _lock = self.exclusive()?;
        self.fetch(&self.path)?;
        tracing::info!(repo = %self.location, "Refreshed the mirror");
        self.prune_bases()?;
        self.prune_held_unlocked(std::time::SystemTime::now())
    }

    /// Where the time each commit was held is recorded: one empty file per held ref,
    /// named like it (`r{id}`), whose modification time is when it was held. A commit's
    /// own dates are the agent's to write, so they say nothing about when it was held.
    fn held_records(&self) -> PathBuf {
        self.path.with_extension("held")
    }

    /// Forgets the held commits held longer than `HELD_FOR` before `now` (a refresh does
    /// this with the clock's time). A held ref without a record (a record lost, a ref set
    /// by hand) gets one now, so it is kept `HELD_FOR` from here.
    pub fn prune_held(&self, now: std::time::SystemTime) -> Result<(), WorkspaceError> {
        let _lock = self.exclusive()?;
        self.prune_held_unlocked(now)
    }

    fn prune_held_unlocked(&self, now: std::time::SystemTime) -> Result<(), WorkspaceError> {
        let listing = self.git().args(["for-each-ref", "--format=%(refname)", "refs/nightshift/held/"]).run()?;
        let records = self.held_records();
        for reference in listing.lines() {
            let Some(name) = reference.strip_prefix("refs/nightshift/held/") else { continue };
            let record = records.join(name);
            let held_at = std::fs::metadata(&record).and_then(|meta| meta.modified());
            let expired = match held_at {
                Ok(at) => now.duration_since(at).is_ok_and(|age| age > HELD_FOR),
                Err(_) => {
                    self.record_held(name)?;
                    false
                }
            };
            if expired {
                self.git().args(["update-ref", "-d", reference]).run()?;
                let _ = std::fs::remove_file(&record);
                tracing::info!(repo = %self.location, reference, "Forgot a held commit kept longer than its bound");
            }
        }
        Ok(())
    }

    /// Records that `refs/nightshift/held/{name}` is held as of now.
    fn record_held(&self, name: &str) -> Result<(), WorkspaceError> {
        let records = self.held_records();
        std::fs::create_dir_all(&records).map_err(|cause| self.io_error(&records, cause))?;
        let record = records.join(name);
        let file = File::create(&record).map_err(|cause| self.io_error(&record, cause))?;
        file.set_modified(std::time::SystemTime::now()).map_err(|cause| self.io_error(&record, cause))
    }

    /// The commit `held` names, after checking that the mirror still holds it under the
    /// ref of its run: a run starts only from, or merges only, what a run of this worker
    /// held (not any commit id a task names).
    pub fn held_commit(&self, held: &HeldCommit) -> Result<String, WorkspaceError> {
        let reference = HeldCommit::reference(held.run);
        let refused = |reason: String| WorkspaceError::Held { repo: self.location.clone(), run: held.run, reason };
        match self.commit_of(&reference)? {
            Some(commit) if commit == held.commit => Ok(commit),
            Some(commit) => Err(refused(format!("{reference} is at {commit}, not {}", held.commit))),
            None => Err(refused(format!(
                "this worker's mirror has no {reference} (held by another worker, or forgotten after {} days)",
                HELD_FOR.as_secs() / 86_400
            ))),
        }
    }

    /// Removes each base checkout whose commit no branch or tag of the repository points
    /// at any more and that no mounted overlay uses, so a repository whose main branch
    /// moves all day keeps a checkout per tip, not per commit ever used. It runs under the
    /// mirror's exclusive lock: no prepare is choosing or mounting a base meanwhile.
    fn prune_bases(&self) -> Result<(), WorkspaceError> {
        let bases = self.path.with_extension("bases");
        let Ok(entries) = std::fs::read_dir(&bases) else { return Ok(()) };
        let listing = self.git().args(["for-each-ref", "--format=%(objectname) %(*objectname)"]).run()?;
        let tips: std::collections::HashSet<&str> = listing.split_whitespace().collect();
        for entry in entries.flatten() {
            let base = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_commit = name.len() >= 40 && name.chars().all(|c| c.is_ascii_hexdigit());
            if !is_commit || !base.is_dir() || tips.contains(name.as_str()) || overlay::in_use_as_lower(&base) {
                continue;
            }
            std::fs::remove_dir_all(&base).map_err(|cause| self.io_error(&base, cause))?;
            let _ = std::fs::remove_file(bases.join(format!("{name}.lock")));
            tracing::info!(repo = %self.location, commit = name, "Removed a base checkout no branch uses");
        }
        Ok(())
    }

    /// Checks out a workspace for `run` at `{workspaces_root}/r{id}`, on a new branch
    /// `branch` at `base` (a branch or tag of the repository, or a commit id). A leftover
    /// workspace of an earlier attempt of the same run is removed first. The workspace is
    /// an overlay when the cache allows them and they mount under `workspaces_root`, else
    /// a worktree (why, logged once).
    pub fn prepare(
        &self,
        workspaces_root: &Path,
        run: RunId,
        base: &str,
        branch: &str,
    ) -> Result<Workspace, WorkspaceError> {
        self.prepare_at(workspaces_root, run, base, branch, false, None)
    }

    /// `prepare` for a follow-up run: the workspace starts at the tip of `branch` as the
    /// repository has it (as of the last refresh), so the run adds commits to the branch
    /// an earlier run pushed and its push is a fast-forward. A branch the repository does
    /// not have (the earlier run did not push) is started at `base`, as `prepare` does.
    pub fn prepare_follow_up(
        &self,
        workspaces_root: &Path,
        run: RunId,
        base: &str,
        branch: &str,
    ) -> Result<Workspace, WorkspaceError> {
        self.prepare_at(workspaces_root, run, base, branch, true, None)
    }

    /// `prepare` for a run of parallel work that starts at a commit an earlier run held
    /// (`Staging::start_from`): the new branch starts at `start`, while the workspace's
    /// base commit stays `base`'s, so what the run changed is measured from `base` (a
    /// later round's size includes the rounds before it, as its pull request would).
    pub fn prepare_from(
        &self,
        workspaces_root: &Path,
        run: RunId,
        base: &str,
        branch: &str,
        start: &HeldCommit,
    ) -> Result<Workspace, WorkspaceError> {
        self.prepare_at(workspaces_root, run, base, branch, false, Some(start))
    }

    fn prepare_at(
        &self,
        workspaces_root: &Path,
        run: RunId,
        base: &str,
        branch: &str,
        follow_up: bool,
        start: Option<&HeldCommit>,
    ) -> Result<Workspace, WorkspaceError> {
        for name in [base, branch] {
            check_branch_name(name).map_err(|reason| WorkspaceError::BadRef { repo: self.location.clone(), reason })?;
        }
        let root = create_absolute_dir(workspaces_root).map_err(|cause| self.io_error(workspaces_root, cause))?;
        let path = root.join(run.to_string());
        if follow_up {
            self.wait_for_release(branch)?;
        }
        let _lock = self.shared()?;
        let tip = if follow_up { self.commit_of(&format!("refs/remotes/origin/{branch}"))? } else { None };
        if follow_up && tip.is_none() {
            tracing::warn!(run_id = %run, repo = %self.location, branch, "The branch to follow up is not in the repository: starting at the base");
        }
        let base_commit = match tip {
            Some(tip) => tip,
            None => self.base_and_new_branch(base, branch)?,
        };
        let start_commit = match start {
            Some(held) => self.held_commit(held)?,
            None => base_commit.clone(),
        };
        if path.exists() || overlay::layers_of(&path).exists() {
            self.discard_leftover(&path)?;
        }
        let kind = self.check_out(&root, &path, branch, &start_commit)?;
        tracing::info!(
            run_id = %run, repo = %self.location, path = %path.display(), branch, base, base_commit, start_commit,
            ?kind, "Prepared the workspace"
        );
        Ok(Workspace { mirror: self.clone(), run, path, branch: branch.to_string(), base_commit, kind })
    }

    /// Makes the workspace at `path`: an overlay if it can; where overlays cannot mount
    /// (an unprivileged worker), a repository of its own; a worktree when overlays are
    /// turned off.
    fn check_out(&self, root: &Path, path: &Path, branch: &str, commit: &str) -> Result<WorkspaceKind, WorkspaceError> {
        if !self.overlays {
            self.add_worktree(path, branch, commit)?;
            return Ok(WorkspaceKind::Worktree);
        }
        if overlay::available(root).is_ok() {
            self.reserve_branch(branch, commit)?;
            match self.add_overlay(path, branch, commit) {
                Ok(None) => return Ok(WorkspaceKind::Overlay),
                Ok(Some(refusal)) => {
                    self.remove_overlay(path, Some(branch), true)?;
                    overlay::give_up(root, format!("cannot mount an overlay at {}: {refusal}", path.display()));
                }
                Err(error) => {
                    if let Err(cleanup) = self.remove_overlay(path, Some(branch), true) {
                        tracing::warn!(repo = %self.location, path = %path.display(), %cleanup, "Left a half-made workspace");
                    }
                    return Err(error);
                }
            }
        }
        self.reserve_branch(branch, commit)?;
        if let Err(error) = self.add_clone(path, branch, commit) {
            if let Err(cleanup) = self.remove_overlay(path, Some(branch), false) {
                tracing::warn!(repo = %self.location, path = %path.display(), %cleanup, "Left a half-made workspace");
            }
            return Err(error);
        }
        Ok(WorkspaceKind::Clone)
    }

    /// Checks out `commit` at `path` as a repository of its own, made as a base checkout
    /// is (the mirror's objects as an alternate, nothing copied), on a new `branch`. Its
    /// branch and config are its own, as an overlay's: a phase may write that config (a
    /// worktree's is the mirror's, which a jailed phase only sees read-only). Its branch's
    /// name is kept beside it, where an overlay keeps it, for `discard_leftover`.
    fn add_clone(&self, path: &Path, branch: &str, commit: &str) -> Result<(), WorkspaceError> {
        let layers = overlay::layers_of(path);
        std::fs::create_dir_all(&layers).map_err(|cause| self.io_error(&layers, cause))?;
        let branch_file = layers.join(BRANCH_FILE);
        std::fs::write(&branch_file, branch).map_err(|cause| self.io_error(&branch_file, cause))?;
        self.create_base(path, commit)?;
        self.start_branch(&path.join(".git"), branch, commit)
    }

    /// An overlay workspace's branch lives in the workspace's own repository; the mirror's
    /// `refs/heads/{branch}`, at the base, reserves the name until cleanup, so two live
    /// workspaces never share one (as with worktrees), and keeps the base reachable.
    fn reserve_branch(&self, branch: &str, commit: &str) -> Result<(), WorkspaceError> {
        let reference = format!("refs/heads/{branch}");
        // An empty old value: create the ref, refuse if it exists.
        let created = self.git().args(["update-ref", "--no-deref", &reference, commit, ""]).output()?;
        if created.success {
            return Ok(());
        }
        if self.commit_of(&reference)?.is_some() {
            return Err(WorkspaceError::BranchExists {
                repo: self.location.clone(),
                branch: branch.to_string(),
                detail: created.stderr,
            });
        }
        Err(created.into_error(&self.location))
    }

    /// Mounts an overlay of the base checkout of `commit` at `path` and puts its HEAD on a
    /// new `branch` there. `Ok(Some(why))` when the mount is refused. The branch is two
    /// small files (as `git update-ref` and `git symbolic-ref` write them); `git checkout
    /// -b` would refresh the index.
    fn add_overlay(&self, path: &Path, branch: &str, commit: &str) -> Result<Option<String>, WorkspaceError> {
        let lower = self.base_checkout(commit)?;
        let layers = overlay::layers_of(path);
        std::fs::create_dir_all(&layers).map_err(|cause| self.io_error(&layers, cause))?;
        let branch_file = layers.join(BRANCH_FILE);
        std::fs::write(&branch_file, branch).map_err(|cause| self.io_error(&branch_file, cause))?;
        if let Err(refusal) = overlay::mount(&lower, path) {
            return Ok(Some(refusal.to_string()));
        }
        self.start_branch(&path.join(".git"), branch, commit)?;
        Ok(None)
    }

    /// Puts the HEAD of the repository at `git_dir` on a new `branch` at `commit`.
    fn start_branch(&self, git_dir: &Path, branch: &str, commit: &str) -> Result<(), WorkspaceError> {
        let git_dir = git_dir.to_path_buf();
        let reference = format!("refs/heads/{branch}");
        if git_dir.join("reftable").exists() {
            self.git_in(Some(&git_dir)).args(["update-ref", &reference, commit]).run()?;
            self.git_in(Some(&git_dir)).args(["symbolic-ref", "HEAD", &reference]).run()?;
        } else {
            // What those two commands write in the files ref format, without two git
            // processes (a third of the time a prepare takes): the branch's loose ref, then
            // HEAD pointing at it.
            let loose = git_dir.join(&reference);
            let parent = loose.parent().unwrap_or(&git_dir);
            std::fs::create_dir_all(parent).map_err(|cause| self.io_error(parent, cause))?;
            std::fs::write(&loose, format!("{commit}\n")).map_err(|cause| self.io_error(&loose, cause))?;
            let head = git_dir.join("HEAD");
            std::fs::write(&head, format!("ref: {reference}\n")).map_err(|cause| self.io_error(&head, cause))?;
        }
        Ok(())
    }

    /// Unmounts an overlay workspace (when `mounted`; a clone is not), removes it and its
    /// layers, and frees its branch's name in the mirror. Parts already gone are skipped.
    fn remove_overlay(&self, path: &Path, branch: Option<&str>, mounted: bool) -> Result<(), WorkspaceError> {
        if mounted {
            overlay::unmount(path).map_err(|cause| self.io_error(path, cause))?;
        }
        for dir in [path.to_path_buf(), overlay::layers_of(path)] {
            if dir.exists() {
                remove_tree(&dir).map_err(|cause| self.io_error(&dir, cause))?;
            }
        }
        match branch {
            Some(branch) => self.delete_branch(branch),
            None => Ok(()),
        }
    }

    /// The checkout of `commit` that overlays use as their lower layer, made on first use
    /// under the mirror's (shared) lock and its own exclusive one, so concurrent prepares
    /// make it once. Nothing writes it afterwards, as overlayfs requires of a lower layer.
    fn base_checkout(&self, commit: &str) -> Result<PathBuf, WorkspaceError> {
        let bases = self.path.with_extension("bases");
        let base = bases.join(commit);
        if base.exists() {
            return Ok(base);
        }
        std::fs::create_dir_all(&bases).map_err(|cause| self.io_error(&bases, cause))?;
        let lock = in_process_lock(&base);
        let _in_process = lock.write().unwrap_or_else(PoisonError::into_inner);
        let lock_file = bases.join(format!("{commit}.lock"));
        let file = self.open_lock(&lock_file)?;
        fs2::FileExt::lock_exclusive(&file).map_err(|cause| self.io_error(&lock_file, cause))?;
        if !base.exists() {
            self.create_base(&base, commit)?;
        }
        Ok(base)
    }

    /// Why not `git clone --shared --no-checkout` of the mirror: the clone would file the
    /// mirror's `refs/heads/*` (other runs' branches) as the repository's. So: what
    /// `--shared` does (the mirror's objects as an alternate, nothing copied), the
    /// mirror's `origin` and `push.default`, the repository's branches and tags copied
    /// from the mirror (as of now; a base is not refreshed), then a detached checkout,
    /// made in a side directory and moved into place once complete.
    fn create_base(&self, base: &Path, commit: &str) -> Result<(), WorkspaceError> {
        let partial = base.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|cause| self.io_error(&partial, cause))?;
        }
        self.git_in(None).args(["init", "--quiet", "--template="]).arg(&partial).run()?;
        let git_dir = partial.join(".git");
        let info = git_dir.join("objects").join("info");
        std::fs::create_dir_all(&info).map_err(|cause| self.io_error(&info, cause))?;
        let alternates = format!("{}\n", self.path.join("objects").display());
        std::fs::write(info.join("alternates"), alternates).map_err(|cause| self.io_error(&info, cause))?;
        let git = || self.git_in(Some(&git_dir));
        git().args(["remote", "add", "origin", &self.location]).run()?;
        git().args(["config", "--add", "remote.origin.fetch", TAGS_REFSPEC]).run()?;
        git().args(["config", "push.default", "current"]).run()?;
        git()
            .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"])
            .arg(&self.path)
            .args(BASE_REFSPECS)
            .run()?;
        git().arg("--work-tree").arg(&partial).args(["checkout", "--quiet", "--detach", commit]).run()?;
        std::fs::rename(&partial, base).map_err(|cause| self.io_error(base, cause))?;
        tracing::info!(repo = %self.location, path = %base.display(), "Checked out a repository of the mirror");
        Ok(())
    }

    /// Why not `git clone --mirror` or `--bare`: a mirror clone sets `remote.origin.mirror`,
    /// so a plain `git push origin` from a workspace (which shares the mirror's config)
    /// would push every ref and delete the repository's others, and both kinds of clone
    /// put the repository's branches in `refs/heads/*`, where workspace branches live and a
    /// pruning fetch would delete them. So: an empty bare repository with an `origin` whose
    /// branches go to `refs/remotes/origin/*`, fetched into a side directory and moved into
    /// place once complete, so a clone cut short never looks like a mirror.
    fn create(&self) -> Result<(), WorkspaceError> {
        let partial = self.path.with_extension("partial");
        if partial.exists() {
            // A clone cut short earlier; the exclusive lock says nobody is still writing it.
            std::fs::remove_dir_all(&partial).map_err(|cause| self.io_error(&partial, cause))?;
        }
        self.git_in(None).args(["init", "--bare", "--quiet", "--template="]).arg(&partial).run()?;
        self.git_in(Some(&partial)).args(["remote", "add", "origin", &self.location]).run()?;
        self.git_in(Some(&partial)).args(["config", "--add", "remote.origin.fetch", TAGS_REFSPEC]).run()?;
        // Workspaces share this config: a bare `git push origin` pushes the current branch
        // only, even where the operator's config says `matching`.
        self.git_in(Some(&partial)).args(["config", "push.default", "current"]).run()?;
        self.fetch(&partial)?;
        std::fs::rename(&partial, &self.path).map_err(|cause| self.io_error(&self.path, cause))?;
        tracing::info!(repo = %self.location, path = %self.path.display(), "Cloned the mirror");
        Ok(())
    }

    /// The location and refspecs are named here, not read from the mirror's config, which
    /// every workspace shares and can write.
    fn fetch(&self, git_dir: &Path) -> Result<(), WorkspaceError> {
        self.git_in(Some(git_dir))
            .args(["fetch", "--quiet", "--prune", &self.location, BRANCHES_REFSPEC, TAGS_REFSPEC])
            .run()
            .map(drop)
    }

    /// The commit `base` names, after checking that the repository has no branch
    /// `branch`. One `for-each-ref` answers both when `base` is a branch or a tag (most
    /// runs); a commit id, or a base not found, takes the slower path that says why.
    fn base_and_new_branch(&self, base: &str, branch: &str) -> Result<String, WorkspaceError> {
        let upstream_branch = format!("refs/remotes/origin/{branch}");
        let candidates = [format!("refs/remotes/origin/{base}"), format!("refs/tags/{base}")];
        let listing = self
            .git()
            .args(["for-each-ref", "--format=%(refname) %(objecttype) %(objectname) %(*objecttype) %(*objectname)"])
            .args(candidates.iter().chain([&upstream_branch]))
            .run()?;
        // Patterns also match refs below them (`main/x` for `main`): only exact names count.
        let mut commits: HashMap<&str, &str> = HashMap::new();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let commit = match fields.as_slice() {
                [name, "commit", id, ..] => Some((*name, *id)),
                [name, "tag", _, "commit", peeled] => Some((*name, *peeled)),
                _ => None,
            };
            commits.extend(commit);
        }
        if let Some(commit) = commits.get(upstream_branch.as_str()) {
            return Err(WorkspaceError::BranchExists {
                repo: self.location.clone(),
                branch: branch.to_string(),
                detail: format!("the repository has it, at {commit}"),
            });
        }
        if let Some(commit) = candidates.iter().find_map(|candidate| commits.get(candidate.as_str())) {
            return Ok((*commit).to_string());
        }
        let commit = self.resolve_base(base)?;
        self.refuse_branch_of_repository(branch)?;
        Ok(commit)
    }

    /// The commit `base` names. Only the repository's branches and tags count, and commit
    /// ids: the mirror's own `refs/heads/*` are other runs' branches.
    fn resolve_base(&self, base: &str) -> Result<String, WorkspaceError> {
        let mut refusal = String::new();
        for candidate in base_candidates(base) {
            let resolved = self
                .git()
                .args(["rev-parse", "--verify", "--end-of-options"])
                .arg(format!("{candidate}^{{commit}}"))
                .output()?;
            if resolved.success {
                return Ok(resolved.stdout);
            }
            refusal = resolved.stderr;
        }
        Err(WorkspaceError::UnknownBase { repo: self.location.clone(), base: base.to_string(), git: refusal })
    }

    /// A run's branch is new: one the repository already has (as of the last refresh) is
    /// someone's work, which the run's push must not build on or overwrite.
    fn refuse_branch_of_repository(&self, branch: &str) -> Result<(), WorkspaceError> {
        match self.commit_of(&format!("refs/remotes/origin/{branch}"))? {
            None => Ok(()),
            Some(commit) => Err(WorkspaceError::BranchExists {
                repo: self.location.clone(),
                branch: branch.to_string(),
                detail: format!("the repository has it, at {commit}"),
            }),
        }
    }

    /// Adds a worktree on the new branch `branch`. Only a branch that existed before the
    /// attempt is "branch exists" (permanent); any other failure is git's own error, which
    /// a retry may get past, and the branch a failed `worktree add -b` left is deleted.
    fn add_worktree(&self, path: &Path, branch: &str, commit: &str) -> Result<(), WorkspaceError> {
        let _admin = self.worktree_admin()?;
        if let Some(existing) = self.commit_of(&format!("refs/heads/{branch}"))? {
            return Err(WorkspaceError::BranchExists {
                repo: self.location.clone(),
                branch: branch.to_string(),
                detail: format!("another workspace of this mirror has it, at {existing}"),
            });
        }
        let added = self
            .git()
            .args(["worktree", "add", "--quiet", "--no-track", "-b", branch])
            .arg(path)
            .arg(commit)
            .output()?;
        if added.success {
            return Ok(());
        }
        let error = added.into_error(&self.location);
        if let Err(cleanup) = self.undo_failed_worktree(path, branch) {
            tracing::warn!(repo = %self.location, path = %path.display(), %cleanup, "Left a half-made worktree");
        }
        Err(error)
    }

    /// Waits, at most `RELEASE_WAIT`, until no workspace of this mirror holds `branch`:
    /// the run a follow-up follows frees it when it cleans up, just after reporting its
    /// end. One still held after that is refused by the checkout (`BranchExists`).
    fn wait_for_release(&self, branch: &str) -> Result<(), WorkspaceError> {
        let reference = format!("refs/heads/{branch}");
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while self.commit_of(&reference)?.is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }

    /// Removes what a failed `worktree add` made: its registration and its branch.
    fn undo_failed_worktree(&self, path: &Path, branch: &str) -> Result<(), WorkspaceError> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|cause| self.io_error(path, cause))?;
        }
        self.git().args(["worktree", "prune"]).run()?;
        self.delete_branch(branch)
    }

    /// Removes what an earlier attempt of the same run left at `path` (a worker that
    /// crashed, a lease that expired), branch included: the retry starts again from base.
    fn discard_leftover(&self, path: &Path) -> Result<(), WorkspaceError> {
        let layers = overlay::layers_of(path);
        if layers.exists() {
            let branch = std::fs::read_to_string(layers.join(BRANCH_FILE)).ok();
            // An overlay's layers hold its upper layer; a clone's only its branch's name.
            self.remove_overlay(path, branch.as_deref(), layers.join("upper").exists())?;
            tracing::warn!(repo = %self.location, path = %path.display(), branch, "Removed a leftover workspace of its own");
            return Ok(());
        }
        let _admin = self.worktree_admin()?;
        let listing = self.git().args(["worktree", "list", "--porcelain"]).run()?;
        let branch = branch_of_worktree(&listing, path);
        self.remove_worktree(path)?;
        if let Some(branch) = &branch {
            self.delete_branch(branch)?;
        }
        tracing::warn!(repo = %self.location, path = %path.display(), branch, "Removed a leftover workspace");
        Ok(())
    }

    /// Removes the worktree at `path`; the caller holds `worktree_admin`.
    fn remove_worktree(&self, path: &Path) -> Result<(), WorkspaceError> {
        if path.exists() {
            let removed = self.git().args(["worktree", "remove", "--force"]).arg(path).output()?;
            // Git refuses a checkout it no longer recognises (an agent deleted `.git`, say);
            // the directory is still ours to delete, and `prune` forgets the registration.
            if !removed.success && path.exists() {
                remove_tree(path).map_err(|cause| self.io_error(path, cause))?;
            }
        }
        self.git().args(["worktree", "prune"]).run().map(drop)
    }

    fn delete_branch(&self, branch: &str) -> Result<(), WorkspaceError> {
        if self.commit_of(&format!("refs/heads/{branch}"))?.is_some() {
            self.git().args(["branch", "--quiet", "-D", branch]).run()?;
        }
        Ok(())
    }

    /// The commit `reference` points at, if it exists.
    fn commit_of(&self, reference: &str) -> Result<Option<String>, WorkspaceError> {
        let resolved = self
            .git()
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{reference}^{{commit}}"))
            .output()?;
        Ok(resolved.success.then_some(resolved.stdout))
    }

    fn shared(&self) -> Result<Held<RwLockReadGuard<'_, ()>>, WorkspaceError> {
        let in_process = self.lock.read().unwrap_or_else(PoisonError::into_inner);
        let file = self.open_lock_file()?;
        fs2::FileExt::lock_shared(&file).map_err(|cause| self.io_error(&self.lock_file, cause))?;
        Ok(Held { _in_process: in_process, _file: file })
    }

    fn exclusive(&self) -> Result<Held<RwLockWriteGuard<'_, ()>>, WorkspaceError> {
        let in_process = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        let file = self.open_lock_file()?;
        fs2::FileExt::lock_exclusive(&file).map_err(|cause| self.io_error(&self.lock_file, cause))?;
        Ok(Held { _in_process: in_process, _file: file })
    }

    /// The lock on the mirror's worktree registrations, for this process and others.
    fn worktree_admin(&self) -> Result<Held<RwLockWriteGuard<'_, ()>>, WorkspaceError> {
        let in_process = self.worktrees_lock.write().unwrap_or_else(PoisonError::into_inner);
        let file = self.open_lock(&self.worktrees_lock_file)?;
        fs2::FileExt::lock_exclusive(&file).map_err(|cause| self.io_error(&self.worktrees_lock_file, cause))?;
        Ok(Held { _in_process: in_process, _file: file })
    }

    fn open_lock_file(&self) -> Result<File, WorkspaceError> {
        self.open_lock(&self.lock_file)
    }

    fn open_lock(&self, path: &Path) -> Result<File, WorkspaceError> {
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|cause| self.io_error(path, cause))
    }

    /// A git command on the mirror.
    fn git(&self) -> Git<'_> {
        self.git_in(Some(&self.path))
    }

    /// A git command on the repository at `git_dir`, or on none. It runs in the mirrors'
    /// directory, so it never depends on the process's own.
    fn git_in(&self, git_dir: Option<&Path>) -> Git<'_> {
        let mirrors = self.path.parent().unwrap_or(&self.path);
        Git::new(&self.location, mirrors, git_dir)
    }

    fn io_error(&self, path: &Path, cause: std::io::Error) -> WorkspaceError {
        io_error(&self.location, path, cause)
    }
}

/// One run's checkout on the run's own branch: an overlay or a worktree of the mirror.
#[derive(Debug, Clone)]
pub struct Workspace {
    mirror: Mirror,
    run: RunId,
    path: PathBuf,
    branch: String,
    base_commit: String,
    kind: WorkspaceKind,
}

/// A workspace's git administration files as the worker made them. A phase can write
/// its workspace's `.git`; the worker runs git there afterwards (`status`, outside any
/// jail), so what a phase wrote must never be what that git reads: a filter or an
/// `include.path` in `.git/config`, a gitfile pointing at a directory the phase made.
#[derive(Debug, Clone)]
pub struct GitAdmin {
    workspace: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    remove: Vec<PathBuf>,
}

impl GitAdmin {
    /// Puts the files back as they were (whatever a phase made of them: changed, removed,
    /// replaced by a link or a directory) and removes those that would redirect git.
    /// Call it once no process of the run's phases is left.
    pub fn restore(&self) -> Result<(), String> {
        let failed = |path: &Path, error: std::io::Error| format!("cannot restore {}: {error}", path.display());
        let dot_git = self.workspace.join(".git");
        let meta = std::fs::symlink_metadata(&dot_git).map_err(|e| failed(&dot_git, e))?;
        if meta.file_type().is_symlink() {
            std::fs::remove_file(&dot_git).map_err(|e| failed(&dot_git, e))?;
        }
        for (path, content) in &self.files {
            remove_whatever_is_at(path).map_err(|e| failed(path, e))?;
            std::fs::write(path, content).map_err(|e| failed(path, e))?;
        }
        for path in &self.remove {
            remove_whatever_is_at(path).map_err(|e| failed(path, e))?;
        }
        Ok(())
    }
}

/// Removes the directory tree at `path`, what a phase left read-only in it included (Go's
/// module cache, a `chmod -R a-w`): root deletes that anyway, an unprivileged worker first
/// lets itself write each directory it owns there. Links are not followed; no recursion,
/// so a deep tree cannot exhaust the stack.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => return other,
    }
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() {
            continue;
        }
        if meta.permissions().mode() & 0o700 != 0o700 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700))?;
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    std::fs::remove_dir_all(path)
}

/// Removes the file, link or directory at `path`; nothing there is fine.
fn remove_whatever_is_at(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_tree(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// The directory a worktree's gitfile (`gitdir: PATH`) names.
fn worktree_admin_dir(gitfile: &[u8]) -> Option<PathBuf> {
    let text = std::str::from_utf8(gitfile).ok()?;
    let path = text.trim().strip_prefix("gitdir:")?.trim();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// How a workspace was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceKind {
    /// An overlay mount over the shared base checkout of its commit, with its own
    /// repository (the base's, copied on write): its branch and commits are its own.
    Overlay,
    /// A repository of its own checked out at the workspace, borrowing the mirror's
    /// objects: its branch, commits and config are its own. Where overlays cannot mount.
    Clone,
    /// A `git worktree` of the mirror, sharing the mirror's branches and config. Where
    /// overlays are turned off (`--no-overlay`).
    Worktree,
}

/// What `Workspace::cleanup` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Removes the directory, its worktree registration or its overlay mount and layers,
    /// and its branch in the mirror. A busy overlay is detached lazily.
    Remove,
    /// Leaves everything for someone to look at (a failed run, when so configured) and
    /// logs where it is. An overlay stays mounted; its changes are also in
    /// `r{id}.layers/upper`, which outlasts the mount (a reboot).
    Keep,
}

/// Whether overlay workspaces can be mounted under `workspaces_root` in this process, and
/// if not, why (found out once per directory).
pub fn overlay_support(workspaces_root: &Path) -> Result<(), String> {
    let root =
        create_absolute_dir(workspaces_root).map_err(|cause| format!("{}: {cause}", workspaces_root.display()))?;
    overlay::available(&root)
}

impl Workspace {
    pub fn run(&self) -> RunId {
        self.run
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The commit the branch started at.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn kind(&self) -> WorkspaceKind {
        self.kind
    }

    /// A worktree's own directory in the mirror (index, HEAD), from its gitfile; `None`
    /// for an overlay.
    pub fn worktree_admin(&self) -> Option<PathBuf> {
        if self.kind != WorkspaceKind::Worktree {
            return None;
        }
        std::fs::read(self.path.join(".git")).ok().and_then(|gitfile| worktree_admin_dir(&gitfile))
    }

    /// The git administration files of this workspace as they are now, before any phase
    /// ran in it, to put back with [`GitAdmin::restore`] before the worker runs git on it.
    pub fn git_admin(&self) -> std::io::Result<GitAdmin> {
        let dot_git = self.path.join(".git");
        // Files that, present, would send git to other config: any `config.worktree`, and
        // in the overlay's repository a linked worktree's `commondir`.
        let (files, remove) = match self.kind {
            // The overlay's own repository: its config (a phase could add a filter or an
            // include that the worker's `git status` would run or read on the host).
            WorkspaceKind::Overlay | WorkspaceKind::Clone => {
                let config = dot_git.join("config");
                let remove = vec![dot_git.join("config.worktree"), dot_git.join("commondir")];
                (vec![(config.clone(), std::fs::read(&config)?)], remove)
            }
            // The gitfile naming its directory in the mirror, and that directory's way
            // back to the mirror (whose own config a phase only ever sees read-only).
            WorkspaceKind::Worktree => {
                let gitfile = std::fs::read(&dot_git)?;
                let admin = worktree_admin_dir(&gitfile)
                    .ok_or_else(|| std::io::Error::other(format!("{} names no gitdir", dot_git.display())))?;
                let commondir = admin.join("commondir");
                let files = vec![(dot_git, gitfile), (commondir.clone(), std::fs::read(&commondir)?)];
                (files, vec![admin.join("config.worktree")])
            }
        };
        Ok(GitAdmin { workspace: self.path.clone(), files, remove })
    }

    /// Keeps `commit` (the run's collected tip) in the mirror as
    /// `refs/nightshift/held/r{id}`, where later runs of the same parent start from or
    /// merge it; it is never pushed. The commit's objects are pushed from the workspace
    /// into the mirror (an overlay's or a clone's commits are in its own repository), by
    /// the mirror's git reading the workspace's objects only, never its config.
    pub fn hold(&self, commit: &str) -> Result<String, WorkspaceError> {
        let reference = HeldCommit::reference(self.run);
        let _lock = self.mirror.shared()?;
        self.mirror.record_held(&self.run.to_string())?;
        let objects = self.path.join(".git").join("objects");
        // A worktree's objects are the mirror's already; an overlay's or a clone's new
        // ones are copied, checked, when loose (the usual case), else pushed.
        let copied = !objects.is_dir()
            || super::objects::copy_loose(&objects, &self.mirror.path.join("objects"))
                .inspect_err(|why| tracing::debug!(run_id = %self.run, ?why, "Pushing the held commit instead"))
                .is_ok();
        if copied {
            // Every object the commit adds must now be in the mirror, as a push checks.
            self.mirror.git().args(["rev-list", "--quiet", "--objects", commit, "--not", &self.base_commit]).run()?;
            self.mirror.git().args(["update-ref", &reference, commit]).run()?;
        } else {
            Git::new(&self.mirror.location, &self.path, Some(&self.mirror.path))
                .with_objects_of(&objects)
                .args(["push", "--quiet", "--no-verify", "--no-follow-tags", "--no-signed", "--recurse-submodules=no"])
                .arg(&self.mirror.path)
                .arg(format!("+{commit}:{reference}"))
                .run()?;
        }
        tracing::info!(run_id = %self.run, repo = %self.mirror.location, commit, reference, "Held the run's commit");
        Ok(reference)
    }

    /// Removes or keeps the workspace; removing one already removed does nothing.
    pub fn cleanup(&self, how: Cleanup) -> Result<(), WorkspaceError> {
        let (repo, path) = (&self.mirror.location, self.path.display());
        if how == Cleanup::Keep {
            tracing::info!(run_id = %self.run, repo, path = %path, "Kept the workspace");
            return Ok(());
        }
        let _lock = self.mirror.shared()?;
        match self.kind {
            WorkspaceKind::Overlay => self.mirror.remove_overlay(&self.path, Some(&self.branch), true)?,
            WorkspaceKind::Clone => self.mirror.remove_overlay(&self.path, Some(&self.branch), false)?,
            WorkspaceKind::Worktree => {
                let _admin = self.mirror.worktree_admin()?;
                self.mirror.remove_worktree(&self.path)?;
                self.mirror.delete_branch(&self.branch)?;
            }
        }
        tracing::info!(run_id = %self.run, repo, path = %path, "Removed the workspace");
        Ok(())
    }
}

/// One git command, built up; `repo` names the repository in its errors.
pub(super) struct Git<'a> {
    repo: &'a str,
    command: Command,
    /// The arguments after the global options, for messages.
    shown: Vec<String>,
}

/// What a git command printed, trimmed.
struct GitOutput {
    command: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl<'a> Git<'a> {
    pub(super) fn new(repo: &'a str, working_dir: &Path, git_dir: Option<&Path>) -> Git<'a> {
        let mut command = Command::new("git");
        command.current_dir(working_dir).stdin(Stdio::null()).env("GIT_TERMINAL_PROMPT", "0");
        for name in REPOSITORY_ENV {
            command.env_remove(name);
        }
        for setting in CONFIG {
            command.arg("-c").arg(setting);
        }
        if let Some(git_dir) = git_dir {
            command.arg("--git-dir").arg(git_dir);
        }
        Git { repo, command, shown: Vec::new() }
    }

    /// Lets the command read the objects in `objects` too (another repository's object
    /// store, by path: its data, never its config).
    pub(super) fn with_objects_of(mut self, objects: &Path) -> Self {
        self.command.env("GIT_ALTERNATE_OBJECT_DIRECTORIES", objects);
        self
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.shown.push(arg.as_ref().to_string_lossy().into_owned());
        self.command.arg(arg);
        self
    }

    pub(super) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, args: I) -> Self {
        args.into_iter().fold(self, |git, arg| git.arg(arg))
    }

    /// Runs the command; a failure is in the output, not an error.
    fn output(mut self) -> Result<GitOutput, WorkspaceError> {
        let command = self.shown.join(" ");
        let output = self.command.output().map_err(|cause| WorkspaceError::Spawn {
            repo: self.repo.to_string(),
            command: command.clone(),
            cause,
        })?;
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() && !output.status.success() {
            stderr = output.status.to_string();
        }
        Ok(GitOutput {
            command,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
            stderr,
        })
    }

    /// Runs the command and returns what it printed; a failure is an error.
    pub(super) fn run(self) -> Result<String, WorkspaceError> {
        let repo = self.repo;
        let output = self.output()?;
        if output.success { Ok(output.stdout) } else { Err(output.into_error(repo)) }
    }
}

impl GitOutput {
    fn into_error(self, repo: &str) -> WorkspaceError {
        WorkspaceError::Git { repo: repo.to_string(), command: self.command, stderr: self.stderr }
    }
}

/// The in-process lock of the mirror at `path`, the same for every `Mirror` value of it.
fn in_process_lock(path: &Path) -> Arc<RwLock<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<RwLock<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// The location as the mirror records it: a local path made absolute (git resolves a
/// relative one from whichever directory it runs in), anything else as given.
fn normalize_location(location: &str) -> Result<String, WorkspaceError> {
    let refuse = |reason: String| WorkspaceError::Location { location: location.to_string(), reason };
    check_repo_location(location).map_err(refuse)?;
    if !is_local_path(location) {
        return Ok(location.to_string());
    }
    let path =
        std::fs::canonicalize(location).map_err(|cause| refuse(format!("`{location}` cannot be read: {cause}")))?;
    path.into_os_string().into_string().map_err(|_| refuse(format!("`{location}` is not a UTF-8 path")))
}

/// Git's rule: a URL has `://`, and `host:path` is ssh when the colon comes before any
/// slash; anything else is a path.
fn is_local_path(location: &str) -> bool {
    let before_slash = location.split('/').next().unwrap_or_default();
    !location.contains("://") && !before_slash.contains(':')
}

/// `{slug}-{hash}`: readable, and distinct for distinct locations.
fn mirror_name(location: &str) -> String {
    let hash: String = Sha256::digest(location.as_bytes()).iter().take(6).map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{hash}", slug(location))
}

/// The repository's name in its location, e.g. `api` for `git@host:acme/api.git`.
fn slug(location: &str) -> String {
    let trimmed = location.trim_end_matches('/').trim_end_matches("/.git");
    let name = trimmed.rsplit(['/', ':']).next().unwrap_or_default();
    let name = name.strip_suffix(".git").unwrap_or(name);
    let slug: String = name
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    if slug.is_empty() { "repo".to_string() } else { slug }
}

/// What `base` may name, in order: a branch of the repository, a tag, a commit id.
fn base_candidates(base: &str) -> Vec<String> {
    let mut candidates = vec![format!("refs/remotes/origin/{base}"), format!("refs/tags/{base}")];
    if (4..=64).contains(&base.len()) && base.chars().all(|c| c.is_ascii_hexdigit()) {
        candidates.push(base.to_string());
    }
    candidates
}

/// The branch checked out in the worktree at `path`, from `git worktree list --porcelain`.
fn branch_of_worktree(listing: &str, path: &Path) -> Option<String> {
    let header = format!("worktree {}", path.display());
    let block = listing.split("\n\n").find(|block| block.lines().next() == Some(header.as_str()))?;
    block.lines().find_map(|line| line.strip_prefix("branch refs/heads/")).map(str::to_string)
}

/// Creates `dir` if needed and returns its canonical path: worktrees record the paths
/// they are given, and a workspace's path is compared with what git lists.
fn create_absolute_dir(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::canonicalize(dir)
}

fn io_error(repo: &str, path: &Path, cause: std::io::Error) -> WorkspaceError {
    WorkspaceError::Io { repo: repo.to_string(), path: path.to_path_buf(), cause }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_are_readable_and_stable() {
        for (location, slug) in [
            ("https://example.com/acme/api.git", "api"),
            ("git@github.com:acme/Web-App.git", "web-app"),
            ("ssh://git@host/x/", "x"),
            ("/srv/git/tools/.git", "tools"),
            ("/srv/git/a.b", "a-b"),
            ("file:///", "repo"),
        ] {
            let name = mirror_name(location);
            assert_eq!(name, mirror_name(location));
            assert_eq!(name.rsplit_once('-').map(|(s, hash)| (s, hash.len())), Some((slug, 12)), "{location}");
        }
        assert_ne!(mirror_name("/srv/api"), mirror_name("file:///srv/api"));
    }

    #[test]
    fn local_paths_and_urls() {
        for local in ["/srv/api", "../api", "api", "./a:b"] {
            assert!(is_local_path(local), "{local}");
        }
        for remote in ["https://host/api", "file:///srv/api", "git@host:api", "host:a/b"] {
            assert!(!is_local_path(remote), "{remote}");
        }
    }

    #[test]
    fn a_base_is_a_branch_or_tag_of_the_repository_or_a_commit() {
        assert_eq!(base_candidates("main"), ["refs/remotes/origin/main", "refs/tags/main"]);
        assert_eq!(base_candidates("abc123"), ["refs/remotes/origin/abc123", "refs/tags/abc123", "abc123"]);
    }

    #[test]
    fn finds_the_branch_of_a_listed_worktree() {
        let listing = "worktree /m.git\nbare\n\nworktree /w/r1\nHEAD 1234\nbranch refs/heads/agent/a\n\n\
                       worktree /w/r2\nHEAD 5678\ndetached";
        assert_eq!(branch_of_worktree(listing, Path::new("/w/r1")).as_deref(), Some("agent/a"));
        assert_eq!(branch_of_worktree(listing, Path::new("/w/r2")), None);
        assert_eq!(branch_of_worktree(listing, Path::new("/w/r3")), None);
    }
}
