//! The phase's filesystem: a fresh tmpfs root with the system read-only, a fresh /proc, a
//! minimal /dev, a private /tmp and home, and only the paths the spec names; then
//! `pivot_root` and the old root detached. Runs in the jail's PID 1, in its own mount
//! namespace.
//!
//! The host's root is first moved under a staging tmpfs (`/old`), so every source is
//! reached as `/old/<path>` even where the new tree covers it (a workspace under /tmp).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::pivot_root;

use super::helper::Failure;
use super::wire::Request;
use crate::sandbox::SandboxSpec;
use crate::sandbox::limits::Limits;

/// Device nodes bound from the host's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Files under /etc replaced by an empty one.
const MASKED: &[&str] = &["shadow", "shadow-", "gshadow", "gshadow-"];

const STAGE: &str = "/tmp";
const OLD: &str = "/old";
const NEW: &str = "/new";
const EMPTY: &str = "/empty";
const RESOLV: &str = "/resolv.conf";

/// One mount in the new tree, placed in order of depth so parents come first.
enum Place {
    Tmpfs { path: PathBuf, mode: &'static str },
    Bind { path: PathBuf, writable: bool },
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Tmpfs { path, .. } | Place::Bind { path, .. } => path,
        }
    }
}

/// Builds the tree and makes it the root.
pub fn build(request: &Request) -> Result<(), Failure> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| Failure::errno("make the mounts private", e))?;
    stage()?;
    tmpfs(Path::new(NEW), "0755")?;
    system(&request.system)?;
    hide(&request.hidden)?;
    special(&request.spec.limits)?;
    for place in places(&request.spec) {
        match place {
            Place::Tmpfs { path, mode } => {
                let target = inside(&path);
                make_dir(&target)?;
                sized_tmpfs(&target, mode, &request.spec.limits)?;
            }
            Place::Bind { path, writable } => bind(&path, writable)?,
        }
    }
    mask_etc()?;
    // The root's own directories (mount points, /home, ...) cannot be changed.
    set_attributes(Path::new(NEW), ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV, false)?;
    enter()
}

/// A tmpfs over /tmp becomes the root for a moment, the host's root under it at /old.
fn stage() -> Result<(), Failure> {
    tmpfs(Path::new(STAGE), "0755")?;
    for dir in [OLD, NEW] {
        make_dir(&Path::new(STAGE).join(&dir[1..]))?;
    }
    pivot_root(STAGE, &*format!("{STAGE}{OLD}")).map_err(|e| Failure::errno("pivot_root to the staging tmpfs", e))?;
    std::env::set_current_dir("/").map_err(|e| Failure::io("chdir /", &e))?;
    write_file(Path::new(EMPTY), b"", 0o400)?;
    write_file(Path::new(RESOLV), b"nameserver 127.0.0.1\n", 0o444)
}

/// The system directories, read-only, where present (a symlink stays a symlink).
fn system(dirs: &[PathBuf]) -> Result<(), Failure> {
    for dir in dirs {
        let source = old(dir);
        let Ok(metadata) = std::fs::symlink_metadata(&source) else { continue };
        if metadata.file_type().is_symlink() {
            let what = |e: &std::io::Error, verb: &str| Failure::io(&format!("{verb} {}", dir.display()), e);
            let link = std::fs::read_link(&source).map_err(|e| what(&e, "read the link"))?;
            let target = inside(dir);
            if let Some(parent) = target.parent() {
                make_dir(parent)?;
            }
            std::os::unix::fs::symlink(&link, target).map_err(|e| what(&e, "link"))?;
        } else if metadata.is_dir() {
            bind(dir, false)?;
        }
    }
    Ok(())
}

/// Covers each of `hidden` (under the system directories, what the host's others may not
/// read; see hidden.rs) with an empty file, or an empty read-only tmpfs for a directory.
/// A path gone since the worker looked is skipped.
fn hide(hidden: &[PathBuf]) -> Result<(), Failure> {
    for path in hidden {
        let Ok(metadata) = std::fs::symlink_metadata(old(path)) else { continue };
        let target = inside(path);
        if metadata.is_dir() {
            tmpfs(&target, "0755")?;
            set_attributes(&target, ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV, false)?;
        } else if !metadata.file_type().is_symlink() {
            bind_file(Path::new(EMPTY), &target)?;
        }
    }
    Ok(())
}

