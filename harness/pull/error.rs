//! The error type of pulling images from registries.

use std::path::PathBuf;

/// Why a pull failed. Every message names the registry and the reference, and says what
/// to do. Nothing half-written is left in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The reference cannot be parsed.
    #[error("pull {reference}: not an image reference ({reason}); write it as [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. postgres:16")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry refused the credentials (or asked for some and none were found).
    #[error("pull {reference}: registry {registry} refused access with {tried}; log in with `podman login {registry}` or `docker login {registry}` (credentials are read from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json and ~/.docker/config.json), or check that the repository exists")]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// Which credentials were tried (`anonymous access`, `user alice from FILE`).
        tried: String,
    },
    /// The registry asks for a bearer token (Docker Hub's flow) and its token service
    /// refused to hand one out for the repository.
    #[error("pull {reference}: registry {registry} wants a token for {repository}, and its token service refused one to {tried}: {detail}; the repository may be private or misspelt: check its name, or log in with `podman login {registry}` or `docker login {registry}` (credentials are read from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json and ~/.docker/config.json)")]
    TokenRefused {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// Which credentials were tried (`anonymous access`, `user alice from FILE`).
        tried: String,
        /// What the token service said.
        detail: String,
    },
    /// The registry has no such tag, digest or repository.
    #[error("pull {reference}: registry {registry} has no manifest for it ({detail}); check the tag (`skopeo list-tags docker://{repository}` lists them) or the digest")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What the registry said.
        detail: String,
    },
    /// The image index has no manifest for this machine's platform.
    #[error("pull {reference}: registry {registry} has no image for {wanted} in it, only for {available}; pull a digest of one of those explicitly, or use an image built for {wanted}")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// This machine's platform (`linux/amd64`).
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// Plain HTTP to a registry off this machine was not allowed.
    #[error("pull {reference}: registry {registry} could not be reached over HTTPS ({detail}); pristine speaks plain HTTP only to loopback registries, unless told to with `--insecure-http` (PullOptions::insecure_http) for a registry you trust on your network")]
    Tls {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The TLS or connection error.
        detail: String,
    },
    /// The registry could not be reached or broke off a transfer.
    #[error("pull {reference}: talking to registry {registry} failed while {doing}: {detail}; check that it is up and reachable, then pull again (nothing half-written was kept)")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What was being fetched.
        doing: String,
        /// The error.
        detail: String,
    },
    /// What the registry sent is not a usable image.
    #[error("pull {reference}: registry {registry} sent {what}: {problem}")]
    BadImage {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// Which document or blob.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A credentials file cannot be read.
    #[error("pull: credentials file {path} cannot be used: {reason}; fix or remove it")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Extracting a layer failed (a hostile or corrupt layer); nothing of it was kept.
    #[error("pull {reference}: layer {digest} could not be extracted")]
    Layer {
        /// The reference.
        reference: String,
        /// The layer blob's digest.
        digest: String,
        /// Why.
        #[source]
        source: Box<crate::oci::OciError>,
    },
    /// The name asked for (`--name`, `PullOptions::name`) is not one an image can have;
    /// checked before the registry is contacted.
    #[error("pull {reference}: {reason}")]
    BadName {
        /// The reference.
        reference: String,
        /// The name and what is wrong with it.
        reason: String,
    },
    /// Storing the image failed.
    #[error("pull {reference}: {source}")]
    Store {
        /// The reference.
        reference: String,
        /// The store error.
        #[source]
        source: Box<crate::layers::BuildError>,
    },
    /// A local file operation failed.
    #[error("pull {reference}: {action} {path} failed: {source}")]
    Io {
        /// The reference.
        reference: String,
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
