//! Pulling images from OCI registries (Docker Hub, any distribution registry) into the
//! store, as named images whose layers are shared with imported and other pulled images.
//!
//! ```text
//! pull REF ─ parse (docker.io/library defaults) ─ credentials (auth files) ─ manifest
//!   ├─ an index: the manifest for this machine's platform
//!   ├─ a manifest already held (same digest): done, no blob is fetched
//!   └─ config ─ layers (parallel; each under its key's lock: download, verify, extract)
//!        ─ record STORE/images/NAME.json (its config as an import stores it)
//! ```
//! A digest-pinned reference whose image is held is answered without the network.

mod auth;
mod error;
mod layers;
mod reference;
mod remote;

use std::fs::File;
use std::path::PathBuf;

use nix::fcntl::Flock;

use oci_client::Reference;
use serde::{Deserialize, Serialize};

pub use error::PullError;

use self::auth::Credentials;
use self::layers::Wanted;
use self::remote::Remote;
use crate::image::Image;
use crate::layers::{now_secs, BaseRecord, BuildError, Catalog, ImageRecord};
use crate::oci::{ConfigFile, Index, Manifest};
use crate::store::Store;

/// Where a pulled image came from, kept in its image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullSource {
    /// The reference in full (`docker.io/library/postgres:16`).
    pub reference: String,
    /// Digest of the image manifest (this machine's platform's, for an index).
    pub manifest_digest: String,
    /// Digest of the index the reference named, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Digest of the image config.
    pub config_digest: String,
}

/// How to pull.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PullOptions {
    insecure_http: bool,
    name: Option<String>,
    credentials: Option<(String, String)>,
    auth_files: Option<Vec<PathBuf>>,
}

impl PullOptions {
    /// Default options: HTTPS (plain HTTP for loopback registries only), credentials from
    /// the usual files, the image named after its reference.
    pub fn new() -> Self {
        Self::default()
    }

    /// Speak plain HTTP to the registry even if it is not on this machine
    /// (`--insecure-http`). Only for a registry you trust on a network you trust.
    pub fn insecure_http(mut self, yes: bool) -> Self {
        self.insecure_http = yes;
        self
    }

    /// Record the image under `name` instead of the name derived from the reference.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Log in with this user and password (`--creds USER:PASSWORD`) instead of looking
    /// in the credentials files.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Look for credentials in these files (in order) instead of the usual ones.
    pub fn auth_files(mut self, files: Vec<PathBuf>) -> Self {
        self.auth_files = Some(files);
        self
    }
}

/// What [`pull`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Pulled {
    /// The image's record in the store.
    pub record: ImageRecord,
    /// The image, ready for a container.
    pub image: Image,
    /// Layers downloaded by this pull (the others were held already).
    pub downloaded: usize,
    /// Whether the registry was asked at all (a held digest-pinned image is not).
    pub contacted_registry: bool,
}

/// Pulls `reference` (`postgres:16`, `localhost:5000/app@sha256:…`) into `store`.
pub fn pull(store: &Store, reference: &str, options: &PullOptions) -> Result<Pulled, PullError> {
    let parsed = reference::parse(reference)?;
    let name = match &options.name {
        // Refused before the registry is asked, not after the download.
        Some(n) => crate::layers::check_image_name(n)
            .map(|()| n.clone())
            .map_err(|reason| PullError::BadName {
                reference: reference.to_string(),
                reason,
            })?,
        None => reference::store_name(&parsed),
    };
    let store_err = |source: BuildError| PullError::Store {
        reference: reference.to_string(),
        source: Box::new(source),
    };
    let catalog = Catalog::new(store).map_err(store_err)?;
    if let Some(digest) = parsed.digest() {
        if let Some(record) = held(&catalog, &parsed, digest).map_err(store_err)? {
            let record = rename(&catalog, record, &name).map_err(store_err)?;
            let image = catalog.image_of(&record).map_err(store_err)?;
            return Ok(Pulled {
                record,
                image,
                downloaded: 0,
                contacted_registry: false,
            });
        }
    }
    let creds = match &options.credentials {
        Some((u, p)) => Credentials::basic(u, p, "given with --creds"),
        None => {
            let files = options.auth_files.clone().unwrap_or_else(auth::auth_files);
            auth::lookup(&files, parsed.registry(), parsed.repository())?
        }
    };
    let remote = Remote::new(reference, parsed, creds, options.insecure_http)?;
    fetch(&remote, &catalog, &name)
}

/// A held image whose manifest or index has `digest`, from the same repository, with
/// all its layers present.
fn held(catalog: &Catalog, r: &Reference, digest: &str) -> Result<Option<ImageRecord>, BuildError> {
    let repo = format!("{}/{}", r.registry(), r.repository());
    Ok(catalog.images()?.into_iter().find(|rec| {
        rec.source.as_ref().is_some_and(|s| {
            (s.manifest_digest == digest || s.index_digest.as_deref() == Some(digest))
                && s.reference.starts_with(&repo)
                && s.reference[repo.len()..].starts_with([':', '@'])
        }) && rec.layers.iter().all(|k| catalog.has_layer(k))
    }))
}

