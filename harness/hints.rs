//! Hints: what a user can do about a failure, from the failing operation, its errno and
//! what the host looks like. bubblewrap does the same for its most common failures.

use std::fmt;

use nix::errno::Errno;

use crate::host::{self, Proc, RealProc};

/// An optional "what to do" line, rendered as `\n  hint: …` after an error message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint(pub Option<String>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(h) => write!(f, "\n  hint: {h}"),
            None => Ok(()),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The running kernel's `(major, minor)`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = read_trimmed("/proc/sys/kernel/osrelease")?;
    parse_kernel_version(&release)
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What a CI job on an Ubuntu ≥ 23.10 host (GitHub's ubuntu-24.04 runners) can do about
/// AppArmor's restriction of unprivileged user namespaces.
const APPARMOR_USERNS: &str = "AppArmor restricts unprivileged user namespaces on this host (kernel.apparmor_restrict_unprivileged_userns=1, the default on Ubuntu ≥ 23.10 and GitHub's ubuntu-24.04 runners): run the tests as root (`sudo -E env PATH=$PATH cargo test`), or lift the restriction (`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`), or give the test binaries an AppArmor profile that allows `userns,`";

/// Why starting a container failed: `op` is the failing step of `clone` or of the child
/// before it execs the init (writing the new user namespace's maps, …).
pub fn for_start(op: &str, errno: Errno, rootless: bool) -> Hint {
    for_start_in(&RealProc, op, errno, rootless)
}

fn for_start_in(proc: &dyn Proc, op: &str, errno: Errno, rootless: bool) -> Hint {
    let userns_step = op.contains("in the new user namespace");
    match op == "clone" || userns_step {
        true => for_clone_in(proc, errno, rootless || userns_step),
        false => Hint(None),
    }
}

fn for_clone_in(proc: &dyn Proc, errno: Errno, rootless: bool) -> Hint {
    let denied = matches!(errno, Errno::EPERM | Errno::EACCES);
    if !rootless {
        return Hint(match errno {
            Errno::ENOSPC => {
                Some("a namespace limit is reached: see /proc/sys/user/max_*_namespaces".into())
            }
            _ if denied => Some(root_denied(proc)),
            _ => None,
        });
    }
    if denied {
        if let Some(h) = userns_denied(proc) {
            return Hint(Some(h));
        }
    }
    Hint(match errno {
        Errno::ENOSPC | Errno::EUSERS => Some(
            "the user namespace limit is reached: see /proc/sys/user/max_user_namespaces".into(),
        ),
        _ if denied => {
            Some("unprivileged user namespaces are not allowed here; run as root".into())
        }
        _ => None,
    })
}

/// Root may not create namespaces: which privilege is missing, and the flag that grants it.
fn root_denied(proc: &dyn Proc) -> String {
    let engine = host::container_engine(proc).unwrap_or("podman/docker");
    if host::has_cap(proc, host::CAP_SYS_ADMIN) == Some(false) {
        return format!("this process lacks CAP_SYS_ADMIN, which creating namespaces needs; in a {engine} container add `--cap-add SYS_ADMIN` (pristine also needs CAP_NET_ADMIN to bring up the container's `lo`: `--cap-add SYS_ADMIN,NET_ADMIN`), or run it with `--privileged`");
    }
    format!("creating namespaces is refused although this process has CAP_SYS_ADMIN: a seccomp filter or an LSM forbids it; in a {engine} container add `--security-opt seccomp=unconfined` (and, under Docker's AppArmor profile, `--security-opt apparmor=unconfined`), or run it with `--privileged`")
}

/// An ordinary user may not create a user namespace: the sysctl or container that forbids it.
fn userns_denied(proc: &dyn Proc) -> Option<String> {
    if proc
        .read("/proc/sys/kernel/unprivileged_userns_clone")
        .as_deref()
        == Some("0")
    {
        return Some("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0): sysctl -w kernel.unprivileged_userns_clone=1, or run as root".into());
    }
    if proc
        .read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .as_deref()
        == Some("1")
    {
        return Some(APPARMOR_USERNS.into());
    }
    if proc.read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user namespaces are disabled (user.max_user_namespaces=0): sysctl -w user.max_user_namespaces=15000, or run as root".into());
    }
    let engine = host::container_engine(proc)?;
    Some(format!("inside a {engine} container an ordinary user's user namespaces are refused by the default seccomp profile: run the container with `--security-opt seccomp=unconfined` (docker on Ubuntu also `--security-opt apparmor=unconfined`), or run the tests as the container's root"))
}

