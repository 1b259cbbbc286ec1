//! OCI image import and export for overlay-native layers.
//!
//! * [`extract_layer`] turns one layer tar into a layer directory, safely.
//! * [`import_archive`] reads an OCI image layout tar or a `docker save` tar
//!   and extracts all of its layers.
//! * [`export_archive`] writes layer directories as an OCI image layout tar
//!   that `podman load` accepts.
//!
//! Layer directories are overlay-native: deletions are whiteouts and opaque
//! directories as described in [`crate::whiteout`].

mod archive;
mod config;
mod digest;
mod error;
mod export;
mod extract;
mod fsutil;
mod path;

pub use archive::{import_archive, ImportedImage};
pub(crate) use config::{
    host_architecture, ConfigFile, Descriptor, Index, Manifest, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
    MT_OCI_INDEX, MT_OCI_MANIFEST,
};
pub use config::{ExposedPort, ImageConfig, Protocol};
pub(crate) use digest::{of as sha256_of, parse_sha256, HashingReader};
pub use error::OciError;
pub(crate) use export::{append_bytes, fixed_header, write_layer_tar};
pub use export::{export_archive, export_archive_dated};
pub use extract::{extract_layer, Compression, ExtractStats};
