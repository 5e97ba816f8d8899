//! What a root worker's jail must not show: the files and directories under the read-only
//! system directories that others on the host may not read.
//!
//! The jail's uid 0 is the host's root (the user namespace maps the caller to itself), so
//! without this a phase of a root worker reads `/etc/ssl/private`, `/etc/sudoers` and any
//! other file only root may read. Each path found here gets an empty file, or an empty
//! read-only tmpfs for a directory, over it (`fs.rs`); what is inside a hidden directory
//! is not looked at. A worker that is not root needs none of this: the kernel already
//! refuses the jail what the worker's user may not read.
//!
//! `/etc` is small (about a thousand entries) and changes (a key is installed while the
//! worker runs): its walk is kept only while inotify reports no change under it (a file
//! created, moved, removed or its mode changed), and at most [`FRESH_MAX_AGE`]. The other
//! directories (`/usr` holds a hundred thousand entries and more) are walked once per
//! worker process and remembered.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The system directory walked again whenever it changed.
const FRESH: &str = "/etc";

/// How long a walk of [`FRESH`] is kept at most: for what inotify does not see (a mount
/// over a path in it, a mode changed through a hard link elsewhere).
pub const FRESH_MAX_AGE: Duration = Duration::from_secs(30);

/// The changes under a watched directory that can change what is hidden.
fn watched_changes() -> AddWatchFlags {
    AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// The last walk of one directory, with the inotify instance that watches every directory
/// it read.
struct Watched {
    dir: PathBuf,
    found: Vec<PathBuf>,
    inotify: Inotify,
    at: Instant,
}

impl Watched {
    /// Whether nothing was reported since the walk (an event, or a lost one, means a change).
    fn quiet(&self) -> bool {
        matches!(self.inotify.read_events(), Err(Errno::EAGAIN))
    }
}

/// A directory's walk, kept while it did not change.
struct FreshWalk(Mutex<Option<Watched>>);

static FRESH_WALK: FreshWalk = FreshWalk(Mutex::new(None));

impl FreshWalk {
    /// What others cannot read under `dir`, and whether it was walked for this answer.
    fn get(&self, dir: &Path) -> Result<(Vec<PathBuf>, bool), TooMany> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(walk) = kept.as_ref()
            && walk.dir == dir
            && walk.at.elapsed() < FRESH_MAX_AGE
            && walk.quiet()
        {
            return Ok((walk.found.clone(), false));
        }
        *kept = None;
        let at = Instant::now();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        let mut watching = inotify.is_some();
        // Each directory is watched before it is read, so a change during the walk is
        // reported to the next phase.
        let found = walk(dir, |directory| {
            if let Some(inotify) = &inotify {
                watching &= inotify.add_watch(directory, watched_changes()).is_ok();
            }
        })?;
        if let Some(inotify) = inotify.filter(|_| watching) {
            *kept = Some(Watched { dir: dir.to_path_buf(), found: found.clone(), inotify, at });
        }
        Ok((found, true))
    }
}

/// The most paths hidden in one jail (each is a mount): past it, the walk stops and the
/// jail is refused rather than built with something left showing.
pub const MAX_HIDDEN: usize = 4096;

/// Too many paths that others may not read, under `dir`.
#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_HIDDEN} files and directories under {} are readable only by their owner or group", dir.display())]
pub struct TooMany {
    pub dir: PathBuf,
}

static WALKED: Mutex<Option<HashMap<PathBuf, Arc<Vec<PathBuf>>>>> = Mutex::new(None);

/// What to hide under `system`, for a jail of a worker whose effective uid is `uid`:
/// nothing unless it is root.
pub fn for_uid(uid: u32, system: &[PathBuf]) -> Result<Vec<PathBuf>, TooMany> {
    walk_system(uid, system, Path::new(FRESH))
}