/// `record` under `name` (recorded anew if it was held under another name).
fn rename(catalog: &Catalog, record: ImageRecord, name: &str) -> Result<ImageRecord, BuildError> {
    if record.name == name {
        return Ok(record);
    }
    let record = ImageRecord {
        name: name.to_string(),
        created: now_secs(),
        ..record
    };
    catalog.record_image(&record)?;
    Ok(record)
}

/// The manifest, the config and the layers; then the record.
fn fetch(remote: &Remote, catalog: &Catalog, name: &str) -> Result<Pulled, PullError> {
    let store_err = |source: BuildError| PullError::Store {
        reference: remote.given.clone(),
        source: Box::new(source),
    };
    let (manifest, manifest_digest, index_digest) = platform_manifest(remote)?;
    let source = PullSource {
        reference: reference::canonical(&remote.reference),
        manifest_digest,
        index_digest,
        config_digest: manifest.config.digest.clone(),
    };
    let (record, downloaded, _leases) = match reuse(catalog, &source).map_err(store_err)? {
        Some((held, leases)) => {
            let record = ImageRecord {
                name: name.to_string(),
                created: now_secs(),
                source: Some(source),
                ..held
            };
            (record, 0, leases)
        }
        None => download(remote, catalog, &manifest, name, source)?,
    };
    let replaced = catalog.image_record(name).map_err(store_err)?;
    catalog.record_image(&record).map_err(store_err)?;
    if let Some(old) = replaced.filter(|old| old.layers != record.layers) {
        // A tag that moved: its former layers go unless another image or container has them.
        let _ = catalog.drop_replaced(&old.layers);
    }
    let image = catalog.image_of(&record).map_err(store_err)?;
    Ok(Pulled {
        record,
        image,
        downloaded,
        contacted_registry: true,
    })
}

/// Shared locks on layers, held until the image is recorded (so `gc` leaves them).
type Leases = Vec<Flock<File>>;

/// A held image with the same manifest (under any name), and leases on its layers, so
/// that its layers and config are reused; `None` if there is none or a layer is gone.
fn reuse(
    catalog: &Catalog,
    source: &PullSource,
) -> Result<Option<(ImageRecord, Leases)>, BuildError> {
    let held = catalog.images()?.into_iter().find(|r| {
        r.source
            .as_ref()
            .is_some_and(|s| s.manifest_digest == source.manifest_digest)
    });
    let Some(held) = held else { return Ok(None) };
    let mut leases = Vec::new();
    for key in &held.layers {
        match catalog.lease(key)? {
            Some(lease) => leases.push(lease),
            None => return Ok(None),
        }
    }
    Ok(Some((held, leases)))
}

/// The config and the missing layers of `manifest`; the record to write.
fn download(
    remote: &Remote,
    catalog: &Catalog,
    manifest: &Manifest,
    name: &str,
    source: PullSource,
) -> Result<(ImageRecord, usize, Leases), PullError> {
    let (config, keys) = config_and_keys(remote, manifest)?;
    let wanted: Vec<Wanted<'_>> = keys
        .iter()
        .zip(&manifest.layers)
        .zip(&config.rootfs.diff_ids)
        .map(|(((key, parent), blob), diff_id)| Wanted {
            key: key.clone(),
            parent: parent.clone(),
            blob,
            diff_id,
        })
        .collect();
    let (leases, downloaded) = layers::fetch_all(remote, catalog, &wanted)?;
    let record = ImageRecord {
        name: name.to_string(),
        base: BaseRecord::Scratch,
        layers: keys.into_iter().map(|(k, _)| k).collect(),
        created: now_secs(),
        // Stored as `import` stores it.
        config: config
            .config
            .map(|c| c.to_image_config())
            .unwrap_or_default(),
        source: Some(source),
    };
    Ok((record, downloaded, leases))
}

/// The image manifest for this machine (following an index), its digest, and the
/// index's digest if the reference named an index.
fn platform_manifest(remote: &Remote) -> Result<(Manifest, String, Option<String>), PullError> {
    let (bytes, digest) = remote.manifest(&remote.reference)?;
    let json = |bytes: &[u8]| -> Result<serde_json::Value, PullError> {
        serde_json::from_slice(bytes)
            .map_err(|e| remote.bad("a manifest that is not JSON", e.to_string()))
    };
    if json(&bytes)?.get("manifests").is_none() {
        let manifest = parse_manifest(remote, &bytes)?;
        return Ok((manifest, digest, None));
    }
    let index: Index =
        serde_json::from_slice(&bytes).map_err(|e| remote.bad("an image index", e.to_string()))?;
    let chosen = platform::choose(&index).map_err(|available| PullError::NoPlatform {
        reference: remote.given.clone(),
        registry: remote.registry().to_string(),
        wanted: platform::wanted(),
        available,
    })?;
    crate::oci::parse_sha256(&chosen).map_err(|p| remote.bad("an image index", p))?;
    let pinned = remote.reference.clone_with_digest(chosen.clone());
    let (bytes, _) = remote.manifest(&pinned)?;
    if json(&bytes)?.get("manifests").is_some() {
        return Err(remote.bad(
            "an image index",
            "it nests another index for this platform".into(),
        ));
    }
    Ok((parse_manifest(remote, &bytes)?, chosen, Some(digest)))
}

