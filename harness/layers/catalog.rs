//! The layer and image catalog in the store.
//!
//! ```text
//! STORE/layers/KEY/root/        the layer: an overlay lower directory (whiteouts as 0/0
//!                               character devices, opaque directories as xattrs)
//! STORE/layers/KEY/meta.json    LayerMeta
//! STORE/layers/KEY/last-used    its mtime is the last use
//! STORE/layers/.staging-NAME    a build or import in progress (or killed); its creator
//!                               holds STORE/locks/NAME.lock (NAME: the key, or import-ID)
//! STORE/layers/.trash-KEY-ID    a layer `gc` is removing
//! STORE/locks/KEY.lock          held exclusively while KEY is being built or removed, and
//!                               shared (a lease) by every container that mounts KEY
//! STORE/images/NAME.json        ImageRecord: a named image, kept by `pristine gc`
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};

use super::error::{io, BuildError};
use crate::image::Image;
use crate::store::{lock_is_held, remove_tree, Store};
use crate::sys::tree::{self, LockKind};

/// What a stored layer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Its key.
    pub key: String,
    /// The key below it (a base key for the lowest layer).
    pub parent: String,
    /// Human-readable name.
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Bytes of file content in the layer.
    pub size: u64,
}

/// The base of a recorded image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseRecord {
    /// The host root.
    Host,
    /// A rootfs directory.
    Rootfs(PathBuf),
    /// Layers only (imported images).
    Scratch,
}

/// As `pristine images` shows it: `host`, `rootfs DIR`, or `scratch` (layers only).
impl std::fmt::Display for BaseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BaseRecord::Host => f.write_str("host"),
            BaseRecord::Rootfs(dir) => write!(f, "rootfs {}", dir.display()),
            BaseRecord::Scratch => f.write_str("scratch"),
        }
    }
}

/// A named image: a base and layer keys, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Its name.
    pub name: String,
    /// Its base.
    pub base: BaseRecord,
    /// Layer keys, bottom first.
    pub layers: Vec<String>,
    /// When it was recorded, seconds since the epoch.
    pub created: u64,
    /// Run configuration of an imported image.
    #[serde(default)]
    pub config: crate::oci::ImageConfig,
    /// Where a pulled image came from (`None` for built and imported images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::pull::PullSource>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Image names: `[A-Za-z0-9._-]`, not starting with a dot, at most 128 characters.
pub(crate) fn check_image_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image name {name:?} must be 1-128 characters of A-Z a-z 0-9 . _ - and not start with '.'"
        ))
    }
}

/// The layer catalog of a store.
#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
}

impl Catalog {
    /// The catalog of `store`, creating its directories.
    pub fn new(store: &Store) -> Result<Self, BuildError> {
        let root = store.root().to_path_buf();
        for d in ["layers", "locks", "images"] {
            if !root.join(d).is_dir() {
                store.subdir(d)?;
            }
        }
        Ok(Catalog { root })
    }