/// [`for_uid`], with `fresh` as the directory walked for every phase.
fn walk_system(uid: u32, system: &[PathBuf], fresh: &Path) -> Result<Vec<PathBuf>, TooMany> {
    if uid != 0 {
        return Ok(Vec::new());
    }
    let mut hidden = Vec::new();
    for dir in system {
        if dir == fresh {
            hidden.extend(FRESH_WALK.get(dir)?.0);
        } else {
            hidden.extend(remembered(dir)?.iter().cloned());
        }
        if hidden.len() > MAX_HIDDEN {
            return Err(TooMany { dir: dir.clone() });
        }
    }
    Ok(hidden)
}

/// `dir`'s walk from earlier in this process, or a new one.
fn remembered(dir: &Path) -> Result<Arc<Vec<PathBuf>>, TooMany> {
    if let Some(found) = WALKED.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|m| m.get(dir)) {
        return Ok(found.clone());
    }
    // Walked without the lock held: two phases starting at once may both walk, once.
    let found = Arc::new(unreadable(dir)?);
    let mut walked = WALKED.lock().unwrap_or_else(PoisonError::into_inner);
    walked.get_or_insert_with(HashMap::new).insert(dir.to_path_buf(), found.clone());
    Ok(found)
}

/// The files and directories under `root` (itself included) that others may not read
/// (a directory: list and enter), without following symlinks and without descending into
/// a directory that is itself listed. Entries that vanish or cannot be read are skipped:
/// the jail's root could not read them either, once hidden or gone.
pub fn unreadable(root: &Path) -> Result<Vec<PathBuf>, TooMany> {
    walk(root, |_| {})
}

/// [`unreadable`], calling `reading` with each directory before it is read.
fn walk(root: &Path, mut reading: impl FnMut(&Path)) -> Result<Vec<PathBuf>, TooMany> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        let mode = metadata.permissions().mode();
        if metadata.is_dir() {
            if mode & 0o005 != 0o005 {
                found.push(path);
                continue;
            }
            reading(&path);
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        } else if !metadata.file_type().is_symlink() && mode & 0o004 == 0 {
            found.push(path);
        }
        if found.len() > MAX_HIDDEN {
            return Err(TooMany { dir: root.to_path_buf() });
        }
    }
    found.sort();
    Ok(found)
}

