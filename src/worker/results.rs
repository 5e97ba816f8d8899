//! What a run produced, read from its workspace after the agent phase: the commits on its
//! branch since the base, the files they change with a diff stat, what the agent left
//! uncommitted, which of those changes fall outside the task's `paths`, and the push of
//! the branch to the real repository when none do.
//!
//! Everything is read through the workspace's `.git`, which holds the run's branch whatever
//! the kind of workspace (an overlay's own repository, or a worktree's link to the
//! mirror). Uncommitted changes count as changes: they are reported, and checked against
//! `paths` like committed ones, but they are never committed or pushed for the agent.
//! Ignored files (build output, say) are not reported.
//!
//! Git's output is read with `-z`, so paths with spaces, quotes or newlines come through
//! as they are; a path that is not UTF-8 is reported lossily.

use std::collections::{BTreeSet, HashMap};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use super::workspace::{Git, Workspace, WorkspaceError};
use crate::runs::RunResult;

/// The most entries of each list `RunChanges::record` keeps.
pub const MAX_LISTED: usize = 1000;

/// Why a run's changes could not be read or its branch was not pushed.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("invalid glob `{pattern}` in `paths`: {reason}")]
    Glob { pattern: String, reason: String },
    #[error("{repo}: cannot read the output of `git {command}`: {detail}")]
    Output { repo: String, command: String, detail: String },
    #[error("{repo}: not pushing `{branch}`: the run changed files outside its `paths`: {}", paths.join(", "))]
    OutOfScope { repo: String, branch: String, paths: Vec<String> },
}

/// What a run changed, as of its branch's tip when collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunChanges {
    /// The commit the branch started at.
    pub base: String,
    /// The branch's tip: what `push` pushes.
    pub head: String,
    /// The commits in `base..head`, oldest first.
    pub commits: Vec<Commit>,
    /// The files that differ between `base` and `head`, in git's order (by path).
    pub files: Vec<ChangedFile>,
    pub diff_stat: DiffStat,
    /// Paths with changes in the worktree or the index that `head` does not have,
    /// untracked files included, sorted.
    pub uncommitted: Vec<String>,
    /// Changed or uncommitted paths (both sides of a rename) that no glob of the task's
    /// `paths` matches, sorted. A run with any is not pushed.
    pub out_of_scope: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Commit {
    pub id: String,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedFile {
    pub path: String,
    pub status: FileStatus,
    /// The path before a rename.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// Lines added and removed; `None` for a binary file.
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
}

/// How a file changed, as git's `--name-status` letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileStatus {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "M")]
    Modified,
    #[serde(rename = "D")]
    Deleted,
    #[serde(rename = "R")]
    Renamed,
    /// A file became a symlink or a submodule, or the other way round.
    #[serde(rename = "T")]
    TypeChanged,
}

/// Totals of `git diff --numstat base head`. A binary file counts as changed, with no lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DiffStat {
    pub files_changed: usize,
    pub insertions: u64,
    pub deletions: u64,
}

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The repository's `refs/heads/{branch}` is now `commit`.
    Pushed { branch: String, commit: String },
    /// The branch has no commits since its base: nothing was pushed.
    NoCommits,
}

impl RunChanges {
    /// Neither commits nor uncommitted changes.
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty() && self.uncommitted.is_empty()
    }

    /// Records the changes in `result.details` (`base`, `head`, `commits`, `files`,
    /// `diff_stat`, `uncommitted`, `out_of_scope`), which is where `RunResult` keeps what
    /// the worker reports besides the summary and exit code.
    /// Each list keeps its first `MAX_LISTED` entries; a longer one's full length is
    /// in `{name}_total` (a run that rewrote a whole tree must still be reportable).
    pub fn record(&self, result: &mut RunResult) {
        // Serializing plain strings and numbers cannot fail.
        let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(self) else { return };
        for name in ["commits", "files", "uncommitted", "out_of_scope"] {
            if let Some(serde_json::Value::Array(items)) = fields.get_mut(name)
                && items.len() > MAX_LISTED
            {
                let total = items.len();
                items.truncate(MAX_LISTED);
                fields.insert(format!("{name}_total"), total.into());
            }
        }
        result.details.extend(fields);
    }
}