    /// The store root.
    pub fn store_root(&self) -> &Path {
        &self.root
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Directory of layer `key` (its `root/` is the overlay lower).
    pub fn layer_dir(&self, key: &str) -> PathBuf {
        self.layers_dir().join(key)
    }

    /// The overlay lower directory of layer `key`.
    pub fn layer_root(&self, key: &str) -> PathBuf {
        self.layer_dir(key).join("root")
    }

    /// Whether layer `key` is complete (its metadata is written last, before the rename).
    pub fn has_layer(&self, key: &str) -> bool {
        self.layer_dir(key).join("meta.json").is_file()
    }

    /// Marks a layer as used now.
    pub fn touch(&self, key: &str) {
        let p = self.layer_dir(key).join("last-used");
        let _ = File::create(&p);
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// The exclusive lock `locks/NAME.lock` if nobody holds it (as `gc` takes it before
    /// removing what it guards); `None` if it is held. A dry run only looks.
    fn try_exclusive(&self, name: &str, dry_run: bool) -> Result<Option<Gate>, BuildError> {
        let p = self.lock_path(name);
        if dry_run {
            return Ok((!lock_is_held(&p)).then_some(Gate::Look));
        }
        let lock = tree::lock_file(&p, LockKind::Exclusive, false).map_err(io("lock", &p))?;
        Ok(lock.map(Gate::Held))
    }

    /// Makes layer `key` exist: if it is not stored yet, takes the key's lock and, unless
    /// another process published it meanwhile, calls `fill` with a fresh staging directory
    /// (whose `root/` becomes the layer) and publishes what it returns. Returns whether
    /// the layer was already there, and a lease on it (so `gc` leaves it alone until the
    /// caller has recorded or used it). A failed `fill` publishes nothing.
    pub(crate) fn publish_once(
        &self,
        key: &str,
        fill: impl FnOnce(&Path) -> Result<LayerMeta, BuildError>,
    ) -> Result<(bool, Flock<File>), BuildError> {
        let mut fill = Some(fill);
        loop {
            if let Some(lease) = self.lease(key)? {
                return Ok((fill.is_some(), lease));
            }
            let _lock = self.lock(key)?;
            if self.has_layer(key) {
                continue;
            }
            let Some(fill) = fill.take() else {
                // Built, then collected before it could be leased (a `gc` in between).
                return Err(crate::store::StoreError::LayerGone {
                    path: self.layer_dir(key),
                }
                .into());
            };
            let staging = self.staging(key)?;
            if let Err(e) = fill(&staging).and_then(|meta| self.commit(&staging, &meta)) {
                let _ = remove_tree(&staging);
                return Err(e);
            }
        }
    }

    /// A lease (shared lock) on layer `key`, if it is stored.
    pub(crate) fn lease(&self, key: &str) -> Result<Option<Flock<File>>, BuildError> {
        if !self.has_layer(key) {
            return Ok(None);
        }
        let p = self.lock_path(key);
        let lease = tree::lock_file(&p, LockKind::Shared, true).map_err(io("lease", &p))?;
        Ok(lease.filter(|_| self.has_layer(key)))
    }

    /// Waits for and takes the exclusive lock `locks/NAME.lock` (the build lock of a key).
    pub(crate) fn lock(&self, name: &str) -> Result<Flock<File>, BuildError> {
        let p = self.lock_path(name);
        tree::lock_file(&p, LockKind::Exclusive, true)
            .map_err(io("lock", &p))?
            .ok_or_else(|| BuildError::Io {
                op: "lock",
                path: p,
                source: std::io::ErrorKind::WouldBlock.into(),
            })
    }

    /// A fresh staging directory `layers/.staging-NAME`, after removing a stale one (the
    /// caller holds `locks/NAME.lock`, so an existing one belongs to a dead build).
    pub(crate) fn staging(&self, name: &str) -> Result<PathBuf, BuildError> {
        let dir = self.layers_dir().join(format!(".staging-{name}"));
        remove_tree(&dir).map_err(io("remove stale staging directory", &dir))?;
        std::fs::create_dir(&dir).map_err(io("create staging directory", &dir))?;
        std::fs::create_dir(dir.join("root")).map_err(io("create staging directory", &dir))?;
        Ok(dir)
    }

    /// Atomically publishes a staged layer.
    fn commit(&self, staging: &Path, meta: &LayerMeta) -> Result<(), BuildError> {
        let json = serde_json::to_vec_pretty(meta).expect("meta serializes");
        let meta_path = staging.join("meta.json");
        std::fs::write(&meta_path, json).map_err(io("write layer metadata", &meta_path))?;
        let _ = File::create(staging.join("last-used"));
        let dest = self.layer_dir(&meta.key);
        std::fs::rename(staging, &dest).map_err(io("publish layer", &dest))
    }

    /// Metadata of layer `key`.
    pub fn layer_meta(&self, key: &str) -> Result<LayerMeta, BuildError> {
        let p = self.layer_dir(key).join("meta.json");
        let text = std::fs::read(&p).map_err(io("read layer metadata", &p))?;
        serde_json::from_slice(&text).map_err(|e| BuildError::Io {
            op: "parse layer metadata",
            path: p,
            source: e.into(),
        })
    }

    /// Every complete layer, with its last use.
    pub fn layers(&self) -> Result<Vec<(LayerMeta, Option<SystemTime>)>, BuildError> {
        let mut out = Vec::new();
        let dir = self.layers_dir();
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !self.has_layer(&name) {
                continue;
            }
            let meta = self.layer_meta(&name)?;
            let used = std::fs::metadata(e.path().join("last-used"))
                .and_then(|m| m.modified())
                .ok();
            out.push((meta, used));
        }
        out.sort_by(|a, b| a.0.created.cmp(&b.0.created).then(a.0.key.cmp(&b.0.key)));
        Ok(out)
    }

    /// Records a named image.
    pub fn record_image(&self, record: &ImageRecord) -> Result<(), BuildError> {
        check_image_name(&record.name).map_err(|reason| BuildError::BadRecipe {
            path: PathBuf::from(&record.name),
            reason,
        })?;
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", record.name));
        let tmp = p.with_extension(format!("json.tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(record).expect("serializes"))
            .map_err(io("write image record", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io("write image record", &p))
    }

    /// The named image, if recorded.
    pub fn image_record(&self, name: &str) -> Result<Option<ImageRecord>, BuildError> {
        if check_image_name(name).is_err() {
            return Ok(None);
        }
        let p = self.root.join("images").join(format!("{name}.json"));
        match std::fs::read(&p) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| BuildError::Io {
                    op: "parse image record",
                    path: p,
                    source: e.into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read image record", &p)(e)),
        }
    }

    /// Every named image.
    pub fn images(&self) -> Result<Vec<ImageRecord>, BuildError> {
        let dir = self.root.join("images");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io("read", &dir))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(r) = self.image_record(&n)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The [`Image`] a record stands for; its layers are marked as used.
    pub fn image_of(&self, record: &ImageRecord) -> Result<Image, BuildError> {
        let mut image = match &record.base {
            BaseRecord::Host => Image::host(),
            BaseRecord::Rootfs(d) => Image::rootfs(d),
            BaseRecord::Scratch => Image::scratch(),
        }
        .with_config(record.config.clone());
        for key in &record.layers {
            if !self.has_layer(key) {
                return Err(BuildError::Io {
                    op: "find layer of image",
                    path: self.layer_dir(key),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "layer of image {:?} is missing (collected?); rebuild or re-import it",
                            record.name
                        ),
                    ),
                });
            }
            self.touch(key);
            image = image.layer(self.layer_root(key));
        }
        Ok(image)
    }

    /// Removes layers that no named image uses (and, with `older_than`, that were not used
    /// recently; with `keep_last`, all but that many of the most recently used), dead
    /// staging directories and unused lock files. Returns what was removed (with
    /// `dry_run`, what would be, and nothing is changed).
    ///
    /// Whatever is in use is locked: a layer being built on or mounted by a running
    /// container (its lease), a staging directory its build, import or squash. `gc` takes
    /// the exclusive lock of each thing it removes and holds it while removing, so it never
    /// removes what another process holds, and no process can start using it meanwhile.
    pub fn gc(
        &self,
        older_than: Option<Duration>,
        keep_last: Option<usize>,
        dry_run: bool,
    ) -> Result<Vec<String>, BuildError> {
        let mut removed = self.gc_layers(older_than, keep_last, dry_run)?;
        removed.extend(self.gc_stagings(dry_run)?);
        removed.extend(self.gc_squashed(dry_run)?);
        if !dry_run {
            self.gc_locks()?;
        }
        Ok(removed)
    }

    fn gc_layers(
        &self,
        older_than: Option<Duration>,
        keep_last: Option<usize>,
        dry_run: bool,
    ) -> Result<Vec<String>, BuildError> {
        let mut removed = Vec::new();
        let reachable: BTreeSet<String> =
            self.images()?.into_iter().flat_map(|r| r.layers).collect();
        let cutoff = older_than.and_then(|d| SystemTime::now().checked_sub(d));
        let mut unreferenced: Vec<(LayerMeta, Option<SystemTime>)> = self
            .layers()?
            .into_iter()
            .filter(|(meta, _)| !reachable.contains(&meta.key))
            .collect();
        // Most recently used first: `keep_last` spares the head of the list.
        unreferenced.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.key.cmp(&b.0.key)));
        for (meta, used) in unreferenced.into_iter().skip(keep_last.unwrap_or(0)) {
            if let (Some(cutoff), Some(used)) = (cutoff, used) {
                if used > cutoff {
                    continue;
                }
            }
            let gone = match dry_run {
                // Held: being built on, or mounted by a running container (its lease).
                true => self.try_exclusive(&meta.key, true)?.is_some(),
                false => self.remove_unheld(&meta.key)?,
            };
            if !gone {
                continue;
            }
            removed.push(format!(
                "layer {} ({})",
                &meta.key[..12.min(meta.key.len())],
                meta.name
            ));
        }
        Ok(removed)
    }

