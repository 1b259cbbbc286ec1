//! Resource limits for containers, through cgroups: v1 (one hierarchy per controller) and
//! v2 (the unified hierarchy) behind one trait, as youki's libcgroups does.
//!
//! Each limited container gets its own cgroup under the caller's, per controller (on v2
//! beside a leaf the caller's processes move into: see `v2`). The container's PID 1 is
//! created in it (`CLONE_INTO_CGROUP`, v2, Linux 5.7) or joins it as its first setup step,
//! so every process it starts is limited. The cgroup is removed when the container has
//! ended, or by the next container of a later process if the caller was killed.

mod limits;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use limits::{parse_size, Limits};

/// Why a container's cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Limits were asked for in rootless mode on cgroup v1, which cannot be delegated.
    #[error("resource limits as an ordinary user need cgroup v2 (this host has cgroup v1, which cannot be delegated to a user); run as root, or boot with cgroup v2 only (kernel command line `systemd.unified_cgroup_hierarchy=1`)")]
    Rootless,
    /// The caller may not write its own cgroup (an ordinary user outside a delegated
    /// subtree, or a read-only `/sys/fs/cgroup` in a container).
    #[error("resource limits need a cgroup v2 subtree delegated to this user, and {cgroup} is not writable ({source}); run the tests under `systemd-run --user --scope -p Delegate=yes -- COMMAND` (systemd's user manager delegates memory and pids), or as root")]
    NotWritable {
        /// The caller's cgroup.
        cgroup: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup filesystem is mounted read-only: inside a podman or docker container
    /// that is not `--privileged`.
    #[error("resource limits need a writable cgroup filesystem, and {cgroup} is on a read-only mount ({source}); podman and docker mount /sys/fs/cgroup read-only in a container unless it runs with `--privileged`: run the container with `--privileged`, or leave out the memory and pids limits")]
    ReadOnly {
        /// The caller's cgroup.
        cgroup: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The controller is not enabled for the caller's cgroup by its parent.
    #[error("the {controller} controller is not delegated to {cgroup} (it is missing from its cgroup.controllers); enable it in the parent's cgroup.subtree_control as root, or run under `systemd-run --user --scope -p Delegate=yes -- COMMAND`, or for a systemd service set `Delegate=yes`")]
    NotDelegated {
        /// `memory` or `pids`.
        controller: String,
        /// The caller's cgroup.
        cgroup: PathBuf,
    },
    /// A controller is not available.
    #[error("the {controller} cgroup controller is not available on this host ({detail})")]
    NoController {
        /// `memory` or `pids`.
        controller: &'static str,
        /// What was looked at.
        detail: String,
    },
    /// Creating or configuring the cgroup failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| match source.raw_os_error() {
        Some(libc::EROFS) => CgroupError::ReadOnly {
            cgroup: path.parent().unwrap_or(path).to_path_buf(),
            source,
        },
        _ => CgroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// One container's cgroup(s). Removed when dropped (after the container has ended).
#[derive(Debug)]
pub struct ContainerCgroup {
    /// Files PID 1 writes `0` to, to join (one `cgroup.procs` per hierarchy).
    pub(crate) join: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// With a pids limit: the cgroup's `pids.events` and the limit.
    pids: Option<(PathBuf, u64)>,
    /// v2: the cgroup the container's was created under, released after it.
    v2_base: Option<PathBuf>,
    /// With a memory limit: where the kernel counts OOM kills, and the limit.
    memory: Option<MemoryWatch>,
}

/// Where a memory cgroup's OOM kills are counted: v1 `memory.oom_control` and v2
/// `memory.events` both have an `oom_kill N` line (v1 since Linux 4.13; before that, v1's
/// `memory.failcnt` says the limit was hit at all).
#[derive(Debug)]
struct MemoryWatch {
    events: PathBuf,
    failcnt: Option<PathBuf>,
    limit: u64,
}

impl ContainerCgroup {
    fn new(dirs: Vec<PathBuf>) -> Self {
        ContainerCgroup {
            join: dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
            dirs,
            pids: None,
            v2_base: None,
            memory: None,
        }
    }

    /// The pids limit, if a `fork` or `clone` in the container failed because of it
    /// (`pids.events`: `max N`, counted on v1 and v2 since Linux 4.3).
    pub(crate) fn pids_limit_hit(&self) -> Option<u64> {
        let (events, limit) = self.pids.as_ref()?;
        let text = std::fs::read_to_string(events).ok()?;
        let hits = event_count(&text, "max")?;
        (hits > 0).then_some(*limit)
    }

    /// The memory limit, if the kernel's OOM killer killed a process of this cgroup.
    pub(crate) fn oom_killed(&self) -> Option<u64> {
        let m = self.memory.as_ref()?;
        let events = std::fs::read_to_string(&m.events).ok()?;
        let hit = match (event_count(&events, "oom_kill"), &m.failcnt) {
            (Some(n), _) => n > 0,
            (None, Some(f)) => std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0),
            (None, None) => false,
        };
        hit.then_some(m.limit)
    }
}

/// The value of the `key N` line of an events file.
fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_cgroup(dir);
        }
        if let Some(base) = &self.v2_base {
            v2::release(base);
        }
    }
}

