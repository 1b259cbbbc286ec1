//! Registry credentials: given explicitly, or found where podman and docker keep them.
//!
//! Looked up in order, the first file with an entry for the registry wins (podman's order,
//! then docker's): `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. An entry is keyed by the
//! registry (`localhost:5000`, `https://index.docker.io/v1/` for Docker Hub) or by a
//! repository under it (`localhost:5000/team`, the longest matching key wins) and holds
//! `"auth": base64("user:password")`. Credential helpers (`credsStore`) are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::PullError;

/// Credentials for one registry, and where they came from (for error messages).
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) auth: RegistryAuth,
    /// `anonymous access`, `user alice from /root/.docker/config.json`.
    pub(crate) described: String,
}

impl Credentials {
    pub(crate) fn anonymous() -> Self {
        Credentials {
            auth: RegistryAuth::Anonymous,
            described: "anonymous access (no credentials found for it)".into(),
        }
    }

    pub(crate) fn basic(user: &str, password: &str, from: &str) -> Self {
        Credentials {
            auth: RegistryAuth::Basic(user.into(), password.into()),
            described: format!("user {user:?} {from}"),
        }
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// The files looked in, in order (those whose variables are unset are left out).
pub(crate) fn auth_files() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match var("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => files.extend(var("HOME").map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// Credentials for `repository` on `registry` from the first of `files` that has some.
pub(crate) fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Credentials, PullError> {
    for file in files {
        let text = match std::fs::read(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(bad(file, e.to_string())),
        };
        let parsed: AuthFile =
            serde_json::from_slice(&text).map_err(|e| bad(file, e.to_string()))?;
        if let Some(entry) = best_entry(&parsed.auths, registry, repository) {
            return decode(file, entry);
        }
    }
    Ok(Credentials::anonymous())
}

fn bad(path: &Path, reason: String) -> PullError {
    PullError::AuthFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The keys an entry for `registry` may have, as podman and docker write them.
fn registry_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        keys.extend(
            [
                "index.docker.io",
                "registry-1.docker.io",
                "https://index.docker.io/v1/",
            ]
            .map(String::from),
        );
    }
    keys
}

fn best_entry<'a>(
    auths: &'a BTreeMap<String, AuthEntry>,
    registry: &str,
    repository: &str,
) -> Option<&'a AuthEntry> {
    // A repository-scoped key (`registry/ns/repo`, `registry/ns`) beats the registry's own.
    let parts: Vec<&str> = repository.split('/').collect();
    for n in (1..=parts.len()).rev() {
        if let Some(e) = auths.get(&format!("{registry}/{}", parts[..n].join("/"))) {
            return Some(e);
        }
    }
    registry_keys(registry).iter().find_map(|k| {
        auths
            .get(k.as_str())
            .or_else(|| auths.get(k.trim_end_matches('/')))
    })
}

fn decode(file: &Path, entry: &AuthEntry) -> Result<Credentials, PullError> {
    let Some(auth) = &entry.auth else {
        return Err(bad(
            file,
            "its entry for the registry has no \"auth\" (credential helpers are not supported)"
                .into(),
        ));
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| bad(file, format!("\"auth\" is not base64: {e}")))?;
    let text = String::from_utf8(raw).map_err(|_| bad(file, "\"auth\" is not UTF-8".into()))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| bad(file, "\"auth\" is not base64 of USER:PASSWORD".into()))?;
    Ok(Credentials::basic(
        user,
        password,
        &format!("from {}", file.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, json: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, json).unwrap();
        p
    }

    fn user(c: &Credentials) -> Option<&str> {
        match &c.auth {
            RegistryAuth::Basic(u, _) => Some(u),
            _ => None,
        }
    }

    #[test]
    fn first_file_with_an_entry_wins_and_scopes_are_longest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let a = file(
            tmp.path(),
            "a.json",
            r#"{"auths":{"other:1":{"auth":"eDp5"}}}"#,
        );
        let b = file(
            tmp.path(),
            "b.json",
            &format!(
                r#"{{"auths":{{"localhost:5000":{{"auth":"{}"}},"localhost:5000/team":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
                b64("plain:pw"),
                b64("team:pw"),
                b64("hub:pw:with:colons")
            ),
        );
        let files = [tmp.path().join("missing.json"), a, b.clone()];
        assert_eq!(
            user(&lookup(&files, "localhost:5000", "app").unwrap()),
            Some("plain")
        );
        let team = lookup(&files, "localhost:5000", "team/app").unwrap();
        assert_eq!(user(&team), Some("team"));
        assert!(team.described.contains(&b.display().to_string()));
        let hub = lookup(&files, "docker.io", "library/postgres").unwrap();
        assert!(
            matches!(&hub.auth, RegistryAuth::Basic(u, p) if u == "hub" && p == "pw:with:colons")
        );
        assert!(user(&lookup(&files, "quay.io", "x").unwrap()).is_none());
    }

    #[test]
    fn broken_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let f = file(tmp.path(), "c.json", r#"{"auths":{"r":{"auth":"!!"}}}"#);
        let e = lookup(std::slice::from_ref(&f), "r", "x").err().unwrap();
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
        let g = file(tmp.path(), "d.json", "not json");
        assert!(lookup(&[g], "r", "x").is_err());
    }
}
