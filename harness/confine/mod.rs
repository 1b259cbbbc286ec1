//! Confinement of the container's processes once the mounts are in place: what the
//! container's root may still do (capabilities, a seccomp filter, no new privileges) and
//! which parts of `/proc` it cannot see or change.
//!
//! The defaults are Docker's, podman's and runc's: Docker's default capability set (less
//! `CAP_MKNOD`, see [`caps::DEFAULT`]), Docker's default seccomp profile, `no_new_privs`,
//! runc's masked and read-only `/proc` paths. [`Privileges`] is the opt-out.

pub(crate) mod bpf;
pub(crate) mod caps;
pub(crate) mod procfs;
pub(crate) mod seccomp;

use serde::{Deserialize, Serialize};

/// What a container's processes may do beyond the default confinement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    /// No confinement at all: every capability, no seccomp filter, `/proc` unmasked,
    /// setuid binaries work. As root this is host root.
    pub privileged: bool,
    /// Capabilities kept on top of the default set (canonical names, `CAP_SYS_ADMIN`); the
    /// seccomp filter opens the system calls Docker's profile opens for each.
    pub cap_add: Vec<String>,
}

impl Privileges {
    /// The capabilities the container keeps, sorted (not meaningful when privileged).
    pub(crate) fn kept_capabilities(&self) -> Vec<String> {
        let mut keep: Vec<String> = caps::DEFAULT.iter().map(|c| c.to_string()).collect();
        for c in &self.cap_add {
            if !keep.contains(c) {
                keep.push(c.clone());
            }
        }
        keep.sort();
        keep
    }
}

/// Parses a capability name (`CAP_SYS_ADMIN`, `sys_admin`, `SYS_ADMIN`) to its canonical
/// form, or `None` if the kernel's list has no such capability.
pub fn parse_capability(name: &str) -> Option<String> {
    let canonical = ::caps::to_canonical(name);
    canonical
        .parse::<::caps::Capability>()
        .ok()
        .map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_are_canonical() {
        assert_eq!(
            parse_capability("sys_admin").as_deref(),
            Some("CAP_SYS_ADMIN")
        );
        assert_eq!(
            parse_capability("CAP_NET_ADMIN").as_deref(),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(parse_capability("CAP_NOPE"), None);
    }

    #[test]
    fn added_capabilities_join_the_default_set_once() {
        let p = Privileges {
            privileged: false,
            cap_add: vec!["CAP_SYS_ADMIN".into(), "CAP_CHOWN".into()],
        };
        let kept = p.kept_capabilities();
        assert!(kept.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(kept.iter().filter(|c| *c == "CAP_CHOWN").count(), 1);
        assert!(!kept.contains(&"CAP_MKNOD".to_string()));
    }
}
