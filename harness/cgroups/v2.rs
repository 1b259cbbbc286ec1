//! cgroup v2: the unified hierarchy at `/sys/fs/cgroup`.
//!
//! Container cgroups go under the caller's cgroup (the *base*). The kernel lets a cgroup
//! hand controllers to its children only while it holds no processes itself ("no internal
//! processes"), and the caller's cgroup holds at least the caller, unless it is the root.
//! So, as Docker-in-Docker's entrypoint does, pristine moves the base's processes into a
//! leaf it owns, [`LEAF`], enables the controllers, and creates each container's cgroup as
//! a sibling of that leaf. When the last container under the base has ended, it turns the
//! controllers it enabled off again and moves the processes back: the base is left as it
//! was. Every change to the base happens under an `flock` on its directory, so concurrent
//! pristine processes (nextest's tests) agree. A caller found in [`LEAF`] (moved there by
//! another pristine process) uses the leaf's parent as its base.
//!
//! This works wherever the caller may write its own cgroup: as root, and as an ordinary
//! user in a delegated subtree (systemd's `Delegate=yes`). Anywhere else the error says how
//! to get one.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{io, remove_leftovers, write, CgroupError, CgroupManager, ContainerCgroup, Limits};
use crate::sys::xattr;

/// The leaf pristine moves the base's processes into.
pub(crate) const LEAF: &str = "pristine.leaf";

/// On the root cgroup (which may hold processes and enable controllers at once), the
/// controllers pristine enabled, so that the last container turns exactly those off.
const ENABLED_XATTR: &str = "trusted.pristine.enabled";

/// The v2 manager: where the caller is.
pub(crate) struct V2 {
    base: PathBuf,
}

impl V2 {
    pub(crate) fn new(self_cgroup: &str) -> Self {
        V2 {
            base: base_of(Path::new("/sys/fs/cgroup"), self_cgroup),
        }
    }
}

/// The base cgroup for a caller whose `/proc/self/cgroup` is `self_cgroup`.
fn base_of(mount: &Path, self_cgroup: &str) -> PathBuf {
    let rel = self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let own = mount.join(rel.trim_start_matches('/'));
    match own.file_name().is_some_and(|n| n == LEAF) {
        true => own.parent().map(Path::to_path_buf).unwrap_or(own),
        false => own,
    }
}

impl CgroupManager for V2 {
    fn create(&self, name: &str, limits: &Limits) -> Result<ContainerCgroup, CgroupError> {
        let wanted: Vec<&'static str> = [
            limits.memory_bytes.map(|_| "memory"),
            limits.pids.map(|_| "pids"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _lock = lock(&self.base)?;
        remove_leftovers(&self.base);
        enable(&self.base, &wanted)?;
        let dir = self.base.join(format!("pristine-{name}"));
        std::fs::create_dir(&dir).map_err(io("create cgroup", &dir))?;
        let mut cg = ContainerCgroup::new(vec![dir.clone()]);
        cg.v2_base = Some(self.base.clone());
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
            cg.pids = Some((dir.join("pids.events"), n));
        }
        Ok(cg)
    }
}

/// An exclusive `flock` on the base's directory, held while it is changed.
fn lock(base: &Path) -> Result<Flock<File>, CgroupError> {
    let dir = File::open(base).map_err(io("open cgroup", base))?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| CgroupError::Io {
        op: "lock cgroup",
        path: base.to_path_buf(),
        source: e.into(),
    })
}

fn read_words(path: &Path) -> Result<Vec<String>, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

/// Whether `base` is the hierarchy's real root (the only cgroup without `cgroup.type`; a
/// cgroup namespace's root, as in a container, has it).
fn is_root(base: &Path) -> bool {
    !base.join("cgroup.type").exists()
}

