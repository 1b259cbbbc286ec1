//! Which namespaces a container gets.

use nix::sched::CloneFlags;

/// The namespaces every container gets, in the order youki lists them. The user namespace
/// (rootless only) comes first: the kernel creates it before the others, so they are owned
/// by it and the container's root has full capabilities over them.
pub const ORDERED: &[(CloneFlags, &str)] = &[
    (CloneFlags::CLONE_NEWUSER, "user"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    (CloneFlags::CLONE_NEWNS, "mount"),
];

/// Whether this kernel has cgroup namespaces (Linux ≥ 4.6 with CONFIG_CGROUPS).
fn have_cgroup_ns() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| std::path::Path::new("/proc/self/ns/cgroup").exists())
}

/// `clone` flags for a container; the user namespace only when `rootless`. A container that
/// `joins_cgroup` enters its cgroup namespace after joining (see `SetupOp::JoinCgroups`).
pub fn clone_flags(rootless: bool, joins_cgroup: bool) -> CloneFlags {
    ORDERED
        .iter()
        .filter(|(f, _)| rootless || *f != CloneFlags::CLONE_NEWUSER)
        .filter(|(f, _)| (have_cgroup_ns() && !joins_cgroup) || *f != CloneFlags::CLONE_NEWCGROUP)
        .fold(CloneFlags::empty(), |acc, (f, _)| acc | *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_namespace_only_when_rootless() {
        assert!(clone_flags(true, false).contains(CloneFlags::CLONE_NEWUSER));
        assert!(!clone_flags(false, false).contains(CloneFlags::CLONE_NEWUSER));
        for f in [
            CloneFlags::CLONE_NEWNS,
            CloneFlags::CLONE_NEWPID,
            CloneFlags::CLONE_NEWNET,
        ] {
            assert!(clone_flags(false, false).contains(f));
        }
        assert!(
            clone_flags(false, false).contains(CloneFlags::CLONE_NEWCGROUP) || !have_cgroup_ns()
        );
        assert!(!clone_flags(false, true).contains(CloneFlags::CLONE_NEWCGROUP));
    }
}
