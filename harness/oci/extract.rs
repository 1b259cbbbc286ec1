//! Safe extraction of one layer tar into an overlay-native layer directory.
//!
//! Every entry is created relative to directory file descriptors that were
//! opened component by component with `O_NOFOLLOW`, after checking with
//! `fstatat(AT_SYMLINK_NOFOLLOW)` that no component is a symlink, so nothing is
//! ever written through a symlink, whatever the layer contains.

use super::digest::HashingReader;
use super::error::OciError;
use super::fsutil::Guard;
use super::path::{entry_components, join};
use crate::whiteout::{self, TAR_OPAQUE_MARKER, TAR_WHITEOUT_META_PREFIX, TAR_WHITEOUT_PREFIX};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OP: &str = "extract layer";

/// Compression of a layer stream, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// A plain tar stream.
    #[default]
    None,
    /// A gzip-compressed tar stream.
    Gzip,
    /// A zstd-compressed tar stream (OCI's `+zstd` layers).
    Zstd,
}

/// What [`extract_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractStats {
    /// Tar entries read (including whiteout markers and skipped ones).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created from explicit entries.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Whiteouts (char 0/0 devices) created from `.wh.NAME` entries.
    pub whiteouts: u64,
    /// Directories marked opaque from `.wh..wh..opq` entries.
    pub opaque_dirs: u64,
    /// FIFOs and device nodes created.
    pub special_files: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Entries skipped on purpose (aufs `.wh..wh.*` metadata, pax global headers).
    pub skipped_entries: u64,
    /// xattrs not applied: overlay-private ones (always dropped) and ones the
    /// filesystem or the process's privileges do not allow.
    pub xattrs_skipped: u64,
    /// Compression detected on the stream.
    pub compression: Compression,
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    Plain,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

/// Identifies the compression of a stream from its first (up to 6) bytes.
pub(crate) fn detect_compression(magic: &[u8]) -> Detected {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Detected::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Detected::Zstd
    } else if magic.starts_with(b"BZh") {
        Detected::Bzip2
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Detected::Xz
    } else {
        Detected::Plain
    }
}

