//! Images: what a container's root filesystem is made of.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::oci::ImageConfig;

/// The bottom of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The host's own root filesystem.
    Host,
    /// A root filesystem directory.
    Rootfs(PathBuf),
    /// Nothing: the layers are the whole root filesystem (imported images).
    Scratch,
}

/// A root filesystem: a base plus read-only layer directories stacked on it.
///
/// ```
/// use pristine::Image;
/// let image = Image::host();
/// let other: Image = "/srv/rootfs".parse().unwrap();
/// assert_ne!(image, other);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Image {
    base: Base,
    layers: Vec<PathBuf>,
    /// What an imported image says about running it; `None` for the host, rootfs
    /// directories and recipes without an imported base.
    config: Option<Box<ImageConfig>>,
}

impl Image {
    /// The host's root filesystem, copy-on-write.
    pub fn host() -> Self {
        Image {
            base: Base::Host,
            layers: Vec::new(),
            config: None,
        }
    }

    /// A root filesystem directory, copy-on-write.
    pub fn rootfs(dir: impl Into<PathBuf>) -> Self {
        Image {
            base: Base::Rootfs(dir.into()),
            layers: Vec::new(),
            config: None,
        }
    }

    /// No base: the layers alone are the root filesystem (at least one is needed).
    pub fn scratch() -> Self {
        Image {
            base: Base::Scratch,
            layers: Vec::new(),
            config: None,
        }
    }

    /// Pulls `reference` (`postgres:16`, `localhost:5000/app@sha256:…`) from its registry
    /// into the default store (see [`crate::pull`]); a held image costs one manifest
    /// request (none if pinned by digest), a new one its missing layers.
    pub fn pull(reference: &str) -> Result<Self, crate::pull::PullError> {
        let store = crate::Store::open_default().map_err(|e| crate::pull::PullError::Store {
            reference: reference.to_string(),
            source: Box::new(e.into()),
        })?;
        Ok(crate::pull::pull(&store, reference, &crate::pull::PullOptions::new())?.image)
    }

    /// Stacks a read-only layer directory on top (overlay-native whiteouts allowed).
    pub fn layer(mut self, dir: impl Into<PathBuf>) -> Self {
        self.layers.push(dir.into());
        self
    }

    /// Runs containers of this image with `config` (environment, entrypoint and command,
    /// working directory, user, exposed ports) under the caller's own settings, as
    /// [`Catalog::image_of`](crate::layers::Catalog::image_of) does for imported images.
    /// An empty config is no config.
    pub fn with_config(mut self, config: ImageConfig) -> Self {
        self.config = (!config.is_empty()).then(|| Box::new(config));
        self
    }

    /// Drops the image's config: containers then run exactly what the caller says, as on
    /// a rootfs directory.
    pub fn without_config(mut self) -> Self {
        self.config = None;
        self
    }

    /// The image's config, if it has one.
    #[must_use]
    pub fn config(&self) -> Option<&ImageConfig> {
        self.config.as_deref()
    }

    /// The base.
    pub fn base(&self) -> &Base {
        &self.base
    }

    /// The layers, bottom to top.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// The directories the root filesystem is made of, uppermost first (overlayfs'
    /// `lowerdir` order): the layers, then the base (`/` for the host, none for scratch).
    pub fn lowers(&self) -> Vec<PathBuf> {
        let mut lowers: Vec<PathBuf> = self.layers.iter().rev().cloned().collect();
        match &self.base {
            Base::Host => lowers.push(PathBuf::from("/")),
            Base::Rootfs(dir) => lowers.push(dir.clone()),
            Base::Scratch => {}
        }
        lowers
    }

    /// Checks that every directory exists and returns them made absolute.
    pub(crate) fn resolved(&self) -> Result<Image, ConfigError> {
        let base = match &self.base {
            Base::Host => Base::Host,
            Base::Rootfs(p) => Base::Rootfs(existing_dir(p, "rootfs")?),
            Base::Scratch if self.layers.is_empty() => return Err(ConfigError::EmptyImage),
            Base::Scratch => Base::Scratch,
        };
        let layers = self
            .layers
            .iter()
            .map(|l| existing_dir(l, "layer"))
            .collect::<Result<_, _>>()?;
        Ok(Image {
            base,
            layers,
            config: self.config.clone(),
        })
    }
}

/// Interactive shells [`Image::shell`] looks for, in order: the program and the arguments
/// that make it a shell.
const SHELLS: &[(&str, &[&str])] = &[
    ("/bin/bash", &[]),
    ("/usr/bin/bash", &[]),
    ("/bin/sh", &[]),
    ("/usr/bin/sh", &[]),
    ("/bin/busybox", &["sh"]),
    ("/usr/bin/busybox", &["sh"]),
];

impl Image {
    /// A shell the image itself has (`/bin/bash`, else `/bin/sh`, else busybox's `sh`),
    /// as its argument vector; `None` if it has none. Looked up in the image's layers
    /// (uppermost first, whiteouts hiding what is below), never on the host unless the
    /// image is the host's; a symlink is followed only inside its layer.
    #[must_use]
    pub fn shell(&self) -> Option<Vec<String>> {
        let lowers = self.lowers();
        SHELLS.iter().find_map(|(program, args)| {
            has_executable(&lowers, Path::new(program)).then(|| {
                std::iter::once(*program)
                    .chain(args.iter().copied())
                    .map(String::from)
                    .collect()
            })
        })
    }
}

/// Whether the uppermost of `lowers` that has `path` has an executable file there.
fn has_executable(lowers: &[PathBuf], path: &Path) -> bool {
    use crate::sys::inroot::{probe, Found};
    for layer in lowers {
        match probe(layer, path) {
            Ok(Found::Absent) => continue,
            Ok(Found::File { exec }) => return exec,
            Ok(Found::Hidden) | Err(_) => return false,
        }
    }
    false
}

fn existing_dir(path: &Path, what: &'static str) -> Result<PathBuf, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::MissingDirectory {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ConfigError::NotADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    // Absolute paths are used as given (a canonicalize per layer per container would be
    // several system calls each on the hot path); relative ones are made absolute.
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::fs::canonicalize(path).map_err(|source| ConfigError::MissingDirectory {
        what,
        path: path.to_path_buf(),
        source,
    })
}

impl std::str::FromStr for Image {
    type Err = std::convert::Infallible;

    /// `host`, or a rootfs directory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "host" {
            Image::host()
        } else {
            Image::rootfs(s)
        })
    }
}
