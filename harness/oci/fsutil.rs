//! Small filesystem helpers: forceful cleanup of partly written trees.

use std::io;
use std::path::{Path, PathBuf};

/// Removes `path` (file or directory tree) even if directories inside were
/// made unreadable or unwritable (as an extracted layer's may be), without
/// following symlinks, through directory descriptors (see [`crate::sys::tree`]).
/// A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    crate::sys::tree::remove_tree(path)
}

/// Removes a path on drop unless [`Guard::disarm`] was called.
pub(crate) struct Guard {
    path: Option<PathBuf>,
}

impl Guard {
    pub(crate) fn new(path: PathBuf) -> Self {
        Guard { path: Some(path) }
    }

    pub(crate) fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = remove_tree(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_locked_down_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn guard_removes_unless_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        drop(Guard::new(a.clone()));
        Guard::new(b.clone()).disarm();
        assert!(!a.exists());
        assert!(b.exists());
    }
}
