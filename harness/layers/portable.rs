//! Import and export of images as OCI archives, and resolving image names.

use std::path::{Path, PathBuf};

use super::catalog::{
    check_image_name, now, tree_size, BaseRecord, Catalog, ImageRecord, LayerMeta,
};
use super::error::{io, BuildError};
use super::key::imported_key;
use crate::image::Image;
use crate::store::{remove_tree, Store};

/// `host`, a rootfs directory (a path containing `/` or `.`-relative), or a named image of
/// the store.
pub fn resolve_image(store: &Store, spec: &str) -> Result<Image, BuildError> {
    if spec == "host" {
        return Ok(Image::host());
    }
    let catalog = Catalog::new(store)?;
    if let Some(record) = catalog.image_record(spec)? {
        return catalog.image_of(&record);
    }
    if let Some(record) = crate::pull::held_by_reference(store, &catalog, spec)? {
        return catalog.image_of(&record);
    }
    if spec.contains('/') || Path::new(spec).is_dir() {
        return Ok(Image::rootfs(spec));
    }
    Err(BuildError::UnknownImage(spec.to_string()))
}

/// Imports an OCI image layout or `docker save` archive as image `name` (default: the
/// archive's reference, else its file stem). Layers are content-addressed by their
/// uncompressed digests, so importing the same image twice stores it once. An image of
/// that name is replaced, as `podman load` moves a tag (see [`import_image_replacing`]
/// to learn which).
pub fn import_image(
    store: &Store,
    archive: &Path,
    name: Option<&str>,
) -> Result<ImageRecord, BuildError> {
    import_image_replacing(store, archive, name).map(|(record, _)| record)
}

/// [`import_image`], also returning the image the name stood for before, if any: its
/// layers that no image names any more are removed unless in use (as a rebuild's are).
pub fn import_image_replacing(
    store: &Store,
    archive: &Path,
    name: Option<&str>,
) -> Result<(ImageRecord, Option<ImageRecord>), BuildError> {
    // A name the image cannot have is refused before anything is extracted or published
    // (not after, which left the imported layers in the store, named by no image).
    if let Some(n) = name {
        check_image_name(n).map_err(|reason| BuildError::BadImageName {
            op: format!("import {}", archive.display()),
            reason,
        })?;
    }
    let catalog = Catalog::new(store)?;
    // The staging directory `layers/.staging-import-ID`, guarded from `gc` by the lock
    // `import-ID`, held until the end of the import.
    let owner = format!("import-{}", crate::container::random_id());
    let _lock = catalog.lock(&owner)?;
    let scratch = catalog.staging(&owner)?;
    let mut leases = Vec::new();
    let result = (|| {
        let imported = crate::oci::import_archive(archive, &scratch)?;
        let mut parent = String::from("scratch");
        let mut keys = Vec::new();
        for (dir, diff_id) in imported.layers.iter().zip(&imported.diff_ids) {
            let key = imported_key(&parent, diff_id);
            let (_, lease) = catalog.publish_once(&key, |staging| {
                let root = staging.join("root");
                std::fs::remove_dir(&root).map_err(io("prepare staging", &root))?;
                std::fs::rename(dir, &root).map_err(io("move imported layer", dir))?;
                Ok(LayerMeta {
                    key: key.clone(),
                    parent: parent.clone(),
                    name: format!(
                        "import {}",
                        diff_id
                            .trim_start_matches("sha256:")
                            .get(..12)
                            .unwrap_or(diff_id)
                    ),
                    created: now(),
                    size: tree_size(&root),
                })
            })?;
            leases.push(lease);
            catalog.touch(&key);
            keys.push(key.clone());
            parent = key;
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => imported
                .references
                .first()
                .map(|r| sanitize(r))
                .unwrap_or_else(|| {
                    sanitize(&archive.file_stem().unwrap_or_default().to_string_lossy())
                }),
        };
        let record = ImageRecord {
            name,
            base: BaseRecord::Scratch,
            layers: keys,
            created: now(),
            config: imported.config.clone(),
            source: None,
        };
        let replaced = catalog.image_record(&record.name)?;
        catalog.record_image(&record)?;
        if let Some(old) = &replaced {
            // A cache's cleanup: what fails here `gc` finds later.
            let _ = catalog.drop_replaced(&old.layers);
        }
        Ok((record, replaced))
    })();
    let _ = remove_tree(&scratch);
    result
}

fn sanitize(reference: &str) -> String {
    let s: String = reference
        .rsplit('/')
        .next()
        .unwrap_or(reference)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "imported".into()
    } else {
        s
    }
}

/// Exports named image `name` as an OCI image layout archive at `out` (loadable by
/// `podman load`). A rootfs base becomes the bottom layer; the host root cannot be exported.
pub fn export_image(store: &Store, name: &str, out: &Path) -> Result<(), BuildError> {
    let catalog = Catalog::new(store)?;
    let record = catalog
        .image_record(name)?
        .ok_or_else(|| BuildError::UnknownImage(name.to_string()))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    // When each layer was built or imported (a rootfs base: when the image was recorded).
    let mut created: Vec<u64> = Vec::new();
    match &record.base {
        BaseRecord::Host => {
            return Err(BuildError::NotExportable(format!(
                "image {name:?}: it is built on the host's root filesystem; build it on a rootfs directory or an imported image to export it"
            )))
        }
        BaseRecord::Rootfs(d) => {
            dirs.push(d.clone());
            created.push(record.created);
        }
        BaseRecord::Scratch => {}
    }
    for key in &record.layers {
        dirs.push(catalog.layer_root(key));
        created.push(catalog.layer_meta(key)?.created);
    }
    crate::oci::export_archive_dated(&dirs, &created, &record.config, out, Some(name))?;
    Ok(())
}
