//! Overlay-native whiteouts and opaque directories.
//!
//! overlayfs marks a deleted lower-layer entry with a *whiteout*: a character
//! device with device number 0/0 at the deleted name. A directory whose lower
//! contents must be hidden (it was deleted and re-created) is *opaque*: it
//! carries the xattr `overlay.opaque="y"`.
//!
//! Layers written by this crate always get `user.overlay.opaque` (read by
//! rootless mounts that use the `userxattr` option) and, when the process may
//! set it (it is root), `trusted.overlay.opaque` as well (read by ordinary
//! mounts). Either xattr set to `y` counts as opaque when reading.
//!
//! Layer tars (OCI, docker save) use a different encoding: a file `.wh.NAME`
//! deletes `NAME`, and a file `.wh..wh..opq` makes its directory opaque. The
//! constants below name those markers; `crate::oci` converts between the two.

use std::ffi::CString;
use std::fs::Metadata;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// xattr read by rootless overlay mounts (`userxattr`) to mark an opaque directory.
pub const OPAQUE_XATTR_USER: &str = "user.overlay.opaque";
/// xattr read by ordinary (root) overlay mounts to mark an opaque directory.
pub const OPAQUE_XATTR_TRUSTED: &str = "trusted.overlay.opaque";
/// Prefix of a whiteout marker in a layer tar: `.wh.NAME` deletes `NAME`.
pub const TAR_WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker in a layer tar.
pub const TAR_OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of tar whiteout metadata names (`.wh..wh.*`) that are not whiteouts.
pub const TAR_WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Returns true if `meta` (from `symlink_metadata`) describes an overlay
/// whiteout: a character device with device number 0/0.
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Returns true if the entry at `path` (not following symlinks) is a whiteout.
/// A missing path is not a whiteout.
pub fn is_whiteout_path(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(is_whiteout(&meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates a whiteout (character device 0/0, mode 000) at `path`.
///
/// Fails with `AlreadyExists` if something is already there. Works without
/// privileges on Linux ≥ 5.8.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated C string that outlives the call;
    // mknod does not retain the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Returns true if the directory at `path` is opaque (`user.overlay.opaque` or
/// `trusted.overlay.opaque` is `y`). Does not follow a symlink at `path`.
pub fn is_opaque(path: &Path) -> io::Result<bool> {
    for name in [OPAQUE_XATTR_USER, OPAQUE_XATTR_TRUSTED] {
        if xattr::lget(path, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Like [`is_opaque`], for an open directory.
pub fn is_opaque_fd(fd: BorrowedFd<'_>) -> io::Result<bool> {
    for name in [OPAQUE_XATTR_USER, OPAQUE_XATTR_TRUSTED] {
        if xattr::fget(fd, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Marks the directory at `path` opaque: always sets `user.overlay.opaque=y`,
/// and also `trusted.overlay.opaque=y` when the process is allowed to (root).
///
/// Fails with `InvalidInput` if `path` is not a directory (symlinks are not
/// followed), or if the filesystem does not support user xattrs.
pub fn make_opaque(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a directory; only directories can be opaque",
                path.display()
            ),
        ));
    }
    xattr::lset(path, OPAQUE_XATTR_USER, b"y")?;
    match xattr::lset(path, OPAQUE_XATTR_TRUSTED, b"y") {
        Ok(()) => Ok(()),
        Err(e) if is_permission_error(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Like [`make_opaque`], for an open directory (`fd` must not be an `O_PATH` fd).
pub fn make_opaque_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    xattr::fset(fd, OPAQUE_XATTR_USER, b"y")?;
    match xattr::fset(fd, OPAQUE_XATTR_TRUSTED, b"y") {
        Ok(()) => Ok(()),
        Err(e) if is_permission_error(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes both opaque xattrs from the directory at `path` (missing ones and
/// a `trusted.*` one the process may not touch are ignored).
pub fn clear_opaque(path: &Path) -> io::Result<()> {
    for name in [OPAQUE_XATTR_USER, OPAQUE_XATTR_TRUSTED] {
        match xattr::lremove(path, name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) || is_permission_error(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Returns true if `name` is an overlayfs-private xattr (`trusted.overlay.*`
/// or `user.overlay.*`), which must never be copied from or into an image.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn is_permission_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "xattr name contains a NUL byte",
        )
    })
}

/// Thin wrappers over the libc xattr calls, shared with `crate::oci`.
pub(crate) mod xattr {
    use super::{cname, cpath, AsRawFd, BorrowedFd};
    use std::ffi::CString;
    use std::io;
    use std::path::Path;

    /// Returns true for errors that mean "no such attribute" or "xattrs not
    /// supported here", which readers treat as absent.
    fn is_absent(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES)
        )
    }

    /// Calls `get(buf_ptr, buf_len)` (a getxattr-style call) until the value fits.
    fn read_value(mut get: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        loop {
            let n = get(buf.as_mut_ptr().cast(), buf.len());
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ERANGE) {
                return Err(err);
            }
            // Ask for the size, then retry with a buffer that large.
            let size = get(std::ptr::null_mut(), 0);
            if size < 0 {
                return Err(io::Error::last_os_error());
            }
            if size as usize > 1 << 24 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "xattr too large",
                ));
            }
            buf = vec![0u8; (size as usize).max(buf.len() * 2)];
        }
    }

    /// Reads xattr `name` of `path` without following a symlink; `None` if absent.
    pub(crate) fn lget(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
        let p = cpath(path)?;
        let n = cname(name)?;
        let res = read_value(|ptr, len| {
            // SAFETY: `p` and `n` are valid NUL-terminated strings alive for the
            // call; `ptr` is either null with `len` 0 or points to a writable
            // buffer of `len` bytes owned by `read_value`.
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, len) }
        });
        match res {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads xattr `name` of the open file `fd`; `None` if absent.
    pub(crate) fn fget(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
        let n = cname(name)?;
        let raw = fd.as_raw_fd();
        let res = read_value(|ptr, len| {
            // SAFETY: `raw` is an open fd borrowed for the call; `n` is a valid
            // C string; `ptr`/`len` describe a writable buffer or are null/0.
            unsafe { libc::fgetxattr(raw, n.as_ptr(), ptr, len) }
        });
        match res {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets xattr `name` on `path` without following a symlink.
    pub(crate) fn lset(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cname(name)?;
        // SAFETY: `p` and `n` are valid C strings and `value` is a live slice
        // of `value.len()` bytes; lsetxattr only reads them during the call.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sets xattr `name` (raw bytes) on the open file `fd`.
    pub(crate) fn fset_raw(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
        let n = CString::new(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "xattr name contains a NUL byte",
            )
        })?;
        // SAFETY: `fd` is an open fd borrowed for the call, `n` is a valid C
        // string and `value` a live slice; fsetxattr only reads them.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sets xattr `name` on the open file `fd`.
    pub(crate) fn fset(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
        fset_raw(fd, name.as_bytes(), value)
    }

    /// Removes xattr `name` from `path` without following a symlink.
    pub(crate) fn lremove(path: &Path, name: &str) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cname(name)?;
        // SAFETY: `p` and `n` are valid C strings alive for the call.
        let rc = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Lists the xattr names of `path` (not following a symlink), sorted.
    /// Filesystems without xattr support give an empty list.
    pub(crate) fn llist(path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let p = cpath(path)?;
        let res = read_value(|ptr, len| {
            // SAFETY: `p` is a valid C string; `ptr`/`len` describe a writable
            // buffer owned by `read_value`, or are null/0 to query the size.
            unsafe { libc::llistxattr(p.as_ptr(), ptr.cast(), len) }
        });
        let raw = match res {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<Vec<u8>> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Reads xattr `name` (raw bytes) of `path` without following a symlink.
    pub(crate) fn lget_raw(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match std::str::from_utf8(name) {
            Ok(s) => lget(path, s),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn whiteout_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gone");
        make_whiteout(&p).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(is_whiteout(&meta));
        assert!(is_whiteout_path(&p).unwrap());
        assert!(make_whiteout(&p).is_err(), "second mknod must fail");
    }

    #[test]
    fn regular_file_and_missing_are_not_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        assert!(!is_whiteout(&std::fs::symlink_metadata(&p).unwrap()));
        assert!(!is_whiteout_path(&dir.path().join("missing")).unwrap());
        assert!(!is_whiteout(
            &std::fs::symlink_metadata("/dev/null").unwrap()
        ));
    }

    #[test]
    fn opaque_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        assert!(!is_opaque(&d).unwrap());
        make_opaque(&d).unwrap();
        assert!(is_opaque(&d).unwrap());
        assert_eq!(
            xattr::lget(&d, OPAQUE_XATTR_USER).unwrap().as_deref(),
            Some(&b"y"[..])
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(
                xattr::lget(&d, OPAQUE_XATTR_TRUSTED).unwrap().as_deref(),
                Some(&b"y"[..])
            );
        }
        let f = std::fs::File::open(&d).unwrap();
        assert!(is_opaque_fd(f.as_fd()).unwrap());
        clear_opaque(&d).unwrap();
        assert!(!is_opaque(&d).unwrap());
    }

    #[test]
    fn opaque_requires_directory_and_value_y() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(
            make_opaque(&f).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        xattr::lset(&d, OPAQUE_XATTR_USER, b"n").unwrap();
        assert!(!is_opaque(&d).unwrap());
    }

    #[test]
    fn overlay_xattr_names() {
        assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(is_overlay_xattr(b"user.overlay.redirect"));
        assert!(!is_overlay_xattr(b"user.mime_type"));
        assert!(!is_overlay_xattr(b"security.capability"));
    }
}
