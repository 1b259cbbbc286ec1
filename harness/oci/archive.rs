//! Reading image archives: OCI image layout tars (also the Docker ≥ 25
//! `docker save` format, which adds a `manifest.json`) and legacy
//! `docker save` tars.

use super::config::{
    host_architecture, ConfigFile, Descriptor, DockerManifestEntry, ImageConfig, Index, Manifest,
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
    MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use super::digest::{self, HashingReader};
use super::error::OciError;
use super::extract::{detect_compression, extract_layer, peek_magic, Detected};
use super::fsutil::remove_tree;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const OP: &str = "import archive";
/// Largest JSON document (index, manifest, config) accepted from an archive.
const MAX_JSON: u64 = 16 << 20;
/// Deepest chain of nested indexes / symlinks followed.
const MAX_DEPTH: usize = 8;

/// An image imported by [`import_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportedImage {
    /// Extracted layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// Runtime configuration of the image.
    pub config: ImageConfig,
    /// `sha256:` digests of the uncompressed layer tars (the config's
    /// `rootfs.diff_ids`), bottom first; verified against the content.
    pub diff_ids: Vec<String>,
    /// `sha256:` digests of the layer blobs as stored in the archive
    /// (compressed if the archive compresses them), bottom first; verified.
    pub layer_digests: Vec<String>,
    /// `sha256:` digest of the image config blob.
    pub config_digest: String,
    /// Names the archive gives the image (OCI `ref.name` / containerd name
    /// annotations, or docker `RepoTags`); may be empty.
    pub references: Vec<String>,
}

/// Imports the image in the archive at `path` into `dest_dir`.
///
/// Reads an OCI image layout tar (`oci-layout`, `index.json`, `blobs/`;
/// nested indexes are followed to the manifest for `linux` on this machine's
/// architecture, or to the only manifest), a Docker ≥ 25 `docker save` tar
/// (the same, plus `manifest.json`) or a legacy `docker save` tar
/// (`manifest.json` pointing at `<id>/layer.tar`). The archive itself may be
/// gzip-compressed; an unpacked OCI layout directory is accepted too.
///
/// Every blob is checked against its sha256 digest, and every layer against
/// the config's `diff_ids`. Layer `i` is extracted with
/// [`extract_layer`] into `dest_dir/<i>-<first 12 hex digits of its diff_id>`.
/// `dest_dir` is created if missing. On failure everything this call created
/// is removed.
pub fn import_archive(path: &Path, dest_dir: &Path) -> Result<ImportedImage, OciError> {
    let created_dest = match std::fs::symlink_metadata(dest_dir) {
        Ok(m) if m.is_dir() => false,
        Ok(_) => {
            return Err(OciError::io(
                OP,
                dest_dir,
                "use the destination directory",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a directory",
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest_dir)
                .map_err(|e| OciError::io(OP, dest_dir, "create the destination directory", e))?;
            true
        }
        Err(e) => {
            return Err(OciError::io(
                OP,
                dest_dir,
                "inspect the destination directory",
                e,
            ))
        }
    };
    let mut importer = Importer {
        archive: path,
        dest_dir,
        created: Vec::new(),
    };
    match importer.run() {
        Ok(img) => Ok(img),
        Err(e) => {
            for p in importer.created.iter().rev() {
                let _ = remove_tree(p);
            }
            if created_dest {
                let _ = std::fs::remove_dir(dest_dir);
            }
            Err(e)
        }
    }
}

/// Where a member of the archive lives.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link { target: String },
}

/// Random access to the members of an archive (a tar file or a directory).
enum Source {
    Tar {
        file: File,
        members: HashMap<String, Member>,
    },
    Dir(PathBuf),
}