fn parse_manifest(remote: &Remote, bytes: &[u8]) -> Result<Manifest, PullError> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| remote.bad("an image manifest", e.to_string()))?;
    if m.layers.is_empty() {
        return Err(remote.bad("an image manifest", "it has no layers".into()));
    }
    Ok(m)
}

/// The image config, and each layer's key and parent key, bottom first.
#[allow(clippy::type_complexity)]
fn config_and_keys(
    remote: &Remote,
    manifest: &Manifest,
) -> Result<(ConfigFile, Vec<(String, String)>), PullError> {
    let digest = &manifest.config.digest;
    crate::oci::parse_sha256(digest).map_err(|p| remote.bad("the config descriptor", p))?;
    let size = match u64::try_from(manifest.config.size) {
        Ok(size) if size <= remote::MAX_JSON as u64 => size,
        Ok(_) => return Err(remote.bad("the image config", "larger than 16 MiB".into())),
        Err(_) => return Err(remote.bad("the config descriptor", "a negative size".into())),
    };
    let bytes = remote.small_blob(digest, size)?;
    let config: ConfigFile = serde_json::from_slice(&bytes)
        .map_err(|e| remote.bad("the image config", e.to_string()))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(remote.bad(
            "the image config",
            format!(
                "the manifest lists {} layers but rootfs.diff_ids has {}",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut parent = String::from("scratch");
    let mut keys = Vec::new();
    for d in diff_ids {
        crate::oci::parse_sha256(d).map_err(|p| remote.bad("the image config's diff_ids", p))?;
        let key = crate::layers::imported_key(&parent, d);
        keys.push((key.clone(), parent));
        parent = key;
    }
    Ok((config, keys))
}

mod platform {
    //! Choosing this machine's image from an index.

    use crate::oci::{host_architecture, Index};

    /// `linux/ARCH` of this machine.
    pub(crate) fn wanted() -> String {
        format!("linux/{}", host_architecture())
    }

    /// The digest of the first `linux` manifest for this machine's architecture (on arm64
    /// one without a variant or `v8`); else the platforms the index has.
    pub(crate) fn choose(index: &Index) -> Result<String, String> {
        let arch = host_architecture();
        let fits = |d: &&crate::oci::Descriptor| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == "linux"
                    && p.architecture == arch
                    && (arch != "arm64" || matches!(p.variant.as_deref(), None | Some("v8")))
            })
        };
        if let Some(d) = index.manifests.iter().find(fits) {
            return Ok(d.digest.clone());
        }
        let listed: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        Err(if listed.is_empty() {
            "no platform at all".into()
        } else {
            listed.join(", ")
        })
    }
}

/// Finds `spec` in the store (a recorded name, or the name a pull of the reference
/// records), pulling it if it is a reference that is not held (for recipes' bases).
pub(crate) fn resolve_or_pull(store: &Store, spec: &str) -> Result<ImageRecord, BuildError> {
    let catalog = Catalog::new(store)?;
    if let Some(record) = catalog.image_record(spec)? {
        return Ok(record);
    }
    let named = reference::memo_store_name(store.root(), spec)
        .ok_or_else(|| BuildError::UnknownImage(spec.to_string()))?;
    if let Some(record) = held_under(store, &catalog, spec, named)? {
        return Ok(record);
    }
    Ok(pull(store, spec, &PullOptions::new())
        .map_err(Box::new)?
        .record)
}

/// The record a pull of reference `spec` made, if any (for `--image REF`).
pub(crate) fn held_by_reference(
    store: &Store,
    catalog: &Catalog,
    spec: &str,
) -> Result<Option<ImageRecord>, BuildError> {
    match reference::memo_store_name(store.root(), spec) {
        Some(named) => held_under(store, catalog, spec, named),
        None => Ok(None),
    }
}

/// The record of reference `spec` under its store name (and whether that came from the
/// memo), remembered once it is found.
fn held_under(
    store: &Store,
    catalog: &Catalog,
    spec: &str,
    (name, remembered): (String, bool),
) -> Result<Option<ImageRecord>, BuildError> {
    let record = catalog.image_record(&name)?;
    if record.is_some() && !remembered {
        reference::remember_store_name(store.root(), spec, &name);
    }
    Ok(record)
}
