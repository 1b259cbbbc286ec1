//! Small filesystem helpers: forceful cleanup of partly written trees.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Removes `path` (file or directory tree) even if directories inside were
/// made unreadable or unwritable (as an extracted layer's may be), without
/// following symlinks. A missing path is not an error.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    make_traversable(path);
    fs::remove_dir_all(path)
}

/// Gives every directory below `dir` owner rwx, best effort, so it can be removed.
fn make_traversable(dir: &Path) {
    if let Ok(meta) = fs::symlink_metadata(dir) {
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
        }
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            make_traversable(&entry.path());
        }
    }
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
