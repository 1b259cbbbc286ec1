//! The store: one directory that holds everything pristine keeps on disk.
//!
//! ```text
//! STORE/
//!   run/mnt/          mount point of each container's tmpfs base (stays empty on the host:
//!                     every container mounts over it in its own mount namespace)
//!   containers/ID/    on-disk state of a running container (upper and work on disk), with
//!                     a `lock` file its owner holds; removed at the end of the container, or
//!                     by the next run if the owner was killed
//!   kept/ID/          upper layers kept for inspection (`--keep`)
//! ```
//!
//! When STORE's filesystem cannot reflink, all of this lives in `STORE/reflink/` instead,
//! a filesystem that can (see [`reflink`]); [`Store::root`] is then that directory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{Flock, FlockArg};

pub mod reflink;
pub use reflink::Reflink;

/// Errors opening or using the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store directory could not be created or used.
    #[error("failed to {op} {path}: {source}{}", hint(source))]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "\n  hint: set PRISTINE_STORE to a directory this user can write"
    } else {
        ""
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A pristine store directory.
#[derive(Debug, Clone)]
pub struct Store {
    /// Where the data lives (the location, or its reflink image's mount point).
    root: PathBuf,
    /// The directory the store was opened at.
    location: PathBuf,
    reflink: Reflink,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, and removes what killed runs left.
    /// A reflink image already in it is used (and mounted again as root); none is made
    /// unless `PRISTINE_REFLINK=image` (see [`reflink`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root.into(), reflink::Policy::FindOnly)
    }

    /// Opens the store at `root`, as root making and mounting a reflink image for it if its
    /// filesystem cannot reflink (see [`reflink`]).
    pub fn open_with_image(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root.into(), reflink::Policy::Make)
    }

    fn open_with(root: PathBuf, policy: reflink::Policy) -> Result<Self, StoreError> {
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(io("get current directory for", &root))?
                .join(root)
        };
        // Once per store and process: choosing (and, as root, mounting) the data root,
        // creating the directories and removing what killed runs left; every later
        // container of this process skips straight to using it.
        static OPENED: OnceLock<Mutex<HashMap<PathBuf, (PathBuf, Reflink)>>> = OnceLock::new();
        let mut opened = OPENED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((data, reflink)) = opened.get(&root) {
            return Ok(Store {
                root: data.clone(),
                location: root,
                reflink: reflink.clone(),
            });
        }
        std::fs::create_dir_all(&root).map_err(io("create store directory", &root))?;
        let (data, reflink) = reflink::data_root(&root, policy);
        let store = Store {
            root: data,
            location: root,
            reflink,
        };
        for dir in [store.mount_base(), store.containers_dir(), store.kept_dir()] {
            std::fs::create_dir_all(&dir).map_err(io("create store directory", &dir))?;
        }
        store.remove_leftovers()?;
        opened.insert(
            store.location.clone(),
            (store.root.clone(), store.reflink.clone()),
        );
        Ok(store)
    }

    /// Opens the store at its default location (see [`Store::default_location`]).
    /// As root, the implicit default store (`target/pristine` under cargo,
    /// `~/.cache/pristine`) gets a reflink image if its filesystem cannot reflink (see
    /// [`reflink`]); a store named by `PRISTINE_STORE` is treated like one opened with
    /// [`Store::open`] (tests point it at throwaway directories).
    pub fn open_default() -> Result<Self, StoreError> {
        match std::env::var_os("PRISTINE_STORE") {
            Some(_) => Self::open(Self::default_location()),
            None => Self::open_with_image(Self::default_location()),
        }
    }

    /// `PRISTINE_STORE`; else `pristine/` in cargo's target directory when run from one
    /// (`CARGO_TARGET_DIR`, or the `target` directory the running binary is in, if cargo
    /// made it: it holds cargo's `CACHEDIR.TAG`); else `$XDG_CACHE_HOME/pristine` or
    /// `~/.cache/pristine`; else `/tmp/pristine-UID`.
    ///
    /// A test archive that `cargo nextest run --archive-file` extracts has a `target`
    /// directory too, but nextest deletes it after the run, and cargo's tag is not in it:
    /// its tests use the user's cache, which outlives the run.
    pub fn default_location() -> PathBuf {
        if let Some(p) = std::env::var_os("PRISTINE_STORE") {
            return PathBuf::from(p);
        }
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            return PathBuf::from(t).join("pristine");
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(target) = exe.ancestors().find(|a| {
                a.file_name() == Some("target".as_ref()) && a.join("CACHEDIR.TAG").is_file()
            }) {
                return target.join("pristine");
            }
        }
        if let Some(c) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(c).join("pristine");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|h| Path::new(h).is_dir()) {
            return PathBuf::from(h).join(".cache/pristine");
        }
        PathBuf::from(format!("/tmp/pristine-{}", crate::sys::effective_ids().0))
    }

    /// The store's data directory: where it was opened, or the mount point of its reflink
    /// image there.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory the store was opened at.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Whether (and how) a container's first write to a stored layer's file clones it
    /// instead of copying it.
    pub fn reflink(&self) -> &Reflink {
        &self.reflink
    }

    /// Unmounts the store's reflink image (if this store has one and it is mounted). The next
    /// open mounts it again.
    pub fn unmount_image(location: &Path) -> Result<bool, String> {
        reflink::unmount(location)
    }

    /// Where each container mounts its tmpfs base (in its own mount namespace).
    pub(crate) fn mount_base(&self) -> PathBuf {
        self.root.join("run/mnt")
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// Where kept upper layers go.
    pub fn kept_dir(&self) -> PathBuf {
        self.root.join("kept")
    }

    /// Creates the on-disk directory of a running container, locked by this process.
    pub(crate) fn container_dir(&self, id: &str) -> Result<ContainerDir, StoreError> {
        let path = self.containers_dir().join(id);
        if path.exists() {
            remove_tree(&path).map_err(io("remove stale container directory", &path))?;
        }
        std::fs::create_dir(&path).map_err(io("create container directory", &path))?;
        let lock_path = path.join("lock");
        let file = File::create(&lock_path).map_err(io("create lock file", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io("lock", &lock_path)(e.into()))?;
        for sub in ["upper", "work"] {
            let p = path.join(sub);
            std::fs::create_dir(&p).map_err(io("create container directory", &p))?;
        }
        Ok(ContainerDir { path, _lock: lock })
    }

    /// Removes container directories whose owner is gone (its lock is free). Returns how
    /// many were removed.
    pub fn remove_leftovers(&self) -> Result<usize, StoreError> {
        let dir = self.containers_dir();
        let mut removed = 0;
        let entries = std::fs::read_dir(&dir).map_err(io("read", &dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let alive = lock_is_held(&path.join("lock"));
            if !alive {
                remove_tree(&path).map_err(io("remove leftover container directory", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What `pristine store` prints: where the data is and what a copy-up costs there.
pub fn describe(store: &Store) -> String {
    let mut out = format!("store      {}\n", store.location().display());
    if store.root() != store.location() {
        out += &format!("data       {}\n", store.root().display());
    }
    let (fs, copy_up, uppers) = match store.reflink() {
        Reflink::Native { fstype } => (
            format!("{fstype} (the store's own filesystem)"),
            "reflink: a container's first write to a stored layer's file clones it (no copy)",
            "on the store's filesystem, for images with stored layers",
        ),
        Reflink::Image {
            image,
            device,
            fstype,
        } => (
            format!(
                "{fstype} in {} via {} (made by pristine; mounted until \
                 `pristine store --unmount`)",
                image.display(),
                device.display()
            ),
            "reflink: a container's first write to a stored layer's file clones it (no copy)",
            "on the store's filesystem, for images with stored layers",
        ),
        Reflink::Unavailable { fstype, reason } => (
            format!("{fstype}: no reflinks ({reason})"),
            "a full copy: a container's first write to (or read-write open of) a stored \
             layer's file copies the whole file into its upper layer, into memory on a \
             tmpfs upper (about 0.4-1 s and 1 GiB of RAM per GiB of file)",
            "on a tmpfs (4g)",
        ),
    };
    out += &format!("filesystem {fs}\ncopy-up    {copy_up}\nuppers     {uppers}\n");
    out
}

/// A running container's on-disk directory; removed when dropped.
pub(crate) struct ContainerDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl ContainerDir {
    pub(crate) fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    pub(crate) fn work(&self) -> PathBuf {
        self.path.join("work")
    }
}

impl Drop for ContainerDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
    }
}

/// Whether a live process holds the `flock` on `path` (a missing file is not held). Locks
/// die with their process, so this tells a running owner from a killed one.
pub(crate) fn lock_is_held(path: &Path) -> bool {
    File::open(path)
        .ok()
        .map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err())
        .unwrap_or(false)
}

/// `rm -rf`, also for directories without permissions (overlay's `work/work` is mode 000).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_owners_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let live = store.container_dir("live").unwrap();
        // A dead owner: directory exists, nobody holds its lock.
        let dead = store.containers_dir().join("dead");
        std::fs::create_dir_all(dead.join("work/work")).unwrap();
        std::fs::write(dead.join("lock"), "").unwrap();
        assert_eq!(store.remove_leftovers().unwrap(), 1);
        assert!(!dead.exists());
        assert!(live.path.exists());
        let p = live.path.clone();
        drop(live);
        assert!(!p.exists());
    }
}
