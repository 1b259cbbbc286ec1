//! The system calls the setup makes, behind a trait (as youki's `Syscall`): [`Linux`]
//! makes them, and the tests' recording double checks their order and flags without root.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};

use crate::sys::inroot::{self, Kind, Root};
use crate::sys::{self, SysError, SysResult};

/// Mount attributes (`MOUNT_ATTR_*`) that binds are made with.
pub(crate) use crate::sys::inroot::{ATTR_NODEV, ATTR_NOSUID, ATTR_RDONLY};

/// Every system call of the setup. Paths below the new root are resolved inside it by the
/// implementation, never through a symlink out of it.
pub(crate) trait Syscall {
    /// Writes `0` to a `cgroup.procs`.
    fn join_cgroup(&self, procs: &Path) -> SysResult<()>;
    /// `unshare(CLONE_NEWCGROUP)`, where the kernel has cgroup namespaces.
    fn enter_cgroup_namespace(&self) -> SysResult<()>;
    /// `mount(2)` of a filesystem (or a propagation change with `fstype` `None`).
    fn mount(
        &self,
        op: &'static str,
        fstype: Option<&str>,
        target: &Path,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// An overlay through the new mount API, one `lowerdir+` per layer.
    fn mount_overlay_layered(
        &self,
        target: &Path,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        userxattr: bool,
        volatile: bool,
    ) -> SysResult<()>;
    /// Opens an overlay's upper or work directory `path` below `beneath` without following
    /// a symlink; overlayfs is given the returned [`OverlayDir::path`].
    fn open_overlay_dir(&self, beneath: &Path, path: &Path) -> SysResult<OverlayDir>;
    /// Creates a directory and its parents, with `mode`.
    fn mkdir(&self, path: &Path, mode: u32) -> SysResult<()>;
    /// Binds `source` onto `target` (created as a file or directory like `source`), with
    /// `MOUNT_ATTR_*` attributes `attrs` on every mount of the bound tree.
    fn bind(&self, source: &Path, target: &Path, recursive: bool, attrs: u64) -> SysResult<()>;
    /// Creates a symlink.
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()>;
    /// Creates a character device node, mode 0666.
    fn mknod(&self, path: &Path, major: u64, minor: u64) -> SysResult<()>;
    /// `pivot_root` into `new_root` and detach the old root.
    fn pivot_root(&self, new_root: &Path) -> SysResult<()>;
    /// Hides `path` (see [`super::SetupOp::MaskPath`]).
    fn mask(&self, path: &Path) -> SysResult<()>;
    /// Makes `path` and everything below it read-only.
    fn read_only(&self, path: &Path) -> SysResult<()>;
    fn sethostname(&self, name: &str) -> SysResult<()>;
    fn loopback_up(&self) -> SysResult<()>;
    fn limit_capabilities(&self, keep: &[String]) -> SysResult<()>;
    fn leave_terminal(&self) -> SysResult<()>;
    fn set_no_new_privs(&self) -> SysResult<()>;
    fn load_seccomp(&self, caps: &[String]) -> SysResult<()>;
    /// Whether `path` exists (not following a final symlink).
    fn exists(&self, path: &Path) -> bool;
}

/// The real system calls. Paths strictly below `root` (the new root's mount point, before
/// `pivot_root`) are resolved inside it.
pub(crate) struct Linux {
    root: Option<PathBuf>,
    /// The new root, opened once for every step below it (a container's setup resolves some
    /// twenty paths there; opening the root for each was a fifth of its system calls).
    /// Forgotten whenever something is mounted onto the root itself, and at `pivot_root`.
    opened: RefCell<Option<Rc<Root>>>,
    /// The directory overlay upper and work directories were last opened below, and its
    /// descriptor (an overlay opens two there; the rootless host root mounts one overlay
    /// per top-level directory, all below the same one).
    beneath: RefCell<Option<(PathBuf, Rc<OwnedFd>)>>,
}

impl Linux {
    /// Setup whose paths below `root` (if any) are resolved inside it.
    pub(crate) fn new(root: Option<PathBuf>) -> Linux {
        Linux {
            root,
            opened: RefCell::new(None),
            beneath: RefCell::new(None),
        }
    }

    /// The root `path` must be resolved in, if it is below the new root.
    fn root_for(&self, path: &Path) -> SysResult<Option<Rc<Root>>> {
        let root = match &self.root {
            Some(root) if path != root && path.starts_with(root) => root,
            _ => return Ok(None),
        };
        if let Some(open) = self.opened.borrow().as_ref() {
            return Ok(Some(Rc::clone(open)));
        }
        let open = Rc::new(Root::open(root)?);
        *self.opened.borrow_mut() = Some(Rc::clone(&open));
        Ok(Some(open))
    }