/// Reads up to 6 bytes of `r` (fewer only at end of stream).
pub(crate) fn peek_magic(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut magic = vec![0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match r.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    magic.truncate(got);
    Ok(magic)
}

/// Extracts one layer tar (plain or gzip-compressed, detected from its magic
/// bytes) into the new directory `dest`, as an overlay-native layer:
/// `.wh.NAME` entries become whiteouts (char 0/0 devices) and `.wh..wh..opq`
/// makes its directory opaque (see [`crate::whiteout`]).
///
/// `dest` must not exist; its parent must. The layer is extracted into a
/// temporary sibling directory that is renamed to `dest` only on success, so a
/// failure leaves nothing behind.
///
/// Modes, mtimes, symlink targets, hardlinks and xattrs are recorded;
/// ownership only when running as root (otherwise files belong to the caller).
/// Hostile entries are rejected with [`OciError::UnsafeEntry`]: absolute paths,
/// `..` components, writes through a symlink of the layer, hardlinks to paths
/// not extracted before them, and device nodes other than whiteouts when not
/// root.
///
/// A layer that unpacks to more than [`DEFAULT_LAYER_MAX_SIZE`](crate::layers::DEFAULT_LAYER_MAX_SIZE)
/// (16 GiB, the bound of a built layer) is refused as it is read ([`OciError::TooLarge`]):
/// a small compressed blob cannot fill the store.
pub fn extract_layer(reader: impl Read, dest: &Path) -> Result<ExtractStats, OciError> {
    extract_layer_bounded(reader, dest, crate::layers::DEFAULT_LAYER_MAX_SIZE.get())
}

/// [`extract_layer`], refusing a layer whose tar stream is longer than `limit` bytes.
pub(crate) fn extract_layer_bounded(
    reader: impl Read,
    dest: &Path,
    limit: u64,
) -> Result<ExtractStats, OciError> {
    match std::fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(OciError::DestinationExists {
                dest: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(OciError::io(OP, dest, "inspect destination", e)),
    }
    let name = dest.file_name().ok_or_else(|| {
        OciError::io(
            OP,
            dest,
            "use destination",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination has no final file name",
            ),
        )
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!(".{}.pristine-extract-", name.to_string_lossy());
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .map_err(|e| {
            OciError::io(
                OP,
                dest,
                "create a temporary directory next to the destination",
                e,
            )
        })?
        .keep();
    let guard = Guard::new(tmp.clone());
    let stats = extract_into(reader, dest, &tmp, limit)?;
    renameat2(
        AT_FDCWD,
        &tmp,
        AT_FDCWD,
        dest,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| {
        if e == Errno::EEXIST {
            OciError::DestinationExists {
                dest: dest.to_path_buf(),
            }
        } else {
            OciError::io(OP, dest, "rename the extracted layer into place", e.into())
        }
    })?;
    guard.disarm();
    Ok(stats)
}

/// Extracts into the existing empty directory `tmp`; `dest` is only used in
/// error messages.
fn extract_into(
    reader: impl Read,
    dest: &Path,
    tmp: &Path,
    limit: u64,
) -> Result<ExtractStats, OciError> {
    let read_err = |source: io::Error| OciError::ReadLayer {
        dest: dest.to_path_buf(),
        source,
    };
    // Set when the stream passes `limit`.
    let too_long = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut reader = reader;
    let magic = peek_magic(&mut reader).map_err(read_err)?;
    let detected = detect_compression(&magic);
    let stream = io::Cursor::new(magic).chain(reader);
    let (decompressed, compression): (Box<dyn Read>, _) = match detected {
        Detected::Plain => (Box::new(stream), Compression::None),
        Detected::Gzip => (
            Box::new(flate2::read::MultiGzDecoder::new(stream)),
            Compression::Gzip,
        ),
        Detected::Zstd => (
            Box::new(zstd::stream::read::Decoder::new(stream).map_err(read_err)?),
            Compression::Zstd,
        ),
        other => {
            let what = match other {
                Detected::Bzip2 => "bzip2",
                _ => "xz",
            };
            return Err(OciError::Unsupported {
                op: OP,
                path: dest.to_path_buf(),
                what: format!("{what}-compressed layer"),
                hint: "only plain, gzip- and zstd-compressed layer tars are supported; re-save \
                       the image with gzip or uncompressed layers (e.g. `podman save --format \
                       oci-archive` of an image pulled with gzip layers)",
            });
        }
    };

    let root = openat(
        AT_FDCWD,
        tmp,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| OciError::io(OP, tmp, "open the temporary directory", e.into()))?;
    let mut x = Extractor {
        dest,
        tmp,
        root,
        // SAFETY: geteuid has no preconditions and cannot fail.
        is_root: nix::unistd::geteuid().is_root(),
        kinds: HashMap::new(),
        dirs: HashMap::new(),
        stats: ExtractStats {
            compression,
            ..Default::default()
        },
    };

    let bounded = Bounded {
        inner: decompressed,
        left: limit,
        passed: std::rc::Rc::clone(&too_long),
    };
    let mut archive = tar::Archive::new(HashingReader::new(bounded));
    let unpacked = archive
        .entries()
        .map_err(read_err)
        .and_then(|entries| {
            for entry in entries {
                let entry = entry.map_err(read_err)?;
                x.stats.entries += 1;
                x.entry(entry)?;
            }
            Ok(())
        })
        .and_then(|()| archive.into_inner().finish().map_err(read_err));
    // Whichever read saw the bound passed (a header's, a file's contents, the stream's
    // end), that is the error to report.
    let (diff_id, _) = unpacked.map_err(|e| match too_long.get() {
        true => OciError::TooLarge {
            dest: dest.to_path_buf(),
            limit,
        },
        false => e,
    })?;
    x.stats.diff_id = diff_id;
    x.finish_dirs()?;
    Ok(x.stats)
}

/// Reads at most `left` bytes of `inner`, then fails (and sets `passed`) if there are more.
struct Bounded<R> {
    inner: R,
    left: u64,
    passed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // At the bound: one more byte means the stream is too long.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.passed.set(true);
                    Err(io::Error::other("the layer unpacks to more than its bound"))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Whiteout,
    Special,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<TimeSpec>,
}

struct Extractor<'a> {
    dest: &'a Path,
    tmp: &'a Path,
    root: OwnedFd,
    is_root: bool,
    /// What was extracted at each (joined) path, for hardlink validation.
    kinds: HashMap<Vec<u8>, Kind>,
    /// Directory metadata applied at the end (children change mtimes, and a
    /// read-only mode would stop us from creating the children).
    dirs: HashMap<Vec<u8>, Meta>,
    stats: ExtractStats,
}

/// Parses a pax time value (`seconds[.fraction]`).
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nanos += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        return Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(secs, nanos))
}

