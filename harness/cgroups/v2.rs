//! cgroup v2: the unified hierarchy at `/sys/fs/cgroup`.

use std::path::PathBuf;
use std::sync::Once;

use super::{io, remove_leftovers, write, CgroupError, CgroupManager, ContainerCgroup, Limits};

/// The caller's v2 cgroup; container cgroups are created below it.
pub(crate) struct V2 {
    parent: PathBuf,
    cleaned: Once,
}

impl V2 {
    pub(crate) fn new(self_cgroup: &str) -> Self {
        let rel = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        V2 {
            parent: PathBuf::from("/sys/fs/cgroup").join(rel.trim_start_matches('/')),
            cleaned: Once::new(),
        }
    }
}

impl CgroupManager for V2 {
    fn create(&self, name: &str, limits: &Limits) -> Result<ContainerCgroup, CgroupError> {
        self.cleaned.call_once(|| remove_leftovers(&self.parent));
        // Controllers must be enabled for the children of our cgroup. The kernel refuses
        // this while our cgroup itself has processes ("no internal processes"), unless it
        // is the root: say what to do then.
        let wanted: Vec<&str> = [
            limits.memory_bytes.map(|_| "+memory"),
            limits.pids.map(|_| "+pids"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let control = self.parent.join("cgroup.subtree_control");
        std::fs::write(&control, wanted.join(" ")).map_err(|e| CgroupError::NoController {
            controller: if limits.memory_bytes.is_some() { "memory" } else { "pids" },
            detail: format!(
                "enabling it in {} failed ({e}); run pristine in a cgroup of its own with the controllers delegated",
                control.display()
            ),
        })?;
        let dir = self.parent.join(format!("pristine-{name}"));
        std::fs::create_dir(&dir).map_err(io("create cgroup", &dir))?;
        let mut cg = ContainerCgroup {
            join: vec![dir.join("cgroup.procs")],
            dirs: vec![dir.clone()],
            memory: None,
        };
        if let Some(bytes) = limits.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            cg.memory = Some(super::MemoryWatch {
                events: dir.join("memory.events"),
                failcnt: None,
                limit: bytes,
            });
        }
        if let Some(n) = limits.pids {
            write(&dir.join("pids.max"), &n.to_string())?;
        }
        Ok(cg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_cgroups_go_under_the_callers_own() {
        let v2 = V2::new("0::/user.slice/session-1.scope\n");
        assert_eq!(
            v2.parent,
            PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope")
        );
        assert_eq!(V2::new("0::/\n").parent, PathBuf::from("/sys/fs/cgroup"));
    }
}