    /// Forgets the opened root, and the directory overlays were opened below, if `target`
    /// is that directory or above it: a mount there covers the directory the descriptor
    /// holds.
    fn mounting_onto(&self, target: &Path) {
        if self
            .root
            .as_deref()
            .is_some_and(|root| root.starts_with(target))
        {
            self.opened.borrow_mut().take();
        }
        let mut beneath = self.beneath.borrow_mut();
        if beneath
            .as_ref()
            .is_some_and(|(dir, _)| dir.starts_with(target))
        {
            beneath.take();
        }
    }

    fn open_path(path: &Path) -> SysResult<OwnedFd> {
        nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| SysError::new("open", Some(path), e))
    }

    /// The bind target `target`, created like `source` (a directory 0755 or a file 0644).
    fn bind_target(&self, source: &Path, target: &Path) -> SysResult<OwnedFd> {
        let meta = std::fs::metadata(source).map_err(|e| io_err("stat bind source", source, e))?;
        let (kind, mode) = match meta.is_dir() {
            true => (Kind::Dir, 0o755),
            false => (Kind::File, 0o644),
        };
        if let Some(root) = self.root_for(target)? {
            return root.create(target, kind, mode);
        }
        if std::fs::symlink_metadata(target).is_err() {
            match kind {
                Kind::Dir => self.mkdir(target, mode)?,
                Kind::File => {
                    if let Some(parent) = target.parent() {
                        self.mkdir(parent, 0o755)?;
                    }
                    nix::fcntl::open(
                        target,
                        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(mode),
                    )
                    .map_err(|e| SysError::new("create bind target", Some(target), e))?;
                }
            }
        }
        Self::open_path(target)
    }
}

/// An overlay's upper or work directory, as overlayfs is to be given it: for the real
/// system, the `/proc/self/fd/N` link of a descriptor held here until the mount is made.
pub(crate) struct OverlayDir {
    pub(crate) path: PathBuf,
    _held: Option<sys::inroot::DirBeneath>,
}

