//! Resource limits for containers, through cgroups: v1 (one hierarchy per controller) and
//! v2 (the unified hierarchy) behind one trait, as youki's libcgroups does.
//!
//! Each limited container gets its own cgroup under the caller's, per controller; the
//! container's PID 1 joins it as the first setup step, so every process it starts is
//! limited. The cgroup is removed when the container has ended, or by the next container
//! of a later process if the caller was killed.

mod limits;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use limits::{parse_size, Limits};

/// Why a container's cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Limits were asked for in rootless mode.
    #[error("resource limits need cgroups, which an unprivileged user cannot write here; run as root, or run pristine inside a delegated cgroup v2 subtree (e.g. `systemd-run --user --scope -p Delegate=yes`)")]
    Rootless,
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
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One container's cgroup(s). Removed when dropped (after the container has ended).
#[derive(Debug)]
pub struct ContainerCgroup {
    /// Files PID 1 writes `0` to, to join (one `cgroup.procs` per hierarchy).
    pub(crate) join: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
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
    /// The memory limit, if the kernel's OOM killer killed a process of this cgroup.
    pub(crate) fn oom_killed(&self) -> Option<u64> {
        let m = self.memory.as_ref()?;
        let events = std::fs::read_to_string(&m.events).ok()?;
        let kills = events.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == "oom_kill").then(|| v.trim().parse::<u64>().ok())?
        });
        let hit = match (kills, &m.failcnt) {
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

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_cgroup(dir);
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

/// Removes the empty `pristine-*` cgroups in `parent` (left by killed callers; a live
/// container's cgroup has processes, so removing it fails and it stays).
fn remove_leftovers(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("pristine-") {
            let _ = std::fs::remove_dir(e.path());
        }
    }
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
    if !nix::unistd::geteuid().is_root() {
        return Err(CgroupError::Rootless);
    }
    let m = MANAGER.get_or_init(|| {
        let self_cgroup =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Ok(Box::new(v2::V2::new(&self_cgroup)) as Box<dyn CgroupManager>)
        } else {
            Ok(Box::new(v1::V1::new(&self_cgroup, &mountinfo)) as Box<dyn CgroupManager>)
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
