//! The store: one directory that holds everything pristine keeps on disk.
//!
//! ```text
//! STORE/                mode 0700, owned by the user who runs pristine
//!   pristine-store      marker: "pristine store" and the store format version; pristine
//!                       opens (and deletes in) no directory without it
//!   run/mnt/            mount point of each container's tmpfs base (stays empty on the host:
//!                       every container mounts over it in its own mount namespace)
//!   containers/ID.lock  held by the process running container ID (taken before ID exists)
//!   containers/ID/      on-disk state of a running container (upper and work on disk);
//!                       removed at the end of the container, or by the next run if the
//!                       owner was killed (its lock is free)
//!   kept/ID/            upper layers kept for inspection (`--keep`)
//!   locks/NAME.lock     build locks (exclusive) and leases (shared) of layers and stagings
//! ```
//!
//! Only the owner can reach anything in the store (it is 0700): setuid files and device
//! nodes in kept uppers, layers and imports are out of other users' reach. The store is
//! opened only if it is a real directory (not a symlink) owned by the caller, and carries
//! the marker with this format version.
//!
//! When STORE's filesystem cannot reflink, all of the data lives in `STORE/reflink/`
//! instead, a filesystem that can (see [`reflink`]); [`Store::root`] is then that
//! directory, and the checks and the marker stay at [`Store::location`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::Flock;

use crate::sys::tree::{self, LockKind};

pub mod reflink;
pub use reflink::Reflink;

/// The store format this pristine reads and writes.
pub const STORE_FORMAT: u32 = 1;

/// Name of the marker file at the store's root.
pub const MARKER: &str = "pristine-store";

/// The store's subdirectories, created (0700) when it is opened.
const SUBDIRS: [&str; 7] = [
    "run",
    "containers",
    "kept",
    "layers",
    "locks",
    "images",
    "squashed",
];

/// What else a store made before the marker may hold: its reflink image and mount point.
const LEGACY_EXTRA: [&str; 3] = ["reflink", "reflink.img", "reflink.lock"];

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
        source: io::Error,
    },
    /// The store path is a symlink (someone else may have planted it).
    #[error("refusing to use store {path}: it is a symlink; point PRISTINE_STORE or --store at a real directory of your own")]
    Symlink {
        /// The store path.
        path: PathBuf,
    },
    /// The store path is not a directory.
    #[error("refusing to use store {path}: it is not a directory; set PRISTINE_STORE or --store to a directory of your own")]
    NotADirectory {
        /// The store path.
        path: PathBuf,
    },
    /// The store belongs to another user.
    #[error("refusing to use store {path}: it belongs to uid {owner}, not to this user (uid {uid}); set PRISTINE_STORE or --store to a directory of your own (if {path} is not yours, someone may have planted it)")]
    NotOwned {
        /// The store path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The caller's effective uid.
        uid: u32,
    },
    /// The directory exists, is not empty and is not a pristine store.
    #[error("refusing to use {path} as a store: it is not empty and has no {MARKER} marker, and pristine deletes only in stores it created; choose a new or empty directory")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// The store was written by a pristine with another store format.
    #[error("store {path} has format {found}, this pristine uses format {STORE_FORMAT}; use a pristine of that format, or remove the store (`rm -rf {path}`) and build again")]
    Format {
        /// The store path.
        path: PathBuf,
        /// What the marker says.
        found: String,
    },
    /// A layer went away (collected by `pristine gc`) before a container could lease it.
    #[error("layer {path} was removed (by `pristine gc`?) before the container could use it; build or import its image again")]
    LayerGone {
        /// The layer directory.
        path: PathBuf,
    },
}