pub(crate) fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> SysError {
    SysError::new(
        op,
        Some(path),
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

impl Syscall for Linux {
    fn join_cgroup(&self, procs: &Path) -> SysResult<()> {
        std::fs::write(procs, "0").map_err(|e| io_err("join cgroup", procs, e))
    }

    fn enter_cgroup_namespace(&self) -> SysResult<()> {
        crate::sys::unshare_cgroup_namespace()
    }

    fn mount(
        &self,
        op: &'static str,
        fstype: Option<&str>,
        target: &Path,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        let source = fstype.map(Path::new);
        self.mounting_onto(target);
        match self.root_for(target)? {
            Some(root) => {
                let fd = root.resolve(target)?;
                sys::mount(op, source, &inroot::fd_path(&fd), fstype, flags, data)
                    .map_err(|e| SysError::new(op, Some(target), e.errno))
            }
            None => sys::mount(op, source, target, fstype, flags, data),
        }
    }

    fn mount_overlay_layered(
        &self,
        target: &Path,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        userxattr: bool,
        volatile: bool,
    ) -> SysResult<()> {
        self.mounting_onto(target);
        sys::mount_overlay_layered(target, lowers, upper, work, userxattr, volatile)
    }

    fn open_overlay_dir(&self, beneath: &Path, path: &Path) -> SysResult<OverlayDir> {
        let cached = self
            .beneath
            .borrow()
            .as_ref()
            .and_then(|(p, fd)| (p == beneath).then(|| Rc::clone(fd)));
        let top = match cached {
            Some(top) => top,
            None => {
                let top = Rc::new(sys::inroot::DirBeneath::open_top(beneath)?);
                *self.beneath.borrow_mut() = Some((beneath.to_path_buf(), Rc::clone(&top)));
                top
            }
        };
        let dir = sys::inroot::DirBeneath::open_in(&top, beneath, path)?;
        Ok(OverlayDir {
            path: dir.proc_path(),
            _held: Some(dir),
        })
    }

    fn mkdir(&self, path: &Path, mode: u32) -> SysResult<()> {
        if let Some(root) = self.root_for(path)? {
            return root.create(path, Kind::Dir, mode).map(drop);
        }
        // Outside the new root, directories are pristine's own (its base, an upper layer and
        // its work directory). An upper layer reused by a later container (a layer built in
        // several steps) may hold a symlink an earlier container made where this one wants a
        // directory, and an overlay over it would write wherever the link points.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(SysError::new(
                "mkdir (a symlink is in the way, left in the upper layer by an earlier container)",
                Some(path),
                Errno::ELOOP,
            ));
        }
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), mode)
            .create(path)
            .map_err(|e| io_err("mkdir", path, e))
    }

    fn bind(&self, source: &Path, target: &Path, recursive: bool, attrs: u64) -> SysResult<()> {
        self.mounting_onto(target);
        let fd = self.bind_target(source, target)?;
        inroot::bind_onto(source, &fd, recursive, attrs, target)
    }

    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        let made = match self.root_for(link)? {
            Some(root) => {
                let (dir, name) = root.parent_of(link)?;
                nix::unistd::symlinkat(target, dir.as_fd(), name.as_c_str())
                    .map_err(|e| SysError::new("symlink", Some(link), e))
            }
            None => {
                std::os::unix::fs::symlink(target, link).map_err(|e| io_err("symlink", link, e))
            }
        };
        match made {
            // An upper layer that outlives its container (a layer being built in several
            // steps) already has the links pristine recreated the first time.
            Err(e) if e.errno == Errno::EEXIST && self.same_link(link, target) => Ok(()),
            r => r,
        }
    }

    fn mknod(&self, path: &Path, major: u64, minor: u64) -> SysResult<()> {
        let dev = nix::sys::stat::makedev(major, minor);
        let mode = Mode::from_bits_truncate(0o666);
        match self.root_for(path)? {
            Some(root) => {
                let (dir, name) = root.parent_of(path)?;
                nix::sys::stat::mknodat(dir.as_fd(), name.as_c_str(), SFlag::S_IFCHR, mode, dev)
                    .map_err(|e| SysError::new("mknod", Some(path), e))
            }
            None => sys::mknod(path, SFlag::S_IFCHR, 0o666, major, minor),
        }
    }

    fn pivot_root(&self, new_root: &Path) -> SysResult<()> {
        // Nothing is resolved through the host's paths afterwards.
        self.opened.borrow_mut().take();
        self.beneath.borrow_mut().take();
        sys::pivot_root_and_detach(new_root)
    }

    fn mask(&self, path: &Path) -> SysResult<()> {
        match std::fs::metadata(path) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => sys::mount(
                "mask with an empty tmpfs",
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            ),
            Ok(_) => {
                let fd = Self::open_path(path)?;
                inroot::bind_onto(
                    Path::new("/dev/null"),
                    &fd,
                    false,
                    ATTR_RDONLY | ATTR_NOSUID,
                    path,
                )
            }
        }
    }

    fn read_only(&self, path: &Path) -> SysResult<()> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        let fd = Self::open_path(path)?;
        inroot::bind_onto(
            path,
            &fd,
            true,
            ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV,
            path,
        )
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        sys::sethostname(name)
    }

    fn loopback_up(&self) -> SysResult<()> {
        sys::loopback_up()
    }

    fn limit_capabilities(&self, keep: &[String]) -> SysResult<()> {
        crate::confine::caps::limit(keep)
    }

    fn leave_terminal(&self) -> SysResult<()> {
        sys::leave_terminal()
    }

    fn set_no_new_privs(&self) -> SysResult<()> {
        sys::set_no_new_privs()
    }

    fn load_seccomp(&self, caps: &[String]) -> SysResult<()> {
        crate::confine::seccomp::load(caps)
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
}

impl Linux {
    fn same_link(&self, link: &Path, target: &Path) -> bool {
        std::fs::read_link(link).ok().as_deref() == Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_left_in_an_upper_layer_is_refused_not_followed() {
        let upper = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let link = upper.path().join("srv");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let err = Linux::new(None).mkdir(&link, 0o755).unwrap_err();
        assert_eq!(err.errno, Errno::ELOOP, "{err}");
        assert!(Linux::new(None)
            .mkdir(&upper.path().join("etc"), 0o755)
            .is_ok());
    }

    /// A symlink planted anywhere below the store on the way to an upper or work directory
    /// (here `containers`, and the upper itself) is refused, not followed; overlayfs is
    /// given the descriptor of the directory that was opened.
    #[test]
    fn overlay_directories_are_opened_beneath_the_store_without_symlinks() {
        let store = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(elsewhere.path().join("x/upper")).unwrap();
        let sys = Linux::new(None);
        let planted = store.path().join("containers");
        std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
        let err = sys
            .open_overlay_dir(store.path(), &planted.join("x/upper"))
            .err()
            .expect("a symlinked store directory is refused");
        assert_eq!(err.errno, Errno::ELOOP, "{err}");
        assert!(err.to_string().contains("refused, not followed"), "{err}");
        std::fs::remove_file(&planted).unwrap();
        std::fs::create_dir_all(planted.join("x")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("x/upper"), planted.join("x/upper"))
            .unwrap();
        let err = sys
            .open_overlay_dir(store.path(), &planted.join("x/upper"))
            .err()
            .expect("a symlinked upper is refused");
        assert_eq!(err.errno, Errno::ELOOP, "{err}");
        // Outside `beneath` is not below the store at all.
        let err = sys
            .open_overlay_dir(store.path(), &elsewhere.path().join("x/upper"))
            .err()
            .expect("a directory outside the store is refused");
        assert_eq!(err.errno, Errno::EXDEV, "{err}");
        // The real thing: opened, and overlayfs gets the descriptor's link to it.
        std::fs::remove_file(planted.join("x/upper")).unwrap();
        std::fs::create_dir(planted.join("x/upper")).unwrap();
        let dir = sys
            .open_overlay_dir(store.path(), &planted.join("x/upper"))
            .unwrap();
        assert!(
            dir.path.starts_with("/proc/self/fd/"),
            "{}",
            dir.path.display()
        );
        assert_eq!(
            std::fs::canonicalize(&dir.path).unwrap(),
            std::fs::canonicalize(planted.join("x/upper")).unwrap()
        );
    }
}

/// A recording double: every call becomes one line, in order.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) calls: std::cell::RefCell<Vec<String>>,
}

