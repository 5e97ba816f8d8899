//! Copies the loose git objects a workspace wrote into its mirror, each checked against
//! its name first: holding a run's commit (`Workspace::hold`) this way costs a file copy
//! per object instead of a `git push` (four git processes and a pack).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// Bigger objects go by `git push`, which streams them.
const MAX_OBJECT_BYTES: u64 = 16 * 1024 * 1024;

/// Why the objects were not copied; `git push` then does the work, and reports any damage.
#[derive(Debug, PartialEq, Eq)]
pub enum NotCopied {
    /// Packs, alternates or anything but loose objects: only `git push` knows them.
    NotLoose(PathBuf),
    /// A file whose content is not the object its name says (or not an object at all).
    Mismatch(PathBuf),
    /// Reading or writing failed.
    Io(String),
}

/// Copies every loose object in `from` (a workspace's `objects` directory, SHA-1
/// repositories only) into `to` (the mirror's), after checking that each file's inflated
/// content hashes to its name. Objects `to` already has are skipped. Returns how many
/// were copied; on `Err` nothing unchecked was copied (checked ones may have been, which
/// is harmless: they are valid objects).
pub fn copy_loose(from: &Path, to: &Path) -> Result<usize, NotCopied> {
    let io = |path: &Path, cause: std::io::Error| NotCopied::Io(format!("{}: {cause}", path.display()));
    let mut found = Vec::new();
    for entry in std::fs::read_dir(from).map_err(|cause| io(from, cause))? {
        let entry = entry.map_err(|cause| io(from, cause))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name == "pack" && is_empty_dir(&path) || name == "info" && only_alternates_to(&path, to) {
            // Objects not loose here are in `to`; packs, or alternates elsewhere, are
            // left to push.
            continue;
        }
        if !is_hex(&name, 2) || !entry.file_type().map_err(|cause| io(&path, cause))?.is_dir() {
            return Err(NotCopied::NotLoose(path));
        }
        for object in std::fs::read_dir(&path).map_err(|cause| io(&path, cause))? {
            let object = object.map_err(|cause| io(&path, cause))?;
            let rest = object.file_name().to_string_lossy().into_owned();
            let file = object.path();
            let regular = object.file_type().map_err(|cause| io(&file, cause))?.is_file();
            if !regular || !is_hex(&rest, 38) {
                return Err(NotCopied::NotLoose(file));
            }
            found.push((format!("{name}/{rest}"), file));
        }
    }
    let mut copied = 0;
    for (id, file) in found {
        let target = to.join(&id);
        if target.exists() {
            continue;
        }
        let bytes = read_bounded(&file).map_err(|cause| io(&file, cause))?;
        if !names_itself(&bytes, &id.replace('/', "")) {
            return Err(NotCopied::Mismatch(file));
        }
        write_new(&target, &bytes).map_err(|cause| io(&target, cause))?;
        copied += 1;
    }
    Ok(copied)
}