fn hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        "\n  hint: set PRISTINE_STORE to a directory this user can write"
    } else {
        ""
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
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
    ///
    /// Refused, with an error saying what to do, if `root` is a symlink, is not owned by the
    /// caller, is a non-empty directory that is not a pristine store, or has another store
    /// format.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root.into(), reflink::Policy::FindOnly)
    }

    /// Opens the store at `root`, as root making and mounting a reflink image for it if its
    /// filesystem cannot reflink (see [`reflink`]).
    pub fn open_with_image(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(root.into(), reflink::Policy::Make)
    }

    fn open_with(root: PathBuf, policy: reflink::Policy) -> Result<Self, StoreError> {
        let location = absolute(root)?;
        // Once per store and process: checking the location, choosing (and, as root,
        // mounting) the data root, creating the directories and removing what killed runs
        // left; every later container of this process uses it directly.
        static OPENED: OnceLock<Mutex<HashMap<PathBuf, (PathBuf, Reflink)>>> = OnceLock::new();
        let mut opened = OPENED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((data, reflink)) = opened.get(&location) {
            return Ok(Store {
                root: data.clone(),
                location,
                reflink: reflink.clone(),
            });
        }
        prepare_location(&location, true)?;
        let (data, reflink) = reflink::data_root(&location, policy, true);
        let store = Store {
            root: data,
            location,
            reflink,
        };
        for sub in SUBDIRS {
            store.subdir(sub)?;
        }
        store.subdir("run/mnt")?;
        store.leftovers(false)?;
        opened.insert(
            store.location.clone(),
            (store.root.clone(), store.reflink.clone()),
        );
        Ok(store)
    }

    /// Opens an existing store to look at it: the same checks as [`Store::open`], but
    /// nothing is created, changed or removed (for `pristine gc --dry-run`).
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let location = absolute(root.into())?;
        prepare_location(&location, false)?;
        let (root, reflink) = reflink::data_root(&location, reflink::Policy::FindOnly, false);
        Ok(Store {
            root,
            location,
            reflink,
        })
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
    /// `~/.cache/pristine`; else `pristine-UID` in `$TMPDIR` or `/tmp` (used only if it is
    /// a directory of this user's, not a symlink, see [`Store::open`]: anyone can create
    /// that name in `/tmp` first).
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
        std::env::temp_dir().join(format!("pristine-{}", crate::sys::effective_ids().0))
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

    /// The lock file `locks/NAME.lock`.
    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// Creates (0700) or checks the store subdirectory `rel`: a directory, not a symlink.
    pub(crate) fn subdir(&self, rel: &str) -> Result<PathBuf, StoreError> {
        let p = self.root.join(rel);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create store directory", &p)(e)),
        }
        let meta = std::fs::symlink_metadata(&p).map_err(io("inspect store directory", &p))?;
        check_owned_dir(&p, &meta)?;
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
                .map_err(io("make the store directory private (chmod 0700)", &p))?;
        }
        Ok(p)
    }

    /// Creates the on-disk directory of a running container, locked by this process: the
    /// lock (`containers/ID.lock`) is taken before the directory exists, so no other
    /// process's cleanup can mistake it for a leftover.
    pub(crate) fn container_dir(&self, id: &str) -> Result<ContainerDir, StoreError> {
        let lock_path = self.containers_dir().join(format!("{id}.lock"));
        let lock = tree::lock_file(&lock_path, LockKind::Exclusive, false)
            .map_err(io("lock", &lock_path))?
            .ok_or_else(|| {
                io("lock", &lock_path)(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "another process uses this container id",
                ))
            })?;
        let path = self.containers_dir().join(id);
        let dir = ContainerDir {
            path,
            lock_path,
            lock,
        };
        // The upper directory's mode is what `/` shows in the container; the store's
        // `containers/` (0700) keeps it from other users.
        for (p, mode) in [
            (dir.path.clone(), 0o700),
            (dir.upper(), 0o755),
            (dir.work(), 0o700),
        ] {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&p)
                .map_err(io("create container directory", &p))?;
        }
        Ok(dir)
    }

    /// Removes container directories whose owner is gone (its lock is free). Returns how
    /// many were removed.
    pub fn remove_leftovers(&self) -> Result<usize, StoreError> {
        self.leftovers(false).map(|v| v.len())
    }

    /// The container directories whose owner is gone, removed unless `dry_run`.
    pub fn leftovers(&self, dry_run: bool) -> Result<Vec<String>, StoreError> {
        let dir = self.containers_dir();
        let fd = match tree::open_dir_nofollow(&dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && dry_run => return Ok(Vec::new()),
            Err(e) => return Err(io("open", &dir)(e)),
        };
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let name = e.map_err(io("read", &dir))?.file_name();
            names.push(name.to_string_lossy().into_owned());
        }
        let mut removed = Vec::new();
        for name in &names {
            if let Some(id) = name.strip_suffix(".lock") {
                let lock_path = dir.join(name);
                let lock = match dry_run {
                    true => (!tree::lock_is_held(&lock_path)).then_some(None),
                    false => tree::lock_file(&lock_path, LockKind::Exclusive, false)
                        .map_err(io("lock", &lock_path))?
                        .map(Some),
                };
                let Some(lock) = lock else { continue };
                if !dry_run {
                    tree::remove_at(fd.as_fd(), Path::new(id))
                        .map_err(io("remove leftover container directory", &dir.join(id)))?;
                }
                if let Some(lock) = lock {
                    tree::remove_locked(&lock_path, &lock).map_err(io("remove", &lock_path))?;
                }
                removed.push(id.to_string());
            } else if !names.contains(&format!("{name}.lock"))
                // A directory without its lock: its owner's cleanup was cut short (the
                // lock is made first and removed last), or an older pristine's with the
                // lock inside.
                && !tree::lock_is_held(&dir.join(name).join("lock"))
            {
                if !dry_run {
                    tree::remove_at(fd.as_fd(), Path::new(name))
                        .map_err(io("remove leftover container directory", &dir.join(name)))?;
                }
                removed.push(name.clone());
            }
        }
        Ok(removed)
    }

    /// Leases the store layers among `layers` (shared locks, held until the leases are
    /// dropped) so that `pristine gc` leaves them alone while a container uses them; fails
    /// if one was removed before its lease was taken. Other directories (also unpublished
    /// ones inside the store) are not leased.
    pub(crate) fn lease(&self, layers: &[PathBuf]) -> Result<Vec<Flock<File>>, StoreError> {
        let mut leases = Vec::new();
        for layer in layers {
            let Some((lock, complete)) = self.lease_target(layer) else {
                continue;
            };
            // A directory in the store that is not a published layer is mounted as given.
            if !complete.exists() {
                continue;
            }
            let lock_path = self.lock_path(&lock);
            let held = tree::lock_file(&lock_path, LockKind::Shared, true)
                .map_err(io("lease", &lock_path))?;
            if !complete.exists() {
                return Err(StoreError::LayerGone {
                    path: layer.clone(),
                });
            }
            leases.extend(held);
        }
        Ok(leases)
    }

    /// For a store layer `STORE/layers/KEY/root` or squashed stack `STORE/squashed/KEY/root`:
    /// the name of its lock, and the file whose presence says it is complete.
    fn lease_target(&self, layer: &Path) -> Option<(String, PathBuf)> {
        let rel = layer.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
        match parts[..] {
            ["layers", key, "root"] if !key.starts_with('.') => Some((
                key.to_string(),
                self.root.join("layers").join(key).join("meta.json"),
            )),
            ["squashed", key, "root"] if !key.starts_with('.') => Some((
                format!("squash-{key}"),
                self.root.join("squashed").join(key).join("done"),
            )),
            _ => None,
        }
    }
}