/// Leaves out what a spec binds itself, and the directories holding it: the operator
/// named those (an agent's login state), and a bind cannot be made under an empty
/// read-only tmpfs.
pub fn except_bound(hidden: Vec<PathBuf>, bound: &[&Path]) -> Vec<PathBuf> {
    hidden.into_iter().filter(|path| !bound.iter().any(|b| b.starts_with(path))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, mode: u32) {
        std::fs::write(path, "x").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn dir(path: &Path, mode: u32) {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn what_others_cannot_read_is_found_and_not_looked_into() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(&r.join("public"), 0o644);
        write(&r.join("key"), 0o600);
        write(&r.join("group"), 0o640);
        write(&r.join("write-only"), 0o622);
        dir(&r.join("open"), 0o755);
        write(&r.join("open/inner-key"), 0o400);
        write(&r.join("open/inner"), 0o444);
        dir(&r.join("closed"), 0o700);
        write(&r.join("closed/inside"), 0o600);
        dir(&r.join("list-only"), 0o754);
        dir(&r.join("enter-only"), 0o751);
        std::os::unix::fs::symlink(r.join("key"), r.join("link")).unwrap();
        let found = unreadable(r).unwrap();
        let names: Vec<_> = found.iter().map(|p| p.strip_prefix(r).unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["closed", "enter-only", "group", "key", "list-only", "open/inner-key", "write-only"]);
        // Only root hides anything.
        assert!(for_uid(1000, &[r.to_path_buf()]).unwrap().is_empty());
        assert_eq!(for_uid(0, &[r.to_path_buf()]).unwrap(), found);
    }

    #[test]
    fn a_root_others_cannot_read_is_hidden_whole_and_too_many_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(unreadable(root.path()).unwrap(), [root.path()]);
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for n in 0..=MAX_HIDDEN {
            write(&root.path().join(n.to_string()), 0o600);
        }
        let error = unreadable(root.path()).unwrap_err().to_string();
        assert!(error.contains(&root.path().display().to_string()), "{error}");
    }

    #[test]
    fn what_a_spec_binds_and_its_parents_stay() {
        let hidden = vec![PathBuf::from("/etc/agent"), PathBuf::from("/etc/agent-other"), PathBuf::from("/etc/x/key")];
        let kept = except_bound(hidden, &[Path::new("/etc/agent/login.json"), Path::new("/etc/x")]);
        assert_eq!(kept, [PathBuf::from("/etc/agent-other"), PathBuf::from("/etc/x/key")]);
    }

    #[test]
    fn the_fresh_directory_is_walked_again_and_the_others_are_remembered() {
        let (fresh, kept) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let system = [fresh.path().to_path_buf(), kept.path().to_path_buf()];
        assert!(walk_system(0, &system, fresh.path()).unwrap().is_empty());
        write(&fresh.path().join("new-key"), 0o600);
        write(&kept.path().join("new-key"), 0o600);
        assert_eq!(walk_system(0, &system, fresh.path()).unwrap(), [fresh.path().join("new-key")]);
    }

    #[test]
    fn a_walk_is_kept_until_something_under_it_changes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir(&r.join("sub"), 0o755);
        write(&r.join("sub/file"), 0o644);
        write(&r.join("key"), 0o600);
        let walks = FreshWalk(Mutex::new(None));
        let names = |found: &[PathBuf]| -> Vec<String> {
            found.iter().map(|p| p.strip_prefix(r).unwrap().display().to_string()).collect()
        };
        let (found, walked) = walks.get(r).unwrap();
        assert!(walked);
        assert_eq!(names(&found), ["key"]);
        // Nothing changed: the same answer without a walk.
        assert_eq!(walks.get(r).unwrap(), (found.clone(), false));
        // Every kind of change, in the directory or one below it, is walked again.
        let changes: [(&str, &dyn Fn()); 5] = [
            ("a mode made private", &|| {
                std::fs::set_permissions(r.join("sub/file"), std::fs::Permissions::from_mode(0o600)).unwrap()
            }),
            ("a new private file", &|| write(&r.join("sub/new"), 0o600)),
            ("a rename", &|| std::fs::rename(r.join("sub/new"), r.join("moved")).unwrap()),
            ("a removal", &|| std::fs::remove_file(r.join("moved")).unwrap()),
            ("a new private directory", &|| dir(&r.join("closed"), 0o700)),
        ];
        let expected = [
            vec!["key", "sub/file"],
            vec!["key", "sub/file", "sub/new"],
            vec!["key", "moved", "sub/file"],
            vec!["key", "sub/file"],
            vec!["closed", "key", "sub/file"],
        ];
        for ((what, change), expected) in changes.iter().zip(expected) {
            change();
            let (found, walked) = walks.get(r).unwrap();
            assert!(walked, "{what}");
            assert_eq!(names(&found), expected, "{what}");
            assert!(!walks.get(r).unwrap().1, "{what}: unchanged since");
        }
        // Another directory is walked, not answered from this one's walk.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(walks.get(other.path()).unwrap(), (Vec::new(), true));
    }

    #[test]
    fn exactly_the_most_hidden_paths_are_allowed_in_one_directory_and_across_several() {
        let fill = |count: usize| {
            let root = tempfile::tempdir().unwrap();
            std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            for n in 0..count {
                write(&root.path().join(n.to_string()), 0o600);
            }
            root
        };
        let full = fill(MAX_HIDDEN);
        assert_eq!(unreadable(full.path()).unwrap().len(), MAX_HIDDEN);
        let (half, other_half, one_more) = (fill(MAX_HIDDEN / 2), fill(MAX_HIDDEN / 2), fill(MAX_HIDDEN / 2 + 1));
        let two = [half.path().to_path_buf(), other_half.path().to_path_buf()];
        assert_eq!(walk_system(0, &two, Path::new(FRESH)).unwrap().len(), MAX_HIDDEN);
        let over = [half.path().to_path_buf(), one_more.path().to_path_buf()];
        let error = walk_system(0, &over, Path::new(FRESH)).unwrap_err();
        assert_eq!(error.dir, one_more.path());
    }
}
