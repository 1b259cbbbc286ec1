//! The host's own root filesystem as an image, in rootless mode.
//!
//! Inside a user namespace, an overlay with `lowerdir=/` fails ("failed to clone
//! lowerpath"): the host root has mounts beneath it (`/proc`, `/dev`, …) that are locked to
//! the namespace. Per-directory lowers work, so the rootless host image is a tmpfs root with
//! one overlay per top-level directory; directories that themselves contain mounts are
//! bound read-only instead, and top-level symlinks are recreated.
//!
//! overlayfs also refuses a lower nested in another lower ("overlapping lowerdir path"): a
//! directory that holds the store (whose layers are lowers too) is overlaid over a read-only
//! overlay view of itself, which has a superblock of its own, with the store bound read-only
//! inside ([`view_around`]). Where that would stack overlays too deep (the directory is on
//! overlayfs already), it is split instead, down the path to the store ([`split_around`]).

use std::path::{Path, PathBuf};

/// How one top-level entry of the host root is reproduced in a rootless container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    /// A directory without mounts below it (name, permission bits): its own copy-on-write
    /// overlay.
    Overlay(String, u32),
    /// A directory with mounts below it: a read-only recursive bind.
    ReadOnlyBind(String),
    /// A regular file: bound read-only.
    File(String),
    /// A symbolic link, recreated with the same target.
    Symlink(String, PathBuf),
    /// A regular file that a layer adds at the top level: bound read-only from the layer.
    LayerFile(String, PathBuf),
    /// A directory on the path to the store (or to a layer or upper outside it; name,
    /// permission bits, entries): a directory of the upper layer holding these entries, one
    /// by one.
    Split(String, u32, Vec<HostEntry>),
    /// A directory that holds the store (or a layer or upper outside it): one overlay whose
    /// host lower is a read-only overlay view of the directory, the stops bound read-only
    /// over it.
    Viewed {
        /// The entry's name in its directory.
        name: String,
        /// Its permission bits.
        mode: u32,
        /// The host directories between it and the stops (absolute, parents first, with
        /// their permission bits): made in the upper layer beforehand, so that writing below
        /// one never copies up a directory whose owner is not mapped.
        dirs: Vec<(PathBuf, u32)>,
        /// The stops below it (absolute host paths).
        stops: Vec<PathBuf>,
    },
}

impl HostEntry {
    /// The entry's name in its directory.
    pub fn name(&self) -> &str {
        match self {
            HostEntry::Overlay(n, _)
            | HostEntry::ReadOnlyBind(n)
            | HostEntry::File(n)
            | HostEntry::Symlink(n, _)
            | HostEntry::LayerFile(n, _)
            | HostEntry::Split(n, _, _)
            | HostEntry::Viewed { name: n, .. } => n,
        }
    }
}

/// Top-level directories the container gets fresh instances of instead of the host's.
pub const REPLACED: &[&str] = &["proc", "sys", "dev", "tmp"];

/// Classifies the entries of the host root directory `root` (normally `/`), given the
/// host's mount points, leaving out those the container gets fresh ([`REPLACED`]).
pub fn classify_root(root: &Path, mount_points: &[PathBuf]) -> std::io::Result<Vec<HostEntry>> {
    let mut entries = classify(root, mount_points)?;
    entries.retain(|e| !REPLACED.contains(&e.name()));
    Ok(entries)
}

/// Classifies the entries of a host directory, given the host's mount points.
pub fn classify(root: &Path, mount_points: &[PathBuf]) -> std::io::Result<Vec<HostEntry>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let path = root.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            out.push(HostEntry::Symlink(name, std::fs::read_link(&path)?));
        } else if ft.is_dir() {
            let has_mounts = mount_points
                .iter()
                .any(|m| m != &path && m.starts_with(&path));
            out.push(if has_mounts {
                HostEntry::ReadOnlyBind(name)
            } else {
                HostEntry::Overlay(name, mode_bits(&meta))
            });
        } else if ft.is_file() {
            out.push(HostEntry::File(name));
        }
    }
    Ok(out)
}

