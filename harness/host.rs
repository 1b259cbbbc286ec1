//! What this process may do where it runs, read from `/proc`: its capabilities, whether it
//! is in the initial user namespace, whether it is inside a podman or docker container.
//! Everything goes through [`Proc`], so the hints built on it are tested with a fake `/proc`.

use std::sync::OnceLock;

/// A source of `/proc` (and marker file) contents: the real one, or a test's.
pub(crate) trait Proc {
    /// The trimmed contents of `path`, or `None` if it cannot be read.
    fn read(&self, path: &str) -> Option<String>;
}

/// The running system's files.
pub(crate) struct RealProc;

impl Proc for RealProc {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }
}

/// `CAP_NET_ADMIN` (bring `lo` up in the container's network namespace).
pub(crate) const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN` (create namespaces, mount).
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_MKNOD` (create `/dev/null` and the other device nodes).
pub(crate) const CAP_MKNOD: u32 = 27;

/// Whether capability `cap` is in this process's effective set (`None`: unknown).
pub(crate) fn has_cap(proc: &dyn Proc, cap: u32) -> Option<bool> {
    let status = proc.read("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some((bits >> cap) & 1 == 1)
}

/// Whether this process is in the initial user namespace (its uid map is the identity).
pub(crate) fn in_initial_userns(proc: &dyn Proc) -> bool {
    match proc.read("/proc/self/uid_map") {
        Some(m) => m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        None => true,
    }
}

/// The container engine this process runs under, from its marker file.
pub(crate) fn container_engine(proc: &dyn Proc) -> Option<&'static str> {
    if proc.read("/run/.containerenv").is_some() {
        Some("podman")
    } else if proc.read("/.dockerenv").is_some() {
        Some("docker")
    } else {
        None
    }
}

/// Whether root may `mknod` the container's device nodes: in the initial user namespace
/// with `CAP_MKNOD`. Not so in a rootless podman container (root in a user namespace) or a
/// podman container without `--cap-add MKNOD`: there the host's nodes are bind-mounted,
/// as in rootless mode.
pub(crate) fn may_mknod_devices() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| in_the_initial_userns() && has_cap(&RealProc, CAP_MKNOD) != Some(false))
}

/// [`in_initial_userns`] of this process, read once.
pub(crate) fn in_the_initial_userns() -> bool {
    static INITIAL: OnceLock<bool> = OnceLock::new();
    *INITIAL.get_or_init(|| in_initial_userns(&RealProc))
}

#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;

    /// A fake `/proc`: only the files it was given exist.
    #[derive(Default)]
    pub(crate) struct FakeProc(pub HashMap<&'static str, &'static str>);

    impl FakeProc {
        pub(crate) fn with(mut self, path: &'static str, text: &'static str) -> Self {
            self.0.insert(path, text);
            self
        }
    }

    impl super::Proc for FakeProc {
        fn read(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.trim().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeProc;
    use super::*;

    #[test]
    fn reads_effective_capabilities() {
        // podman's default set: no CAP_SYS_ADMIN, no CAP_MKNOD, no CAP_NET_ADMIN.
        let p =
            FakeProc::default().with("/proc/self/status", "Name:\tx\nCapEff:\t00000000800405fb\n");
        assert_eq!(has_cap(&p, CAP_SYS_ADMIN), Some(false));
        assert_eq!(has_cap(&p, CAP_MKNOD), Some(false));
        let p = FakeProc::default().with("/proc/self/status", "CapEff:\t000001fffeffffff\n");
        assert_eq!(has_cap(&p, CAP_SYS_ADMIN), Some(true));
        assert_eq!(has_cap(&p, CAP_NET_ADMIN), Some(true));
        assert_eq!(has_cap(&FakeProc::default(), CAP_MKNOD), None);
    }

    #[test]
    fn tells_the_initial_user_namespace() {
        let host =
            FakeProc::default().with("/proc/self/uid_map", "         0          0 4294967295\n");
        assert!(in_initial_userns(&host));
        let rootless_podman = FakeProc::default().with("/proc/self/uid_map", "0 1000 1\n");
        assert!(!in_initial_userns(&rootless_podman));
    }

    #[test]
    fn names_the_container_engine() {
        assert_eq!(
            container_engine(&FakeProc::default().with("/run/.containerenv", "")),
            Some("podman")
        );
        assert_eq!(
            container_engine(&FakeProc::default().with("/.dockerenv", "")),
            Some("docker")
        );
        assert_eq!(container_engine(&FakeProc::default()), None);
    }
}