/// Checks the store location (with `create`, makes it, makes it private and marks it).
fn prepare_location(root: &Path, create: bool) -> Result<(), StoreError> {
    let fresh = match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            if let Some(parent) = root.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io("create the directory holding the store", parent))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(root) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io("create store directory", root)(e)),
            }
        }
        Err(e) => return Err(io("inspect store directory", root)(e)),
        Ok(_) => false,
    };
    let meta = std::fs::symlink_metadata(root).map_err(io("inspect store directory", root))?;
    check_owned_dir(root, &meta)?;
    if create && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("make the store private (chmod 0700)", root))?;
    }
    // The marker is read and written under a lock on the directory itself: two processes
    // making one new store at once (two CI jobs) must not see each other's half-made one.
    let dir = tree::open_dir_nofollow(root).map_err(io("open store directory", root))?;
    let _lock = Flock::lock(File::from(dir), nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock store directory", root)(e.into()))?;
    check_marker(root, fresh, create)
}

/// Reads the marker; writes it into a new, empty or legacy store when `create`.
fn check_marker(root: &Path, fresh: bool, create: bool) -> Result<(), StoreError> {
    let path = root.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .lines()
                .find_map(|l| l.strip_prefix("format "))
                .unwrap_or("unknown")
                .trim()
                .to_string();
            match found == STORE_FORMAT.to_string() {
                true => Ok(()),
                false => Err(StoreError::Format {
                    path: root.to_path_buf(),
                    found,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !(fresh || is_empty_or_legacy(root)?) {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                });
            }
            if create {
                let text = format!("pristine store\nformat {STORE_FORMAT}\n");
                std::fs::write(&path, text).map_err(io("write the store marker", &path))?;
            }
            Ok(())
        }
        Err(e) => Err(io("read the store marker", &path)(e)),
    }
}

