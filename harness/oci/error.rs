//! The error type of OCI layer extraction, image import and image export.

use std::io;
use std::path::PathBuf;

/// An error from [`extract_layer`](super::extract_layer),
/// [`import_archive`](super::import_archive) or
/// [`export_archive`](super::export_archive).
///
/// Every message names the operation and the path or archive entry involved.
/// Whatever the operation created before failing has been removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The destination of an extraction already exists.
    #[error(
        "extract layer: destination {dest} already exists; extraction only creates new \
         directories, so pick another path or remove it first"
    )]
    DestinationExists {
        /// The destination directory.
        dest: PathBuf,
    },

    /// A layer unpacks to more than a layer may hold.
    #[error(
        "extract layer into {dest}: it unpacks to more than {limit} bytes, the most a layer \
         may hold (a decompression bomb, or a layer too big for pristine's store); nothing was \
         extracted"
    )]
    TooLarge {
        /// The destination directory of the extraction.
        dest: PathBuf,
        /// The bound, in bytes of the layer's tar stream.
        limit: u64,
    },

    /// A layer tar entry is hostile or malformed (path escape, write through a
    /// symlink, bad hardlink, device node without privileges, ...).
    #[error(
        "extract layer into {dest}: entry `{entry}` {problem}; the layer was rejected and \
         nothing was extracted"
    )]
    UnsafeEntry {
        /// The destination directory of the extraction.
        dest: PathBuf,
        /// The entry path as written in the tar.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A filesystem operation failed while extracting one layer entry.
    #[error("extract layer into {dest}: entry `{entry}`: {action} failed; nothing was extracted")]
    EntryIo {
        /// The destination directory of the extraction.
        dest: PathBuf,
        /// The entry path as written in the tar.
        entry: String,
        /// What was being done (e.g. "write file contents").
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The layer stream could not be read or is not a valid tar (or gzip) stream.
    #[error(
        "extract layer into {dest}: reading the layer stream failed; check that it is a \
         complete tar or gzip-compressed tar"
    )]
    ReadLayer {
        /// The destination directory of the extraction.
        dest: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A filesystem operation on a path failed.
    #[error("{op} {path}: {action} failed")]
    Io {
        /// The operation ("extract layer", "import archive", "export archive").
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The input uses a format feature this crate does not implement.
    #[error("{op} {path}: unsupported {what}; {hint}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The archive, layer or destination involved.
        path: PathBuf,
        /// The unsupported feature.
        what: String,
        /// What the user can do instead.
        hint: &'static str,
    },

    /// An image archive is malformed or inconsistent.
    #[error("import archive {archive}: {problem}")]
    InvalidArchive {
        /// The archive being imported.
        archive: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A JSON document in an archive could not be parsed.
    #[error("import archive {archive}: {file} is not valid JSON of the expected shape")]
    Json {
        /// The archive being imported.
        archive: PathBuf,
        /// The member or blob holding the JSON.
        file: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// A blob's content does not match the digest (or size) that refers to it.
    #[error(
        "import archive {archive}: {what} has digest {actual} but {expected} was expected; \
         the archive is corrupt or was modified, re-create it"
    )]
    DigestMismatch {
        /// The archive being imported.
        archive: PathBuf,
        /// Which blob or layer (e.g. "layer 1 blob").
        what: String,
        /// The expected digest (or size).
        expected: String,
        /// The digest (or size) computed from the content.
        actual: String,
    },

    /// Extracting one layer of an imported image failed.
    #[error("import archive {archive}: layer {index} ({digest}) could not be extracted")]
    Layer {
        /// The archive being imported.
        archive: PathBuf,
        /// Position of the layer, 0 = bottom.
        index: usize,
        /// Digest of the layer blob.
        digest: String,
        /// Why extraction failed.
        #[source]
        source: Box<OciError>,
    },

    /// A layer directory cannot be exported.
    #[error("export archive {out}: layer {layer}: {problem}")]
    InvalidLayer {
        /// The archive being written.
        out: PathBuf,
        /// The offending path inside the layer directory.
        layer: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl OciError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        action: &'static str,
        source: io::Error,
    ) -> Self {
        OciError::Io {
            op,
            path: path.into(),
            action,
            source,
        }
    }
}
