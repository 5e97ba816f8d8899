//! Overlayfs mounts for workspaces, through mount(2) and umount2(2): a workspace directory
//! whose lower layer is a shared, never-written checkout and whose upper layer takes the
//! run's changes. No git here; `workspace.rs` makes the lower layer and the branch.
//!
//! Layout: the merged directory is the workspace, `{workspaces_root}/r{id}`; its layers are
//! beside it, outside the agent's reach, in `{workspaces_root}/r{id}.layers/{upper,work}`.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// How many mounts stacked on one workspace `unmount` takes off before it gives up.
const MAX_STACKED: usize = 8;

/// The directory beside `merged` that holds its upper and work layers.
pub(super) fn layers_of(merged: &Path) -> PathBuf {
    let mut name = merged.file_name().unwrap_or_default().to_os_string();
    name.push(".layers");
    merged.with_file_name(name)
}

/// Whether a mounted overlay (of any process in this mount namespace) has `lower` as its
/// lower layer. Unknown (no `/proc`) counts as in use.
pub(super) fn in_use_as_lower(lower: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return true };
    let Ok(lower) = option(lower) else { return true };
    let wanted = format!("lowerdir={lower}");
    mounts
        .lines()
        .filter(|line| line.contains(" - overlay "))
        .any(|line| line.split([' ', ',']).any(|option| option == wanted))
}

/// Mounts an overlay of `lower` at `merged` (created if missing), with new upper and work
/// directories in `layers_of(merged)`. Files are not setuid and devices are not devices.
pub(super) fn mount(lower: &Path, merged: &Path) -> io::Result<()> {
    let layers = layers_of(merged);
    let (upper, work) = (layers.join("upper"), layers.join("work"));
    for dir in [&upper, &work, merged] {
        std::fs::create_dir_all(dir)?;
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", option(lower)?, option(&upper)?, option(&work)?);
    let options = CString::new(options)?;
    let target = c_path(merged)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), flags, options.as_ptr().cast())
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Unmounts whatever is mounted at `merged`; a busy mount (a process still inside it) is
/// detached lazily, gone from view at once and released when its last user lets go. A
/// directory that is not a mount point, or not there, is fine.
pub(super) fn unmount(merged: &Path) -> io::Result<()> {
    let target = c_path(merged)?;
    for _ in 0..MAX_STACKED {
        // SAFETY: `target` is a NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
            continue;
        }
        let cause = io::Error::last_os_error();
        match cause.raw_os_error() {
            Some(libc::EINVAL | libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) => {
                // SAFETY: as above.
                if unsafe { libc::umount2(target.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            _ => return Err(cause),
        }
    }
    Err(io::Error::other(format!("more than {MAX_STACKED} mounts are stacked on {}", merged.display())))
}

/// Whether overlays can be mounted under `root`, found out once per directory and process
/// by mounting an empty one; why not is logged once.
pub(super) fn available(root: &Path) -> Result<(), String> {
    let mut known = known().lock().unwrap_or_else(PoisonError::into_inner);
    known
        .entry(root.to_path_buf())
        .or_insert_with(|| {
            let probed = probe(root).map_err(|cause| format!("cannot mount an overlay under {}: {cause}", root.display()));
            if let Err(reason) = &probed {
                tracing::warn!(root = %root.display(), reason, "Overlays are unavailable, workspaces are repositories of their own");
            }
            probed
        })
        .clone()
}

/// Records that a mount under `root` failed although the probe passed (a lower layer on a
/// file system overlayfs refuses, say): later workspaces there are clones. Logged once.
pub(super) fn give_up(root: &Path, reason: String) {
    let mut known = known().lock().unwrap_or_else(PoisonError::into_inner);
    if known.get(root).is_none_or(Result::is_ok) {
        tracing::warn!(root = %root.display(), reason, "Overlays are unavailable, workspaces are repositories of their own");
        known.insert(root.to_path_buf(), Err(reason));
    }
}

fn known() -> &'static Mutex<HashMap<PathBuf, Result<(), String>>> {
    static KNOWN: OnceLock<Mutex<HashMap<PathBuf, Result<(), String>>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// Mounts and unmounts an overlay of an empty directory in a scratch directory under `root`.
fn probe(root: &Path) -> io::Result<()> {
    let scratch = root.join(format!(".overlay-probe-{}", std::process::id()));
    let (lower, merged) = (scratch.join("lower"), scratch.join("merged"));
    std::fs::create_dir_all(&lower)?;
    let mounted = mount(&lower, &merged).and_then(|()| unmount(&merged));
    let removed = std::fs::remove_dir_all(&scratch);
    mounted.and(removed)
}

/// A path as a mount option: overlayfs splits options at `,` and layers at `:`.
fn option(path: &Path) -> io::Result<&str> {
    match path.to_str() {
        Some(text) if !text.contains([',', ':', '\\', '\n']) => Ok(text),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} cannot be an overlayfs option (not UTF-8, or has `,`, `:` or `\\`)", path.display()),
        )),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_beside_the_workspace() {
        assert_eq!(layers_of(Path::new("/w/r12")), Path::new("/w/r12.layers"));
    }

    #[test]
    fn paths_that_would_split_options_are_refused() {
        assert!(option(Path::new("/cache/mirrors/api-0123.bases/abcd")).is_ok());
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            assert_eq!(option(Path::new(bad)).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_fine() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // umount2 answers EPERM before it looks at the path.
        }
        let dir = tempfile::tempdir().unwrap();
        unmount(dir.path()).unwrap();
        unmount(&dir.path().join("missing")).unwrap();
    }
}