/// Why a setup step failed, from the step's operation.
pub fn for_setup(op: &str, errno: Option<i32>, rootless: bool) -> Hint {
    let errno = errno.map(Errno::from_raw);
    // A forked child's failure to write its user namespace's maps comes back as a setup
    // step (AppArmor's restriction on Ubuntu lets the namespace be made, not mapped).
    if let Some(e) = errno.filter(|_| op.contains("in the new user namespace")) {
        return for_start(op, e, rootless);
    }
    if errno == Some(Errno::ENOSYS) {
        if let Some(h) = missing_syscall(op, kernel_version()) {
            return Hint(Some(h));
        }
    }
    if let Some(h) = errno.and_then(|e| in_container_setup(&RealProc, op, e)) {
        return Hint(Some(h));
    }
    if op == "mount overlay" {
        let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.contains("overlay") {
            return Hint(Some(
                "this kernel has no overlayfs: modprobe overlay".into(),
            ));
        }
        if rootless && kernel_version().is_some_and(|v| v < (5, 11)) {
            return Hint(Some("overlayfs in a user namespace needs Linux ≥ 5.11; run as root or upgrade the kernel".into()));
        }
        if errno == Some(Errno::ELOOP) {
            return Hint(Some("a layer or the upper directory lies inside another layer on the same filesystem (overlapping layers); keep the store outside the image's directories".into()));
        }
        if errno == Some(Errno::EINVAL) {
            return Hint(Some(if rootless {
                "in a user namespace a lower directory must not contain other mounts; see dmesg for the kernel's reason".into()
            } else {
                "a layer may be on a filesystem overlayfs cannot use, or upper and work differ in filesystem; see dmesg".into()
            }));
        }
    }
    if errno == Some(Errno::ENOSPC) && op.starts_with("mount") {
        return Hint(Some(
            "the mount limit is reached: see /proc/sys/fs/mount-max".into(),
        ));
    }
    if errno == Some(Errno::ENOSPC) {
        return Hint(Some(
            "the container's upper layer is full: raise its size (--upper-size) or put it on disk"
                .into(),
        ));
    }
    Hint(None)
}

/// The kernel a system call of setup step `op` first appeared in, for ENOSYS: pristine needs
/// the new mount API and `mount_setattr` (Debian 11's 5.10 has no `mount_setattr`).
fn missing_syscall(op: &str, running: Option<(u32, u32)>) -> Option<String> {
    let (call, needs) = [
        ("mount attributes", "mount_setattr(2)", "5.12"),
        ("open_tree", "open_tree(2)", "5.2"),
        ("move_mount", "move_mount(2)", "5.2"),
        ("fsopen", "fsopen(2)", "5.2"),
        ("fsmount", "fsmount(2)", "5.2"),
    ]
    .into_iter()
    .find_map(|(key, call, needs)| op.contains(key).then_some((call, needs)))?;
    let running = running.map_or("an unknown version".into(), |(a, b)| format!("{a}.{b}"));
    let all = match needs {
        "5.12" => "",
        _ => " (and ≥ 5.12 for every feature)",
    };
    Some(format!("this kernel ({running}) has no {call}, which pristine needs: Linux ≥ {needs}{all}; upgrade the kernel (Debian 12 has 6.1, Ubuntu 22.04 5.15)"))
}

