//! cgroup v1: one hierarchy per controller (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`).

use std::path::{Path, PathBuf};
use std::sync::Once;

use super::{io, remove_leftovers, write, CgroupError, CgroupManager, ContainerCgroup, Limits};
use crate::sys::mountinfo::Mount;

/// The v1 hierarchies of the memory and pids controllers, at the caller's own cgroups.
pub(crate) struct V1 {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cleaned: Once,
}

impl V1 {
    pub(crate) fn new(self_cgroup: &str, mounts: &[Mount]) -> Self {
        V1 {
            memory: controller_dir("memory", self_cgroup, mounts),
            pids: controller_dir("pids", self_cgroup, mounts),
            cleaned: Once::new(),
        }
    }
}

/// Where this process's cgroup of `controller` is: the controller's mount point joined with
/// the path `/proc/self/cgroup` gives for it, less the mount's own root. Inside a container
/// (podman or docker on cgroup v1, a host cgroup namespace) the hierarchy is mounted at the
/// container's cgroup, e.g. root `/libpod_parent/libpod-ID` at `/sys/fs/cgroup/memory`,
/// while `/proc/self/cgroup` still names the full path.
fn controller_dir(controller: &str, self_cgroup: &str, mounts: &[Mount]) -> Option<PathBuf> {
    let m = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == controller))?;
    let (root, mount) = (&m.root, &m.point);
    let rel = self_cgroup.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let _id = f.next()?;
        f.next()?
            .split(',')
            .any(|c| c == controller)
            .then(|| f.next())?
    })?;
    let rel = match Path::new(rel).strip_prefix(root) {
        Ok(below) => below,
        Err(_) => Path::new(rel.trim_start_matches('/')),
    };
    Some(mount.join(rel))
}

impl CgroupManager for V1 {
    fn create(&self, name: &str, limits: &Limits) -> Result<ContainerCgroup, CgroupError> {
        self.cleaned.call_once(|| {
            for d in [&self.memory, &self.pids].into_iter().flatten() {
                remove_leftovers(d);
            }
        });
        let mut cg = ContainerCgroup::new(Vec::new());
        let mut pids = None;
        let mut memory = None;
        let mut make = |parent: &Option<PathBuf>, controller: &'static str| {
            let parent = parent.as_ref().ok_or(CgroupError::NoController {
                controller,
                detail: "no v1 hierarchy mounted for it".into(),
            })?;
            let dir = parent.join(format!("pristine-{name}"));
            std::fs::create_dir(&dir).map_err(io("create cgroup", &dir))?;
            cg.dirs.push(dir.clone());
            cg.join.push(dir.join("cgroup.procs"));
            Ok::<PathBuf, CgroupError>(dir)
        };
        if let Some(bytes) = limits.memory_bytes {
            let dir = make(&self.memory, "memory")?;
            write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // Swap counts too where the kernel accounts it (memsw), so the limit is real.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
            memory = Some(super::MemoryWatch {
                events: dir.join("memory.oom_control"),
                failcnt: Some(dir.join("memory.failcnt")),
                limit: bytes,
            });
        }
        if let Some(n) = limits.pids {
            let dir = make(&self.pids, "pids")?;
            write(&dir.join("pids.max"), &n.to_string())?;
            pids = Some((dir.join("pids.events"), n));
        }
        cg.pids = pids;
        cg.memory = memory;
        Ok(cg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_controller_directories() {
        let mountinfo = &crate::sys::mountinfo::parse(
            b"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
              39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n",
        );
        let self_cgroup = "8:pids:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            controller_dir("memory", self_cgroup, mountinfo),
            Some(Path::new("/sys/fs/cgroup/memory/process_api/abc").to_path_buf())
        );
        assert_eq!(
            controller_dir("pids", self_cgroup, mountinfo),
            Some(Path::new("/sys/fs/cgroup/pids").to_path_buf())
        );
        assert_eq!(controller_dir("cpu", self_cgroup, mountinfo), None);
    }

    #[test]
    fn a_container_sees_its_own_cgroup_at_the_mount_point() {
        let mountinfo = &crate::sys::mountinfo::parse(b"106 105 0:29 /libpod_parent/libpod-f53a /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n");
        let self_cgroup = "4:memory:/libpod_parent/libpod-f53a\n";
        assert_eq!(
            controller_dir("memory", self_cgroup, mountinfo),
            Some(Path::new("/sys/fs/cgroup/memory").to_path_buf())
        );
    }
}