/// An empty directory, or a store made before the marker existed: only the store's own
/// entries, including `run/mnt` (which nothing but pristine makes) or its reflink image.
fn is_empty_or_legacy(root: &Path) -> Result<bool, StoreError> {
    let entries = std::fs::read_dir(root).map_err(io("read", root))?;
    let mut names = Vec::new();
    for e in entries {
        names.push(e.map_err(io("read", root))?.file_name());
    }
    let known = names.iter().all(|n| {
        SUBDIRS
            .iter()
            .chain(LEGACY_EXTRA.iter())
            .any(|s| n.as_os_str() == *s)
    });
    let ours = |p: &str| std::fs::symlink_metadata(root.join(p)).is_ok();
    Ok(names.is_empty() || (known && (ours("run/mnt") || ours("reflink.img"))))
}

fn absolute(root: PathBuf) -> Result<PathBuf, StoreError> {
    if root.as_os_str().is_empty() {
        return Err(StoreError::NotADirectory { path: root });
    }
    if root.is_absolute() {
        return Ok(root);
    }
    Ok(std::env::current_dir()
        .map_err(io("get current directory for", &root))?
        .join(root))
}

/// A real directory (not a symlink) owned by the caller.
fn check_owned_dir(path: &Path, meta: &std::fs::Metadata) -> Result<(), StoreError> {
    let uid = crate::sys::effective_ids().0;
    if meta.file_type().is_symlink() {
        Err(StoreError::Symlink {
            path: path.to_path_buf(),
        })
    } else if !meta.is_dir() {
        Err(StoreError::NotADirectory {
            path: path.to_path_buf(),
        })
    } else if meta.uid() != uid {
        Err(StoreError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        })
    } else {
        Ok(())
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

/// A running container's on-disk directory; removed (then its lock) when dropped.
pub(crate) struct ContainerDir {
    path: PathBuf,
    lock_path: PathBuf,
    lock: Flock<File>,
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
        if remove_tree(&self.path).is_ok() {
            let _ = tree::remove_locked(&self.lock_path, &self.lock);
        }
    }
}

/// Whether a live process holds the `flock` on `path` (a missing file is not held). Locks
/// die with their process, so this tells a running owner from a killed one.
pub(crate) fn lock_is_held(path: &Path) -> bool {
    tree::lock_is_held(path)
}

/// `rm -rf`, also for directories without permissions (overlay's `work/work` is mode 000),
/// through directory descriptors and without following symlinks (see
/// [`sys::tree::remove_tree`](crate::sys::tree::remove_tree)).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    tree::remove_tree(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_owners_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("s")).unwrap();
        let live = store.container_dir("live").unwrap();
        // A dead owner: directory and lock file exist, nobody holds the lock.
        let dead = store.containers_dir().join("dead");
        std::fs::create_dir_all(dead.join("work/work")).unwrap();
        std::fs::write(store.containers_dir().join("dead.lock"), "").unwrap();
        assert_eq!(store.leftovers(true).unwrap(), ["dead"]);
        assert!(dead.exists(), "a dry run removes nothing");
        assert_eq!(store.remove_leftovers().unwrap(), 1);
        assert!(!dead.exists());
        assert!(!store.containers_dir().join("dead.lock").exists());
        assert!(live.path.exists());
        let p = live.path.clone();
        drop(live);
        assert!(!p.exists());
        assert!(!store.containers_dir().join("live.lock").exists());
    }

    #[test]
    fn a_new_store_is_private_and_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("s");
        Store::open(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for sub in SUBDIRS {
            let m = std::fs::metadata(root.join(sub)).unwrap().mode() & 0o777;
            assert_eq!(m, 0o700, "{sub}");
        }
        let marker = std::fs::read_to_string(root.join(MARKER)).unwrap();
        assert_eq!(marker, format!("pristine store\nformat {STORE_FORMAT}\n"));
    }

    #[test]
    fn foreign_directories_symlinks_and_other_formats_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let foreign = tmp.path().join("foreign");
        std::fs::create_dir_all(foreign.join("containers/precious")).unwrap();
        let e = Store::open(&foreign).unwrap_err();
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e}");
        assert!(foreign.join("containers/precious").exists());

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&foreign, &link).unwrap();
        let e = Store::open(&link).unwrap_err();
        assert!(matches!(e, StoreError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains(&*link.to_string_lossy()), "{e}");

        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(MARKER), "pristine store\nformat 99\n").unwrap();
        let e = Store::open(&other).unwrap_err();
        assert!(
            matches!(e, StoreError::Format { ref found, .. } if found == "99"),
            "{e}"
        );
    }

    #[test]
    fn a_store_from_before_the_marker_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old");
        std::fs::create_dir_all(old.join("run/mnt")).unwrap();
        std::fs::create_dir_all(old.join("layers")).unwrap();
        Store::open(&old).unwrap();
        assert!(old.join(MARKER).is_file());
    }
}
