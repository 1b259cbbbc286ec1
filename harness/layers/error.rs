//! Errors of building, importing, exporting and collecting layers.

use std::path::PathBuf;

/// Why a layer or image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipe is malformed.
    #[error("bad recipe {path}: {reason}")]
    BadRecipe {
        /// Recipe file (or `<rust>` for recipes made in code).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A copy step's source or destination cannot be used.
    #[error("layer {layer:?}: cannot copy {from} to {to}: {reason}")]
    BadCopy {
        /// Layer name.
        layer: String,
        /// Host source.
        from: PathBuf,
        /// Destination in the image.
        to: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A run step exited unsuccessfully or timed out. No layer was written.
    #[error("layer {layer:?}: step {} `{command}` failed ({status}){}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}", step + 1, if *timed_out { ", timed out" } else { "" })]
    StepFailed {
        /// Layer name.
        layer: String,
        /// Step index within the layer, from 0 (shown from 1).
        step: usize,
        /// The command, space-joined.
        command: String,
        /// How it ended.
        status: crate::ExitStatus,
        /// Whether the step's time limit expired.
        timed_out: bool,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// A build container could not be run.
    #[error("layer {layer:?}: step {}: {source}", step + 1)]
    Container {
        /// Layer name.
        layer: String,
        /// Step index, from 0 (shown from 1).
        step: usize,
        /// The container error.
        #[source]
        source: Box<crate::Error>,
    },
    /// A build step made a device node, which a layer may hold only if its recipe says so.
    #[error("layer {layer:?}: the steps made the device node {path}; a layer holds device nodes only with `keep_setuid = true` (or LayerSpec::keep_setuid)")]
    DeviceNode {
        /// The layer.
        layer: String,
        /// The device node, inside the image.
        path: PathBuf,
    },
    /// A step left the layer larger than its bound.
    #[error(
        "layer {layer:?}: after step {}, the layer takes {} on disk, more than its limit of {}; \
         raise the limit with `max_size = \"…\"` in the recipe's [[layer]] \
         (LayerSpec::max_size), or make the steps write less",
        step + 1,
        crate::size::human(*used),
        crate::size::human(limit.get())
    )]
    LayerTooLarge {
        /// The layer's name.
        layer: String,
        /// The step after which it was found (0-based).
        step: usize,
        /// The bound.
        limit: crate::Size,
        /// Bytes on disk the layer took.
        used: u64,
    },
    /// Pulling a recipe's base image failed.
    #[error(transparent)]
    Pull(#[from] Box<crate::pull::PullError>),
    /// No image of that name is in the store.
    #[error("no image named {0:?} in the store (see `pristine images`)")]
    UnknownImage(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Import or export failed.
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    /// A store archive that cannot be loaded.
    #[error("cannot load store archive {path}: {reason}")]
    BadArchive {
        /// The archive.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The host base's key could not be made from the recipe's `host_inputs`.
    #[error("cannot key the host base: {0}")]
    HostKey(String),
    /// Something that cannot be exported.
    #[error("cannot export {0}")]
    NotExportable(String),
    /// A name that an image cannot have (checked before anything is imported or pulled).
    #[error("{op}: {reason}")]
    BadImageName {
        /// What was to be named: `import ARCHIVE`, `pull REFERENCE`.
        op: String,
        /// The name and what is wrong with it.
        reason: String,
    },
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