/// Normalizes a member path: drops `.` and empty components; `None` if it
/// has a `..` component or is absolute (such members are never looked up).
fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// Resolves a symlink target relative to the directory of `link`.
fn resolve_relative(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return normalize(target.trim_start_matches('/'));
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Source {
    fn open(archive: &Path, scratch: &Path) -> Result<Source, OciError> {
        let meta = std::fs::metadata(archive)
            .map_err(|e| OciError::io(OP, archive, "open the archive", e))?;
        if meta.is_dir() {
            return Ok(Source::Dir(archive.to_path_buf()));
        }
        let mut file =
            File::open(archive).map_err(|e| OciError::io(OP, archive, "open the archive", e))?;
        let magic =
            peek_magic(&mut file).map_err(|e| OciError::io(OP, archive, "read the archive", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| OciError::io(OP, archive, "read the archive", e))?;
        match detect_compression(&magic) {
            Detected::Plain => {}
            Detected::Gzip => {
                // Decompress into an anonymous temporary file for random access.
                let mut tmp = tempfile::tempfile_in(scratch).map_err(|e| {
                    OciError::io(OP, scratch, "create a temporary file to decompress into", e)
                })?;
                io::copy(&mut flate2::read::MultiGzDecoder::new(file), &mut tmp)
                    .map_err(|e| OciError::io(OP, archive, "decompress the gzip archive", e))?;
                tmp.seek(SeekFrom::Start(0))
                    .map_err(|e| OciError::io(OP, archive, "read the decompressed archive", e))?;
                file = tmp;
            }
            _ => {
                return Err(OciError::Unsupported {
                    op: OP,
                    path: archive.to_path_buf(),
                    what: "archive compression".into(),
                    hint: "only plain and gzip-compressed archive tars are supported; \
                           decompress it first",
                })
            }
        }
        let mut members = HashMap::new();
        {
            let mut tar = tar::Archive::new(&file);
            let entries = tar
                .entries()
                .map_err(|e| OciError::io(OP, archive, "read the archive as a tar", e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| OciError::io(OP, archive, "read the archive as a tar", e))?;
                let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let Some(name) = normalize(&raw) else {
                    continue;
                };
                let link = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                let member = match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                    tar::EntryType::Symlink => match link.and_then(|t| resolve_relative(&name, &t))
                    {
                        Some(target) => Member::Link { target },
                        None => continue,
                    },
                    tar::EntryType::Link => match link.and_then(|t| normalize(&t)) {
                        Some(target) => Member::Link { target },
                        None => continue,
                    },
                    _ => continue,
                };
                members.insert(name, member);
            }
        }
        Ok(Source::Tar { file, members })
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Source::Tar { members, .. } => members.contains_key(name),
            Source::Dir(d) => d.join(name).is_file(),
        }
    }

    /// Opens member `name` (following links inside the archive) and returns
    /// a reader and its size.
    fn open_member(&self, name: &str) -> io::Result<(Box<dyn Read + '_>, u64)> {
        let not_found = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("`{name}` is not in the archive"),
            )
        };
        let name = normalize(name).ok_or_else(not_found)?;
        match self {
            Source::Dir(d) => {
                let f = File::open(d.join(&name))?;
                let size = f.metadata()?.len();
                Ok((Box::new(f), size))
            }
            Source::Tar { file, members } => {
                let mut cur = name;
                for _ in 0..MAX_DEPTH {
                    match members.get(&cur).ok_or_else(not_found)? {
                        Member::Link { target } => cur = target.clone(),
                        Member::File { offset, size } => {
                            let mut f = file.try_clone()?;
                            f.seek(SeekFrom::Start(*offset))?;
                            return Ok((Box::new(f.take(*size)), *size));
                        }
                    }
                }
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too many levels of links",
                ))
            }
        }
    }
}

struct Importer<'a> {
    archive: &'a Path,
    dest_dir: &'a Path,
    created: Vec<PathBuf>,
}

