//! Image configuration and the JSON documents of OCI layouts and docker save.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of an image configuration a container needs to run its process: what
/// `pristine import` stores and containers of the image start with (see
/// [`Container`](crate::Container) for how the caller's settings override it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageConfig {
    /// Environment, `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default arguments (or command, without an entrypoint).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Entrypoint; `cmd` is appended to it.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Working directory of the process; `None` means `/`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`, ...); `None` means root.
    #[serde(default)]
    pub user: Option<String>,
    /// Exposed ports as the config names them (`5432/tcp`, `53/udp`, `8080`).
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

/// A transport protocol of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP (the default when a port names no protocol).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A port an image says it listens on (`ExposedPorts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct ExposedPort {
    /// The port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for ExposedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        write!(f, "{}/{proto}", self.port)
    }
}

impl ExposedPort {
    /// Parses `PORT[/PROTO]` (protocol case-insensitive, TCP by default); `None` for
    /// anything else (ranges, unknown protocols, port 0).
    pub fn parse(s: &str) -> Option<ExposedPort> {
        let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        Some(ExposedPort { port, protocol })
    }
}

impl ImageConfig {
    /// The exposed ports that parse (see [`ExposedPort::parse`]), sorted, without
    /// duplicates.
    #[must_use]
    pub fn exposed_ports(&self) -> Vec<ExposedPort> {
        let mut ports: Vec<ExposedPort> = self
            .exposed_ports
            .iter()
            .filter_map(|p| ExposedPort::parse(p))
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// The lowest exposed TCP port, the one a readiness check waits on by default.
    #[must_use]
    pub fn first_tcp_port(&self) -> Option<u16> {
        self.exposed_ports()
            .into_iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
    }

    /// Whether the config says nothing (an image of the host, a rootfs directory or a
    /// recipe without an imported base).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == ImageConfig::default()
    }
}

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// index.json and nested image indexes (also docker manifest lists).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// One entry of docker save's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// The image configuration document (OCI and docker share this shape).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `{"5432/tcp": {}}`: only the keys mean anything.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

impl RunConfig {
    pub(crate) fn to_image_config(&self) -> ImageConfig {
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            env: self.env.clone().unwrap_or_default(),
            cmd: self.cmd.clone().unwrap_or_default(),
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            working_dir: nonempty(&self.working_dir),
            user: nonempty(&self.user),
            exposed_ports: self
                .exposed_ports
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn from_image_config(c: &ImageConfig) -> Self {
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        RunConfig {
            user: c.user.clone(),
            env: some(&c.env),
            entrypoint: some(&c.entrypoint),
            cmd: some(&c.cmd),
            working_dir: c.working_dir.clone(),
            exposed_ports: (!c.exposed_ports.is_empty()).then(|| {
                c.exposed_ports
                    .iter()
                    .map(|p| (p.clone(), serde_json::json!({})))
                    .collect()
            }),
        }
    }
}

/// The GOARCH name of the machine this runs on (OCI platform architecture).
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_config() {
        let json = br#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"","User":"1000:1000",
                      "Labels":{"a":"b"}},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let c: ConfigFile = serde_json::from_slice(json).unwrap();
        let ic = c.config.unwrap().to_image_config();
        assert_eq!(ic.env, ["PATH=/bin"]);
        assert_eq!(ic.cmd, ["sh"]);
        assert!(ic.entrypoint.is_empty());
        assert_eq!(ic.working_dir, None);
        assert_eq!(ic.user.as_deref(), Some("1000:1000"));
        assert!(ic.exposed_ports.is_empty());
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn image_config_round_trips_through_run_config() {
        let ic = ImageConfig {
            env: vec!["A=1".into()],
            cmd: vec!["x".into()],
            entrypoint: vec!["/e".into()],
            working_dir: Some("/w".into()),
            user: Some("u".into()),
            // Sorted, as the config's JSON object keeps them.
            exposed_ports: vec!["53/udp".into(), "5432/tcp".into()],
        };
        assert_eq!(RunConfig::from_image_config(&ic).to_image_config(), ic);
    }

    #[test]
    fn exposed_ports_parse_and_sort() {
        let ic = ImageConfig {
            exposed_ports: [
                "8080", "53/UDP", "5432/tcp", "1-2/tcp", "0/tcp", "9/quic", "8080/tcp",
            ]
            .map(String::from)
            .to_vec(),
            ..ImageConfig::default()
        };
        let shown: Vec<String> = ic.exposed_ports().iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["53/udp", "5432/tcp", "8080/tcp"]);
        assert_eq!(ic.first_tcp_port(), Some(5432));
        assert!(!ic.is_empty() && ImageConfig::default().is_empty());
    }
}