    /// Removes layer `key` unless something holds it (a build on it, or a running
    /// container's lease); returns whether it was removed. It is renamed out of sight
    /// first, so nobody finds it half-removed.
    fn remove_unheld(&self, key: &str) -> Result<bool, BuildError> {
        let Some(gate) = self.try_exclusive(key, false)? else {
            return Ok(false);
        };
        let dir = self.layer_dir(key);
        let trash = self
            .layers_dir()
            .join(format!(".trash-{key}-{}", crate::container::random_id()));
        std::fs::rename(&dir, &trash).map_err(io("remove layer", &dir))?;
        remove_tree(&trash).map_err(io("remove layer", &trash))?;
        gate.release(&self.lock_path(key));
        Ok(true)
    }

    /// After a named image was recorded anew: removes those of its former layers
    /// (`replaced`) that no image names any more and nothing holds, so rebuilds of a
    /// recipe replace its layers instead of piling them up. What a running container or a
    /// build still holds stays, for `gc` to take later. Returns the removed keys.
    pub(crate) fn drop_replaced(&self, replaced: &[String]) -> Result<Vec<String>, BuildError> {
        let named: BTreeSet<String> = self.images()?.into_iter().flat_map(|r| r.layers).collect();
        let mut removed = Vec::new();
        for key in replaced.iter().filter(|k| !named.contains(*k)) {
            if self.has_layer(key) && self.remove_unheld(key)? {
                removed.push(key.clone());
            }
        }
        Ok(removed)
    }

