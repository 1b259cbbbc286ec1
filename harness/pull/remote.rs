//! The registry, through `oci-client`: its async runtime stays in here, built for one pull
//! (two worker threads), and every call is made blocking for the rest of pristine.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference, RegistryOperation};

use super::auth::Credentials;
use super::error::PullError;
use super::reference::is_loopback;
use crate::oci::{MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};

/// Largest manifest or config accepted from a registry.
pub(crate) const MAX_JSON: usize = 16 << 20;

/// A connection to the registry of one reference.
pub(crate) struct Remote {
    rt: tokio::runtime::Runtime,
    client: Client,
    creds: Credentials,
    /// The reference as the user wrote it (for messages).
    pub(crate) given: String,
    pub(crate) reference: Reference,
    /// Plain HTTP (a loopback registry, or `--insecure-http`).
    plain_http: bool,
}

impl Remote {
    pub(crate) fn new(
        given: &str,
        reference: Reference,
        creds: Credentials,
        insecure_http: bool,
    ) -> Result<Self, PullError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pristine-pull")
            .enable_all()
            .build()
            .map_err(|source| PullError::Io {
                reference: given.to_string(),
                action: "start the pull's network runtime",
                path: "tokio".into(),
                source,
            })?;
        let registry = reference.resolve_registry().to_string();
        let plain = insecure_http || is_loopback(reference.registry());
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            // The platform is chosen by pristine (see `platform`), with a clear error.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        Ok(Remote {
            rt,
            client: Client::new(config),
            creds,
            given: given.to_string(),
            reference,
            plain_http: plain,
        })
    }

    pub(crate) fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// The manifest or index `reference` names: its bytes, digest and media type.
    pub(crate) fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), PullError> {
        let accepted = [
            MT_OCI_INDEX,
            MT_DOCKER_LIST,
            MT_OCI_MANIFEST,
            MT_DOCKER_MANIFEST,
        ];
        let (bytes, digest) = self
            .rt
            .block_on(
                self.client
                    .pull_manifest_raw(reference, &self.creds.auth, &accepted),
            )
            .map_err(|e| self.classify("fetching the manifest", e))
            .map_err(|e| self.why_unauthorized(reference, e))?;
        if bytes.len() > MAX_JSON {
            return Err(self.bad("its manifest", "larger than 16 MiB".into()));
        }
        if let Some(pinned) = reference.digest() {
            let actual = crate::oci::sha256_of(&bytes);
            if actual != pinned {
                return Err(self.bad(
                    "a manifest",
                    format!("its digest is {actual}, not the pinned {pinned}"),
                ));
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// A small blob (the image config) of at most `size` bytes (its descriptor's, at most
    /// [`MAX_JSON`]), verified against its digest.
    pub(crate) fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, PullError> {
        let mut out = Capped::new(Vec::new(), size.min(MAX_JSON as u64));
        self.rt
            .block_on(self.client.pull_blob(&self.reference, digest, &mut out))
            .map_err(|e| self.classify("fetching the image config", e))?;
        Ok(out.inner)
    }

    /// Downloads blob `digest`, of `size` bytes as its descriptor says, into the new file
    /// `path`; `oci-client` verifies the digest as the bytes arrive, so a complete file is
    /// the blob, and a registry that sends more than `size` bytes is cut off at once
    /// instead of filling the disk first. On error the file may hold part of it: the
    /// caller's staging directory goes. (The file is not synced: it is extracted and
    /// removed right after.)
    pub(crate) fn blob_to_file(
        &self,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<(), PullError> {
        let io = |source| PullError::Io {
            reference: self.given.clone(),
            action: "write the downloaded layer to",
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create_new(path).map_err(io)?;
        let mut file = Capped::new(tokio::fs::File::from_std(file), size);
        self.rt
            .block_on(async {
                self.client
                    .pull_blob(&self.reference, digest, &mut file)
                    .await?;
                tokio::io::AsyncWriteExt::flush(&mut file).await?;
                Ok::<_, OciDistributionError>(())
            })
            .map_err(|e| self.classify(&format!("downloading layer {digest}"), e))
    }

    /// For a refusal, whether it was the registry's token service that refused (which
    /// `oci-client` does not report from a pull: it goes on without a token): asks it for
    /// a token again, this time seeing its answer. Other errors are kept as they are.
    fn why_unauthorized(&self, reference: &Reference, e: PullError) -> PullError {
        let PullError::Unauthorized { .. } = e else {
            return e;
        };
        let asked = self.rt.block_on(self.client.auth(
            reference,
            &self.creds.auth,
            RegistryOperation::Pull,
        ));
        match asked {
            Err(OciDistributionError::AuthenticationFailure(said)) => PullError::TokenRefused {
                reference: self.given.clone(),
                registry: self.registry().to_string(),
                repository: reference.repository().to_string(),
                tried: self.creds.described.clone(),
                detail: brief(&said),
            },
            _ => e,
        }
    }

    pub(crate) fn bad(&self, what: &str, problem: String) -> PullError {
        PullError::BadImage {
            reference: self.given.clone(),
            registry: self.registry().to_string(),
            what: what.to_string(),
            problem,
        }
    }

    /// A typed error for what the client reported.
    fn classify(&self, doing: &str, e: OciDistributionError) -> PullError {
        let registry = self.registry().to_string();
        let reference = self.given.clone();
        let unauthorized = || PullError::Unauthorized {
            reference: reference.clone(),
            registry: registry.clone(),
            tried: self.creds.described.clone(),
        };
        let not_found = |detail: String| PullError::NotFound {
            reference: reference.clone(),
            registry: registry.clone(),
            repository: format!("{}/{}", self.registry(), self.reference.repository()),
            detail,
        };
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let text = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized()
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found(text)
                } else {
                    self.failed(doing, text)
                }
            }
            OciDistributionError::ServerError { code: 401, .. } => unauthorized(),
            OciDistributionError::ServerError {
                code: 404, message, ..
            } => not_found(message),
            OciDistributionError::RequestError(e) if !self.plain_http && looks_like_tls(&e) => {
                PullError::Tls {
                    reference,
                    registry,
                    detail: chain(&e),
                }
            }
            OciDistributionError::RequestError(e) => self.failed(doing, chain(&e)),
            OciDistributionError::DigestError(e) => {
                self.bad(&format!("a blob while {doing}"), e.to_string())
            }
            other => self.failed(doing, chain(&other)),
        }
    }

    fn failed(&self, doing: &str, detail: String) -> PullError {
        PullError::Registry {
            reference: self.given.clone(),
            registry: self.registry().to_string(),
            doing: doing.to_string(),
            detail,
        }
    }
}

/// What a server said, on one line and at most 300 characters.
fn brief(said: &str) -> String {
    let line = said.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None if line.is_empty() => "no reason given".into(),
        None => line,
    }
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a request failed in TLS (a plain-HTTP server answering, a bad certificate).
fn looks_like_tls(e: &dyn std::error::Error) -> bool {
    let text = chain(e).to_ascii_lowercase();
    ["tls", "certificate", "corrupt message", "handshake", "ssl"]
        .iter()
        .any(|w| text.contains(w))
}

/// A writer that takes at most `left` bytes and fails on the first write beyond them: what
/// a registry sends for a blob is held to the size its descriptor gave.
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W> Capped<W> {
    fn new(inner: W, limit: u64) -> Self {
        Capped { inner, left: limit }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the blob's descriptor gives",
            )));
        }
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = written {
            self.left -= n as u64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_writer_takes_its_limit_and_not_a_byte_more() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = Capped::new(Vec::new(), 5);
            w.write_all(b"abc").await.unwrap();
            w.write_all(b"de").await.unwrap();
            let err = w.write_all(b"f").await.unwrap_err();
            assert!(err.to_string().contains("more bytes"), "{err}");
            assert_eq!(w.inner, b"abcde");
        });
    }

    #[test]
    fn plain_http_only_for_loopback_registries_or_when_told() {
        let r = |s: &str| super::super::reference::parse(s).unwrap();
        let remote = |s: &str, insecure| {
            Remote::new(s, r(s), Credentials::anonymous(), insecure)
                .unwrap()
                .plain_http
        };
        assert!(remote("127.0.0.1:5000/a:1", false));
        assert!(remote("localhost:5000/a:1", false));
        assert!(!remote("example.com/a:1", false));
        assert!(!remote("postgres:16", false));
        assert!(remote("example.com:5000/a:1", true));
    }

    #[test]
    fn what_a_server_said_is_one_short_line() {
        assert_eq!(
            brief("{\"details\":\n  \"denied\"}\n"),
            "{\"details\": \"denied\"}"
        );
        assert_eq!(brief(" \n"), "no reason given");
        let long = brief(&"é".repeat(400));
        assert_eq!(long.chars().count(), 301);
        assert!(long.ends_with("é…"));
    }

    #[test]
    fn tls_failures_are_told_apart() {
        let e = std::io::Error::other("received corrupt message of type InvalidContentType");
        assert!(looks_like_tls(&e));
        assert!(!looks_like_tls(&std::io::Error::other(
            "connection refused"
        )));
    }
}
