//! Image references: parsing (Docker Hub defaults), the store name of a pulled image, and
//! which registries may be reached over plain HTTP.

use std::net::IpAddr;

use oci_client::Reference;

use super::error::PullError;

/// Parses `REF` the way podman and docker do: `busybox` is `docker.io/library/busybox:latest`,
/// `user/app` is `docker.io/user/app:latest`; a first component with a `.` or `:` or equal
/// to `localhost` is a registry; `@sha256:…` pins a digest.
pub(crate) fn parse(reference: &str) -> Result<Reference, PullError> {
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| PullError::BadReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            })?;
    if let Some(digest) = parsed.digest() {
        crate::oci::parse_sha256(digest).map_err(|reason| PullError::BadReference {
            reference: reference.to_string(),
            reason,
        })?;
    }
    Ok(parsed)
}

/// [`store_name`] of the reference `spec`, or `None` if `spec` is not one, and whether it
/// came from the store's memo of it (`cache/references/SHA256`: the spec and its name):
/// parsing a reference compiles the reference grammar's regular expression, tens of
/// milliseconds once per process, which a test process that only looks its image up (a
/// warm store) would pay every time. Nothing is written here: a caller that found the
/// image under the name remembers it ([`remember_store_name`]), so a misspelt reference
/// leaves nothing behind. A memo that does not hold this spec is ignored.
pub(crate) fn memo_store_name(store_root: &std::path::Path, spec: &str) -> Option<(String, bool)> {
    let memo = memo_path(store_root, spec)?;
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((memo_spec, name)) = text.strip_suffix('\n').and_then(|t| t.split_once('\n')) {
            if memo_spec == spec && !name.is_empty() && !name.contains('\n') {
                return Some((name.to_string(), true));
            }
        }
    }
    Some((store_name(&parse(spec).ok()?), false))
}

/// Remembers that `spec`'s store name is `name` (an image found under it). The memo is the
/// store's own file (the store is its owner's alone); one that cannot be written only
/// costs time.
pub(crate) fn remember_store_name(store_root: &std::path::Path, spec: &str, name: &str) {
    let Some(memo) = memo_path(store_root, spec) else {
        return;
    };
    let Some(dir) = memo.parent() else {
        return;
    };
    let _ = std::fs::create_dir_all(dir);
    // Staged under a unique name (processes in other PID namespaces share the store).
    let staged = tempfile::Builder::new().prefix(".memo.").tempfile_in(dir);
    let _ = staged.and_then(|mut staged| {
        std::io::Write::write_all(&mut staged, format!("{spec}\n{name}\n").as_bytes())?;
        staged.persist(&memo).map_err(|e| e.error)?;
        Ok(())
    });
}

/// Where the memo of `spec` is; `None` for what cannot be a reference: a reference starts
/// with a letter or digit (its registry's or repository's first component), so a path such
/// as `/srv/rootfs` or `./rootfs` is none, and costs no parse.
fn memo_path(store_root: &std::path::Path, spec: &str) -> Option<std::path::PathBuf> {
    if !spec.starts_with(|c: char| c.is_ascii_alphanumeric()) || spec.contains('\n') {
        return None;
    }
    let digest = crate::oci::sha256_of(spec.as_bytes());
    Some(
        store_root
            .join("cache/references")
            .join(digest.trim_start_matches("sha256:")),
    )
}

/// The reference written out in full, as podman shows it (`docker.io/library/busybox:latest`).
pub(crate) fn canonical(r: &Reference) -> String {
    r.whole()
}

/// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`, `::1`): only such
/// registries are reached over plain HTTP without being told to.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The host part of `host[:port]` / `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// The name a pulled image is recorded under in the store: the reference with `/`, `:`
/// and `@` made `-`, Docker Hub's `docker.io/library/` left out (`postgres:16` →
/// `postgres-16`, `localhost:5000/app:1` → `localhost-5000-app-1`; a digest pin names the
/// digest's first 12 hex digits). Long names keep their end and get a hash of the whole.
pub(crate) fn store_name(r: &Reference) -> String {
    let repo = match r.registry() {
        "docker.io" => r
            .repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_string(),
        reg => format!("{reg}/{}", r.repository()),
    };
    let suffix = match (r.digest(), r.tag()) {
        (Some(d), _) => format!("sha256-{}", &d.trim_start_matches("sha256:")[..12]),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".into(),
    };
    let raw = format!("{repo}-{suffix}");
    let name: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_start_matches('.').to_string();
    if name.len() <= 128 {
        return name;
    }
    let hash = &crate::oci::sha256_of(raw.as_bytes())[7..19];
    // The kept end may start at a '.', which a name may not.
    let end = name[name.len() - 114..].trim_start_matches('.');
    format!("{end}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_are_remembered_per_spec() {
        let store = tempfile::tempdir().unwrap();
        let spec = "localhost:5000/team/app:1";
        let want = store_name(&parse(spec).unwrap());
        let dir = store.path().join("cache/references");
        // Looked up, not found yet: parsed, nothing written.
        assert_eq!(
            memo_store_name(store.path(), spec),
            Some((want.clone(), false))
        );
        assert!(!dir.exists());
        remember_store_name(store.path(), spec, &want);
        let memos: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(memos.len(), 1, "only the memo, no staged copy");
        assert_eq!(
            memo_store_name(store.path(), spec),
            Some((want.clone(), true))
        );
        // Read back, not parsed again: a memo saying otherwise is believed for its spec…
        std::fs::write(memos[0].path(), format!("{spec}\nremembered\n")).unwrap();
        assert_eq!(
            memo_store_name(store.path(), spec),
            Some(("remembered".to_string(), true))
        );
        // …and ignored for any other (a memo names the spec it is for).
        std::fs::write(memos[0].path(), "postgres:16\nwrong\n").unwrap();
        assert_eq!(
            memo_store_name(store.path(), spec),
            Some((want.clone(), false))
        );
        // Not references: nothing parsed, nothing written.
        for path in ["/srv/rootfs", "./rootfs", "..", "", "a\nb", "UPPER/Case"] {
            assert_eq!(memo_store_name(store.path(), path), None, "{path:?}");
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("postgres:16").unwrap();
        assert_eq!(canonical(&r), "docker.io/library/postgres:16");
        assert_eq!(store_name(&r), "postgres-16");
        let r = parse("bitnami/redis").unwrap();
        assert_eq!(canonical(&r), "docker.io/bitnami/redis:latest");
        assert_eq!(store_name(&r), "bitnami-redis-latest");
    }

    #[test]
    fn registries_tags_and_digests() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let r = parse(&format!("127.0.0.1:5000/test/busybox@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(
            store_name(&r),
            "127.0.0.1-5000-test-busybox-sha256-abababababab"
        );
        assert!(parse("busybox@sha256:zz").is_err());
        assert!(parse("with space:1").is_err());
    }

    #[test]
    fn loopback_registries() {
        for reg in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(reg), "{reg}");
        }
        for reg in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(reg), "{reg}");
        }
    }

    #[test]
    fn long_names_fit() {
        let r = parse(&format!("example.com/{}:t", "a/".repeat(80) + "x")).unwrap();
        let n = store_name(&r);
        assert!(
            n.len() <= 128 && crate::layers::check_image_name(&n).is_ok(),
            "{n}"
        );
        // Wherever the cut falls, even on a '.', the name is valid.
        for shift in 0..4 {
            let repo = "x".repeat(shift) + &"a.b/".repeat(45) + "x";
            let n = store_name(&parse(&format!("example.com/{repo}:t")).unwrap());
            assert!(
                n.len() <= 128 && crate::layers::check_image_name(&n).is_ok(),
                "{n}"
            );
        }
    }
}
