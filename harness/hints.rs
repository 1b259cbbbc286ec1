//! Hints: what a user can do about a failure, from the failing operation, its errno and
//! what the host looks like. bubblewrap does the same for its most common failures.

use std::fmt;

use nix::errno::Errno;

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

/// Why creating a container's namespaces failed.
pub fn for_clone(errno: Errno, rootless: bool) -> Hint {
    if !rootless {
        return Hint(match errno {
            Errno::ENOSPC => Some("a namespace limit is reached: see /proc/sys/user/max_*_namespaces".into()),
            Errno::EPERM => Some("creating namespaces is forbidden here (a seccomp filter or a container without CAP_SYS_ADMIN?)".into()),
            _ => None,
        });
    }
    if read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Hint(Some("unprivileged user namespaces are disabled: sysctl -w kernel.unprivileged_userns_clone=1, or run as root".into()));
    }
    if read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
        == Some("1")
    {
        return Hint(Some("AppArmor restricts unprivileged user namespaces: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give the binary an AppArmor profile with `userns`, or run as root".into()));
    }
    if read_trimmed("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Hint(Some("user namespaces are disabled: sysctl -w user.max_user_namespaces=15000, or run as root".into()));
    }
    Hint(match errno {
        Errno::EPERM => Some("unprivileged user namespaces are not allowed here (inside Docker they need --security-opt seccomp=unconfined); or run as root".into()),
        Errno::ENOSPC | Errno::EUSERS => Some("the user namespace limit is reached: see /proc/sys/user/max_user_namespaces".into()),
        _ => None,
    })
}

/// Why a setup step failed, from the step's operation.
pub fn for_setup(op: &str, errno: Option<i32>, rootless: bool) -> Hint {
    let errno = errno.map(Errno::from_raw);
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
}