/// Reads what the run in `workspace` changed. `paths` are the task's globs: `*` and `?`
/// stay within one path component, `**` crosses them, `dir/` is everything under `dir`,
/// and no globs match nothing.
pub fn collect(workspace: &Workspace, paths: &[String]) -> Result<RunChanges, ResultsError> {
    let scope = scope(paths)?;
    let repo = workspace.mirror().location();
    let base = workspace.base_commit().to_string();
    let status =
        workspace_git(workspace).args(["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"]).run()?;
    let uncommitted = parse_status(&status).map_err(|detail| output_error(repo, "status", detail))?;
    // The branch's tip, from the status when the workspace is on it (one git process
    // fewer), else asked for.
    let head = match status_head(&status) {
        Some((branch, commit)) if branch == workspace.branch() => commit.to_string(),
        _ => workspace_git(workspace)
            .args(["rev-parse", "--verify", "--end-of-options"])
            .args([format!("refs/heads/{}^{{commit}}", workspace.branch())])
            .run()?,
    };

    // A run that committed nothing (an audit, a review) has no log or diff to read.
    let (commits, files) = if head == base { (Vec::new(), Vec::new()) } else { committed(workspace, &base, &head)? };

    let touched = files.iter().flat_map(|file| [Some(&file.path), file.old_path.as_ref()]).flatten();
    let out_of_scope: BTreeSet<&String> = touched.chain(&uncommitted).filter(|path| !scope.is_match(path)).collect();
    let changes = RunChanges {
        diff_stat: diff_stat(&files),
        out_of_scope: out_of_scope.into_iter().cloned().collect(),
        base,
        head,
        commits,
        files,
        uncommitted,
    };
    tracing::info!(
        run_id = %workspace.run(), repo, branch = workspace.branch(), commits = changes.commits.len(),
        files = changes.files.len(), uncommitted = changes.uncommitted.len(),
        out_of_scope = changes.out_of_scope.len(), "Collected the run's changes"
    );
    Ok(changes)
}

/// The commits in `base..head` and the files they change.
fn committed(workspace: &Workspace, base: &str, head: &str) -> Result<(Vec<Commit>, Vec<ChangedFile>), ResultsError> {
    let repo = workspace.mirror().location();
    let log = mirror_git(workspace)
        .args(["log", "-z", "--topo-order", "--reverse", "--no-color", "--no-show-signature", "--encoding=UTF-8"])
        .args(["--format=%H %s", &format!("{base}..{head}"), "--"])
        .run()?;
    let commits = parse_log(&log).map_err(|detail| output_error(repo, "log", detail))?;

    let diff = ["diff", "-z", "-M", "--no-color", "--no-ext-diff", "--no-textconv"];
    let names = mirror_git(workspace).args(diff).args(["--name-status", base, head, "--"]).run()?;
    let numstat = mirror_git(workspace).args(diff).args(["--numstat", base, head, "--"]).run()?;
    let files = parse_name_status(&names)
        .and_then(|files| add_line_counts(files, &numstat))
        .map_err(|detail| output_error(repo, "diff", detail))?;
    Ok((commits, files))
}