/// `rmdir` of a cgroup; its last processes may still be exiting, so retry briefly.
fn remove_cgroup(dir: &Path) {
    for _ in 0..200 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            _ => return,
        }
    }
}

/// Removes the empty `pristine-*` cgroups in `parent` left by killed callers: a live
/// container's cgroup has processes, so removing it fails and it stays; one that another
/// process has just created and its PID 1 not yet joined is empty but young, and stays too.
fn remove_leftovers(parent: &Path) {
    let old = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60))
    };
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("pristine-") && old(&e) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The container's cgroup v2 directory, opened for `CLONE_INTO_CGROUP`, if its setup joins
/// exactly one cgroup and that is on the unified hierarchy (`None` on v1: the setup joins).
pub(crate) fn open_v2_dir(ops: &[crate::setup::SetupOp]) -> Option<std::os::fd::OwnedFd> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    let procs = ops.iter().find_map(|op| match op {
        crate::setup::SetupOp::JoinCgroups { procs } if procs.len() == 1 => procs.first(),
        _ => None,
    })?;
    let dir = procs.parent()?;
    statfs(dir)
        .ok()
        .filter(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)?;
    std::fs::File::open(dir)
        .ok()
        .map(std::os::fd::OwnedFd::from)
}

/// A cgroup hierarchy pristine can create container cgroups in.
pub trait CgroupManager: Send + Sync {
    /// Creates the cgroup(s) of container `name` with `limits`.
    fn create(&self, name: &str, limits: &Limits) -> Result<ContainerCgroup, CgroupError>;
}

/// The manager for this host: v2 if `/sys/fs/cgroup` is the unified hierarchy, else v1.
pub fn manager() -> Result<&'static dyn CgroupManager, CgroupError> {
    use std::sync::OnceLock;
    static MANAGER: OnceLock<Result<Box<dyn CgroupManager>, String>> = OnceLock::new();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !v2 && !nix::unistd::geteuid().is_root() {
        return Err(CgroupError::Rootless);
    }
    let m = MANAGER.get_or_init(|| {
        let self_cgroup =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        if v2 {
            Ok(Box::new(v2::V2::new(&self_cgroup)) as Box<dyn CgroupManager>)
        } else {
            let mountinfo = std::fs::read("/proc/self/mountinfo").map_err(|e| e.to_string())?;
            let mounts = crate::sys::mountinfo::parse(&mountinfo);
            Ok(Box::new(v1::V1::new(&self_cgroup, &mounts)) as Box<dyn CgroupManager>)
        }
    });
    match m {
        Ok(m) => Ok(m.as_ref()),
        Err(e) => Err(CgroupError::NoController {
            controller: "memory",
            detail: e.clone(),
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_counts_are_read_by_key() {
        let text = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n";
        assert_eq!(super::event_count(text, "max"), Some(3));
        assert_eq!(super::event_count(text, "oom_kill"), Some(1));
        assert_eq!(super::event_count(text, "oom_group_kill"), None);
    }

    #[test]
    fn clone_into_cgroup_only_for_one_cgroup_v2_directory() {
        use crate::setup::SetupOp;
        let join = |procs: &[&str]| {
            vec![SetupOp::JoinCgroups {
                procs: procs.iter().map(std::path::PathBuf::from).collect(),
            }]
        };
        // Not a cgroup filesystem, or more than one hierarchy (v1): the setup joins.
        assert!(super::open_v2_dir(&join(&["/tmp/cgroup.procs"])).is_none());
        let two = join(&["/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"]);
        assert!(super::open_v2_dir(&two).is_none());
        assert!(super::open_v2_dir(&[]).is_none());
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let one = join(&["/sys/fs/cgroup/cgroup.procs"]);
        assert_eq!(super::open_v2_dir(&one).is_some(), v2);
    }
}
