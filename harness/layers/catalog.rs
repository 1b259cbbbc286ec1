//! The layer and image catalog in the store.
//!
//! ```text
//! STORE/layers/KEY/root/        the layer: an overlay lower directory (whiteouts as 0/0
//!                               character devices, opaque directories as xattrs)
//! STORE/layers/KEY/meta.json    LayerMeta
//! STORE/layers/KEY/last-used    its mtime is the last use
//! STORE/layers/.staging-KEY-PID a build or import in progress (or killed)
//! STORE/locks/KEY.lock          held while KEY is being built
//! STORE/images/NAME.json        ImageRecord: a named image, kept by `pristine gc`
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::error::{io, BuildError};
use crate::image::Image;
use crate::store::{lock_is_held, remove_tree, Store};

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
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("create store directory", &p))?;
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

    fn lock_is_held(&self, key: &str) -> bool {
        lock_is_held(&self.root.join("locks").join(format!("{key}.lock")))
    }

    /// Makes layer `key` exist: if it is not stored yet, takes the key's lock and, unless
    /// another process published it meanwhile, calls `fill` with a fresh staging directory
    /// (whose `root/` becomes the layer) and publishes what it returns. Returns whether
    /// the layer was already there. A failed `fill` publishes nothing.
    pub(crate) fn publish_once(
        &self,
        key: &str,
        fill: impl FnOnce(&Path) -> Result<LayerMeta, BuildError>,
    ) -> Result<bool, BuildError> {
        if self.has_layer(key) {
            return Ok(true);
        }
        let _lock = self.lock(key)?;
        if self.has_layer(key) {
            return Ok(true);
        }
        let staging = self.staging(key)?;
        match fill(&staging) {
            Ok(meta) => self.commit(&staging, &meta).map(|()| false),
            Err(e) => {
                let _ = remove_tree(&staging);
                Err(e)
            }
        }
    }

    /// Waits for and takes the build lock of `key`.
    pub(crate) fn lock(&self, key: &str) -> Result<Flock<File>, BuildError> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        let f = File::create(&p).map_err(io("create lock", &p))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| BuildError::Io {
            op: "lock",
            path: p,
            source: e.into(),
        })
    }

    /// A fresh staging directory for `key`, after removing stale ones (the caller holds the
    /// key's lock, so any other staging directory of the key belongs to a dead build).
    fn staging(&self, key: &str) -> Result<PathBuf, BuildError> {
        let prefix = format!(".staging-{key}-");
        for e in std::fs::read_dir(self.layers_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                remove_tree(&e.path()).map_err(io("remove stale staging directory", &e.path()))?;
            }
        }
        let dir = self
            .layers_dir()
            .join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(dir.join("root")).map_err(io("create staging directory", &dir))?;
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
        };
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
    /// staging directories and unused lock files. Returns what was removed.
    pub fn gc(
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
            // Another process may be building on this layer right now; its lock says so.
            if self.lock_is_held(&meta.key) {
                continue;
            }
            if !dry_run {
                let dir = self.layer_dir(&meta.key);
                remove_tree(&dir).map_err(io("remove layer", &dir))?;
            }
            removed.push(format!(
                "layer {} ({})",
                &meta.key[..12.min(meta.key.len())],
                meta.name
            ));
        }
        for e in std::fs::read_dir(self.layers_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".staging-") else {
                continue;
            };
            let key = rest.rsplit_once('-').map(|(k, _)| k).unwrap_or(rest);
            if !self.lock_is_held(key) {
                if !dry_run {
                    remove_tree(&e.path()).map_err(io("remove staging directory", &e.path()))?;
                }
                removed.push(format!("staging {name}"));
            }
        }
        // Squashed stacks of layers that are gone, and dead squash stagings.
        let squashed = self.root.join("squashed");
        for e in std::fs::read_dir(&squashed).into_iter().flatten().flatten() {
            let keys = std::fs::read_to_string(e.path().join("layers")).unwrap_or_default();
            let stale = e.file_name().to_string_lossy().starts_with('.')
                || keys.lines().any(|k| !self.has_layer(k))
                || keys.is_empty();
            if stale {
                if !dry_run {
                    remove_tree(&e.path()).map_err(io("remove squashed stack", &e.path()))?;
                }
                removed.push(format!("squashed {}", e.file_name().to_string_lossy()));
            }
        }
        let locks = self.root.join("locks");
        for e in std::fs::read_dir(&locks).into_iter().flatten().flatten() {
            if !dry_run && !lock_is_held(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(removed)
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