#[cfg(test)]
impl Recorder {
    fn record(&self, line: String) -> SysResult<()> {
        self.calls.borrow_mut().push(line);
        Ok(())
    }
}

#[cfg(test)]
fn attrs_str(attrs: u64) -> String {
    let names = [
        (ATTR_RDONLY, "RDONLY"),
        (ATTR_NOSUID, "NOSUID"),
        (ATTR_NODEV, "NODEV"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(a, _)| attrs & a != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join("|")
}

#[cfg(test)]
impl Syscall for Recorder {
    fn join_cgroup(&self, procs: &Path) -> SysResult<()> {
        self.record(format!("join_cgroup {}", procs.display()))
    }
    fn enter_cgroup_namespace(&self) -> SysResult<()> {
        self.record("unshare CLONE_NEWCGROUP".to_string())
    }
    fn mount(
        &self,
        _op: &'static str,
        fstype: Option<&str>,
        target: &Path,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.record(format!(
            "mount {} {} {:?} {}",
            fstype.unwrap_or("-"),
            target.display(),
            flags,
            data.unwrap_or("")
        ))
    }
    fn open_overlay_dir(&self, beneath: &Path, path: &Path) -> SysResult<OverlayDir> {
        let rel = path.strip_prefix(beneath).unwrap_or(path);
        self.record(format!(
            "openat2 {} {} RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS",
            beneath.display(),
            rel.display()
        ))?;
        Ok(OverlayDir {
            path: path.to_path_buf(),
            _held: None,
        })
    }
    fn mount_overlay_layered(
        &self,
        target: &Path,
        lowers: &[PathBuf],
        _upper: &Path,
        _work: &Path,
        _userxattr: bool,
        _volatile: bool,
    ) -> SysResult<()> {
        self.record(format!(
            "fsmount overlay {} ({} lowers)",
            target.display(),
            lowers.len()
        ))
    }
    fn mkdir(&self, path: &Path, mode: u32) -> SysResult<()> {
        self.record(format!("mkdir {} {mode:04o}", path.display()))
    }
    fn bind(&self, source: &Path, target: &Path, recursive: bool, attrs: u64) -> SysResult<()> {
        self.record(format!(
            "bind {} {}{} attrs={}",
            source.display(),
            target.display(),
            if recursive { " rec" } else { "" },
            attrs_str(attrs)
        ))
    }
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        self.record(format!(
            "symlink {} -> {}",
            link.display(),
            target.display()
        ))
    }
    fn mknod(&self, path: &Path, major: u64, minor: u64) -> SysResult<()> {
        self.record(format!("mknod {} c {major} {minor}", path.display()))
    }
    fn pivot_root(&self, new_root: &Path) -> SysResult<()> {
        self.record(format!("pivot_root {}", new_root.display()))
    }
    fn mask(&self, path: &Path) -> SysResult<()> {
        self.record(format!("mask {}", path.display()))
    }
    fn read_only(&self, path: &Path) -> SysResult<()> {
        self.record(format!("read_only {}", path.display()))
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.record(format!("sethostname {name}"))
    }
    fn loopback_up(&self) -> SysResult<()> {
        self.record("loopback_up".into())
    }
    fn limit_capabilities(&self, keep: &[String]) -> SysResult<()> {
        self.record(format!("capabilities {}", keep.join(",")))
    }
    fn leave_terminal(&self) -> SysResult<()> {
        self.record("setpgid 0 0; ioctl /dev/tty TIOCNOTTY".into())
    }
    fn set_no_new_privs(&self) -> SysResult<()> {
        self.record("prctl PR_SET_NO_NEW_PRIVS".into())
    }
    fn load_seccomp(&self, caps: &[String]) -> SysResult<()> {
        self.record(format!("seccomp (caps {})", caps.len()))
    }
    fn exists(&self, _path: &Path) -> bool {
        true
    }
}
