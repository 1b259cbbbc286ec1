//! Image configuration and the JSON documents of OCI layouts and docker save.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of an image configuration a container needs to run its process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        };
        assert_eq!(RunConfig::from_image_config(&ic).to_image_config(), ic);
    }
}
