//! Content-addressed layer keys.
//!
//! A layer's key is a SHA-256 over its parent's key, every step's definition, and the
//! content of every copied file, so changing a seed file rebuilds that layer and those above
//! it, and nothing else. Hashing copied files is what a warm lookup would spend its time on,
//! so file hashes are cached under `STORE/cache/hashes`, keyed by path and validated by
//! (device, inode, size, mtime, ctime): any write to a file changes its ctime.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{io, BuildError};
use super::recipe::{LayerSpec, Recipe, Step};

/// Hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// The host root's key is in `hostkey.rs`: what a recipe's steps can see of the host.

/// Key of a rootfs directory as a base: its path and the same kind of fingerprint.
pub(crate) fn rootfs_base_key(dir: &Path) -> String {
    let mut h = Sha256::new();
    h.update(format!("pristine-base-rootfs-v1\n{}\n", dir.display()).as_bytes());
    for sub in ["", "etc", "usr", "bin", "lib"] {
        if let Ok(m) = std::fs::metadata(dir.join(sub)) {
            h.update(format!("{sub} {} {} {}\n", m.ino(), m.mtime(), m.mtime_nsec()).as_bytes());
        }
    }
    hex(&h.finalize())
}

/// Key of a layer over `parent`.
pub(crate) fn layer_key(
    store_root: &Path,
    parent: &str,
    recipe: &Recipe,
    layer: &LayerSpec,
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(b"pristine-layer-v1\n");
    h.update(parent.as_bytes());
    h.update(b"\n");
    for step in &layer.steps {
        match step {
            // What a copy puts in the layer is its destination and the source's content:
            // where the source lives (a relative path in a TOML file, an absolute one in
            // Rust, a checkout moved elsewhere) does not change the layer.
            Step::Copy { from, to } => {
                let src = recipe.source_path(from);
                h.update(format!("copy {}\n", to.display()).as_bytes());
                h.update(tree_hash(store_root, &src)?.as_bytes());
            }
            Step::Run { .. } => {
                h.update(
                    serde_json::to_string(step)
                        .expect("steps serialize")
                        .as_bytes(),
                );
            }
        }
        h.update(b"\n");
    }
    // Only when asked, so that the keys of layers without it stay as they were.
    if layer.keep_setuid {
        h.update(b"keep-setuid\n");
    }
    Ok(hex(&h.finalize()))
}

/// Key of an imported layer: its parent and its content digest.
pub(crate) fn imported_key(parent: &str, diff_id: &str) -> String {
    sha256_hex(format!("pristine-import-v1\n{parent}\n{diff_id}\n").as_bytes())
}

/// Hash of a file or directory tree: names, kinds, permission bits, contents, link
/// targets. Ownership and times are not part of it (a checkout's times vary).
pub(crate) fn tree_hash(store_root: &Path, src: &Path) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    hash_entry(store_root, src, Path::new(""), &mut h)?;
    Ok(hex(&h.finalize()))
}

fn hash_entry(
    store_root: &Path,
    path: &Path,
    rel: &Path,
    h: &mut Sha256,
) -> Result<(), BuildError> {
    let meta = std::fs::symlink_metadata(path).map_err(io("read copy source", path))?;
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(io("read symlink", path))?;
        h.update(format!("L {} {}\n", rel.display(), target.display()).as_bytes());
    } else if ft.is_dir() {
        h.update(format!("D {} {mode:o}\n", rel.display()).as_bytes());
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(io("read copy source directory", path))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            hash_entry(store_root, &path.join(&name), &rel.join(&name), h)?;
        }
    } else if ft.is_file() {
        let content = cached_file_hash(store_root, path, &meta)?;
        h.update(format!("F {} {mode:o} {content}\n", rel.display()).as_bytes());
    } else {
        return Err(BuildError::Io {
            op: "copy (only files, directories and symlinks can be copied)",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::Unsupported),
        });
    }
    Ok(())
}

fn cached_file_hash(
    store_root: &Path,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<String, BuildError> {
    let fingerprint = format!(
        "{} {} {} {}.{} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let cache: PathBuf = store_root
        .join("cache/hashes")
        .join(sha256_hex(abs.as_os_str().as_encoded_bytes()));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((fp, hash)) = text.split_once('\n') {
            if fp == fingerprint {
                return Ok(hash.trim().to_string());
            }
        }
    }
    let mut file = std::fs::File::open(path).map_err(io("read copy source", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read copy source", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hash = hex(&h.finalize());
    if let Some(dir) = cache.parent() {
        // A cache that cannot be written only costs time.
        let _ = std::fs::create_dir_all(dir);
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, format!("{fingerprint}\n{hash}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_hash_follows_content_and_mode_not_times() {
        let store = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a"), "one").unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        let h1 = tree_hash(store.path(), src.path()).unwrap();
        assert_eq!(
            h1,
            tree_hash(store.path(), src.path()).unwrap(),
            "cached and stable"
        );
        std::fs::write(src.path().join("a"), "two").unwrap();
        let h2 = tree_hash(store.path(), src.path()).unwrap();
        assert_ne!(h1, h2, "content change is seen despite the cache");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.path().join("a"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_ne!(
            h2,
            tree_hash(store.path(), src.path()).unwrap(),
            "mode change is seen"
        );
    }
}
