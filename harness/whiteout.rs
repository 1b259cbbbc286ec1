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

use std::fs::Metadata;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::sys::xattr;

/// xattr read by rootless overlay mounts (`userxattr`) to mark an opaque directory.
pub(crate) const OPAQUE_XATTR_USER: &str = "user.overlay.opaque";
/// xattr read by ordinary (root) overlay mounts to mark an opaque directory.
pub(crate) const OPAQUE_XATTR_TRUSTED: &str = "trusted.overlay.opaque";
/// Prefix of a whiteout marker in a layer tar: `.wh.NAME` deletes `NAME`.
pub(crate) const TAR_WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker in a layer tar.
pub(crate) const TAR_OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of tar whiteout metadata names (`.wh..wh.*`) that are not whiteouts.
pub(crate) const TAR_WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// Returns true if `meta` (from `symlink_metadata`) describes an overlay
/// whiteout: a character device with device number 0/0.
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Returns true if the entry at `path` (not following symlinks) is a whiteout.
/// A missing path is not a whiteout.
#[cfg(test)]
pub(crate) fn is_whiteout_path(path: &Path) -> io::Result<bool> {
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
pub(crate) fn make_whiteout(path: &Path) -> io::Result<()> {
    crate::sys::mknod(path, nix::sys::stat::SFlag::S_IFCHR, 0, 0, 0)
        .map_err(|e| io::Error::from_raw_os_error(e.errno as i32))
}

/// Returns true if the directory at `path` is opaque (`user.overlay.opaque` or
/// `trusted.overlay.opaque` is `y`). Does not follow a symlink at `path`.
pub(crate) fn is_opaque(path: &Path) -> io::Result<bool> {
    for name in [OPAQUE_XATTR_USER, OPAQUE_XATTR_TRUSTED] {
        if xattr::lget(path, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// EOPNOTSUPP from setting a `user.` xattr, with what to do: tmpfs has user xattrs only from
/// Linux 6.6 (Debian 12's 6.1 and Ubuntu 22.04's 5.15 lack them).
fn no_user_xattrs(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => io::Error::new(
            io::ErrorKind::Unsupported,
            "this filesystem does not support user xattrs, which opaque directories need \
             (tmpfs has them from Linux 6.6); keep pristine's store on a disk filesystem \
             such as ext4, xfs or btrfs (set PRISTINE_STORE)",
        ),
        _ => e,
    }
}

/// Marks the directory at `path` opaque: always sets `user.overlay.opaque=y`,
/// and also `trusted.overlay.opaque=y` when the process is allowed to (root).
///
/// Fails with `InvalidInput` if `path` is not a directory (symlinks are not
/// followed), or if the filesystem does not support user xattrs.
pub(crate) fn make_opaque(path: &Path) -> io::Result<()> {
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
    xattr::lset(path, OPAQUE_XATTR_USER, b"y").map_err(no_user_xattrs)?;
    match xattr::lset(path, OPAQUE_XATTR_TRUSTED, b"y") {
        Ok(()) => Ok(()),
        Err(e) if is_permission_error(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Like [`make_opaque`], for an open directory (`fd` must not be an `O_PATH` fd).
pub(crate) fn make_opaque_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    xattr::fset(fd, OPAQUE_XATTR_USER, b"y").map_err(no_user_xattrs)?;
    match xattr::fset(fd, OPAQUE_XATTR_TRUSTED, b"y") {
        Ok(()) => Ok(()),
        Err(e) if is_permission_error(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Returns true if `name` is an overlayfs-private xattr (`trusted.overlay.*`
/// or `user.overlay.*`), which must never be copied from or into an image.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn is_permission_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                xattr::lget(&d, OPAQUE_XATTR_TRUSTED).unwrap().as_deref(),
                Some(&b"y"[..])
            );
        }
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
