//! What a container changed, from its upper layer: `docker diff` style.
//!
//! Each entry of the upper layer is a change: a whiteout is a deletion (`D`), anything else
//! is a change (`C`) if the path exists in a lower layer and an addition (`A`) if not. An
//! opaque directory also deletes every lower entry it hides. Directories that overlayfs
//! copied up on the way to a change are listed as changed, as `docker diff` does. What
//! pristine's own setup put in the upper layer (its scaffold) is not a change.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::whiteout::{is_opaque, is_whiteout};

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Created by the container (`A`).
    Added,
    /// Existed below and was modified, replaced or had its metadata changed (`C`).
    Changed,
    /// Existed below and was removed (`D`).
    Deleted,
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Absolute path inside the container.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{k} {}", self.path.display())
    }
}

/// Changes recorded in `upper` over `lowers` (uppermost first), sorted by path.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> std::io::Result<Vec<Change>> {
    diff_with_scaffold(upper, lowers, &[])
}

/// Like [`diff`], knowing the container's scaffold: the entries pristine's own setup made
/// in the upper layer (mount points, and the host's top-level symlinks it recreates;
/// absolute paths inside the container). A scaffold entry that is still as pristine made it
/// (an empty directory or file, or the same link as below) is not a change.
pub fn diff_with_scaffold(
    upper: &Path,
    lowers: &[PathBuf],
    scaffold: &[PathBuf],
) -> std::io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let ctx = Walk { lowers, scaffold };
    walk(&ctx, upper, Path::new("/"), &mut out)?;
    out.sort();
    Ok(out)
}

struct Walk<'a> {
    lowers: &'a [PathBuf],
    scaffold: &'a [PathBuf],
}

/// Whether scaffold entry `path` (`inside` the container) is still as pristine's setup made
/// it: a directory holding only untouched scaffold (a mount point is empty; a directory that
/// stands for a host directory holds mount points), the same link as below, an empty file.
fn untouched_scaffold(
    ctx: &Walk<'_>,
    path: &Path,
    meta: &std::fs::Metadata,
    inside: &Path,
) -> std::io::Result<bool> {
    let lowers = ctx.lowers;
    let rel = inside.strip_prefix("/").unwrap_or(inside);
    Ok(if meta.is_dir() {
        if is_opaque(path)? {
            return Ok(false);
        }
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let child = inside.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path())?;
            if !ctx.scaffold.contains(&child)
                || !untouched_scaffold(ctx, &entry.path(), &meta, &child)?
            {
                return Ok(false);
            }
        }
        true
    } else if meta.file_type().is_symlink() {
        let below = lowers
            .iter()
            .find_map(|l| std::fs::read_link(l.join(rel)).ok());
        below.is_some() && std::fs::read_link(path).ok() == below
    } else {
        meta.is_file() && meta.len() == 0
    })
}

/// Changes of a kept container directory (`STORE/kept/ID`, see [`crate::Kept`]).
pub fn diff_kept(dir: &Path) -> std::io::Result<Vec<Change>> {
    let lowers = std::fs::read_to_string(dir.join("lowers")).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{} is not a kept container directory (no readable `lowers` file): {e}",
                dir.display()
            ),
        )
    })?;
    let lowers: Vec<PathBuf> = lowers
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    let scaffold: Vec<PathBuf> = std::fs::read_to_string(dir.join("scaffold"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    diff_with_scaffold(&dir.join("upper"), &lowers, &scaffold)
}

fn in_lower(lowers: &[PathBuf], rel: &Path) -> Option<std::fs::Metadata> {
    lowers
        .iter()
        .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok())
}

fn walk(ctx: &Walk<'_>, dir: &Path, at: &Path, out: &mut Vec<Change>) -> std::io::Result<()> {
    let lowers = ctx.lowers;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let inside = at.join(entry.file_name());
        let rel = inside.strip_prefix("/").unwrap_or(&inside).to_path_buf();
        let below = in_lower(lowers, &rel);
        if ctx.scaffold.contains(&inside) && untouched_scaffold(ctx, &path, &meta, &inside)? {
            continue;
        }
        if is_whiteout(&meta) {
            out.push(Change {
                path: inside,
                kind: ChangeKind::Deleted,
            });
            continue;
        }
        if meta.is_dir() {
            let opaque = is_opaque(&path)?;
            out.push(Change {
                path: inside.clone(),
                kind: if below.is_some() {
                    ChangeKind::Changed
                } else {
                    ChangeKind::Added
                },
            });
            if opaque && below.is_some() {
                let kept: BTreeSet<_> = std::fs::read_dir(&path)?
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect();
                let mut hidden = BTreeSet::new();
                for lower in lowers {
                    if let Ok(rd) = std::fs::read_dir(lower.join(&rel)) {
                        hidden.extend(rd.filter_map(|e| e.ok().map(|e| e.file_name())));
                    }
                }
                for name in hidden.difference(&kept) {
                    out.push(Change {
                        path: inside.join(name),
                        kind: ChangeKind::Deleted,
                    });
                }
            }
            walk(ctx, &path, &inside, out)?;
        } else {
            out.push(Change {
                path: inside,
                kind: if below.is_some() {
                    ChangeKind::Changed
                } else {
                    ChangeKind::Added
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(changes: &[Change]) -> String {
        changes.iter().map(|c| format!("{c}\n")).collect()
    }

    /// An upper layer as the rootless per-directory setup leaves it: `/var` and `/var/tmp`
    /// stand for host directories (split on the way to the store), `/var/tmp/app` and
    /// `/etc` are overlay mount points.
    fn split_upper(upper: &Path, lower: &Path) {
        for d in ["var/tmp/app", "etc"] {
            std::fs::create_dir_all(upper.join(d)).unwrap();
            std::fs::create_dir_all(lower.join(d)).unwrap();
        }
    }

    fn scaffold() -> Vec<PathBuf> {
        ["/var", "/var/tmp", "/var/tmp/app", "/etc"]
            .into_iter()
            .map(PathBuf::from)
            .collect()
    }

    #[test]
    fn untouched_nested_scaffold_is_no_change() {
        let (u, l) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        split_upper(u.path(), l.path());
        let lowers = [l.path().to_path_buf()];
        assert_eq!(
            render(&diff_with_scaffold(u.path(), &lowers, &scaffold()).unwrap()),
            ""
        );
        // Without knowing the scaffold, every directory would be a change.
        assert_eq!(diff(u.path(), &lowers).unwrap().len(), 4);
    }

    #[test]
    fn a_change_below_scaffold_lists_its_parents() {
        let (u, l) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        split_upper(u.path(), l.path());
        std::fs::write(u.path().join("var/tmp/app/new"), "x").unwrap();
        std::fs::write(u.path().join("var/probe"), "x").unwrap();
        let lowers = [l.path().to_path_buf()];
        assert_eq!(
            render(&diff_with_scaffold(u.path(), &lowers, &scaffold()).unwrap()),
            "C /var\nA /var/probe\nC /var/tmp\nC /var/tmp/app\nA /var/tmp/app/new\n"
        );
    }
}
