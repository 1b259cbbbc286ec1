//! overlayfs mount options.

use std::path::{Path, PathBuf};

/// The legacy `mount(2)` data argument is limited to one page.
pub const MOUNT_DATA_MAX: usize = 4095;

/// Why overlay options could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverlayOptionsError {
    /// overlayfs cannot express this path in its option string.
    #[error("overlay layer path {path} contains '{ch}', which overlayfs mount options cannot express; move or rename it")]
    BadPath {
        /// The offending path.
        path: PathBuf,
        /// The character.
        ch: char,
    },
    /// The option string is over one page.
    #[error("overlay mount options are {len} bytes, over the kernel's limit of {MOUNT_DATA_MAX}, and this kernel is older than 6.8 (no `lowerdir+`); use fewer layers or a shorter store path (PRISTINE_STORE)")]
    TooLong {
        /// Length of the option string.
        len: usize,
    },
}

fn check(path: &Path) -> Result<&str, OverlayOptionsError> {
    let s = path.to_str().ok_or_else(|| OverlayOptionsError::BadPath {
        path: path.into(),
        ch: '\u{fffd}',
    })?;
    for ch in [',', ':', '\\'] {
        if s.contains(ch) {
            return Err(OverlayOptionsError::BadPath {
                path: path.into(),
                ch,
            });
        }
    }
    Ok(s)
}

/// Builds `lowerdir=…,upperdir=…,workdir=…[,userxattr][,volatile]`.
///
/// `lowers` is uppermost first. `volatile` skips syncs, which only matter for an upper on
/// disk that will be thrown away or kept for inspection, never re-mounted.
pub fn overlay_options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    userxattr: bool,
    volatile: bool,
) -> Result<String, OverlayOptionsError> {
    let mut data = String::from("lowerdir=");
    for (i, lower) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(':');
        }
        data.push_str(check(lower)?);
    }
    data.push_str(",upperdir=");
    data.push_str(check(upper)?);
    data.push_str(",workdir=");
    data.push_str(check(work)?);
    if userxattr {
        data.push_str(",userxattr");
    }
    if volatile {
        data.push_str(",volatile");
    }
    if data.len() > MOUNT_DATA_MAX {
        return Err(OverlayOptionsError::TooLong { len: data.len() });
    }
    Ok(data)
}

/// Builds the options of a read-only overlay over host directory `source` alone
/// (`lowerdir=SOURCE:EMPTY`; overlayfs wants two lowers when there is no upper, and `empty`
/// adds nothing).
pub fn host_view_options(
    source: &Path,
    empty: &Path,
    userxattr: bool,
) -> Result<String, OverlayOptionsError> {
    let xattr = if userxattr { ",userxattr" } else { "" };
    Ok(format!(
        "lowerdir={}:{}{xattr}",
        check(source)?,
        check(empty)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_view_is_root_over_an_empty_dir() {
        assert_eq!(
            host_view_options(Path::new("/"), Path::new("/b/empty"), false).unwrap(),
            "lowerdir=/:/b/empty"
        );
        assert_eq!(
            host_view_options(Path::new("/home"), Path::new("/b/empty"), true).unwrap(),
            "lowerdir=/home:/b/empty,userxattr"
        );
        assert!(host_view_options(Path::new("/"), Path::new("/b,x"), false).is_err());
        assert!(host_view_options(Path::new("/a:b"), Path::new("/e"), false).is_err());
    }

    #[test]
    fn builds_options_in_overlay_order() {
        let o = overlay_options(
            &["/l2".into(), "/l1".into()],
            Path::new("/u"),
            Path::new("/w"),
            true,
            false,
        )
        .unwrap();
        assert_eq!(o, "lowerdir=/l2:/l1,upperdir=/u,workdir=/w,userxattr");
    }

    #[test]
    fn rejects_separators_and_overlong_options() {
        let err = overlay_options(
            &["/a:b".into()],
            Path::new("/u"),
            Path::new("/w"),
            false,
            false,
        );
        assert!(matches!(
            err,
            Err(OverlayOptionsError::BadPath { ch: ':', .. })
        ));
        let many: Vec<PathBuf> = (0..400).map(|i| format!("/layer/{i:08}").into()).collect();
        let err = overlay_options(&many, Path::new("/u"), Path::new("/w"), false, false);
        assert!(matches!(err, Err(OverlayOptionsError::TooLong { .. })));
    }
}
