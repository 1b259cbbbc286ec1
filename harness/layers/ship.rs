//! Store archives: layers with their keys, moved from the machine that built them to the
//! machines that run tests (CI jobs that share a build), so that those find them cached.
//!
//! ```text
//! pristine-store-archive.json   StoreManifest: every layer's key, parent, name, digest
//! layers/KEY.tar                the layer as an uncompressed layer tar (OCI's format)
//! ```
//!
//! The manifest comes first, so a reader knows every digest before it extracts a layer.
//! Each layer is extracted with the hostile-archive checks of OCI import, hashed while it
//! is read, and published under its key only if the digest matches: a damaged or altered
//! layer is never added (the layers before it in the archive, each verified, are). A layer
//! the store already holds is skipped. A key names the
//! recipe that made a layer, not its content, so an archive is trusted as a cache is:
//! load only archives your own pipeline wrote.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::catalog::{now, tree_size, Catalog, ImageRecord, LayerMeta};
use super::error::{io, BuildError};
use crate::oci::{append_bytes, extract_layer, fixed_header, write_layer_tar, HashingReader};
use crate::store::Store;

const MANIFEST: &str = "pristine-store-archive.json";
const FORMAT: &str = "pristine-store-archive";
const VERSION: u32 = 1;

/// The first entry of a store archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoreManifest {
    format: String,
    version: u32,
    /// Bottom-up: every layer's parent is a base key or comes earlier.
    layers: Vec<ShippedLayer>,
    images: Vec<ImageRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ShippedLayer {
    key: String,
    parent: String,
    name: String,
    /// `sha256:` of the layer tar.
    digest: String,
    size: u64,
}

/// What [`save_store`] or [`load_store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShipReport {
    /// Layers written (save) or added to the store (load).
    pub layers: Vec<String>,
    /// Layers a load found in the store already (their bytes were only read past).
    pub present: Vec<String>,
    /// Image names written or recorded.
    pub images: Vec<String>,
}

/// Writes the layers of the named `images` (every layer of the store when `images` is
/// empty: unnamed ones too, as the harness's images are) and those images' records to a
/// store archive at `out`. Written to a temporary file beside `out`, renamed at the end.
pub fn save_store(store: &Store, images: &[String], out: &Path) -> Result<ShipReport, BuildError> {
    let catalog = Catalog::new(store)?;
    let (records, keys) = selection(&catalog, images)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".pristine-save-")
        .tempdir_in(parent)
        .map_err(io("create a temporary directory beside", out))?;
    let mut layers = Vec::new();
    let mut leases = Vec::new();
    for key in &keys {
        // Leased while it is read: `gc` must not remove it half-way through.
        leases.push(
            catalog
                .lease(key)?
                .ok_or_else(|| crate::store::StoreError::LayerGone {
                    path: catalog.layer_dir(key),
                })?,
        );
        let meta = catalog.layer_meta(key)?;
        let tar = scratch.path().join(format!("{key}.tar"));
        let (digest, size) = write_layer_tar(&catalog.layer_root(key), &tar, out)?;
        layers.push(ShippedLayer {
            key: key.clone(),
            parent: meta.parent,
            name: meta.name,
            digest,
            size,
        });
    }
    let manifest = StoreManifest {
        format: FORMAT.into(),
        version: VERSION,
        layers,
        images: records,
    };
    let tmp = scratch.path().join("archive.tar");
    write_archive(&manifest, scratch.path(), &tmp)?;
    std::fs::rename(&tmp, out).map_err(io("write store archive", out))?;
    Ok(ShipReport {
        layers: keys,
        present: Vec::new(),
        images: manifest.images.iter().map(|r| r.name.clone()).collect(),
    })
}