    /// Staging directories whose build, import or squash is gone, and interrupted removals.
    fn gc_stagings(&self, dry_run: bool) -> Result<Vec<String>, BuildError> {
        let mut removed = Vec::new();
        for (dir, lock_prefix) in [(self.layers_dir(), ""), (self.squashed_dir(), "squash-")] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let gate = if let Some(owner) = name.strip_prefix(".staging-") {
                    let lock = format!("{lock_prefix}{owner}");
                    self.try_exclusive(&lock, dry_run)?
                        .map(|gate| (gate, Some(lock)))
                } else if name.starts_with(".trash-") {
                    Some((Gate::Look, None))
                } else {
                    None
                };
                let Some((gate, lock)) = gate else { continue };
                if !dry_run {
                    remove_tree(&e.path()).map_err(io("remove staging directory", &e.path()))?;
                    if let Some(lock) = lock {
                        gate.release(&self.lock_path(&lock));
                    }
                }
                removed.push(format!("staging {name}"));
            }
        }
        Ok(removed)
    }

    /// Squashed stacks of layers that are gone, unless a container holds them.
    fn gc_squashed(&self, dry_run: bool) -> Result<Vec<String>, BuildError> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(self.squashed_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let keys = std::fs::read_to_string(e.path().join("layers")).unwrap_or_default();
            let stale = keys.is_empty() || keys.lines().any(|k| !self.has_layer(k));
            if !stale {
                continue;
            }
            let lock = format!("squash-{name}");
            let Some(gate) = self.try_exclusive(&lock, dry_run)? else {
                continue;
            };
            if !dry_run {
                remove_tree(&e.path()).map_err(io("remove squashed stack", &e.path()))?;
                gate.release(&self.lock_path(&lock));
            }
            removed.push(format!("squashed {name}"));
        }
        Ok(removed)
    }

    /// Lock files nobody holds.
    fn gc_locks(&self) -> Result<(), BuildError> {
        let locks = self.root.join("locks");
        for e in std::fs::read_dir(&locks).into_iter().flatten().flatten() {
            let p = e.path();
            if let Some(lock) =
                tree::lock_file(&p, LockKind::Exclusive, false).map_err(io("lock", &p))?
            {
                let _ = tree::remove_locked(&p, &lock);
            }
        }
        Ok(())
    }

    fn squashed_dir(&self) -> PathBuf {
        self.root.join("squashed")
    }
}

