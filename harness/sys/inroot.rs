//! Paths resolved inside a container's root (`openat2` with `RESOLVE_IN_ROOT`, as runc's
//! securejoin and youki do): an image's symlink such as `data -> /host/dir` then points at
//! the root's own `/host/dir`, never at the host's. Mounts go onto the resolved descriptor
//! (its `/proc/self/fd` link) or, for binds, are moved there from a detached clone
//! (`open_tree`, `mount_setattr`, `move_mount`), so no path is looked up twice.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::{fd_result, SysError, SysResult};

/// A directory tree that paths are resolved in: `/` for `..` and absolute symlinks.
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// The resolution every in-root lookup uses: inside the root, no magic links (`/proc`
/// links of the container's own making would lead out).
const IN_ROOT: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// A directory of pristine's own (an overlay's upper or work directory) opened below a
/// trusted one (the store, the container's tmpfs, the parent of a caller's upper
/// directory) without following any symlink on the way (`RESOLVE_BENEATH` and
/// `RESOLVE_NO_SYMLINKS`): nothing planted in the store can redirect it. overlayfs gets
/// its descriptor's `/proc/self/fd/N` link ([`DirBeneath::proc_path`]), so the directory
/// it mounts is the one opened here, whatever happens to the path afterwards.
pub(crate) struct DirBeneath {
    fd: OwnedFd,
}

impl DirBeneath {
    /// Opens the trusted directory `beneath`, for [`DirBeneath::open_in`].
    pub(crate) fn open_top(beneath: &Path) -> SysResult<OwnedFd> {
        nix::fcntl::open(
            beneath,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SysError::new("open", Some(beneath), e))
    }

    /// Opens `path`, below `beneath`, from `top` ([`DirBeneath::open_top`] of `beneath`).
    pub(crate) fn open_in(top: &OwnedFd, beneath: &Path, path: &Path) -> SysResult<DirBeneath> {
        let rel = path
            .strip_prefix(beneath)
            .map_err(|_| SysError::new("open below the store", Some(path), Errno::EXDEV))?;
        let rel = match rel.as_os_str().is_empty() {
            true => Path::new("."),
            false => rel,
        };
        let resolve = ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let fd = openat2(top.as_fd(), rel, how(OFlag::O_PATH | OFlag::O_DIRECTORY, resolve))
            .map_err(|e| {
                let op = match e {
                    Errno::ELOOP | Errno::EXDEV => {
                        "open an overlay directory (a symlink is on the way to it; refused, not followed)"
                    }
                    _ => "open an overlay directory",
                };
                SysError::new(op, Some(path), e)
            })?;
        Ok(DirBeneath { fd })
    }