/// Replaces each overlaid directory of `entries` (the entries of host directory `dir`) that
/// contains one of `stops` by a [`HostEntry::Split`] of its own entries, recursively; a
/// directory that is a stop is bound read-only. `stops` are absolute paths that must not be
/// below an overlay lower: the store, layers outside it, an on-disk upper.
pub fn split_around(
    entries: &[HostEntry],
    dir: &Path,
    stops: &[PathBuf],
    mount_points: &[PathBuf],
) -> std::io::Result<Vec<HostEntry>> {
    entries
        .iter()
        .map(|e| {
            let HostEntry::Overlay(name, mode) = e else {
                return Ok(e.clone());
            };
            let path = dir.join(name);
            if stops.iter().any(|s| s == &path) {
                Ok(HostEntry::ReadOnlyBind(name.clone()))
            } else if stops.iter().any(|s| s.starts_with(&path)) {
                let children = classify(&path, mount_points)?;
                let children = split_around(&children, &path, stops, mount_points)?;
                Ok(HostEntry::Split(name.clone(), *mode, children))
            } else {
                Ok(e.clone())
            }
        })
        .collect()
}

/// Replaces each overlaid top-level directory of `entries` (the host root's) that contains
/// one of `stops` by a [`HostEntry::Viewed`] one; a directory that is a stop is bound
/// read-only. A directory on overlayfs (`on_overlayfs`) is split instead ([`split_around`]):
/// a view over it, and the overlay over the view, would exceed the kernel's stacking depth
/// of two.
pub fn view_around(
    entries: &[HostEntry],
    stops: &[PathBuf],
    mount_points: &[PathBuf],
    on_overlayfs: &dyn Fn(&Path) -> bool,
) -> std::io::Result<Vec<HostEntry>> {
    let root = Path::new("/");
    entries
        .iter()
        .map(|e| {
            let HostEntry::Overlay(name, mode) = e else {
                return Ok(e.clone());
            };
            let path = root.join(name);
            let below: Vec<PathBuf> = stops
                .iter()
                .filter(|s| s.starts_with(&path) && *s != &path)
                .cloned()
                .collect();
            if below.is_empty() || on_overlayfs(&path) {
                return Ok(
                    split_around(std::slice::from_ref(e), root, stops, mount_points)?.remove(0),
                );
            }
            Ok(HostEntry::Viewed {
                name: name.clone(),
                mode: *mode,
                dirs: dirs_between(&path, &below)?,
                stops: below,
            })
        })
        .collect()
}

/// The directories strictly between `top` and each of `stops`, parents first, each once,
/// with their permission bits.
fn dirs_between(top: &Path, stops: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, u32)>> {
    let mut dirs: Vec<PathBuf> = stops
        .iter()
        .flat_map(|s| s.ancestors().skip(1).take_while(|a| *a != top))
        .map(Path::to_path_buf)
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.into_iter()
        .map(|d| {
            let meta = std::fs::symlink_metadata(&d)?;
            Ok((d, mode_bits(&meta)))
        })
        .collect()
}

/// The permission bits of `meta`.
pub fn mode_bits(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
}