/// Pushes `changes.head` to the repository's `refs/heads/{branch}`, never forced: the
/// branch is new there or moves forward. Refuses when anything is out of scope, and does
/// nothing when there are no commits; whether the task pushes at all is the caller's call.
///
/// It pushes from the mirror (reading the workspace's objects) to the mirror's location,
/// not from the workspace to the remote named `origin`: the workspace's config, which the
/// agent can write, could give `origin` another push URL, rewrite URLs or run programs.
/// The commit collected is pushed, not the branch as it is now, so what was checked is
/// what lands.
pub fn push(workspace: &Workspace, changes: &RunChanges) -> Result<PushOutcome, ResultsError> {
    let repo = workspace.mirror().location();
    let branch = workspace.branch();
    if !changes.out_of_scope.is_empty() {
        return Err(ResultsError::OutOfScope {
            repo: repo.to_string(),
            branch: branch.to_string(),
            paths: changes.out_of_scope.clone(),
        });
    }
    if changes.commits.is_empty() {
        tracing::info!(run_id = %workspace.run(), repo, branch, "No commits to push");
        return Ok(PushOutcome::NoCommits);
    }
    mirror_git(workspace)
        .args(["push", "--quiet", "--no-verify", "--no-follow-tags", "--no-signed"])
        .args(["--recurse-submodules=no", repo, &format!("{}:refs/heads/{branch}", changes.head)])
        .run()?;
    tracing::info!(run_id = %workspace.run(), repo, branch, commit = changes.head, "Pushed the branch");
    Ok(PushOutcome::Pushed { branch: branch.to_string(), commit: changes.head.clone() })
}

/// A git command on the mirror that also reads the workspace's objects (where an overlay
/// workspace's new commits are). Its config is the mirror's, which the agent never had
/// in reach, so a `.git/config` the agent wrote (an `insteadOf` that redirects the push,
/// an `sshCommand`, a credential helper) has no say in reading history or pushing.
fn mirror_git(workspace: &Workspace) -> Git<'_> {
    let mirror = workspace.mirror();
    let git = Git::new(mirror.location(), workspace.path(), Some(mirror.path()));
    let objects = workspace.path().join(".git").join("objects");
    if objects.is_dir() { git.with_objects_of(&objects) } else { git }
}

/// A git command on the workspace's repository, with the workspace as its working tree.
pub(super) fn workspace_git(workspace: &Workspace) -> Git<'_> {
    Git::new(workspace.mirror().location(), workspace.path(), Some(&workspace.path().join(".git")))
}

fn scope(paths: &[String]) -> Result<GlobSet, ResultsError> {
    let mut set = GlobSetBuilder::new();
    for pattern in paths {
        let glob = GlobBuilder::new(&crate::runs::scope::normalized(pattern))
            .literal_separator(true)
            .build()
            .map_err(|error| ResultsError::Glob { pattern: pattern.clone(), reason: error.kind().to_string() })?;
        set.add(glob);
    }
    set.build().map_err(|error| ResultsError::Glob { pattern: paths.join(", "), reason: error.kind().to_string() })
}

fn output_error(repo: &str, command: &str, detail: String) -> ResultsError {
    ResultsError::Output { repo: repo.to_string(), command: command.to_string(), detail }
}

/// The NUL-separated fields of `-z` output.
fn fields(output: &str) -> impl Iterator<Item = &str> {
    output.split('\0').filter(|field| !field.is_empty())
}

/// `git log -z --format='%H %s'`.
fn parse_log(output: &str) -> Result<Vec<Commit>, String> {
    fields(output)
        .map(|record| {
            let (id, subject) = record.split_once(' ').unwrap_or((record, ""));
            if id.len() < 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("`{record}` does not start with a commit id"));
            }
            Ok(Commit { id: id.to_string(), subject: subject.to_string() })
        })
        .collect()
}

/// `git diff -z --name-status`: a status (`R` with a score), then one path, or the old and
/// the new for a rename. Copies are not detected, so never reported.
fn parse_name_status(output: &str) -> Result<Vec<ChangedFile>, String> {
    let mut fields = fields(output);
    let mut files = Vec::new();
    while let Some(letter) = fields.next() {
        let status = match letter.as_bytes().first() {
            Some(b'A') => FileStatus::Added,
            Some(b'M') => FileStatus::Modified,
            Some(b'D') => FileStatus::Deleted,
            Some(b'R') => FileStatus::Renamed,
            Some(b'T') => FileStatus::TypeChanged,
            _ => return Err(format!("unexpected status `{letter}`")),
        };
        let mut path = || fields.next().map(str::to_string).ok_or_else(|| format!("no path after `{letter}`"));
        let old_path = if status == FileStatus::Renamed { Some(path()?) } else { None };
        files.push(ChangedFile { path: path()?, status, old_path, insertions: None, deletions: None });
    }
    Ok(files)
}