    /// The descriptor's magic link, for overlayfs's `upperdir=`/`workdir=` options.
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// What to create at the end of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

impl Root {
    /// Opens `path` (pristine's own directory, e.g. the new root's mount point).
    pub(crate) fn open(path: &Path) -> SysResult<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SysError::new("open the container root", Some(path), e))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    fn rel<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.path).unwrap_or(path)
    }

    /// Opens `path` (absolute on the host, below this root) as an `O_PATH` descriptor,
    /// resolved inside the root.
    pub(crate) fn resolve(&self, path: &Path) -> SysResult<OwnedFd> {
        let rel = self.rel(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        openat2(self.fd.as_fd(), rel, how(OFlag::O_PATH, IN_ROOT))
            .map_err(|e| SysError::new("resolve inside the container root", Some(path), e))
    }

    /// Creates the directories on the way to `path` and `path` itself as `kind` (with
    /// `mode`), each resolved inside the root; existing entries are kept. Returns the
    /// final entry, opened `O_PATH`.
    pub(crate) fn create(&self, path: &Path, kind: Kind, mode: u32) -> SysResult<OwnedFd> {
        let rel = self.rel(path);
        // The last entry found on the way (none yet: the root itself, `self.fd`); a missing
        // name is made in it.
        let mut parent: Option<OwnedFd> = None;
        let mut so_far = PathBuf::new();
        let names: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        for (i, name) in names.iter().enumerate() {
            so_far.push(name);
            let last = i + 1 == names.len();
            let flags = match last && kind == Kind::File {
                true => OFlag::O_PATH,
                false => OFlag::O_PATH | OFlag::O_DIRECTORY,
            };
            match openat2(self.fd.as_fd(), &so_far, how(flags, IN_ROOT)) {
                Ok(fd) => parent = Some(fd),
                Err(Errno::ENOENT) => {
                    let full = self.path.join(&so_far);
                    // Directories on the way get the usual 0755; `mode` is the last entry's.
                    let (kind, mode) = if last {
                        (kind, mode)
                    } else {
                        (Kind::Dir, 0o755)
                    };
                    // The first name is made in the root itself.
                    make(parent.as_ref().unwrap_or(&self.fd), name, kind, mode, &full)?;
                    parent = Some(
                        openat2(self.fd.as_fd(), &so_far, how(flags, IN_ROOT)).map_err(|e| {
                            SysError::new("open what was just created", Some(&full), e)
                        })?,
                    );
                }
                Err(e) => {
                    return Err(SysError::new(
                        "resolve inside the container root",
                        Some(&self.path.join(&so_far)),
                        e,
                    ))
                }
            }
        }
        match parent {
            Some(fd) => Ok(fd),
            None => self.resolve(&self.path),
        }
    }

    /// Creates the directory holding `path` (resolved inside the root) and returns it
    /// with the last name of `path`.
    pub(crate) fn parent_of(&self, path: &Path) -> SysResult<(OwnedFd, CString)> {
        let parent = path.parent().unwrap_or(path);
        let dir = self.create(parent, Kind::Dir, 0o755)?;
        let name = path
            .file_name()
            .ok_or_else(|| SysError::new("name a path", Some(path), Errno::EINVAL))?;
        Ok((dir, cstring(name, path)?))
    }
}

/// What an image layer holds at a path, looked up inside the layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing: look in the layers below.
    Absent,
    /// A whiteout or something that is not a regular file: the path has no file here, and
    /// the layers below do not show through (or it is not a file to use).
    Hidden,
    /// A regular file, with its executable bits (`mode & 0o111`).
    File { exec: bool },
}

/// What `layer` (an image layer or rootfs directory) holds at `path` (absolute inside the
/// image), resolved inside the layer: symlinks and `..` never lead out of it.
pub(crate) fn probe(layer: &Path, path: &Path) -> SysResult<Found> {
    let fd = match open_in(layer, path, OFlag::O_PATH) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(Found::Absent),
        // A symlink loop: there is nothing to use at the path.
        Err(e) if e.errno == Errno::ELOOP => return Ok(Found::Hidden),
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| SysError::new("stat inside an image layer", Some(path), e))?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Found::File {
            exec: st.st_mode & 0o111 != 0,
        },
        _ => Found::Hidden,
    })
}

/// Reads the regular file at `path` (absolute inside the image) of `layer`, resolved inside
/// the layer, at most `limit` bytes (more is an error: `EFBIG`). `Ok(None)` if the layer has
/// no such file or something other than a regular file there (a whiteout, a FIFO, a device:
/// nothing is opened that could block or have side effects).
pub(crate) fn read_file(layer: &Path, path: &Path, limit: u64) -> SysResult<Option<Vec<u8>>> {
    use std::io::Read;
    if !matches!(probe(layer, path)?, Found::File { .. }) {
        return Ok(None);
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let Some(fd) = open_in(layer, path, flags)? else {
        return Ok(None);
    };
    let file = std::fs::File::from(fd);
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular {
        return Ok(None);
    }
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SysError::new("read inside an image layer", Some(path), io_errno(&e)))?;
    if buf.len() as u64 > limit {
        return Err(SysError::new(
            "read inside an image layer (the file is too large)",
            Some(path),
            Errno::EFBIG,
        ));
    }
    Ok(Some(buf))
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Opens `path` inside `layer` with `flags`; `None` if it (or the way to it) is missing.
fn open_in(layer: &Path, path: &Path, flags: OFlag) -> SysResult<Option<OwnedFd>> {
    let root = nix::fcntl::open(
        layer,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SysError::new("open an image layer", Some(layer), e))?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    match openat2(root.as_fd(), rel, how(flags, IN_ROOT)) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(SysError::new("open inside an image layer", Some(path), e)),
    }
}