fn name_os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl Extractor<'_> {
    fn unsafe_entry(&self, entry: &str, problem: impl Into<String>) -> OciError {
        OciError::UnsafeEntry {
            dest: self.dest.to_path_buf(),
            entry: entry.to_string(),
            problem: problem.into(),
        }
    }

    fn entry_io(&self, entry: &str, action: &'static str, e: impl Into<io::Error>) -> OciError {
        OciError::EntryIo {
            dest: self.dest.to_path_buf(),
            entry: entry.to_string(),
            action,
            source: e.into(),
        }
    }

    /// Opens the directory at `comps` below the layer root, refusing to pass
    /// through symlinks or non-directories; creates missing ones if `create`.
    fn open_dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        entry: &str,
    ) -> Result<OwnedFd, OciError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur = openat(&self.root, ".", flags, Mode::empty())
            .map_err(|e| self.entry_io(entry, "open the layer root", e))?;
        for (i, c) in comps.iter().enumerate() {
            let name = name_os(c);
            let shown = || String::from_utf8_lossy(&join(&comps[..=i])).into_owned();
            match fstatat(&cur, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                    SFlag::S_IFDIR => {}
                    SFlag::S_IFLNK => {
                        return Err(self.unsafe_entry(
                            entry,
                            format!(
                                "would be written through `{}`, which is a symlink in the \
                                 layer; refusing to follow symlinks while extracting",
                                shown()
                            ),
                        ))
                    }
                    _ => {
                        return Err(self.unsafe_entry(
                            entry,
                            format!("has a parent `{}` that is not a directory", shown()),
                        ))
                    }
                },
                Err(Errno::ENOENT) if create => {
                    mkdirat(&cur, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.entry_io(entry, "create a parent directory", e))?;
                    let key = join(&comps[..=i]);
                    self.kinds.insert(key.clone(), Kind::Dir);
                    self.dirs.insert(
                        key,
                        Meta {
                            mode: 0o755,
                            owner: None,
                            mtime: None,
                        },
                    );
                }
                Err(e) => return Err(self.entry_io(entry, "inspect a parent directory", e)),
            }
            cur = openat(&cur, name, flags, Mode::empty()).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => self.unsafe_entry(
                    entry,
                    format!(
                        "would be written through `{}`, which is not a directory",
                        shown()
                    ),
                ),
                e => self.entry_io(entry, "open a parent directory", e),
            })?;
        }
        Ok(cur)
    }

    /// Makes room for a new entry `name` in `parent`. Returns true if an
    /// existing directory was kept (only when `keep_dir`).
    fn clear_slot(
        &mut self,
        parent: &OwnedFd,
        comps: &[&[u8]],
        keep_dir: bool,
        entry: &str,
    ) -> Result<bool, OciError> {
        let name = name_os(comps[comps.len() - 1]);
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(self.entry_io(entry, "inspect an existing entry", e)),
        };
        let key = join(comps);
        if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
            if keep_dir {
                return Ok(true);
            }
            // The ancestors were just checked to be real directories, so this
            // path stays inside the temporary directory.
            let path = self.tmp.join(name_os(&key));
            super::fsutil::remove_tree(&path)
                .map_err(|e| self.entry_io(entry, "replace an existing directory", e))?;
            let mut prefix = key.clone();
            prefix.push(b'/');
            self.dirs
                .retain(|k, _| k != &key && !k.starts_with(&prefix));
            self.kinds
                .retain(|k, _| k != &key && !k.starts_with(&prefix));
        } else {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.entry_io(entry, "replace an existing entry", e))?;
            self.kinds.remove(&key);
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), OciError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            self.stats.skipped_entries += 1;
            return Ok(());
        }
        let comps = entry_components(&raw_path).map_err(|p| self.unsafe_entry(&shown, p))?;

        // Metadata, including pax overrides (uid/gid are applied by `tar`).
        let header = entry.header();
        let bad_header = |what: &str| format!("has an invalid {what} field in its tar header");
        let mode = header
            .mode()
            .map_err(|_| self.unsafe_entry(&shown, bad_header("mode")))?;
        let uid = header
            .uid()
            .map_err(|_| self.unsafe_entry(&shown, bad_header("uid")))?;
        let gid = header
            .gid()
            .map_err(|_| self.unsafe_entry(&shown, bad_header("gid")))?;
        let mtime = header
            .mtime()
            .map_err(|_| self.unsafe_entry(&shown, bad_header("mtime")))?;
        let dev = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let owner = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => return Err(self.unsafe_entry(&shown, "has a uid or gid above 2^32")),
        };
        let mut meta = Meta {
            mode: mode & 0o7777,
            owner: self.is_root.then_some(owner),
            mtime: Some(TimeSpec::new(mtime.min(i64::MAX as u64) as i64, 0)),
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| OciError::ReadLayer {
            dest: self.dest.to_path_buf(),
            source: e,
        })? {
            for ext in pax {
                let ext = ext.map_err(|e| OciError::ReadLayer {
                    dest: self.dest.to_path_buf(),
                    source: e,
                })?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        meta.mtime = Some(t);
                    }
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if whiteout::is_overlay_xattr(name) {
                        self.stats.xattrs_skipped += 1;
                    } else {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let link_name = entry.link_name_bytes().map(|c| c.into_owned());

        let Some((last, parent_comps)) = comps.split_last() else {
            // `./`: the layer root itself.
            if !etype.is_dir() {
                return Err(
                    self.unsafe_entry(&shown, "names the layer root but is not a directory")
                );
            }
            self.dirs.insert(Vec::new(), meta);
            let root = self.open_dir(&[], false, &shown)?;
            self.apply_xattrs(&root, &xattrs, &shown);
            return Ok(());
        };

        // Whiteout markers.
        if let Some(target) = last.strip_prefix(TAR_WHITEOUT_PREFIX.as_bytes()) {
            if *last == TAR_OPAQUE_MARKER.as_bytes() {
                let dir = self.open_dir(parent_comps, true, &shown)?;
                whiteout::make_opaque_fd(dir.as_fd())
                    .map_err(|e| self.entry_io(&shown, "mark the directory opaque", e))?;
                self.stats.opaque_dirs += 1;
                return Ok(());
            }
            if last.starts_with(TAR_WHITEOUT_META_PREFIX.as_bytes()) {
                // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the tree.
                self.stats.skipped_entries += 1;
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.unsafe_entry(&shown, "is a whiteout marker with an invalid name"));
            }
            let mut wcomps = parent_comps.to_vec();
            wcomps.push(target);
            return self.make_whiteout(&wcomps, &shown);
        }

        let parent = self.open_dir(parent_comps, true, &shown)?;
        let name = name_os(last);
        let key = join(&comps);
        use tar::EntryType as T;
        match etype {
            T::Directory => {
                let existed = self.clear_slot(&parent, &comps, true, &shown)?;
                if !existed {
                    mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.entry_io(&shown, "create directory", e))?;
                }
                let dir = openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.entry_io(&shown, "open directory", e))?;
                self.apply_xattrs(&dir, &xattrs, &shown);
                self.dirs.insert(key.clone(), meta);
                self.kinds.insert(key, Kind::Dir);
                self.stats.directories += 1;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear_slot(&parent, &comps, false, &shown)?;
                let fd = openat(
                    &parent,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.entry_io(&shown, "create file", e))?;
                let mut file = File::from(fd);
                self.copy_contents(&mut entry, &mut file, &shown)?;
                self.apply_xattrs(&file, &xattrs, &shown);
                self.apply_meta_fd(&file, meta, &shown)?;
                self.kinds.insert(key, Kind::File);
                self.stats.files += 1;
            }
            T::Symlink => {
                let target = link_name
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.unsafe_entry(&shown, "is a symlink without a target"))?;
                self.clear_slot(&parent, &comps, false, &shown)?;
                symlinkat(name_os(&target), &parent, name)
                    .map_err(|e| self.entry_io(&shown, "create symlink", e))?;
                if let Some((u, g)) = meta.owner {
                    fchownat(
                        &parent,
                        name,
                        Some(Uid::from_raw(u)),
                        Some(Gid::from_raw(g)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.entry_io(&shown, "set symlink owner", e))?;
                }
                if let Some(t) = meta.mtime {
                    utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                        .map_err(|e| self.entry_io(&shown, "set symlink mtime", e))?;
                }
                self.kinds.insert(key, Kind::Symlink);
                self.stats.symlinks += 1;
            }
            T::Link => {
                let target = link_name
                    .ok_or_else(|| self.unsafe_entry(&shown, "is a hardlink without a target"))?;
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = entry_components(&target).map_err(|p| {
                    self.unsafe_entry(
                        &shown,
                        format!(
                            "is a hardlink to `{target_shown}`, which points outside the \
                             layer (the target {p})"
                        ),
                    )
                })?;
                let tkey = join(&tcomps);
                match self.kinds.get(&tkey) {
                    _ if tkey == key => {
                        return Err(self.unsafe_entry(&shown, "is a hardlink to itself"))
                    }
                    Some(Kind::File) | Some(Kind::Symlink) | Some(Kind::Special) => {}
                    Some(Kind::Dir) => {
                        return Err(self.unsafe_entry(
                            &shown,
                            format!("is a hardlink to the directory `{target_shown}`"),
                        ))
                    }
                    Some(Kind::Whiteout) | None => {
                        return Err(self.unsafe_entry(
                            &shown,
                            format!(
                                "is a hardlink to `{target_shown}`, which is not a file \
                                 extracted earlier from this layer (hardlinks may only point \
                                 inside the layer, to earlier entries)"
                            ),
                        ))
                    }
                }
                let kind = self.kinds[&tkey];
                let (tlast, tparent_comps) = tcomps.split_last().expect("non-root key");
                let tparent = self.open_dir(tparent_comps, false, &shown)?;
                self.clear_slot(&parent, &comps, false, &shown)?;
                linkat(&tparent, name_os(tlast), &parent, name, AtFlags::empty())
                    .map_err(|e| self.entry_io(&shown, "create hardlink", e))?;
                self.kinds.insert(key, kind);
                self.stats.hardlinks += 1;
            }
            T::Char if dev == (0, 0) => {
                self.make_whiteout(&comps, &shown)?;
            }
            T::Char | T::Block | T::Fifo => {
                let kind = match etype {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                if kind != SFlag::S_IFIFO && !self.is_root {
                    return Err(self.unsafe_entry(
                        &shown,
                        format!(
                            "is a {} device node ({}:{}); device nodes other than whiteouts \
                             can only be extracted as root",
                            if kind == SFlag::S_IFCHR {
                                "character"
                            } else {
                                "block"
                            },
                            dev.0,
                            dev.1
                        ),
                    ));
                }
                self.clear_slot(&parent, &comps, false, &shown)?;
                let rdev = libc::makedev(dev.0, dev.1);
                mknodat(&parent, name, kind, Mode::from_bits_truncate(0o600), rdev)
                    .map_err(|e| self.entry_io(&shown, "create device node or fifo", e))?;
                if let Some((u, g)) = meta.owner {
                    fchownat(
                        &parent,
                        name,
                        Some(Uid::from_raw(u)),
                        Some(Gid::from_raw(g)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.entry_io(&shown, "set owner", e))?;
                }
                // The node was just created by us and is not a symlink.
                fchmodat(
                    &parent,
                    name,
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| self.entry_io(&shown, "set mode", e))?;
                if let Some(t) = meta.mtime {
                    utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                        .map_err(|e| self.entry_io(&shown, "set mtime", e))?;
                }
                self.kinds.insert(key, Kind::Special);
                self.stats.special_files += 1;
            }
            other => {
                return Err(self.unsafe_entry(
                    &shown,
                    format!("has unsupported tar entry type {:?}", other),
                ))
            }
        }
        Ok(())
    }

    fn make_whiteout(&mut self, comps: &[&[u8]], shown: &str) -> Result<(), OciError> {
        let (last, parent_comps) = comps.split_last().expect("whiteout has a name");
        let parent = self.open_dir(parent_comps, true, shown)?;
        self.clear_slot(&parent, comps, false, shown)?;
        mknodat(
            &parent,
            name_os(last),
            SFlag::S_IFCHR,
            Mode::empty(),
            libc::makedev(0, 0),
        )
        .map_err(|e| self.entry_io(shown, "create whiteout device", e))?;
        self.kinds.insert(join(comps), Kind::Whiteout);
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn copy_contents(
        &mut self,
        from: &mut impl Read,
        to: &mut File,
        shown: &str,
    ) -> Result<(), OciError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(OciError::ReadLayer {
                        dest: self.dest.to_path_buf(),
                        source: e,
                    })
                }
            };
            to.write_all(&buf[..n])
                .map_err(|e| self.entry_io(shown, "write file contents", e))?;
            self.stats.bytes += n as u64;
        }
        Ok(())
    }

    fn apply_xattrs(&mut self, fd: &impl AsFd, xattrs: &[(Vec<u8>, Vec<u8>)], _shown: &str) {
        for (name, value) in xattrs {
            if crate::sys::xattr::fset_raw(fd.as_fd(), name, value).is_err() {
                // Not permitted (trusted.* rootless, security.*) or not
                // supported by the filesystem: best effort by design.
                self.stats.xattrs_skipped += 1;
            }
        }
    }

    /// Owner, then mode (chown clears set-id bits), then times, on an open fd.
    fn apply_meta_fd(&self, fd: &impl AsFd, meta: Meta, shown: &str) -> Result<(), OciError> {
        if let Some((u, g)) = meta.owner {
            fchown(fd.as_fd(), Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                .map_err(|e| self.entry_io(shown, "set owner", e))?;
        }
        fchmod(fd.as_fd(), Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.entry_io(shown, "set mode", e))?;
        if let Some(t) = meta.mtime {
            futimens(fd.as_fd(), &t, &t).map_err(|e| self.entry_io(shown, "set mtime", e))?;
        }
        Ok(())
    }

    /// Applies the deferred directory metadata, deepest directories first.
    fn finish_dirs(&mut self) -> Result<(), OciError> {
        self.dirs.entry(Vec::new()).or_insert(Meta {
            mode: 0o755,
            owner: None,
            mtime: None,
        });
        let mut dirs: Vec<(Vec<u8>, Meta)> = self.dirs.drain().collect();
        let depth = |k: &[u8]| {
            if k.is_empty() {
                0
            } else {
                1 + k.iter().filter(|b| **b == b'/').count()
            }
        };
        dirs.sort_by(|a, b| depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.0.cmp(&b.0)));
        for (key, meta) in dirs {
            let shown = if key.is_empty() {
                "./".to_string()
            } else {
                String::from_utf8_lossy(&key).into_owned()
            };
            let comps: Vec<&[u8]> = if key.is_empty() {
                Vec::new()
            } else {
                key.split(|b| *b == b'/').collect()
            };
            let fd = self.open_dir(&comps, false, &shown)?;
            self.apply_meta_fd(&fd, meta, &shown)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_longer_than_its_bound_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let data = vec![b'x'; 64 * 1024];
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "big", data.as_slice())
            .unwrap();
        let bytes = tar.into_inner().unwrap();
        let dest = dir.path().join("layer");
        let err = extract_layer_bounded(bytes.as_slice(), &dest, 16 * 1024).unwrap_err();
        assert!(
            matches!(err, OciError::TooLarge { limit: 16384, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Exactly at the bound is fine.
        let fits = extract_layer_bounded(bytes.as_slice(), &dest, bytes.len() as u64).unwrap();
        assert_eq!(fits.entries, 1);
    }

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8, 0]), Detected::Gzip);
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]),
            Detected::Zstd
        );
        assert_eq!(detect_compression(b"BZh91A"), Detected::Bzip2);
        assert_eq!(
            detect_compression(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Detected::Xz
        );
        assert_eq!(detect_compression(b"etc/pa"), Detected::Plain);
        assert_eq!(detect_compression(&[0x1f]), Detected::Plain);
        assert_eq!(detect_compression(&[]), Detected::Plain);
    }

    #[test]
    fn peek_magic_handles_short_reads() {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        assert_eq!(
            peek_magic(&mut OneByte(b"\x1f\x8babcdef")).unwrap(),
            b"\x1f\x8babcd"
        );
        assert_eq!(peek_magic(&mut OneByte(b"ab")).unwrap(), b"ab");
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000"),
            Some(TimeSpec::new(1_700_000_000, 0))
        );
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"12.000000001999"),
            Some(TimeSpec::new(12, 1))
        );
        assert_eq!(
            parse_pax_time(b"-1.5"),
            Some(TimeSpec::new(-2, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn whiteout_markers_map_to_overlay_form() {
        let data = tar_of(|b| {
            file(b, "d/.wh..wh..opq", b"", 0o644);
            file(b, "d/keep", b"k", 0o640);
            file(b, ".wh.gone", b"", 0o644);
            file(b, "d/.wh..wh.plnk", b"", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        let stats = extract_layer(&data[..], &dest).unwrap();
        assert_eq!(
            (stats.whiteouts, stats.opaque_dirs, stats.skipped_entries),
            (1, 1, 1)
        );
        assert!(whiteout::is_whiteout_path(&dest.join("gone")).unwrap());
        assert!(whiteout::is_opaque(&dest.join("d")).unwrap());
        assert!(!dest.join("d/.wh..wh..opq").exists());
        assert!(!dest.join(".wh.gone").exists());
        assert_eq!(std::fs::read(dest.join("d/keep")).unwrap(), b"k");
        assert_eq!(stats.diff_id, super::super::digest::of(&data));
        assert_eq!(stats.compression, Compression::None);
    }

    #[test]
    fn gzip_layers_are_detected_and_hashed_uncompressed() {
        let data = tar_of(|b| file(b, "a", b"hello", 0o600));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stats = extract_layer(&gz[..], &dir.path().join("l")).unwrap();
        assert_eq!(stats.compression, Compression::Gzip);
        assert_eq!(stats.diff_id, super::super::digest::of(&data));
        assert_eq!(std::fs::read(dir.path().join("l/a")).unwrap(), b"hello");
    }

    #[test]
    fn zstd_layers_are_extracted_and_xz_is_reported_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "a", &b"hello"[..]).unwrap();
        let data = tar.into_inner().unwrap();
        let zst = zstd::encode_all(data.as_slice(), 3).unwrap();
        let stats = extract_layer(zst.as_slice(), &dir.path().join("l")).unwrap();
        assert_eq!(stats.compression, Compression::Zstd);
        assert_eq!(stats.diff_id, super::super::digest::of(&data));
        assert_eq!(std::fs::read(dir.path().join("l/a")).unwrap(), b"hello");

        let err = extract_layer(
            &[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2][..],
            &dir.path().join("x"),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("xz"), "{err}");
        assert!(!dir.path().join("x").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_destination_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = extract_layer(&[][..], dir.path()).unwrap_err();
        assert!(matches!(err, OciError::DestinationExists { .. }), "{err}");
    }
}