/// Makes `wanted` controllers available to the children of `base`.
fn enable(base: &Path, wanted: &[&'static str]) -> Result<(), CgroupError> {
    let on = read_words(&base.join("cgroup.subtree_control"))?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !on.iter().any(|o| o == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let available = read_words(&base.join("cgroup.controllers"))?;
    if let Some(c) = missing.iter().find(|c| !available.iter().any(|a| a == *c)) {
        return Err(CgroupError::NotDelegated {
            controller: c.to_string(),
            cgroup: base.to_path_buf(),
        });
    }
    let root = is_root(base);
    if !root {
        empty_into_leaf(base)?;
    }
    let plus: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    write_control(base, &plus.join(" "))?;
    if root {
        // Remember what to turn off again (on top of what an earlier run remembered).
        let mut mine = enabled_by_us(base);
        mine.extend(missing.iter().map(|c| c.to_string()));
        // Without xattrs on cgroupfs (Linux < 3.15) they stay enabled.
        let _ = xattr::lset(base, ENABLED_XATTR, mine.join(" ").as_bytes());
    }
    Ok(())
}

/// The controllers an earlier container enabled in the root cgroup.
fn enabled_by_us(base: &Path) -> Vec<String> {
    xattr::lget(base, ENABLED_XATTR)
        .ok()
        .flatten()
        .map(|v| {
            String::from_utf8_lossy(&v)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `value` to `base`'s `cgroup.subtree_control`. EBUSY means processes arrived in
/// the base meanwhile (forked by one that was moved): move them too, and retry.
fn write_control(base: &Path, value: &str) -> Result<(), CgroupError> {
    let control = base.join("cgroup.subtree_control");
    let mut tries = 0;
    loop {
        match std::fs::write(&control, value) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 && !is_root(base) => {
                tries += 1;
                empty_into_leaf(base)?;
            }
            Err(e) => return Err(not_writable(base, &control, e)),
            Ok(()) => return Ok(()),
        }
    }
}

/// The error for a cgroup file the caller may not write.
fn not_writable(base: &Path, path: &Path, e: std::io::Error) -> CgroupError {
    match e.raw_os_error() {
        Some(libc::EROFS) => CgroupError::ReadOnly {
            cgroup: base.to_path_buf(),
            source: e,
        },
        Some(libc::EACCES | libc::EPERM) => CgroupError::NotWritable {
            cgroup: base.to_path_buf(),
            source: e,
        },
        _ => CgroupError::Io {
            op: "write",
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Moves every process of `base` into `base/LEAF` (created if missing).
fn empty_into_leaf(base: &Path) -> Result<(), CgroupError> {
    let leaf = base.join(LEAF);
    match std::fs::create_dir(&leaf) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(not_writable(base, &leaf, e)),
        Ok(()) => {}
    }
    move_all(&base.join("cgroup.procs"), &leaf.join("cgroup.procs"), base)
}

/// Moves the processes listed in `from` into the cgroup of `to`, until `from` is empty
/// (processes may fork meanwhile). A process that has exited is skipped.
fn move_all(from: &Path, to: &Path, base: &Path) -> Result<(), CgroupError> {
    for _ in 0..20 {
        let pids = read_words(from)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            match std::fs::write(to, &pid) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(not_writable(base, to, e)),
                Ok(()) => {}
            }
        }
    }
    Ok(())
}

/// After a container's cgroup is gone: if it was the last one under `base`, turns off the
/// controllers pristine enabled there and moves the processes back out of the leaf.
pub(crate) fn release(base: &Path) {
    let Ok(_lock) = lock(base) else { return };
    remove_leftovers(base);
    if has_containers(base) {
        return;
    }
    let leaf = base.join(LEAF);
    let control = base.join("cgroup.subtree_control");
    if is_root(base) {
        let mine = enabled_by_us(base);
        if !mine.is_empty() {
            let minus: Vec<String> = mine.iter().map(|c| format!("-{c}")).collect();
            if std::fs::write(&control, minus.join(" ")).is_ok() {
                let _ = xattr::lremove(base, ENABLED_XATTR);
            }
        }
        return;
    }
    if !leaf.is_dir() {
        return;
    }
    // Only pristine creates the leaf, and only when the base held processes, which means
    // no controller was on: every controller on now is one pristine turned on.
    let on = read_words(&control).unwrap_or_default();
    let minus: Vec<String> = on.iter().map(|c| format!("-{c}")).collect();
    if !minus.is_empty() && std::fs::write(&control, minus.join(" ")).is_err() {
        return;
    }
    if move_all(&leaf.join("cgroup.procs"), &base.join("cgroup.procs"), base).is_ok() {
        let _ = std::fs::remove_dir(&leaf);
    }
}

/// Whether a container cgroup (`pristine-*`) is under `base`.
fn has_containers(base: &Path) -> bool {
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("pristine-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_cgroups_go_under_the_callers_own() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            base_of(m, "0::/user.slice/session-1.scope\n"),
            PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope")
        );
        assert_eq!(base_of(m, "0::/\n"), PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn a_caller_in_the_leaf_uses_the_leafs_parent() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            base_of(m, "0::/ci.slice/job.scope/pristine.leaf\n"),
            PathBuf::from("/sys/fs/cgroup/ci.slice/job.scope")
        );
    }
}