fn cstring(s: &OsStr, path: &Path) -> SysResult<CString> {
    CString::new(s.as_bytes()).map_err(|_| SysError::new("path", Some(path), Errno::EINVAL))
}

/// Creates `name` in `dir`. An existing entry that the resolution did not find is a
/// dangling symlink: an error that says so, since what it points to is not ours to make.
fn make(dir: &OwnedFd, name: &OsStr, kind: Kind, mode: u32, full: &Path) -> SysResult<()> {
    let made = match kind {
        Kind::Dir => nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(mode)),
        Kind::File => nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(mode),
        )
        .map(drop),
    };
    match made {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) | Err(Errno::ELOOP) => Err(SysError::new(
            "create a mount point (the image has a dangling symlink there)",
            Some(full),
            Errno::ELOOP,
        )),
        Err(e) => Err(SysError::new("create a mount point", Some(full), e)),
    }
}

/// The `/proc/self/fd` link of `fd`, a path `mount(2)` can take as its target.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const AT_EMPTY_PATH: libc::c_uint = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `MOUNT_ATTR_*` flags for [`bind_onto`] and [`set_attrs`].
pub(crate) const ATTR_RDONLY: u64 = 0x1;
pub(crate) const ATTR_NOSUID: u64 = 0x2;
pub(crate) const ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` (mount_setattr(2)).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn setattr(
    dirfd: libc::c_int,
    path: &CStr,
    flags: libc::c_uint,
    set: u64,
    what: &Path,
) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads the NUL-terminated path and `attr` (of the size passed)
    // during the call; `dirfd` is open or AT_FDCWD.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(SysError::new(
            "set mount attributes",
            Some(what),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Binds `source` (a host path, followed as given) onto `target` (an `O_PATH` descriptor):
/// a detached clone of `source` (the whole tree with `recursive`) gets the attributes `set`
/// on every mount in it before it is attached, so no window exists in which it is
/// writable, and a read-only submount cannot be left writable.
pub(crate) fn bind_onto(
    source: &Path,
    target: &OwnedFd,
    recursive: bool,
    set: u64,
    what: &Path,
) -> SysResult<()> {
    let csource = cstring(source.as_os_str(), source)?;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree reads the NUL-terminated path during the call.
    let tree = fd_result("clone the bind source (open_tree)", Some(source), unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            csource.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    })?;
    if set != 0 {
        setattr(tree.as_raw_fd(), c"", AT_EMPTY_PATH | rec, set, what)?;
    }
    // SAFETY: move_mount reads the two empty NUL-terminated strings; both fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(SysError::new(
            "attach the bind mount (move_mount)",
            Some(what),
            Errno::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creation_follows_symlinks_only_inside_the_root_with_sane_modes() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("evil");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        // The link's target as the root sees it (the host image has it, as a lower).
        let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let r = Root::open(root.path()).unwrap();
        let old = crate::sys::umask(0);
        let made = r.create(&link.join("x/y"), Kind::File, 0o644);
        crate::sys::umask(old);
        made.unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&inside.join("x")), 0o755);
        assert_eq!(mode(&inside.join("x/y")), 0o644);
    }

    #[test]
    fn names_missing_from_the_root_itself_are_made_in_it() {
        let root = tempfile::tempdir().unwrap();
        let r = Root::open(root.path()).unwrap();
        r.create(&root.path().join("new/dir"), Kind::Dir, 0o700)
            .unwrap();
        r.create(&root.path().join("file"), Kind::File, 0o600)
            .unwrap();
        assert!(root.path().join("new/dir").is_dir());
        assert!(root.path().join("file").is_file());
        // The root itself, asked for by its own path, is opened, not made.
        r.create(root.path(), Kind::Dir, 0o755).unwrap();
    }

    #[test]
    fn a_dangling_symlink_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nowhere", root.path().join("proc")).unwrap();
        let r = Root::open(root.path()).unwrap();
        let err = r
            .create(&root.path().join("proc"), Kind::Dir, 0o755)
            .unwrap_err();
        assert!(err.op.contains("dangling symlink"), "{err}");
        assert!(!root.path().join("nowhere").exists());
    }
}
