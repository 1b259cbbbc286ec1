//! Applying setup steps, in the init process (single-threaded, inside the new namespaces).

use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use super::syscall::{Linux, Syscall, ATTR_NODEV, ATTR_NOSUID, ATTR_RDONLY};
use super::SetupOp;
use crate::rootfs::overlay::{host_view_options, overlay_options, OverlayOptionsError};
use crate::sys::SysError;

/// A setup step that failed, as reported from the init to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("setup step {index} ({step}) failed: {detail}")]
pub(crate) struct ApplyError {
    /// Position of the step in the plan.
    pub index: usize,
    /// The step, rendered.
    pub step: String,
    /// The operation that failed.
    pub op: String,
    /// The path it failed on.
    pub path: Option<std::path::PathBuf>,
    /// errno, if the failure was a system call.
    pub errno: Option<i32>,
    /// Human-readable cause.
    pub detail: String,
}

/// Applies every step in order with the real system calls; stops at the first failure.
pub(crate) fn apply(ops: &[SetupOp]) -> Result<(), ApplyError> {
    let root = ops.iter().find_map(|op| match op {
        SetupOp::PivotRoot { new_root } => Some(new_root.clone()),
        _ => None,
    });
    apply_with(&Linux::new(root), ops)
}

/// Applies every step in order through `sys`; stops at the first failure.
pub(crate) fn apply_with(sys: &dyn Syscall, ops: &[SetupOp]) -> Result<(), ApplyError> {
    for (index, op) in ops.iter().enumerate() {
        apply_one(sys, op).map_err(|e| ApplyError {
            index,
            step: op.to_string(),
            op: e.op.to_string(),
            path: e.path.clone(),
            errno: Some(e.errno as i32),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Every mount but `/dev`'s own is `nosuid` and `nodev`.
const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

fn apply_one(sys: &dyn Syscall, op: &SetupOp) -> Result<(), SysError> {
    match op {
        SetupOp::UnlessGone { source, op } => match apply_one(sys, op) {
            Err(_) if !sys.exists(source) => Ok(()),
            result => result,
        },
        // Joined before the cgroup namespace exists: a container cgroup beside the
        // caller's (cgroup v2) is outside the namespace the caller's cgroup would root.
        SetupOp::JoinCgroups { procs } => {
            procs.iter().try_for_each(|p| sys.join_cgroup(p))?;
            sys.enter_cgroup_namespace()
        }
        SetupOp::MakeRootPrivate => sys.mount(
            "make / rprivate",
            None,
            Path::new("/"),
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        SetupOp::Tmpfs {
            target,
            options,
            nodev,
        } => {
            let flags = match nodev {
                true => NOSUID_NODEV,
                false => MsFlags::MS_NOSUID,
            };
            sys.mount("mount tmpfs", Some("tmpfs"), target, flags, Some(options))
        }
        // PID 1 runs with umask 0, so the mode is exactly this.
        SetupOp::Mkdir { path, mode } => sys.mkdir(path, *mode),
        SetupOp::Overlay {
            target,
            lowers,
            upper,
            work,
            beneath,
            userxattr,
            nosuid,
            volatile,
        } => {
            let flags = match nosuid {
                true => NOSUID_NODEV,
                false => MsFlags::empty(),
            };
            // Held until the mount is made: overlayfs gets their /proc/self/fd links.
            let (upper_dir, work_dir) = (
                sys.open_overlay_dir(beneath, upper)?,
                sys.open_overlay_dir(beneath, work)?,
            );
            let (upper, work) = (&upper_dir.path, &work_dir.path);
            let data = match overlay_options(lowers, upper, work, *userxattr, *volatile) {
                Ok(data) => data,
                // Too many layers for one option page: one `lowerdir+` per layer instead.
                Err(OverlayOptionsError::TooLong { .. }) => {
                    sys.mount_overlay_layered(target, lowers, upper, work, *userxattr, *volatile)?;
                    return match nosuid {
                        true => sys.mount(
                            "make the overlay nosuid,nodev",
                            None,
                            target,
                            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | NOSUID_NODEV,
                            None,
                        ),
                        false => Ok(()),
                    };
                }
                Err(_) => {
                    return Err(SysError::new(
                        "build overlay options",
                        Some(target),
                        Errno::EINVAL,
                    ))
                }
            };
            sys.mount("mount overlay", Some("overlay"), target, flags, Some(&data))
        }
        SetupOp::HostView {
            source,
            target,
            empty,
            userxattr,
        } => {
            let data = host_view_options(source, empty, *userxattr)
                .map_err(|_| SysError::new("build overlay options", Some(target), Errno::EINVAL))?;
            sys.mount(
                "mount a read-only overlay view of a host directory",
                Some("overlay"),
                target,
                MsFlags::MS_RDONLY | NOSUID_NODEV,
                Some(&data),
            )
        }
        SetupOp::Bind {
            source,
            target,
            readonly,
            recursive,
        } => {
            let ro = if *readonly { ATTR_RDONLY } else { 0 };
            sys.bind(source, target, *recursive, ro | ATTR_NOSUID | ATTR_NODEV)
        }
        SetupOp::BindDevice { source, target } => sys.bind(source, target, false, ATTR_NOSUID),
        SetupOp::Symlink { target, link } => sys.symlink(target, link),
        SetupOp::Proc { target } => sys.mount(
            "mount proc",
            Some("proc"),
            target,
            NOSUID_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        SetupOp::Devpts { target, tty_gid } => {
            let data = if *tty_gid {
                "newinstance,ptmxmode=0666,mode=620,gid=5"
            } else {
                "newinstance,ptmxmode=0666,mode=620"
            };
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            sys.mount("mount devpts", Some("devpts"), target, flags, Some(data))
        }
        SetupOp::CharDevice { path, major, minor } => sys.mknod(path, *major, *minor),
        SetupOp::PivotRoot { new_root } => sys.pivot_root(new_root),
        SetupOp::Hostname { name } => sys.sethostname(name),
        SetupOp::LoopbackUp => sys.loopback_up(),
        SetupOp::MaskPath { path } => sys.mask(path),
        SetupOp::ReadOnlyPath { path } => sys.read_only(path),
        SetupOp::LimitCapabilities { keep } => sys.limit_capabilities(keep),
        SetupOp::LeaveTerminal => sys.leave_terminal(),
        SetupOp::NoNewPrivileges => sys.set_no_new_privs(),
        SetupOp::Seccomp { caps } => sys.load_seccomp(caps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::Privileges;
    use crate::container::Bind;
    use crate::setup::syscall::Recorder;
    use crate::setup::{plan, PlanInput, RootfsSource, UpperPlacement};

    /// The system calls that applying the plan for `rootfs` makes, one a line.
    fn recorded(rootfs: RootfsSource, rootless: bool) -> String {
        let binds = [Bind {
            source: "/data".into(),
            target: "/srv/data".into(),
            readonly: true,
        }];
        let ops = plan(&PlanInput {
            base: Path::new("/store/run/mnt"),
            rootfs: &rootfs,
            upper: &UpperPlacement::Tmpfs {
                size: crate::DEFAULT_UPPER_SIZE,
            },
            rootless,
            binds: &binds,
            hostname: "h",
            cgroups: &[],
            privileges: &Privileges::default(),
            tmp_size: crate::DEFAULT_TMP_SIZE,
            shm_size: crate::DEFAULT_SHM_SIZE,
        })
        .unwrap();
        let rec = Recorder::default();
        apply_with(&rec, &ops).unwrap();
        let calls = rec.calls.borrow();
        calls.iter().map(|c| format!("{c}\n")).collect()
    }

    #[test]
    fn root_mode_system_calls() {
        let text = recorded(RootfsSource::Lowers(vec!["/".into()]), false);
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(text);
        });
    }

    #[test]
    fn rootless_system_calls() {
        let rootfs = RootfsSource::HostEntries {
            entries: vec![crate::rootfs::host::HostEntry::ReadOnlyBind("usr".into())],
            layers: vec![],
        };
        let text = recorded(rootfs, true);
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(text);
        });
    }

    #[test]
    fn a_step_whose_source_is_gone_is_skipped_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let bind = |source: &Path| SetupOp::Bind {
            source: source.to_path_buf(),
            target: dir.path().join("target"),
            readonly: true,
            recursive: true,
        };
        let skipped = SetupOp::UnlessGone {
            source: gone.clone(),
            op: Box::new(bind(&gone)),
        };
        assert!(apply(&[skipped]).is_ok());
        // The source exists, so the step's failure stands (here: creating a directory
        // under a file).
        std::fs::write(&gone, "").unwrap();
        let failing = SetupOp::UnlessGone {
            source: gone.clone(),
            op: Box::new(SetupOp::mkdir(gone.join("sub"))),
        };
        let err = apply(&[failing]).unwrap_err();
        assert!(err.step.contains("skipped if"), "{}", err.step);
    }
}