/// The records of `images` (all named images when empty) and the layer keys to ship,
/// bottom-up.
fn selection(
    catalog: &Catalog,
    images: &[String],
) -> Result<(Vec<ImageRecord>, Vec<String>), BuildError> {
    let records: Vec<ImageRecord> = if images.is_empty() {
        catalog.images()?
    } else {
        images
            .iter()
            .map(|n| {
                catalog
                    .image_record(n)?
                    .ok_or_else(|| BuildError::UnknownImage(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let mut keys: Vec<String> = Vec::new();
    let mut push = |k: &String| {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    };
    if images.is_empty() {
        // Parents first: a layer's parent is a base key or another layer.
        let mut all: Vec<LayerMeta> = catalog.layers()?.into_iter().map(|(m, _)| m).collect();
        while !all.is_empty() {
            let keys_left: Vec<String> = all.iter().map(|m| m.key.clone()).collect();
            let (ready, rest): (Vec<LayerMeta>, Vec<LayerMeta>) = all
                .into_iter()
                .partition(|m| !keys_left.contains(&m.parent));
            if ready.is_empty() {
                // A cycle cannot come from keys that hash their parents; keep the rest.
                rest.iter().for_each(|m| push(&m.key));
                break;
            }
            ready.iter().for_each(|m| push(&m.key));
            all = rest;
        }
    } else {
        records.iter().flat_map(|r| &r.layers).for_each(&mut push);
    }
    Ok((records, keys))
}

fn write_archive(manifest: &StoreManifest, tars: &Path, out: &Path) -> Result<(), BuildError> {
    let werr = io("write store archive", out);
    let file = File::create(out).map_err(io("create store archive", out))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
    let result = (|| {
        append_bytes(&mut tar, MANIFEST, &json)?;
        for l in &manifest.layers {
            let f = File::open(tars.join(format!("{}.tar", l.key)))?;
            let mut h = fixed_header(tar::EntryType::Regular, 0o644, l.size);
            tar.append_data(&mut h, format!("layers/{}.tar", l.key), f)?;
        }
        tar.into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    })();
    result.map_err(werr)
}

/// Adds the layers and image records of the store archive `archive` to the store: each
/// layer verified against the manifest's digest before it is published under its key.
pub fn load_store(store: &Store, archive: &Path) -> Result<ShipReport, BuildError> {
    let catalog = Catalog::new(store)?;
    let file = File::open(archive).map_err(io("open store archive", archive))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let mut entries = tar.entries().map_err(io("read store archive", archive))?;
    let bad = |why: String| BuildError::BadArchive {
        path: archive.to_path_buf(),
        reason: why,
    };
    let manifest = read_manifest(&mut entries, archive)?;
    let mut report = ShipReport::default();
    let mut known: Vec<&str> = Vec::new();
    let mut leases = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(io("read store archive", archive))?;
        let name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name).into_owned();
        let key = name
            .strip_prefix("layers/")
            .and_then(|n| n.strip_suffix(".tar"))
            .ok_or_else(|| bad(format!("unexpected entry {name:?}")))?;
        let shipped = manifest
            .layers
            .iter()
            .find(|l| l.key == key)
            .ok_or_else(|| bad(format!("layer {key} is not in the manifest")))?;
        known.push(&shipped.key);
        // A lease on each layer, present or added, until the images are recorded: `gc`
        // must not take one from under the load.
        let (present, lease) = catalog.publish_once(key, |staging| {
            let root = staging.join("root");
            std::fs::remove_dir(&root).map_err(io("prepare staging", &root))?;
            let mut reader = HashingReader::new(&mut entry);
            extract_layer(&mut reader, &root)?;
            let (digest, _) = reader.finish().map_err(io("read store archive", archive))?;
            if digest != shipped.digest {
                return Err(bad(format!(
                    "layer {key} ({}) has digest {digest}, the manifest says {}: the archive \
                     is damaged or was altered; nothing of this layer was added",
                    shipped.name, shipped.digest
                )));
            }
            Ok(LayerMeta {
                key: key.to_string(),
                parent: shipped.parent.clone(),
                name: shipped.name.clone(),
                created: now(),
                size: tree_size(&root),
            })
        })?;
        leases.push(lease);
        match present {
            false => report.layers.push(key.to_string()),
            true => report.present.push(key.to_string()),
        }
    }
    if let Some(missing) = manifest
        .layers
        .iter()
        .find(|l| !known.contains(&l.key.as_str()))
    {
        return Err(bad(format!(
            "layer {} ({}) is in the manifest but not in the archive (truncated?)",
            missing.key, missing.name
        )));
    }
    for record in &manifest.images {
        catalog.record_image(record)?;
        report.images.push(record.name.clone());
    }
    Ok(report)
}

fn read_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    archive: &Path,
) -> Result<StoreManifest, BuildError> {
    let bad = |why: String| BuildError::BadArchive {
        path: archive.to_path_buf(),
        reason: why,
    };
    let mut first = entries
        .next()
        .ok_or_else(|| bad("it is empty".into()))?
        .map_err(|e| {
            bad(format!(
                "not a tar archive ({e}); `pristine save` writes them"
            ))
        })?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        return Err(bad(format!(
            "it does not start with {MANIFEST}: not a store archive (`pristine save` writes \
             them; OCI images go through `pristine import`)"
        )));
    }
    let mut text = Vec::new();
    first
        .by_ref()
        .take(16 << 20)
        .read_to_end(&mut text)
        .map_err(io("read store archive", archive))?;
    let manifest: StoreManifest =
        serde_json::from_slice(&text).map_err(|e| bad(format!("bad manifest: {e}")))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(bad(format!(
            "format {} version {}; this pristine reads {FORMAT} version {VERSION}",
            manifest.format, manifest.version
        )));
    }
    for l in &manifest.layers {
        if l.key.len() != 64 || !l.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("layer key {:?} is not a key", l.key)));
        }
    }
    Ok(manifest)
}