/// /proc (fresh: only the jail's processes), /dev (a few nodes, shm, pts) and /tmp.
fn special(limits: &Limits) -> Result<(), Failure> {
    let proc = inside(Path::new("/proc"));
    make_dir(&proc)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &proc, Some("proc"), flags, None::<&str>).map_err(|e| Failure::errno("mount /proc", e))?;

    let dev = inside(Path::new("/dev"));
    make_dir(&dev)?;
    tmpfs(&dev, "0755")?;
    for node in DEVICES {
        let source = Path::new(OLD).join("dev").join(node);
        let target = dev.join(node);
        write_file(&target, b"", 0o600)?;
        mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Failure::errno(&format!("bind /dev/{node}"), e))?;
    }
    let shm = dev.join("shm");
    make_dir(&shm)?;
    sized_tmpfs(&shm, "1777", limits)?;
    let pts = dev.join("pts");
    make_dir(&pts)?;
    // A terminal is a convenience: without devpts (an old kernel) the jail still works.
    let devpts = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    let links: &[(&str, &str)] = &[
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links.iter().chain(devpts.is_ok().then_some(&("ptmx", "pts/ptmx"))) {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(|e| Failure::io(&format!("link /dev/{name}"), &e))?;
    }
    set_attributes(&dev, ATTR_RDONLY, false)?;

    let tmp = inside(Path::new("/tmp"));
    make_dir(&tmp)?;
    sized_tmpfs(&tmp, "1777", limits)
}

/// The spec's mounts, parents first: home (empty, private), the workspace, the run
/// directory and the further paths.
fn places(spec: &SandboxSpec) -> Vec<Place> {
    let mut places = vec![
        Place::Tmpfs { path: spec.home.clone(), mode: "0700" },
        Place::Bind { path: spec.workspace.clone(), writable: true },
        Place::Bind { path: spec.run_dir.clone(), writable: true },
    ];
    places.extend(spec.paths.iter().map(|p| Place::Bind { path: p.path.clone(), writable: p.writable }));
    places.sort_by_key(|place| place.path().components().count());
    places
}

/// Binds the host's `path` at the same path inside, read-only unless `writable`.
fn bind(path: &Path, writable: bool) -> Result<(), Failure> {
    let source = old(path);
    let target = inside(path);
    let metadata = std::fs::metadata(&source).map_err(|e| Failure::io(&format!("find {}", path.display()), &e))?;
    if metadata.is_dir() {
        make_dir(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            make_dir(parent)?;
        }
        if std::fs::symlink_metadata(&target).is_err() {
            write_file(&target, b"", 0o600)?;
        }
    }
    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| Failure::errno(&format!("bind {}", path.display()), e))?;
    let attributes = if writable { ATTR_NOSUID | ATTR_NODEV } else { ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV };
    set_attributes(&target, attributes, true)
}

/// Hides /etc's password hashes and SSH host keys; points resolv.conf at the jail's DNS.
fn mask_etc() -> Result<(), Failure> {
    let etc = Path::new("/etc");
    let mut masked: Vec<PathBuf> = MASKED.iter().map(|name| etc.join(name)).collect();
    if let Ok(entries) = std::fs::read_dir(old(&etc.join("ssh"))) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("key") && !name.ends_with(".pub") {
                masked.push(etc.join("ssh").join(name));
            }
        }
    }
    for path in masked {
        if std::fs::symlink_metadata(old(&path)).is_ok_and(|m| m.is_file()) {
            bind_file(Path::new(EMPTY), &inside(&path))?;
        }
    }
    resolv_conf()
}

/// resolv.conf names 127.0.0.1, where the jail's DNS listens. Every query to any server
/// lands there anyway (the local default route), so a layout this does not follow (a
/// chain of links) only leaves a name that cannot be reached.
fn resolv_conf() -> Result<(), Failure> {
    let path = Path::new("/etc/resolv.conf");
    let Ok(metadata) = std::fs::symlink_metadata(old(path)) else { return Ok(()) };
    if metadata.is_file() {
        return bind_file(Path::new(RESOLV), &inside(path));
    }
    let Ok(link) = std::fs::read_link(old(path)) else { return Ok(()) };
    let target = if link.is_absolute() { link } else { Path::new("/etc").join(link) };
    let target = inside(&target);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
        return bind_file(Path::new(RESOLV), &target);
    }
    match target.parent().map(std::fs::create_dir_all) {
        // The target's directory is in the new root's own tmpfs (/run is not brought in).
        Some(Ok(())) => write_file(&target, b"nameserver 127.0.0.1\n", 0o444),
        _ => Ok(()),
    }
}