/// Mount points listed in a `/proc/self/mountinfo` table, kept byte for byte.
pub fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    crate::sys::mountinfo::parse(mountinfo)
        .into_iter()
        .map(|m| m.point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let info = "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    28 27 0:25 / /mnt/a\\040b ro - tmpfs x ro\n";
        assert_eq!(
            mount_points(info.as_bytes()),
            vec![PathBuf::from("/"), "/mnt/a b".into()]
        );
        // A mount point that is not UTF-8 is read, and kept byte for byte.
        let info =
            b"27 1 254:0 / / rw - ext4 /dev/vda rw\n28 27 0:25 / /tmp/\xc0E ro - tmpfs x ro\n";
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(mount_points(info)[1].as_os_str().as_bytes(), b"/tmp/\xc0E");
    }

    #[test]
    fn splits_down_the_path_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in [
            "home/u/proj/src",
            "home/u/proj/target/pristine",
            "home/v",
            "etc",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("home/u/.bashrc"), "").unwrap();
        let top = classify(r, &[]).unwrap();
        let store = r.join("home/u/proj/target/pristine");
        let got = split_around(&top, r, &[store], &[]).unwrap();
        use HostEntry::*;
        let dir = |n: &str| n.to_string();
        // (Every directory here has the mode the umask gives.)
        let m = mode_bits(&std::fs::metadata(r.join("etc")).unwrap());
        assert_eq!(
            got,
            vec![
                Overlay(dir("etc"), m),
                Split(
                    dir("home"),
                    m,
                    vec![
                        Split(
                            dir("u"),
                            m,
                            vec![
                                File(dir(".bashrc")),
                                Split(
                                    dir("proj"),
                                    m,
                                    vec![
                                        Overlay(dir("src"), m),
                                        Split(
                                            dir("target"),
                                            m,
                                            vec![ReadOnlyBind(dir("pristine"))]
                                        ),
                                    ]
                                ),
                            ]
                        ),
                        Overlay(dir("v"), m),
                    ]
                ),
            ]
        );
    }

    #[test]
    fn views_the_top_level_directory_holding_the_store_unless_on_overlayfs() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("u");
        std::fs::create_dir_all(home.join("proj/target/pristine")).unwrap();
        std::fs::create_dir_all(home.join("other")).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o710)).unwrap();
        let store = home.join("proj/target/pristine");
        // The temporary directory stands for a top-level directory of `/`.
        let top = dir.path().strip_prefix("/").unwrap().to_str().unwrap();
        let top = top.split('/').next().unwrap().to_string();
        let entries = vec![
            HostEntry::Overlay("etcx".into(), 0o755),
            HostEntry::Overlay(top.clone(), 0o755),
        ];
        let stops = [store.clone()];
        let got = view_around(&entries, &stops, &[], &|_| false).unwrap();
        assert_eq!(got[0], entries[0]);
        let HostEntry::Viewed {
            name,
            mode,
            dirs,
            stops,
        } = &got[1]
        else {
            panic!("{:?}", got[1]);
        };
        assert_eq!((name, *mode), (&top, 0o755));
        assert_eq!(stops, std::slice::from_ref(&store));
        // Every directory from below the top-level one down to the store's parent, parents
        // first, with its mode.
        let want: Vec<PathBuf> = store
            .ancestors()
            .skip(1)
            .take_while(|a| *a != Path::new("/").join(&top))
            .map(Path::to_path_buf)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert_eq!(
            dirs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
            want
        );
        assert!(dirs.contains(&(home.clone(), 0o710)), "{dirs:?}");
        // On overlayfs, a view would stack three deep: split instead.
        let got = view_around(&entries, &[store], &[], &|_| true).unwrap();
        assert!(
            matches!(&got[1], HostEntry::Split(n, 0o755, _) if *n == top),
            "{got:?}"
        );
    }

    #[test]
    fn classifies_entries() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("mnt/sub")).unwrap();
        std::fs::create_dir(r.join("proc")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::fs::write(r.join("marker"), "").unwrap();
        let got = classify_root(r, &[r.to_path_buf(), r.join("mnt/sub")]).unwrap();
        assert_eq!(
            got,
            vec![
                HostEntry::Symlink("bin".into(), "usr/bin".into()),
                HostEntry::Overlay(
                    "etc".into(),
                    mode_bits(&std::fs::metadata(r.join("etc")).unwrap())
                ),
                HostEntry::File("marker".into()),
                HostEntry::ReadOnlyBind("mnt".into()),
            ]
        );
    }
}