impl Importer<'_> {
    fn invalid(&self, problem: impl Into<String>) -> OciError {
        OciError::InvalidArchive {
            archive: self.archive.to_path_buf(),
            problem: problem.into(),
        }
    }

    fn mismatch(&self, what: String, expected: String, actual: String) -> OciError {
        OciError::DigestMismatch {
            archive: self.archive.to_path_buf(),
            what,
            expected,
            actual,
        }
    }

    fn read_member(&self, src: &Source, name: &str) -> Result<Vec<u8>, OciError> {
        let (r, size) = src
            .open_member(name)
            .map_err(|e| OciError::io(OP, self.archive.join(name), "read archive member", e))?;
        if size > MAX_JSON {
            return Err(self.invalid(format!("`{name}` is {size} bytes, too large for metadata")));
        }
        let mut buf = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|e| OciError::io(OP, self.archive.join(name), "read archive member", e))?;
        Ok(buf)
    }

    fn blob_path(&self, digest: &str) -> Result<String, OciError> {
        let hex = digest::parse_sha256(digest).map_err(|p| self.invalid(format!("blob {p}")))?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    /// Reads a small blob and checks its digest (and size, if known).
    fn read_blob(&self, src: &Source, desc: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(&desc.digest)?;
        if !src.has(&path) {
            return Err(self.invalid(format!(
                "{what} blob {} is missing from the archive",
                desc.digest
            )));
        }
        let data = self.read_member(src, &path)?;
        let actual = digest::of(&data);
        if actual != desc.digest {
            return Err(self.mismatch(format!("{what} blob"), desc.digest.clone(), actual));
        }
        if desc.size >= 0 && desc.size as u64 != data.len() as u64 {
            return Err(self.mismatch(
                format!("{what} blob {} size", desc.digest),
                format!("{} bytes", desc.size),
                format!("{} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        data: &[u8],
        file: &str,
    ) -> Result<T, OciError> {
        serde_json::from_slice(data).map_err(|source| OciError::Json {
            archive: self.archive.to_path_buf(),
            file: file.to_string(),
            source,
        })
    }

    fn run(&mut self) -> Result<ImportedImage, OciError> {
        let src = Source::open(self.archive, self.dest_dir)?;
        if src.has("index.json") {
            self.import_oci(&src)
        } else if src.has("manifest.json") {
            self.import_docker(&src)
        } else {
            Err(self.invalid(
                "neither index.json (OCI image layout) nor manifest.json (docker save) found; \
                 create the archive with `podman save --format oci-archive` or `docker save`",
            ))
        }
    }

    /// Picks the image manifest from an index, following nested indexes.
    fn select_manifest(
        &self,
        src: &Source,
        index: Index,
        refs: &mut Vec<String>,
        depth: usize,
    ) -> Result<Descriptor, OciError> {
        if depth > MAX_DEPTH {
            return Err(self.invalid("image indexes are nested too deeply"));
        }
        let arch = host_architecture();
        let candidates: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| {
                // Skip attestations / provenance manifests (platform unknown/unknown).
                !d.annotations.contains_key("vnd.docker.reference.type")
                    && d.platform.as_ref().map_or(true, |p| p.os != "unknown")
            })
            .collect();
        let chosen: &Descriptor = if candidates.len() == 1 {
            candidates[0]
        } else {
            let matching: Vec<&Descriptor> = candidates
                .iter()
                .copied()
                .filter(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .collect();
            match matching.as_slice() {
                [one] => one,
                [] if candidates.is_empty() => {
                    return Err(self.invalid("the image index lists no manifests"))
                }
                [] => {
                    return Err(self.invalid(format!(
                        "the image index lists {} manifests and none is for linux/{arch}; \
                         save a single image or a single platform",
                        candidates.len()
                    )))
                }
                more => {
                    return Err(self.invalid(format!(
                        "the archive holds {} images for linux/{arch}; save one image per \
                         archive",
                        more.len()
                    )))
                }
            }
        };
        for key in [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME] {
            if let Some(v) = chosen.annotations.get(key) {
                if !refs.contains(v) {
                    refs.push(v.clone());
                }
            }
        }
        match chosen.media_type.as_str() {
            MT_OCI_INDEX | MT_DOCKER_LIST => {
                let data = self.read_blob(src, chosen, "image index")?;
                let nested: Index = self.parse(&data, &format!("image index {}", chosen.digest))?;
                self.select_manifest(src, nested, refs, depth + 1)
            }
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST | "" => Ok(chosen.clone()),
            other => Err(OciError::Unsupported {
                op: OP,
                path: self.archive.to_path_buf(),
                what: format!("manifest media type `{other}`"),
                hint: "only OCI and docker v2 image manifests and indexes are supported",
            }),
        }
    }

    fn import_oci(&mut self, src: &Source) -> Result<ImportedImage, OciError> {
        if src.has("oci-layout") {
            let data = self.read_member(src, "oci-layout")?;
            let layout: serde_json::Value = self.parse(&data, "oci-layout")?;
            let version = layout
                .get("imageLayoutVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if !version.starts_with("1.") {
                return Err(OciError::Unsupported {
                    op: OP,
                    path: self.archive.to_path_buf(),
                    what: format!("OCI image layout version `{version}`"),
                    hint: "only image layout version 1.x is supported",
                });
            }
        }
        let index_data = self.read_member(src, "index.json")?;
        let index: Index = self.parse(&index_data, "index.json")?;
        let mut references = Vec::new();
        let manifest_desc = self.select_manifest(src, index, &mut references, 0)?;
        let manifest_data = self.read_blob(src, &manifest_desc, "manifest")?;
        let manifest: Manifest = self.parse(
            &manifest_data,
            &format!("manifest {}", manifest_desc.digest),
        )?;
        let config_data = self.read_blob(src, &manifest.config, "config")?;
        let config: ConfigFile =
            self.parse(&config_data, &format!("config {}", manifest.config.digest))?;
        self.check_diff_ids(&config, manifest.layers.len())?;

        let mut layers = Vec::new();
        let mut layer_digests = Vec::new();
        for (i, desc) in manifest.layers.iter().enumerate() {
            let mt = desc.media_type.as_str();
            if !(mt.contains(".layer.") || mt.contains(".rootfs.") || mt.is_empty()) {
                return Err(OciError::Unsupported {
                    op: OP,
                    path: self.archive.to_path_buf(),
                    what: format!("layer media type `{mt}` for layer {i}"),
                    hint: "only tar and tar+gzip layers are supported",
                });
            }
            let blob = self.blob_path(&desc.digest)?;
            if !src.has(&blob) {
                return Err(self.invalid(format!(
                    "layer {i} blob {} is missing from the archive (foreign or \
                     non-distributable layers are not supported)",
                    desc.digest
                )));
            }
            let expected_size = (desc.size >= 0).then_some(desc.size as u64);
            let path = self.extract(
                src,
                &blob,
                i,
                &config.rootfs.diff_ids[i],
                Some(&desc.digest),
                expected_size,
            )?;
            layers.push(path);
            layer_digests.push(desc.digest.clone());
        }
        Ok(self.finish(
            config,
            layers,
            layer_digests,
            digest::of(&config_data),
            references,
        ))
    }

    fn import_docker(&mut self, src: &Source) -> Result<ImportedImage, OciError> {
        let data = self.read_member(src, "manifest.json")?;
        let entries: Vec<DockerManifestEntry> = self.parse(&data, "manifest.json")?;
        let entry = match entries.as_slice() {
            [one] => one,
            [] => return Err(self.invalid("manifest.json lists no images")),
            more => {
                return Err(self.invalid(format!(
                    "manifest.json lists {} images; save one image per archive",
                    more.len()
                )))
            }
        };
        let config_data = self.read_member(src, &entry.config)?;
        let config_digest = digest::of(&config_data);
        // Legacy configs are named `<hex>.json`; Docker ≥ 25 uses `blobs/sha256/<hex>`.
        let stem = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        let named = format!("sha256:{stem}");
        if digest::parse_sha256(&named).is_ok() && named != config_digest {
            return Err(self.mismatch(format!("config `{}`", entry.config), named, config_digest));
        }
        let config: ConfigFile = self.parse(&config_data, &entry.config)?;
        self.check_diff_ids(&config, entry.layers.len())?;
        let mut layers = Vec::new();
        let mut layer_digests = Vec::new();
        for (i, member) in entry.layers.iter().enumerate() {
            let hex = member
                .strip_prefix("blobs/sha256/")
                .map(|h| format!("sha256:{h}"));
            let expected = hex.filter(|d| digest::parse_sha256(d).is_ok());
            let diff_id = config.rootfs.diff_ids[i].clone();
            let path = self.extract(src, member, i, &diff_id, expected.as_deref(), None)?;
            layers.push(path);
            layer_digests.push(expected.unwrap_or(diff_id));
        }
        let refs = entry.repo_tags.clone().unwrap_or_default();
        Ok(self.finish(config, layers, layer_digests, config_digest, refs))
    }

    fn check_diff_ids(&self, config: &ConfigFile, layers: usize) -> Result<(), OciError> {
        if config.rootfs.diff_ids.len() != layers {
            return Err(self.invalid(format!(
                "the manifest lists {layers} layers but the config's rootfs.diff_ids has {}",
                config.rootfs.diff_ids.len()
            )));
        }
        for d in &config.rootfs.diff_ids {
            digest::parse_sha256(d).map_err(|p| self.invalid(format!("config diff_id {p}")))?;
        }
        Ok(())
    }

    /// Extracts member `member` as layer `index`, verifying the blob digest
    /// (if given), its size (if given) and the uncompressed diff_id.
    fn extract(
        &mut self,
        src: &Source,
        member: &str,
        index: usize,
        diff_id: &str,
        blob_digest: Option<&str>,
        size: Option<u64>,
    ) -> Result<PathBuf, OciError> {
        let (reader, _) = src
            .open_member(member)
            .map_err(|e| OciError::io(OP, self.archive.join(member), "open layer blob", e))?;
        let hex = digest::parse_sha256(diff_id).map_err(|p| self.invalid(p))?;
        let dest = self.dest_dir.join(format!("{index}-{}", &hex[..12]));
        let mut hashing = HashingReader::new(reader);
        let stats = extract_layer(&mut hashing, &dest).map_err(|e| OciError::Layer {
            archive: self.archive.to_path_buf(),
            index,
            digest: blob_digest.unwrap_or(diff_id).to_string(),
            source: Box::new(e),
        })?;
        self.created.push(dest.clone());
        let (actual, count) = hashing
            .finish()
            .map_err(|e| OciError::io(OP, self.archive.join(member), "read layer blob", e))?;
        if let Some(expected) = blob_digest {
            if actual != expected {
                return Err(self.mismatch(format!("layer {index} blob"), expected.into(), actual));
            }
        }
        if let Some(expected) = size {
            if expected != count {
                return Err(self.mismatch(
                    format!("layer {index} blob size"),
                    format!("{expected} bytes"),
                    format!("{count} bytes"),
                ));
            }
        }
        if stats.diff_id != diff_id {
            return Err(self.mismatch(
                format!("layer {index} uncompressed content (diff_id)"),
                diff_id.into(),
                stats.diff_id,
            ));
        }
        Ok(dest)
    }

    fn finish(
        &self,
        config: ConfigFile,
        layers: Vec<PathBuf>,
        layer_digests: Vec<String>,
        config_digest: String,
        references: Vec<String>,
    ) -> ImportedImage {
        ImportedImage {
            layers,
            config: config
                .config
                .map(|c| c.to_image_config())
                .unwrap_or_default(),
            diff_ids: config.rootfs.diff_ids,
            layer_digests,
            config_digest,
            references,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_member_names() {
        assert_eq!(normalize("./index.json").as_deref(), Some("index.json"));
        assert_eq!(
            normalize("blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("/x"), None);
    }

    #[test]
    fn resolves_links_relative_to_their_directory() {
        assert_eq!(
            resolve_relative("b/layer.tar", "../a/layer.tar").as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(resolve_relative("b/layer.tar", "../../x"), None);
        assert_eq!(
            resolve_relative("b/layer.tar", "/blobs/sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
    }
}
