//! Writing overlay-native layer directories as an OCI image layout tar.

use super::config::{
    host_architecture, ConfigFile, Descriptor, DockerManifestEntry, History, ImageConfig, Index,
    Manifest, RootFs, RunConfig, ANNOTATION_REF_NAME, MT_OCI_CONFIG, MT_OCI_INDEX,
    MT_OCI_LAYER_TAR, MT_OCI_MANIFEST,
};
use super::digest::{self, HashingWriter};
use super::error::OciError;
use crate::whiteout::{self, TAR_OPAQUE_MARKER, TAR_WHITEOUT_PREFIX};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const OP: &str = "export archive";

/// The dates of an exported image, RFC 3339 in UTC.
struct Dates {
    image: String,
    layers: Vec<String>,
}

impl Dates {
    /// From the layers' creation times, or all `source_date_epoch` if it is a number.
    fn new(created: &[u64], source_date_epoch: Option<&str>) -> Dates {
        let fixed = source_date_epoch.and_then(|s| s.trim().parse::<u64>().ok());
        let layers: Vec<u64> = created.iter().map(|c| fixed.unwrap_or(*c)).collect();
        let image = layers.iter().copied().max().or(fixed).unwrap_or(0);
        Dates {
            image: rfc3339(image),
            layers: layers.into_iter().map(rfc3339).collect(),
        }
    }

    fn layer(&self, i: usize) -> String {
        self.layers
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.image.clone())
    }
}