/// Fills in each file's line counts from `git diff -z --numstat`: `added\tdeleted\tpath`,
/// or `added\tdeleted\t` then the old and the new path for a rename; `-` for a binary file.
fn add_line_counts(mut files: Vec<ChangedFile>, output: &str) -> Result<Vec<ChangedFile>, String> {
    let mut counts = HashMap::new();
    let mut fields = fields(output);
    while let Some(record) = fields.next() {
        let mut parts = record.splitn(3, '\t');
        let (Some(added), Some(deleted), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("`{record}` is not a numstat line"));
        };
        let path = if path.is_empty() {
            fields.next();
            fields.next().ok_or_else(|| format!("no new path after `{record}`"))?
        } else {
            path
        };
        let count = |text: &str| match text {
            "-" => Ok(None),
            _ => text.parse().map(Some).map_err(|_| format!("`{text}` is not a line count")),
        };
        counts.insert(path, (count(added)?, count(deleted)?));
    }
    for file in &mut files {
        (file.insertions, file.deletions) = counts.get(file.path.as_str()).copied().unwrap_or_default();
    }
    Ok(files)
}

fn diff_stat(files: &[ChangedFile]) -> DiffStat {
    DiffStat {
        files_changed: files.len(),
        insertions: files.iter().filter_map(|file| file.insertions).sum(),
        deletions: files.iter().filter_map(|file| file.deletions).sum(),
    }
}

/// The checked-out branch and its commit from `git status --porcelain=v2 --branch -z`
/// headers; `None` when HEAD has no commit. A detached HEAD is `(detached)`, which is no
/// branch name.
fn status_head(output: &str) -> Option<(&str, &str)> {
    let header = |name: &str| fields(output).find_map(|record| record.strip_prefix(name));
    let commit = header("# branch.oid ").filter(|id| id.len() >= 40 && id.chars().all(|c| c.is_ascii_hexdigit()))?;
    Some((header("# branch.head ")?, commit))
}

