//! Squashing deep stacks of store layers into one.
//!
//! Mounting an overlay costs the kernel a private clone of every lower layer's mount, and
//! every path lookup misses in each layer above the one holding the file: a 100-layer stack
//! starts about twice as slowly as a 1-layer one. Store layers never change (their keys are
//! their contents), so above [`SQUASH_ABOVE`] layers a container mounts one merged tree
//! instead: built once per stack, cached under `STORE/squashed/KEY`, made of hard links to
//! the layers' files (no data is copied), with the whiteouts and opaque directories that
//! still matter against the base.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::catalog::Catalog;
use super::error::{io, BuildError};
use super::key::sha256_hex;
use crate::image::{Base, Image};
use crate::store::{remove_tree, Store};
use crate::whiteout::{is_opaque, is_whiteout, make_opaque, make_whiteout};

/// Stacks deeper than this are squashed.
pub const SQUASH_ABOVE: usize = 8;

/// The image with its layers squashed into one, if it is deeper than [`SQUASH_ABOVE`] and
/// every layer is a layer of `store`; otherwise the image as is.
pub fn squash_deep_stack(store: &Store, image: &Image) -> Result<Image, BuildError> {
    if image.layers().len() <= SQUASH_ABOVE {
        return Ok(image.clone());
    }
    let layers_dir = store.root().join("layers");
    let mut keys = Vec::new();
    for layer in image.layers() {
        let key = layer.strip_prefix(&layers_dir).ok().and_then(|rel| {
            let mut parts = rel.components();
            let key = parts.next()?.as_os_str().to_str()?.to_string();
            (parts.next()?.as_os_str() == "root" && parts.next().is_none()).then_some(key)
        });
        match key {
            Some(k) if !k.starts_with('.') => keys.push(k),
            // Not an immutable store layer: mount the stack as it is.
            _ => return Ok(image.clone()),
        }
    }
    let key = sha256_hex(keys.join("\n").as_bytes());
    let dir = store.root().join("squashed").join(&key);
    let root = dir.join("root");
    if !dir.join("done").exists() {
        let catalog = Catalog::new(store)?;
        let _lock = catalog.lock(&format!("squash-{key}"))?;
        if !dir.join("done").exists() {
            build(&dir, image.layers(), &keys)?;
        }
    }
    let mut out = match image.base() {
        Base::Host => Image::host(),
        Base::Rootfs(d) => Image::rootfs(d),
        Base::Scratch => Image::scratch(),
    };
    if let Some(config) = image.config() {
        out = out.with_config(config.clone());
    }
    out = out.layer(root);
    Ok(out)
}

fn build(dir: &Path, layers: &[PathBuf], keys: &[String]) -> Result<(), BuildError> {
    let parent = dir.parent().expect("squashed/KEY has a parent");
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    // `gc` leaves `.staging-KEY` alone while the caller holds the lock `squash-KEY`; a
    // stale one is a dead squash's.
    let staging = parent.join(format!(
        ".staging-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
    ));
    remove_tree(&staging).map_err(io("remove stale squash", &staging))?;
    let root = staging.join("root");
    std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    let result = layers
        .iter()
        .try_for_each(|layer| merge(layer, &root))
        .map_err(io("squash layers into", &root));
    if let Err(e) = result {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    // The layer keys it was made of, for `gc`; `done` last: its presence means complete.
    std::fs::write(staging.join("layers"), keys.join("\n") + "\n")
        .map_err(io("write", &staging))?;
    std::fs::write(staging.join("done"), "").map_err(io("write", &staging))?;
    if dir.exists() {
        remove_tree(dir).map_err(io("replace incomplete squash", dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io("publish squash", dir))
}

/// Applies one layer (`src`) on top of the merged tree `dst`.
fn merge(src: &Path, dst: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let existing = std::fs::symlink_metadata(&to).ok();
        if is_whiteout(&meta) {
            // Deletes what the layers below added, and must keep hiding the base.
            if existing.is_some() {
                remove_any(&to)?;
            }
            make_whiteout(&to)?;
        } else if meta.is_dir() {
            let mut opaque = is_opaque(&from)?;
            match existing {
                Some(e) if e.is_dir() && !opaque => {}
                Some(e) => {
                    // A directory over a whiteout or a non-directory: whatever that entry
                    // hid (in the base) must stay hidden, so the new directory is opaque.
                    opaque |= !e.is_dir();
                    remove_any(&to)?;
                    make_dir(&to, &meta)?;
                }
                None => make_dir(&to, &meta)?,
            }
            if opaque {
                make_opaque(&to)?;
            }
            merge(&from, &to)?;
            // The upper layer's directory metadata wins.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else {
            if existing.is_some() {
                remove_any(&to)?;
            }
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
                let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
            } else if meta.is_file() {
                // Layers are immutable, and overlayfs copies a file up before writing to
                // it, so sharing the inode is safe; copy only where linking is refused.
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to)?;
                    let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
                }
            }
            // Sockets, fifos and devices other than whiteouts do not occur in layers built
            // or imported by pristine (import refuses devices where it cannot create them).
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        remove_tree(path)
    } else {
        std::fs::remove_file(path)
    }
}

fn make_dir(path: &Path, like: &std::fs::Metadata) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(like.mode() & 0o7777))?;
    let _ = std::os::unix::fs::lchown(path, Some(like.uid()), Some(like.gid()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_applies_whiteouts_opaque_dirs_and_replacements() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("out"),
        );
        std::fs::create_dir_all(l1.join("d/sub")).unwrap();
        std::fs::write(l1.join("a"), "a1").unwrap();
        std::fs::write(l1.join("d/sub/x"), "x").unwrap();
        std::fs::write(l1.join("keep"), "k").unwrap();
        std::fs::create_dir_all(l2.join("d")).unwrap();
        make_opaque(&l2.join("d")).unwrap();
        std::fs::write(l2.join("d/new"), "n").unwrap();
        make_whiteout(&l2.join("a")).unwrap();
        make_whiteout(&l2.join("gone-in-base")).unwrap();
        make_whiteout(&l2.join("back")).unwrap();
        let l3 = t.path().join("l3");
        std::fs::create_dir_all(l3.join("back")).unwrap();
        std::fs::create_dir(&out).unwrap();
        merge(&l1, &out).unwrap();
        merge(&l2, &out).unwrap();
        merge(&l3, &out).unwrap();
        assert!(
            is_opaque(&out.join("back")).unwrap(),
            "a dir over a whiteout stays opaque"
        );
        assert!(is_whiteout(
            &std::fs::symlink_metadata(out.join("a")).unwrap()
        ));
        assert!(is_whiteout(
            &std::fs::symlink_metadata(out.join("gone-in-base")).unwrap()
        ));
        assert!(is_opaque(&out.join("d")).unwrap());
        assert!(
            !out.join("d/sub").exists(),
            "opaque directory hides the lower content"
        );
        assert_eq!(std::fs::read_to_string(out.join("d/new")).unwrap(), "n");
        assert_eq!(std::fs::read_to_string(out.join("keep")).unwrap(), "k");
        let a = std::fs::metadata(l1.join("keep")).unwrap();
        let b = std::fs::metadata(out.join("keep")).unwrap();
        assert_eq!(a.ino(), b.ino(), "files are hard links, not copies");
    }
}