/// A setup step refused for want of a privilege a container engine withholds by default.
fn in_container_setup(proc: &dyn Proc, op: &str, errno: Errno) -> Option<String> {
    if !matches!(errno, Errno::EPERM | Errno::EACCES) {
        return None;
    }
    let engine = host::container_engine(proc).unwrap_or("podman/docker");
    if op.contains("loopback") && host::has_cap(proc, host::CAP_NET_ADMIN) == Some(false) {
        return Some(format!("this process lacks CAP_NET_ADMIN, which bringing up the container's `lo` needs; in a {engine} container add `--cap-add NET_ADMIN`, or run it with `--privileged`"));
    }
    if op == "mknod" && host::has_cap(proc, host::CAP_MKNOD) == Some(false) {
        return Some(format!("this process lacks CAP_MKNOD; in a {engine} container add `--cap-add MKNOD`, or run it with `--privileged`"));
    }
    let engine = host::container_engine(proc)?;
    if !op.starts_with("mount") {
        return (host::has_cap(proc, host::CAP_SYS_ADMIN) == Some(false)).then(|| format!("this process lacks CAP_SYS_ADMIN, and the {engine} container's seccomp profile allows `{op}` only with it; add `--cap-add SYS_ADMIN`, or run it with `--privileged`"));
    }
    Some(match host::in_initial_userns(proc) {
        true => format!("mounting is refused inside this {engine} container: an LSM profile forbids it (docker: `--security-opt apparmor=unconfined`; podman: `--security-opt label=disable` under SELinux), or run it with `--privileged`"),
        false => format!("mounting is refused inside this rootless {engine} container: the kernel refuses a fresh /proc where the engine has masked parts of its own (/proc/kcore, /proc/keys, …); run it with `--security-opt unmask=/proc/*` (or `unmask=ALL`), or `--privileged`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_release() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn hint_renders_after_message() {
        assert_eq!(Hint(Some("do x".into())).to_string(), "\n  hint: do x");
        assert_eq!(Hint(None).to_string(), "");
    }

    use crate::host::fake::FakeProc;

    const NO_SYS_ADMIN: &str = "CapEff:\t00000000800405fb\n";
    const ALL_CAPS: &str = "CapEff:\t000001ffffffffff\n";

    fn text(h: Hint) -> String {
        h.0.unwrap_or_default()
    }

    #[test]
    fn rootless_eperm_under_apparmor_names_the_sysctl_and_what_works() {
        let ubuntu = FakeProc::default()
            .with(
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
                "1\n",
            )
            .with("/proc/sys/user/max_user_namespaces", "63704\n");
        for errno in [Errno::EPERM, Errno::EACCES] {
            let h = text(for_clone_in(&ubuntu, errno, true));
            assert!(
                h.contains("kernel.apparmor_restrict_unprivileged_userns=1"),
                "{h}"
            );
            assert!(h.contains("sudo -E env PATH=$PATH cargo test"), "{h}");
            assert!(
                h.contains("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
                "{h}"
            );
        }
        let lifted = FakeProc::default().with(
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "0\n",
        );
        assert!(!text(for_clone_in(&lifted, Errno::EPERM, true)).contains("AppArmor"));
        // Another errno is not AppArmor's doing.
        assert!(!text(for_clone_in(&ubuntu, Errno::EINVAL, true)).contains("AppArmor"));
    }

    #[test]
    fn a_failed_uid_map_write_gets_the_user_namespace_hint() {
        // Under AppArmor's restriction the user namespace is created, but its maps may
        // not be written.
        let ubuntu = FakeProc::default().with(
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
        );
        let op = "write /proc/self/uid_map in the new user namespace";
        assert!(text(for_start_in(&ubuntu, op, Errno::EPERM, true)).contains("AppArmor"));
        let op = "dup2 in the new container";
        assert_eq!(for_start_in(&ubuntu, op, Errno::EPERM, true), Hint(None));
    }

    #[test]
    fn the_other_sysctls_and_containers_are_named() {
        let debian = FakeProc::default().with("/proc/sys/kernel/unprivileged_userns_clone", "0");
        assert!(text(for_clone_in(&debian, Errno::EPERM, true))
            .contains("kernel.unprivileged_userns_clone=0"));
        let off = FakeProc::default().with("/proc/sys/user/max_user_namespaces", "0");
        assert!(text(for_clone_in(&off, Errno::EPERM, true)).contains("user.max_user_namespaces=0"));
        let docker = FakeProc::default().with("/.dockerenv", "");
        let h = text(for_clone_in(&docker, Errno::EPERM, true));
        assert!(
            h.contains("docker container") && h.contains("--security-opt seccomp=unconfined"),
            "{h}"
        );
    }

    #[test]
    fn root_without_cap_sys_admin_is_told_the_flag() {
        let podman = FakeProc::default()
            .with("/run/.containerenv", "engine=\"podman-4.3.1\"")
            .with("/proc/self/status", NO_SYS_ADMIN);
        let h = text(for_clone_in(&podman, Errno::EPERM, false));
        assert!(
            h.contains("lacks CAP_SYS_ADMIN") && h.contains("podman container"),
            "{h}"
        );
        assert!(h.contains("--cap-add SYS_ADMIN"), "{h}");
        let seccomp = FakeProc::default().with("/proc/self/status", ALL_CAPS);
        let h = text(for_clone_in(&seccomp, Errno::EPERM, false));
        assert!(h.contains("--security-opt seccomp=unconfined"), "{h}");
    }

    #[test]
    fn a_missing_system_call_names_the_kernel_it_needs() {
        let h = missing_syscall("set mount attributes", Some((5, 10))).unwrap();
        assert!(
            h.contains("(5.10) has no mount_setattr(2)") && h.contains("Linux ≥ 5.12"),
            "{h}"
        );
        assert!(missing_syscall("clone the bind source (open_tree)", None)
            .unwrap()
            .contains("≥ 5.2"));
        assert_eq!(missing_syscall("mknod", Some((5, 10))), None);
    }

    #[test]
    fn setup_steps_name_the_missing_capability() {
        let podman = FakeProc::default()
            .with("/run/.containerenv", "")
            .with("/proc/self/status", NO_SYS_ADMIN);
        let lo = in_container_setup(&podman, "bring loopback up (SIOCSIFFLAGS lo)", Errno::EPERM);
        assert!(lo.is_some_and(|h| h.contains("--cap-add NET_ADMIN")));
        let mknod = in_container_setup(&podman, "mknod", Errno::EPERM);
        assert!(mknod.is_some_and(|h| h.contains("--cap-add MKNOD")));
        let rootless = podman.with("/proc/self/uid_map", "0 1000 1");
        let mount = in_container_setup(&rootless, "mount proc", Errno::EPERM);
        assert!(mount.is_some_and(|h| h.contains("--security-opt unmask=/proc/*")));
        let host = rootless.with("/proc/self/status", ALL_CAPS);
        assert_eq!(in_container_setup(&host, "sethostname", Errno::EPERM), None);
        let podman = FakeProc::default()
            .with("/run/.containerenv", "")
            .with("/proc/self/status", NO_SYS_ADMIN);
        let uts = in_container_setup(&podman, "sethostname", Errno::EPERM);
        assert!(uts.is_some_and(|h| h.contains("--cap-add SYS_ADMIN")));
        assert_eq!(
            in_container_setup(&FakeProc::default(), "mount proc", Errno::EPERM),
            None
        );
        assert_eq!(
            in_container_setup(&FakeProc::default(), "mknod", Errno::ENOENT),
            None
        );
    }
}
