//! Volumes that bypass the overlay.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::ConfigError;

/// A host path bind-mounted into the container, bypassing the copy-on-write layer: writes
/// to a writable bind reach the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: PathBuf,
    /// Mount read-only.
    pub readonly: bool,
}

impl Bind {
    /// Checks that the source exists and the target is absolute; makes the source absolute.
    pub(crate) fn resolved(&self) -> Result<Bind, ConfigError> {
        let spec = format!("{}:{}", self.source.display(), self.target.display());
        let bad = |reason: String| ConfigError::BadBind {
            spec: spec.clone(),
            reason,
        };
        if !self.target.is_absolute() {
            return Err(bad("the container path must be absolute".into()));
        }
        if self
            .target
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(bad("the container path must not contain '..'".into()));
        }
        let source = std::fs::canonicalize(&self.source)
            .map_err(|e| bad(format!("source {}: {e}", self.source.display())))?;
        Ok(Bind {
            source,
            target: self.target.clone(),
            readonly: self.readonly,
        })
    }
}

impl FromStr for Bind {
    type Err = ConfigError;

    /// `SRC:DST` or `SRC:DST:ro` (also `:rw`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::BadBind {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, readonly) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, other] => return Err(bad(&format!("unknown option {other:?}"))),
            _ => return Err(bad("expected two or three ':'-separated fields")),
        };
        if source.is_empty() || target.is_empty() {
            return Err(bad("empty path"));
        }
        if !target.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        Ok(Bind {
            source: source.into(),
            target: target.into(),
            readonly,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_specs() {
        let b: Bind = "/a:/b:ro".parse().unwrap();
        assert_eq!(
            (b.source.to_str(), b.target.to_str(), b.readonly),
            (Some("/a"), Some("/b"), true)
        );
        assert!(!"/a:/b".parse::<Bind>().unwrap().readonly);
        for bad in ["/a", "/a:b", "/a:/b:rx", ":/b", "/a:/b:ro:x"] {
            assert!(bad.parse::<Bind>().is_err(), "{bad}");
        }
    }
}