/// Whether `info` is empty or holds only an `alternates` file naming `to` alone (a
/// workspace made by the mirror borrows its objects).
fn only_alternates_to(info: &Path, to: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(info) else { return false };
    let names: Vec<_> = entries.filter_map(Result::ok).map(|entry| entry.file_name()).collect();
    match names.as_slice() {
        [] => true,
        [only] if only == "alternates" => std::fs::read_to_string(info.join("alternates"))
            .is_ok_and(|text| text.lines().all(|line| Path::new(line.trim()) == to)),
        _ => false,
    }
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

fn is_hex(name: &str, len: usize) -> bool {
    name.len() == len && name.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_OBJECT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_OBJECT_BYTES {
        return Err(std::io::Error::other("larger than a loose object copied by hand may be"));
    }
    Ok(bytes)
}

/// Whether `compressed` inflates to a well-formed object (`{type} {size}\0{body}`) whose
/// SHA-1 is `id`.
fn names_itself(compressed: &[u8], id: &str) -> bool {
    let mut inflated = Vec::new();
    let limit = MAX_OBJECT_BYTES * 4;
    if flate2::read::ZlibDecoder::new(compressed).take(limit + 1).read_to_end(&mut inflated).is_err()
        || inflated.len() as u64 > limit
    {
        return false;
    }
    let Some(nul) = inflated.iter().position(|byte| *byte == 0) else { return false };
    let header = String::from_utf8_lossy(&inflated[..nul]);
    let Some((kind, size)) = header.split_once(' ') else { return false };
    let well_formed = matches!(kind, "commit" | "tree" | "blob" | "tag")
        && size.parse::<usize>().is_ok_and(|size| size == inflated.len() - nul - 1);
    well_formed && hex::encode(Sha1::digest(&inflated)) == id
}

/// Writes `bytes` at `target` through a temporary file renamed into place, read-only as
/// git leaves its objects.
fn write_new(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().ok_or_else(|| std::io::Error::other("an object path has a directory"))?;
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("tmp_obj_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, bytes)?;
            let mut permissions = file.metadata()?.permissions();
            permissions.set_readonly(true);
            file.set_permissions(permissions)
        })
        .and_then(|()| std::fs::rename(&temporary, target));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository with one commit and an empty bare repository to copy into.
    fn repositories() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("a directory");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("a.txt"), "hello\n").expect("write");
        git(&work, &["add", "a.txt"]);
        git(&work, &["commit", "-qm", "one"]);
        let bare = dir.path().join("bare.git");
        git(dir.path(), &["init", "-q", "--bare", "bare.git"]);
        (dir, work, bare)
    }

    #[test]
    fn checked_objects_are_copied_once_and_the_copy_is_a_whole_commit() {
        let (_dir, work, bare) = repositories();
        let commit = git(&work, &["rev-parse", "HEAD"]);
        let objects = work.join(".git/objects");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Ok(3), "a commit, a tree and a blob");
        git(&bare, &["update-ref", "refs/held", &commit]);
        git(&bare, &["fsck", "--strict", "--no-dangling"]);
        assert_eq!(git(&bare, &["cat-file", "-p", &format!("{commit}:a.txt")]), "hello");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Ok(0), "already there");
    }

    #[test]
    fn a_file_that_is_not_the_object_it_names_is_refused_and_not_copied() {
        let (_dir, work, bare) = repositories();
        let objects = work.join(".git/objects");
        let blob = git(&work, &["rev-parse", "HEAD:a.txt"]);
        let (head, rest) = blob.split_at(2);
        let path = objects.join(head).join(rest);
        let mut permissions = std::fs::metadata(&path).expect("the blob").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&path, permissions).expect("chmod");
        let mut forged = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        forged.write_all(b"blob 6\0evil!\n").expect("deflate");
        std::fs::write(&path, forged.finish().expect("deflate")).expect("forge");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Err(NotCopied::Mismatch(path)));
        assert!(!bare.join("objects").join(head).join(rest).exists());
    }

    #[test]
    fn packs_and_links_are_left_to_git() {
        let (_dir, work, bare) = repositories();
        let objects = work.join(".git/objects");
        git(&work, &["repack", "-adq"]);
        assert!(matches!(copy_loose(&objects, &bare.join("objects")), Err(NotCopied::NotLoose(_))));

        // Borrowing the target's objects is fine; borrowing anyone else's is not.
        let (_dir, work, bare) = repositories();
        let objects = work.join(".git/objects");
        std::fs::create_dir_all(objects.join("info")).expect("mkdir");
        let alternates = objects.join("info/alternates");
        std::fs::write(&alternates, format!("{}\n", bare.join("objects").display())).expect("write");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Ok(3));
        std::fs::write(&alternates, "/elsewhere/objects\n").expect("write");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Err(NotCopied::NotLoose(objects.join("info"))));

        let (_dir, work, bare) = repositories();
        let objects = work.join(".git/objects");
        let fake = objects.join("ab").join("c".repeat(38));
        std::fs::create_dir_all(fake.parent().expect("its directory")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", &fake).expect("a link");
        assert_eq!(copy_loose(&objects, &bare.join("objects")), Err(NotCopied::NotLoose(fake)));
    }

    #[test]
    fn an_object_is_well_formed_with_its_size_and_a_known_kind() {
        let deflate = |raw: &[u8]| {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(raw).expect("deflate");
            encoder.finish().expect("deflate")
        };
        let id = |raw: &[u8]| hex::encode(Sha1::digest(raw));
        let good = b"blob 3\0abc";
        assert!(names_itself(&deflate(good), &id(good)));
        assert!(!names_itself(&deflate(good), &id(b"blob 3\0abd")));
        for bad in [&b"blob 4\0abc"[..], b"blob 2\0abc", b"thing 3\0abc", b"blob3\0abc", b"blob 3abc"] {
            assert!(!names_itself(&deflate(bad), &id(bad)), "{}", String::from_utf8_lossy(bad));
        }
        for kind in ["commit", "tree", "tag"] {
            let raw = format!("{kind} 1\0x");
            assert!(names_itself(&deflate(raw.as_bytes()), &id(raw.as_bytes())), "{kind}");
        }
        assert!(!names_itself(b"not zlib", &id(good)));
        assert!(is_hex("0a", 2) && !is_hex("0A", 2) && !is_hex("0g", 2) && !is_hex("0a1", 2));
    }
}