/// Makes the new tree the root and lets go of the old one.
fn enter() -> Result<(), Failure> {
    std::env::set_current_dir(NEW).map_err(|e| Failure::io("chdir to the new root", &e))?;
    pivot_root(".", ".").map_err(|e| Failure::errno("pivot_root to the new root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Failure::errno("detach the old root", e))?;
    std::env::set_current_dir("/").map_err(|e| Failure::io("chdir /", &e))
}

fn tmpfs(target: &Path, mode: &str) -> Result<(), Failure> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(&*format!("mode={mode}")))
        .map_err(|e| Failure::errno(&format!("mount a tmpfs on {}", target.display()), e))
}

/// A tmpfs a phase writes to (/tmp, home, /dev/shm): without a size, each could take
/// half of the machine's RAM.
fn sized_tmpfs(target: &Path, mode: &str, limits: &Limits) -> Result<(), Failure> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let options = format!("mode={mode},{}", limits.tmpfs_option());
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(&*options))
        .map_err(|e| Failure::errno(&format!("mount a tmpfs on {} ({options})", target.display()), e))
}

/// Binds one of the staging tmpfs's files over `target`, read-only.
fn bind_file(source: &Path, target: &Path) -> Result<(), Failure> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| Failure::errno(&format!("bind over {}", target.display()), e))?;
    set_attributes(target, ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV, false)
}

const ATTR_RDONLY: u64 = 0x1;
const ATTR_NOSUID: u64 = 0x2;
const ATTR_NODEV: u64 = 0x4;

/// Adds mount attributes, to the mounts under `path` too when `recursive`, keeping those
/// it has (a user namespace may not clear the flags its parent locked).
fn set_attributes(path: &Path, set: u64, recursive: bool) -> Result<(), Failure> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let what = || format!("set the mount flags of {}", path.display());
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Failure::message(&what()))?;
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the path is NUL-terminated and `attr` is a valid mount_attr of the size given.
    let result = unsafe {
        libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, c_path.as_ptr(), flags, &attr, size_of::<MountAttr>())
    };
    match result {
        0 => Ok(()),
        _ if Errno::last() == Errno::ENOSYS => remount(path, set),
        _ => Err(Failure::errno(&what(), Errno::last())),
    }
}

/// Before Linux 5.12 (no mount_setattr): a remount of the top mount only, with the flags
/// it has.
fn remount(path: &Path, set: u64) -> Result<(), Failure> {
    let what = format!("remount {}", path.display());
    let current = nix::sys::statvfs::statvfs(path).map_err(|e| Failure::errno(&what, e))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    let has = |flag| current.flags().contains(flag);
    use nix::sys::statvfs::FsFlags;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if has(fs) {
            flags |= ms;
        }
    }
    for (bit, ms) in
        [(ATTR_RDONLY, MsFlags::MS_RDONLY), (ATTR_NOSUID, MsFlags::MS_NOSUID), (ATTR_NODEV, MsFlags::MS_NODEV)]
    {
        if set & bit != 0 {
            flags |= ms;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|e| Failure::errno(&what, e))
}

fn make_dir(path: &Path) -> Result<(), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| Failure::io(&format!("create {}", path.display()), &e))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Failure> {
    let what = || format!("write {}", path.display());
    std::fs::write(path, contents).map_err(|e| Failure::io(&what(), &e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Failure::io(&what(), &e))
}

/// Where the host's `path` is while the tree is built.
fn old(path: &Path) -> PathBuf {
    under(OLD, path)
}

/// Where `path` of the new tree is while it is built.
fn inside(path: &Path) -> PathBuf {
    under(NEW, path)
}

fn under(root: &str, path: &Path) -> PathBuf {
    let mut joined = PathBuf::from(root);
    joined.extend(path.components().filter(|c| matches!(c, Component::Normal(_))));
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxPath;

    #[test]
    fn parents_are_mounted_before_what_they_hold() {
        let spec = SandboxSpec {
            workspace: "/home/me/ws".into(),
            run_dir: "/var/lib/ns/runs/r1".into(),
            paths: vec![SandboxPath { path: "/home/me/.config/agent".into(), writable: false }],
            home: "/home/me".into(),
            capture_ports: vec![],
            limits: Default::default(),
        };
        let order: Vec<PathBuf> = places(&spec).iter().map(|p| p.path().to_path_buf()).collect();
        assert_eq!(order[0], PathBuf::from("/home/me"));
        assert_eq!(under(NEW, Path::new("/home/me")), PathBuf::from("/new/home/me"));
    }
}