/// What `gc` holds while removing something: its exclusive lock, or nothing in a dry run
/// (and for what no lock guards).
enum Gate {
    Held(Flock<File>),
    Look,
}

impl Gate {
    /// Done removing what the lock guarded: the lock file goes too.
    fn release(self, path: &Path) {
        if let Gate::Held(lock) = self {
            let _ = tree::remove_locked(path, &lock);
        }
    }
}

/// Bytes of file content under `dir`.
pub(crate) fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.len();
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A staging directory is removed by `gc` only once its owner's lock is free: an
    /// import's `.staging-import-ID` and a squash's `squashed/.staging-KEY` alike.
    #[test]
    fn gc_leaves_stagings_whose_owner_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("s")).unwrap();
        let catalog = Catalog::new(&store).unwrap();
        let import = catalog.lock("import-abc").unwrap();
        let staging = catalog.staging("import-abc").unwrap();
        let squash = catalog.lock("squash-k").unwrap();
        let squash_staging = store.root().join("squashed/.staging-k");
        std::fs::create_dir_all(squash_staging.join("root")).unwrap();
        assert!(catalog.gc(None, None, false).unwrap().is_empty());
        assert!(staging.is_dir() && squash_staging.is_dir());
        drop((import, squash));
        let dry = catalog.gc(None, None, true).unwrap();
        assert_eq!(dry.len(), 2, "{dry:?}");
        assert!(staging.is_dir(), "a dry run removes nothing");
        assert_eq!(catalog.gc(None, None, false).unwrap(), dry);
        assert!(!staging.exists() && !squash_staging.exists());
        let locks = std::fs::read_dir(store.root().join("locks"))
            .unwrap()
            .count();
        assert_eq!(locks, 0, "unused lock files are removed");
    }

    /// A leased layer (a running container's) stays; an unleased one goes.
    #[test]
    fn gc_leaves_leased_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("s")).unwrap();
        let catalog = Catalog::new(&store).unwrap();
        let meta = |key: &str| LayerMeta {
            key: key.into(),
            parent: "scratch".into(),
            name: key.into(),
            created: 0,
            size: 0,
        };
        for key in ["a", "b"] {
            let (cached, _lease) = catalog.publish_once(key, |_| Ok(meta(key))).unwrap();
            assert!(!cached);
        }
        let leases = store.lease(&[catalog.layer_root("a")]).unwrap();
        assert_eq!(leases.len(), 1);
        let removed = catalog.gc(None, None, false).unwrap();
        assert_eq!(removed, ["layer b (b)"]);
        assert!(catalog.has_layer("a") && !catalog.has_layer("b"));
        drop(leases);
        assert_eq!(catalog.gc(None, None, false).unwrap(), ["layer a (a)"]);
        // Gone: nothing to lease (the container then fails to find the layer directory).
        assert!(store.lease(&[catalog.layer_root("a")]).unwrap().is_empty());
    }
}
