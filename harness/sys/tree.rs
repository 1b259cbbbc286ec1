//! Directory-relative file system calls for the store: removing trees without following
//! symlinks, opening directories that must not be symlinks, and lock files that stay valid
//! while another process removes unused ones.
//!
//! Every removal walks the tree through directory descriptors (`openat` with `O_NOFOLLOW |
//! O_DIRECTORY`, `unlinkat`): a symlink planted anywhere in a tree being removed is unlinked
//! itself, never followed, and a directory swapped for a symlink between two calls is
//! refused by the kernel rather than entered.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

/// Opens the directory `path` for reading; its last component must not be a symlink.
pub fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// `rm -rf path`, also for directories without permissions (overlay's `work/work` is mode
/// 000), without following any symlink: not `path`'s last component, not anything below.
/// A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let dir = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    match dir {
        Ok(dir) => remove_at(dir.as_fd(), name),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the entry `name` of the directory `dir` (a whole tree if it is a directory).
pub fn remove_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return not_found_ok(rustix::fs::unlinkat(dir, name, AtFlags::empty()));
    }
    let sub = open_writable_dir(dir, name)?;
    for entry in Dir::read_from(&sub)? {
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        remove_at(sub.as_fd(), Path::new(cstr_os(child)))?;
    }
    not_found_ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
}

fn not_found_ok(r: rustix::io::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn cstr_os(s: &CStr) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(s.to_bytes())
}

/// Opens directory `name` of `dir` (never a symlink) and gives its owner rwx on it, so its
/// entries can be listed and removed.
fn open_writable_dir(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS) => {
            // A directory we own without read permission: pin it (O_PATH, still no symlink)
            // and chmod it through its descriptor's /proc entry, never through a name that
            // could be swapped meanwhile.
            let pinned = rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let proc = format!("/proc/self/fd/{}", pinned.as_raw_fd());
            rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(0o700))?;
            rustix::fs::openat(dir, name, flags, Mode::empty())?
        }
        Err(e) => return Err(e.into()),
    };
    let mode = rustix::fs::fstat(&fd)?.st_mode;
    if mode & 0o700 != 0o700 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode | 0o700) & 0o7777))?;
    }
    Ok(fd)
}

fn split(path: &Path) -> io::Result<(&Path, &Path)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((parent, Path::new(name)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to remove {}", path.display()),
        )),
    }
}

/// How a lock file is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders (a lease: "I am using this").
    Shared,
    /// One holder (building, removing).
    Exclusive,
}

/// Locks the file at `path` (created if missing, never through a symlink). `wait` blocks
/// until the lock is free; otherwise `Ok(None)` says another process holds it.
///
/// Unused lock files are removed by `gc` while it holds them exclusively; a lock taken on a
/// file that was unlinked meanwhile protects nothing, so after locking, the file is checked
/// to still be the one at `path`, and the lock is retried if it is not.
pub fn lock_file(path: &Path, kind: LockKind, wait: bool) -> io::Result<Option<Flock<File>>> {
    let arg = match (kind, wait) {
        (LockKind::Shared, true) => FlockArg::LockShared,
        (LockKind::Shared, false) => FlockArg::LockSharedNonblock,
        (LockKind::Exclusive, true) => FlockArg::LockExclusive,
        (LockKind::Exclusive, false) => FlockArg::LockExclusiveNonblock,
    };
    loop {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let lock = match Flock::lock(File::from(fd), arg) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        };
        let held = lock.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(lock)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether a live process holds any lock on the file at `path` (a missing file is not
/// held). Locks die with their process, so this tells a running owner from a killed one.
pub fn lock_is_held(path: &Path) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => false,
    }
}

/// Removes the lock file at `path`, which the caller holds exclusively through `lock`.
pub fn remove_locked(path: &Path, lock: &Flock<File>) -> io::Result<()> {
    let held = lock.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_trees_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("sub/file"), "keep").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/work/work")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("top-link")).unwrap();
        std::fs::set_permissions(tree.join("a/work/work"), PermissionsExt::from_mode(0o0)).unwrap();
        std::fs::set_permissions(tree.join("a/work"), PermissionsExt::from_mode(0o0)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        // A symlink given as the path itself is removed, not followed.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(
            std::fs::read_to_string(victim.join("sub/file")).unwrap(),
            "keep"
        );
        remove_tree(&t.path().join("missing")).unwrap();
    }

    #[test]
    fn locks_survive_removal_of_the_lock_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.lock");
        let a = lock_file(&p, LockKind::Shared, false).unwrap().unwrap();
        assert!(lock_file(&p, LockKind::Exclusive, false).unwrap().is_none());
        assert!(lock_file(&p, LockKind::Shared, false).unwrap().is_some());
        assert!(lock_is_held(&p));
        drop(a);
        let x = lock_file(&p, LockKind::Exclusive, false).unwrap().unwrap();
        remove_locked(&p, &x).unwrap();
        // Whoever locks now gets a fresh file, not the unlinked one `x` still holds.
        let fresh = lock_file(&p, LockKind::Exclusive, false).unwrap();
        assert!(fresh.is_some());
    }
}