fn rfc3339(secs: u64) -> String {
    // Past year 9999 RFC 3339 has no form; such a date is clamped to the epoch.
    if secs >= 253_402_300_800 {
        return "1970-01-01T00:00:00Z".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Writes the overlay-native layer directory `layer` as an uncompressed layer tar (the
/// same bytes [`export_archive`] puts in an image: sorted entries, whiteouts as `.wh.`
/// entries) to the new file `tar_file`, and returns its `sha256:` digest and size. `out`
/// names the archive being written, for errors.
pub(crate) fn write_layer_tar(
    layer: &Path,
    tar_file: &Path,
    out: &Path,
) -> Result<(String, u64), OciError> {
    let file = File::create(tar_file)
        .map_err(|e| OciError::io(OP, tar_file, "create temporary layer tar", e))?;
    let mut w = LayerWriter {
        out,
        tar: tar::Builder::new(HashingWriter::new(BufWriter::new(file))),
        links: HashMap::new(),
    };
    w.dir_contents(layer, "")?;
    let hw = w
        .tar
        .into_inner()
        .map_err(|e| OciError::io(OP, tar_file, "write layer tar", e))?;
    let (bw, digest, size) = hw.finish();
    bw.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|e| OciError::io(OP, tar_file, "write layer tar", e))?;
    Ok((digest, size))
}

/// Writes the layer directories `layers` (bottom first, overlay-native:
/// whiteouts and opaque directories as in [`crate::whiteout`]) and `config` as
/// an OCI image layout tar at `out`, which `podman load -i` accepts (a docker
/// `manifest.json` is included too).
///
/// Layers are stored as uncompressed tars, so each layer's digest is its
/// diff_id. Whiteouts become `.wh.NAME` entries and opaque directories get a
/// `DIR/.wh..wh..opq` entry. Entries are sorted and the outer archive uses
/// fixed metadata, so the same layers and config always give the same
/// digests and the same bytes. `reference` (e.g. `localhost/app:latest`)
/// becomes the `org.opencontainers.image.ref.name` annotation.
///
/// The archive is written to a temporary file next to `out` and renamed over
/// `out` at the end; on failure nothing is left behind.
///
/// Every date in it is the epoch; [`export_archive_dated`] gives the layers their own.
pub fn export_archive(
    layers: &[PathBuf],
    config: &ImageConfig,
    out: &Path,
    reference: Option<&str>,
) -> Result<(), OciError> {
    export_archive_dated(layers, &vec![0; layers.len()], config, out, reference)
}

/// [`export_archive`], with each layer's creation time (seconds since the epoch, one per
/// layer) in the config's history, and the newest as the image's `created`: what
/// `podman images` shows. The same layers, dates and config give the same bytes. If
/// `SOURCE_DATE_EPOCH` is set, every date is that instead (reproducible builds'
/// convention).
pub fn export_archive_dated(
    layers: &[PathBuf],
    created: &[u64],
    config: &ImageConfig,
    out: &Path,
    reference: Option<&str>,
) -> Result<(), OciError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if out.is_dir() {
        return Err(OciError::io(
            OP,
            out,
            "write the archive",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the output path is a directory",
            ),
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix(".pristine-export-")
        .tempdir_in(parent)
        .map_err(|e| {
            OciError::io(
                OP,
                out,
                "create a temporary directory next to the output",
                e,
            )
        })?;

    // 1. Layer tars, hashed while written.
    let mut blobs: Vec<(String, PathBuf, u64)> = Vec::new(); // digest, file, size
    let mut layer_descs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let meta = fs::symlink_metadata(layer)
            .map_err(|e| OciError::io(OP, layer, "open layer directory", e))?;
        if !meta.is_dir() {
            return Err(OciError::InvalidLayer {
                out: out.to_path_buf(),
                layer: layer.clone(),
                problem: "is not a directory".into(),
            });
        }
        let tmp = scratch.path().join(format!("layer-{i}.tar"));
        let (digest, size) = write_layer_tar(layer, &tmp, out)?;
        layer_descs.push(Descriptor {
            media_type: MT_OCI_LAYER_TAR.into(),
            digest: digest.clone(),
            size: size as i64,
            platform: None,
            annotations: BTreeMap::new(),
        });
        blobs.push((digest, tmp, size));
    }
    let diff_ids: Vec<String> = layer_descs.iter().map(|d| d.digest.clone()).collect();

    // 2. Config, manifest, index.
    let dates = Dates::new(created, std::env::var("SOURCE_DATE_EPOCH").ok().as_deref());
    let config_file = ConfigFile {
        created: Some(dates.image.clone()),
        architecture: host_architecture().into(),
        os: "linux".into(),
        config: Some(RunConfig::from_image_config(config)),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: diff_ids.clone(),
        },
        history: (0..diff_ids.len())
            .map(|i| History {
                created: Some(dates.layer(i)),
                created_by: Some("pristine export".into()),
                empty_layer: None,
            })
            .collect(),
    };
    let config_bytes = json(&config_file);
    let config_desc = Descriptor {
        media_type: MT_OCI_CONFIG.into(),
        digest: digest::of(&config_bytes),
        size: config_bytes.len() as i64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.into()),
        config: config_desc.clone(),
        layers: layer_descs,
    };
    let manifest_bytes = json(&manifest);
    let mut annotations = BTreeMap::new();
    if let Some(r) = reference {
        annotations.insert(ANNOTATION_REF_NAME.to_string(), r.to_string());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.into()),
        manifests: vec![Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: digest::of(&manifest_bytes),
            size: manifest_bytes.len() as i64,
            platform: None,
            annotations,
        }],
    };
    let index_bytes = json(&index);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let docker_manifest = vec![DockerManifestEntry {
        config: format!("blobs/sha256/{}", hex(&config_desc.digest)),
        repo_tags: reference
            .filter(|r| !r.contains('@'))
            .map(|r| vec![r.to_string()]),
        layers: diff_ids
            .iter()
            .map(|d| format!("blobs/sha256/{}", hex(d)))
            .collect(),
    }];
    let docker_bytes = json(&docker_manifest);

    // 3. The outer tar, with fixed metadata.
    let mut out_tmp = tempfile::Builder::new()
        .prefix(".pristine-export-")
        .suffix(".tar")
        .tempfile_in(parent)
        .map_err(|e| OciError::io(OP, out, "create a temporary output file", e))?;
    {
        let werr = |e| OciError::io(OP, out, "write the archive", e);
        let mut tar = tar::Builder::new(BufWriter::new(out_tmp.as_file_mut()));
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
        append_bytes(&mut tar, "index.json", &index_bytes).map_err(werr)?;
        append_bytes(&mut tar, "manifest.json", &docker_bytes).map_err(werr)?;
        append_dir(&mut tar, "blobs/").map_err(werr)?;
        append_dir(&mut tar, "blobs/sha256/").map_err(werr)?;
        let mut written = std::collections::HashSet::new();
        for (digest, file, size) in &blobs {
            if !written.insert(digest.clone()) {
                continue; // identical layers share one blob
            }
            let mut f =
                File::open(file).map_err(|e| OciError::io(OP, file, "reopen layer tar", e))?;
            f.seek(SeekFrom::Start(0)).map_err(werr)?;
            let mut h = fixed_header(tar::EntryType::Regular, 0o644, *size);
            tar.append_data(
                &mut h,
                format!("blobs/sha256/{}", hex(digest)),
                f.take(*size),
            )
            .map_err(werr)?;
        }
        append_bytes(
            &mut tar,
            &format!("blobs/sha256/{}", hex(&config_desc.digest)),
            &config_bytes,
        )
        .map_err(werr)?;
        append_bytes(
            &mut tar,
            &format!("blobs/sha256/{}", hex(&index.manifests[0].digest)),
            &manifest_bytes,
        )
        .map_err(werr)?;
        let bw = tar.into_inner().map_err(werr)?;
        bw.into_inner()
            .map_err(|e| werr(e.into_error()))?
            .sync_all()
            .map_err(werr)?;
    }
    out_tmp
        .as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|e| OciError::io(OP, out, "set archive permissions", e))?;
    out_tmp
        .persist(out)
        .map_err(|e| OciError::io(OP, out, "rename the archive into place", e.error))?;
    Ok(())
}

