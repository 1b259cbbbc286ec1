//! Capabilities: the container keeps Docker's default set, less `CAP_MKNOD`, in the
//! bounding, permitted and effective sets; inheritable and ambient are empty.

use ::caps::{CapSet, Capability, CapsHashSet};

use crate::sys::SysError;

/// Docker's default capabilities (moby `oci/caps/defaults.go`) without `CAP_MKNOD`: Docker
/// keeps `CAP_MKNOD` because its device cgroup stops a container from opening the nodes it
/// makes; pristine has no device cgroup, and a container root that may `mknod` the host's
/// disk and open it owns the host.
pub(crate) const DEFAULT: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

fn err(op: &'static str) -> impl Fn(::caps::errors::CapsError) -> SysError {
    move |_| SysError::new(op, None, nix::errno::Errno::last())
}

/// Cuts this thread's capabilities to `keep` (canonical names): the bounding set first
/// (while `CAP_SETPCAP` is still effective), then effective and permitted; inheritable
/// and ambient are cleared. Capabilities this kernel does not know are ignored.
pub(crate) fn limit(keep: &[String]) -> Result<(), SysError> {
    let keep: CapsHashSet = keep
        .iter()
        .filter_map(|c| c.parse::<Capability>().ok())
        .collect();
    for cap in ::caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            ::caps::drop(None, CapSet::Bounding, cap).map_err(err("drop from the bounding set"))?;
        }
    }
    let permitted = ::caps::read(None, CapSet::Permitted).map_err(err("read capabilities"))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    ::caps::set(None, CapSet::Effective, &kept).map_err(err("set effective capabilities"))?;
    ::caps::set(None, CapSet::Permitted, &kept).map_err(err("set permitted capabilities"))?;
    // Inheritable stays empty, as in moby since CVE-2022-24769: with it, an exec of a
    // program with inheritable file capabilities would regain them.
    ::caps::clear(None, CapSet::Inheritable).map_err(err("clear inheritable capabilities"))?;
    ::caps::clear(None, CapSet::Ambient).map_err(err("clear ambient capabilities"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_default_capability_is_known() {
        for c in super::DEFAULT {
            assert!(c.parse::<::caps::Capability>().is_ok(), "{c}");
        }
    }
}