/// The paths `git status --porcelain=v2 -z` lists: changed (`1`), renamed in the index
/// (`2`, then the old path), unmerged (`u`) and untracked (`?`) entries, sorted.
fn parse_status(output: &str) -> Result<Vec<String>, String> {
    let mut fields = fields(output);
    let mut paths = BTreeSet::new();
    while let Some(record) = fields.next() {
        // The path is the last of a fixed number of space-separated fields.
        let field_count = match record.as_bytes().first() {
            Some(b'1') => 9,
            Some(b'2') => 10,
            Some(b'u') => 11,
            Some(b'?') => 2,
            Some(b'!' | b'#') => continue,
            _ => return Err(format!("unexpected entry `{record}`")),
        };
        let path = record.splitn(field_count, ' ').nth(field_count - 1);
        paths.insert(path.ok_or_else(|| format!("no path in `{record}`"))?.to_string());
        if field_count == 10 {
            paths.insert(fields.next().ok_or_else(|| format!("no old path after `{record}`"))?.to_string());
        }
    }
    Ok(paths.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_names_and_line_counts_with_renames_and_binaries() {
        let names = "M\0a b.txt\0R087\0old\tname\0new\nname\0D\0gone\0A\0logo.png\0";
        let numstat = "1\t2\ta b.txt\0" /* rename: */
            .to_string()
            + "3\t0\t\0old\tname\0new\nname\0"
            + "0\t4\tgone\0-\t-\tlogo.png\0";
        let files = parse_name_status(names).and_then(|files| add_line_counts(files, &numstat)).unwrap();
        assert_eq!(
            files,
            [
                file("a b.txt", FileStatus::Modified, None, Some((1, 2))),
                file("new\nname", FileStatus::Renamed, Some("old\tname"), Some((3, 0))),
                file("gone", FileStatus::Deleted, None, Some((0, 4))),
                file("logo.png", FileStatus::Added, None, None),
            ]
        );
        assert_eq!(diff_stat(&files), DiffStat { files_changed: 4, insertions: 4, deletions: 6 });
        assert!(parse_name_status("X\0what\0").is_err());
        assert!(parse_name_status("M\0").is_err());
        assert!(add_line_counts(Vec::new(), "x\ty\tz\0").is_err());
    }

    #[test]
    fn reads_every_kind_of_status_entry() {
        let status = "1 .M N... 100644 100644 100644 aaa aaa src/a b.rs\0\
                      2 R. N... 100644 100644 100644 aaa aaa R100 new name\0old name\0\
                      u UU N... 100644 100644 100644 100644 a b c conflict\0\
                      ? untracked dir/x\0";
        assert_eq!(
            parse_status(status).unwrap(),
            ["conflict", "new name", "old name", "src/a b.rs", "untracked dir/x"]
        );
        assert_eq!(parse_status("").unwrap(), Vec::<String>::new());
        assert!(parse_status(" M oops\0").is_err());
    }

    #[test]
    fn reads_commits_oldest_first_as_listed() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let log = format!("{id} first: subject\0{id} \0");
        assert_eq!(
            parse_log(&log).unwrap(),
            [
                Commit { id: id.into(), subject: "first: subject".into() },
                Commit { id: id.into(), subject: String::new() }
            ]
        );
        assert!(parse_log("warning: something\0").is_err());
    }

    #[test]
    fn globs_stay_within_a_component_unless_doubled() {
        let check = |globs: &[&str], path: &str| {
            scope(&globs.iter().map(|glob| glob.to_string()).collect::<Vec<_>>()).unwrap().is_match(path)
        };
        assert!(check(&["**"], "a/b/c.rs"));
        assert!(check(&["src/**"], "src/a/b.rs"));
        assert!(!check(&["src/**"], "README.md"));
        assert!(check(&["*.md"], "README.md"));
        assert!(!check(&["*.md"], "docs/x.md"));
        assert!(check(&["**/*.md"], "docs/x.md"));
        assert!(!check(&[], "README.md"));
        assert!(matches!(scope(&["a/[".to_string()]), Err(ResultsError::Glob { .. })));
    }

    #[test]
    fn the_head_comes_from_the_status_headers_only_when_on_a_branch_with_a_commit() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let on_branch = format!("# branch.oid {commit}\0# branch.head agent/x\0? new.txt\0");
        assert_eq!(status_head(&on_branch), Some(("agent/x", commit)));
        assert_eq!(parse_status(&on_branch).unwrap(), ["new.txt"]);
        let detached = format!("# branch.oid {commit}\0# branch.head (detached)\0");
        assert_eq!(status_head(&detached), Some(("(detached)", commit)));
        assert_eq!(status_head("# branch.oid (initial)\0# branch.head main\0"), None);
    }

    #[test]
    fn a_path_ending_in_a_slash_is_everything_under_it_as_the_scheduler_reads_it() {
        let scope = scope(&["src/".to_string()]).unwrap();
        assert!(scope.is_match("src/lib.rs") && scope.is_match("src/a/b.rs"));
        assert!(!scope.is_match("srcs/x.rs") && !scope.is_match("README.md"));
    }

    #[test]
    fn a_long_list_is_recorded_cut_with_its_total() {
        let changes = RunChanges {
            base: "a".into(),
            head: "a".into(),
            commits: Vec::new(),
            files: Vec::new(),
            diff_stat: DiffStat::default(),
            uncommitted: (0..MAX_LISTED + 5).map(|n| format!("f{n}")).collect(),
            out_of_scope: vec!["x".into()],
        };
        let mut result = RunResult::default();
        changes.record(&mut result);
        assert_eq!(result.details["uncommitted"].as_array().unwrap().len(), MAX_LISTED);
        assert_eq!(result.details["uncommitted_total"], MAX_LISTED + 5);
        assert_eq!(result.details["out_of_scope"], serde_json::json!(["x"]));
        assert!(!result.details.contains_key("out_of_scope_total"));
    }
}