/// Serializes one of the export's JSON documents (struct fields in
/// declaration order, maps sorted), so output is deterministic.
fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing plain structs with string keys cannot fail")
}

/// A tar header with fixed ownership and time, so the same content gives the same bytes.
pub(crate) fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Appends `data` as a regular file with [`fixed_header`] metadata.
pub(crate) fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> io::Result<()> {
    let mut h = fixed_header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = fixed_header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, io::empty())
}

struct LayerWriter<'a, W: Write> {
    out: &'a Path,
    tar: tar::Builder<W>,
    /// First archive path of each multiply-linked inode, for hardlinks.
    links: HashMap<(u64, u64), String>,
}

impl<W: Write> LayerWriter<'_, W> {
    fn invalid(&self, path: &Path, problem: impl Into<String>) -> OciError {
        OciError::InvalidLayer {
            out: self.out.to_path_buf(),
            layer: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn werr(&self, path: &Path) -> impl Fn(io::Error) -> OciError + '_ {
        let path = path.to_path_buf();
        move |e| OciError::io(OP, path.clone(), "add layer entry to the tar", e)
    }

    fn header_for(&self, meta: &fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(size);
        h
    }

    /// Emits pax xattr records for `path` (never overlay-private ones).
    fn xattrs(&mut self, path: &Path) -> Result<(), OciError> {
        let names =
            crate::sys::xattr::llist(path).map_err(|e| OciError::io(OP, path, "list xattrs", e))?;
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            if whiteout::is_overlay_xattr(&name) || name == b"security.selinux" {
                continue;
            }
            let Ok(name_str) = String::from_utf8(name.clone()) else {
                continue;
            };
            if let Some(v) = crate::sys::xattr::lget_raw(path, &name)
                .map_err(|e| OciError::io(OP, path, "read xattr", e))?
            {
                records.push((format!("SCHILY.xattr.{name_str}"), v));
            }
        }
        if !records.is_empty() {
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(self.werr(path))?;
        }
        Ok(())
    }

    fn dir_contents(&mut self, dir: &Path, prefix: &str) -> Result<(), OciError> {
        let rd = fs::read_dir(dir).map_err(|e| OciError::io(OP, dir, "read layer directory", e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| OciError::io(OP, dir, "read layer directory", e))?;
            names.push(entry.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let Some(name_str) = name.to_str() else {
                return Err(self.invalid(&path, "has a file name that is not valid UTF-8"));
            };
            if name_str.starts_with(TAR_WHITEOUT_PREFIX) {
                return Err(self.invalid(
                    &path,
                    format!(
                        "has a name starting with `{TAR_WHITEOUT_PREFIX}`, which image tars \
                         reserve for whiteouts; rename it"
                    ),
                ));
            }
            let rel = format!("{prefix}{name_str}");
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| OciError::io(OP, &path, "inspect layer entry", e))?;
            let ft = meta.file_type();
            if whiteout::is_whiteout(&meta) {
                let mut h = self.header_for(&meta, tar::EntryType::Regular, 0);
                h.set_mode(0o644);
                let wh = format!("{prefix}{TAR_WHITEOUT_PREFIX}{name_str}");
                self.tar
                    .append_data(&mut h, wh, io::empty())
                    .map_err(self.werr(&path))?;
            } else if ft.is_dir() {
                self.xattrs(&path)?;
                let mut h = self.header_for(&meta, tar::EntryType::Directory, 0);
                self.tar
                    .append_data(&mut h, format!("{rel}/"), io::empty())
                    .map_err(self.werr(&path))?;
                if whiteout::is_opaque(&path)
                    .map_err(|e| OciError::io(OP, &path, "read opaque xattr", e))?
                {
                    let mut h = self.header_for(&meta, tar::EntryType::Regular, 0);
                    h.set_mode(0o644);
                    self.tar
                        .append_data(&mut h, format!("{rel}/{TAR_OPAQUE_MARKER}"), io::empty())
                        .map_err(self.werr(&path))?;
                }
                self.dir_contents(&path, &format!("{rel}/"))?;
            } else if ft.is_symlink() {
                let target =
                    fs::read_link(&path).map_err(|e| OciError::io(OP, &path, "read symlink", e))?;
                let mut h = self.header_for(&meta, tar::EntryType::Symlink, 0);
                self.tar
                    .append_link(&mut h, &rel, &target)
                    .map_err(self.werr(&path))?;
            } else if let Some(first) = self.first_link(&meta, &rel) {
                let mut h = self.header_for(&meta, tar::EntryType::Link, 0);
                self.tar
                    .append_link(&mut h, &rel, first)
                    .map_err(self.werr(&path))?;
            } else if ft.is_file() {
                self.xattrs(&path)?;
                let f =
                    File::open(&path).map_err(|e| OciError::io(OP, &path, "open layer file", e))?;
                let size = meta.len();
                let mut h = self.header_for(&meta, tar::EntryType::Regular, size);
                let mut counted = CountingReader {
                    inner: f.take(size),
                    count: 0,
                };
                self.tar
                    .append_data(&mut h, &rel, &mut counted)
                    .map_err(self.werr(&path))?;
                if counted.count != size {
                    return Err(self.invalid(&path, "changed size while being exported"));
                }
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let kind = if ft.is_char_device() {
                    tar::EntryType::Char
                } else if ft.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                };
                let mut h = self.header_for(&meta, kind, 0);
                if kind != tar::EntryType::Fifo {
                    let rdev = meta.rdev();
                    h.set_device_major(libc::major(rdev))
                        .and_then(|()| h.set_device_minor(libc::minor(rdev)))
                        .map_err(self.werr(&path))?;
                }
                self.tar
                    .append_data(&mut h, &rel, io::empty())
                    .map_err(self.werr(&path))?;
            }
            // Sockets cannot be stored in a tar and are skipped, as docker does.
        }
        Ok(())
    }

    /// For a multiply-linked non-directory, returns the path it was first
    /// written under (and remembers this one if it is the first).
    fn first_link(&mut self, meta: &fs::Metadata, rel: &str) -> Option<String> {
        if meta.nlink() < 2 || meta.is_dir() {
            return None;
        }
        let key = (meta.dev(), meta.ino());
        if let Some(first) = self.links.get(&key) {
            return Some(first.clone());
        }
        self.links.insert(key, rel.to_string());
        None
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_tar_markers() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir_all(layer.join("d/sub")).unwrap();
        fs::write(layer.join("d/sub/f"), b"x").unwrap();
        whiteout::make_whiteout(&layer.join("gone")).unwrap();
        whiteout::make_opaque(&layer.join("d")).unwrap();
        let mut w = LayerWriter {
            out: Path::new("x"),
            tar: tar::Builder::new(Vec::new()),
            links: HashMap::new(),
        };
        w.dir_contents(&layer, "").unwrap();
        let bytes = w.tar.into_inner().unwrap();
        let names: Vec<String> = list(&bytes).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["d/", "d/.wh..wh..opq", "d/sub/", "d/sub/f", ".wh.gone"]
        );
    }

    #[test]
    fn reserved_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".wh.x"), b"").unwrap();
        let err = export_archive(
            &[dir.path().to_path_buf()],
            &ImageConfig::default(),
            &dir.path().join("out.tar"),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains(".wh.x"), "{err}");
        assert!(!dir.path().join("out.tar").exists());
    }

    #[test]
    fn dates_are_the_layers_or_source_date_epoch() {
        let d = super::Dates::new(&[0, 1_764_547_200, 100], None);
        assert_eq!(d.image, "2025-12-01T00:00:00Z");
        assert_eq!(d.layer(0), "1970-01-01T00:00:00Z");
        assert_eq!(d.layer(2), "1970-01-01T00:01:40Z");
        let d = super::Dates::new(&[5, 6], Some("1700000000"));
        assert_eq!(
            (d.image.as_str(), d.layer(0).as_str()),
            ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z")
        );
        let d = super::Dates::new(&[u64::MAX], Some("soon"));
        assert_eq!(d.image, "1970-01-01T00:00:00Z");
    }
}
