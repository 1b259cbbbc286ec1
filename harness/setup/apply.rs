//! Applying setup steps, in the init process (single-threaded, inside the new namespaces).

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize};

use super::SetupOp;
use crate::rootfs::overlay::{host_view_options, overlay_options, OverlayOptionsError};
use crate::sys::{self, SysError};

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

fn io_err(op: &'static str, path: &Path, e: io::Error) -> SysError {
    SysError::new(
        op,
        Some(path),
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

/// Applies every step in order; stops at the first failure.
pub(crate) fn apply(ops: &[SetupOp]) -> Result<(), ApplyError> {
    for (index, op) in ops.iter().enumerate() {
        apply_one(op).map_err(|e| ApplyError {
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

fn apply_one(op: &SetupOp) -> Result<(), SysError> {
    match op {
        SetupOp::UnlessGone { source, op } => match apply_one(op) {
            Err(_) if std::fs::symlink_metadata(source).is_err() => Ok(()),
            result => result,
        },
        SetupOp::JoinCgroups { procs } => procs
            .iter()
            .try_for_each(|p| std::fs::write(p, "0").map_err(|e| io_err("join cgroup", p, e))),
        SetupOp::MakeRootPrivate => sys::mount(
            "make / rprivate",
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
        SetupOp::Tmpfs {
            target,
            options,
            nodev,
        } => {
            let mut flags = MsFlags::MS_NOSUID;
            if *nodev {
                flags |= MsFlags::MS_NODEV;
            }
            sys::mount(
                "mount tmpfs",
                Some(Path::new("tmpfs")),
                target,
                Some("tmpfs"),
                flags,
                Some(options),
            )
        }
        SetupOp::Mkdir { path, mode } => {
            // PID 1 runs with umask 0, so the mode is exactly this.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                *mode,
            )
            .create(path)
            .map_err(|e| io_err("mkdir", path, e))
        }
        SetupOp::Overlay {
            target,
            lowers,
            upper,
            work,
            userxattr,
        } => {
            let data = match overlay_options(lowers, upper, work, *userxattr, false) {
                Ok(data) => data,
                // Too many layers for one option page: one `lowerdir+` per layer instead.
                Err(OverlayOptionsError::TooLong { .. }) => {
                    return sys::mount_overlay_layered(target, lowers, upper, work, *userxattr)
                }
                Err(_) => {
                    return Err(SysError::new(
                        "build overlay options",
                        Some(target),
                        Errno::EINVAL,
                    ))
                }
            };
            sys::mount(
                "mount overlay",
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )
        }
        SetupOp::HostView {
            source,
            target,
            empty,
            userxattr,
        } => {
            let data = host_view_options(source, empty, *userxattr)
                .map_err(|_| SysError::new("build overlay options", Some(target), Errno::EINVAL))?;
            sys::mount(
                "mount a read-only overlay view of a host directory",
                Some(Path::new("overlay")),
                target,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(&data),
            )
        }
        SetupOp::Bind {
            source,
            target,
            readonly,
            recursive,
        } => bind(source, target, *readonly, *recursive),
        SetupOp::Symlink { target, link } => match std::os::unix::fs::symlink(target, link) {
            // An upper layer that outlives its container (a layer being built in several
            // steps) already has the links pristine recreated the first time.
            Err(e) if std::fs::read_link(link).ok().as_deref() == Some(target.as_path()) => {
                let _ = e;
                Ok(())
            }
            r => r.map_err(|e| io_err("symlink", link, e)),
        },
        SetupOp::Proc { target } => sys::mount(
            "mount proc",
            Some(Path::new("proc")),
            target,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        SetupOp::Devpts { target, tty_gid } => {
            let data = if *tty_gid {
                "newinstance,ptmxmode=0666,mode=620,gid=5"
            } else {
                "newinstance,ptmxmode=0666,mode=620"
            };
            sys::mount(
                "mount devpts",
                Some(Path::new("devpts")),
                target,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some(data),
            )
        }
        SetupOp::CharDevice { path, major, minor } => {
            sys::mknod(path, SFlag::S_IFCHR, 0o666, *major, *minor)
        }
        SetupOp::PivotRoot { new_root } => sys::pivot_root_and_detach(new_root),
        SetupOp::Hostname { name } => sys::sethostname(name),
        SetupOp::LoopbackUp => sys::loopback_up(),
    }
}

fn bind(source: &Path, target: &Path, readonly: bool, recursive: bool) -> Result<(), SysError> {
    let meta = std::fs::metadata(source).map_err(|e| io_err("stat bind source", source, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(|e| io_err("mkdir bind target", target, e))?;
    } else if std::fs::symlink_metadata(target).is_err() {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_err("mkdir bind target", parent, e))?;
        }
        std::fs::File::create(target).map_err(|e| io_err("create bind target", target, e))?;
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    sys::mount("bind mount", Some(source), target, None, flags, None)?;
    if readonly {
        // A read-only remount must keep the flags the kernel locked on the source mount
        // (nosuid, nodev, noexec...) or it fails with EPERM in a user namespace.
        let locked = nix::sys::statvfs::statvfs(target)
            .map_err(|e| SysError::new("statvfs", Some(target), e))?
            .flags();
        use nix::sys::statvfs::FsFlags;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if locked.contains(st) {
                flags |= ms;
            }
        }
        sys::mount("remount bind read-only", None, target, None, flags, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
