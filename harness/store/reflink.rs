//! Where the store keeps its data: on a filesystem that can reflink, so that overlayfs's
//! copy-up of a stored layer's file into a container's upper layer is a clone (no bytes
//! copied) instead of a copy of the whole file.
//!
//! ```text
//! STORE/reflink.img    a sparse XFS image (made as root when STORE's filesystem cannot reflink)
//! STORE/reflink.lock   held while the image is made, found or mounted
//! STORE/reflink.probe  what the last `FICLONE` probes found, per mounted filesystem
//! STORE/reflink/       the image's mount point, and then the store's data root: layers,
//!                      images, container uppers all live there, on one filesystem
//! ```
//!
//! The image stays mounted in the host's mount namespace once mounted (every later run and
//! every test process finds it again in `/proc/self/mountinfo`, checks that its loop device
//! is backed by this image, and uses it); `pristine store --unmount` unmounts it, and the
//! loop device detaches itself then. Whether a filesystem reflinks is probed with `FICLONE`,
//! never guessed from its name.
//!
//! The image is made for the implicit default store
//! ([`Store::open_default`](super::Store::open_default) without `PRISTINE_STORE`: what tests
//! and `pristine` use unless told otherwise). A store opened at an explicit directory
//! (`PRISTINE_STORE` included) uses an image that is already there, and makes one only with
//! `PRISTINE_REFLINK=image` (or `pristine store --mount`), so that throwaway stores (in a
//! temporary directory) never leave a mount behind. `PRISTINE_REFLINK=off` keeps everything
//! on STORE's own filesystem.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::MsFlags;

use crate::sys;
use crate::sys::blockdev::{attach_loop, ficlone, loop_backing_file};

/// Largest image made by default (it is sparse: only what is written takes space).
const MAX_IMAGE: u64 = 1 << 40;
/// Smallest image made by default.
const MIN_IMAGE: u64 = 16 << 30;

/// How the store's data root shares blocks between layers and uppers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reflink {
    /// The store's own filesystem reflinks (btrfs, XFS with `reflink=1`, …).
    Native {
        /// Its filesystem type, as `/proc/self/mountinfo` names it.
        fstype: String,
    },
    /// A loop-mounted image file in the store, made by pristine.
    Image {
        /// The image file.
        image: PathBuf,
        /// Its loop device.
        device: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// No reflinks: a write to a stored file copies the whole file into the upper layer.
    Unavailable {
        /// The store filesystem's type.
        fstype: String,
        /// Why no image is used.
        reason: String,
    },
}

impl Reflink {
    /// Whether copy-up is a clone.
    pub fn works(&self) -> bool {
        !matches!(self, Reflink::Unavailable { .. })
    }
}

/// Whether a store may get a reflink image made and mounted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Make and mount one (as root) if the store's filesystem cannot reflink.
    Make,
    /// Use one that is already there; make none.
    FindOnly,
}

impl Policy {
    /// `policy`, as `PRISTINE_REFLINK` overrides it: `off` (none), `image` (make one).
    fn from_env(policy: Policy) -> Option<Policy> {
        match std::env::var("PRISTINE_REFLINK").as_deref() {
            Ok("off") => None,
            Ok("image") => Some(Policy::Make),
            _ => Some(policy),
        }
    }
}

/// Decides (and if allowed and needed makes and mounts) the data root of the store at
/// `root`. Returns the data root and how it reflinks. Never fails: without reflinks the
/// data root is `root` itself and the reason is returned. With `remember` false (a store
/// opened only to look at it) the probe's answer is not written down.
pub(crate) fn data_root(root: &Path, policy: Policy, remember: bool) -> (PathBuf, Reflink) {
    let fstype = fs_type(root).unwrap_or_else(|| "unknown".into());
    let probe_remembered = |dir: &Path| probe_remembered(root, dir, remember);
    if probe_remembered(root) {
        return (root.to_path_buf(), Reflink::Native { fstype });
    }
    let unavailable = |reason: String| {
        (
            root.to_path_buf(),
            Reflink::Unavailable {
                fstype: fstype.clone(),
                reason,
            },
        )
    };
    let Some(policy) = Policy::from_env(policy) else {
        return unavailable("PRISTINE_REFLINK=off".into());
    };
    let mnt = root.join("reflink");
    let image = root.join("reflink.img");
    // Found again, as any user: mounted earlier (by root) and backed by our image.
    if let Some((device, fs)) = mounted_image(&mnt, &image) {
        if probe_remembered(&mnt) {
            return (
                mnt,
                Reflink::Image {
                    image,
                    device,
                    fstype: fs,
                },
            );
        }
    }
    if policy == Policy::FindOnly {
        if image.exists() {
            // Made earlier, not mounted now: mounting it again is what it is there for.
            if let Ok(found) = mount_image(root, &mnt, &image) {
                return (
                    mnt,
                    Reflink::Image {
                        image,
                        device: found.0,
                        fstype: found.1,
                    },
                );
            }
        }
        return unavailable(format!(
            "{fstype} cannot reflink; this store is not the default one, so no reflink image \
             is made for it (PRISTINE_REFLINK=image or `pristine store --mount` makes one)"
        ));
    }
    if sys::effective_ids().0 != 0 {
        return unavailable(format!(
            "{fstype} cannot reflink, and only root can mount a reflink image for the store; \
             put PRISTINE_STORE on a btrfs or XFS (reflink=1) filesystem"
        ));
    }
    match mount_image(root, &mnt, &image) {
        Ok((device, fs)) => (
            mnt,
            Reflink::Image {
                image,
                device,
                fstype: fs,
            },
        ),
        Err(reason) => unavailable(reason),
    }
}

/// Unmounts the store's image, if it is mounted (the loop device then detaches itself).
/// Returns whether it was mounted.
pub(crate) fn unmount(root: &Path) -> Result<bool, String> {
    let mnt = root.join("reflink");
    let image = root.join("reflink.img");
    let _lock = lock(root)?;
    if mounted_image(&mnt, &image).is_none() {
        return Ok(false);
    }
    sys::umount("unmount the store image at", &mnt).map_err(|e| {
        format!("{e} (containers still running on it? they end first; then run this again)")
    })?;
    Ok(true)
}

/// The file in the store's location that remembers what [`probe`] found.
const PROBE_MEMO: &str = "reflink.probe";

/// [`probe`], remembered in `root`'s `reflink.probe` per mounted filesystem (the boot and
/// the mount's never-reused id): a probe creates and removes a directory and two files,
/// which on ext4 cost a `pristine run` about a tenth of its CPU, every run. Kernels before
/// 6.8 (mount ids reused) probe every time. What is remembered only chooses where uppers
/// go (a wrong answer would cost speed, not isolation); the file is the store owner's.
/// Lines of earlier boots are dropped when a line is added.
fn probe_remembered(root: &Path, dir: &Path, remember: bool) -> bool {
    let Some(key) = filesystem_key(dir) else {
        return probe(dir);
    };
    let memo = root.join(PROBE_MEMO);
    let text = std::fs::read_to_string(&memo).unwrap_or_default();
    let known = text
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key);
    if let Some((_, answer)) = known {
        return answer == "yes";
    }
    let works = probe(dir);
    if !remember {
        return works;
    }
    // This boot's other filesystems' lines are kept (the store's own and its image's); a
    // lost race between two processes only costs the loser's line, probed again next time.
    let boot = key.split(' ').next().unwrap_or_default();
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.split(' ').next() == Some(boot))
        .collect();
    let line = format!("{key} {}", if works { "yes" } else { "no" });
    lines.push(&line);
    // Staged under a unique name (processes in other PID namespaces share the store).
    let staged = tempfile::Builder::new()
        .prefix(&format!("{PROBE_MEMO}."))
        .tempfile_in(root);
    let _ = staged.and_then(|mut staged| {
        std::io::Write::write_all(&mut staged, (lines.join("\n") + "\n").as_bytes())?;
        staged.persist(&memo).map_err(|e| e.error)?;
        Ok(())
    });
    works
}

/// Identifies the mounted filesystem that holds `dir` for as long as it stays mounted.
fn filesystem_key(dir: &Path) -> Option<String> {
    let mount = sys::unique_mount_id(dir)?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{} {mount}", boot.trim()))
}

/// Whether `dir`'s filesystem clones a file with `FICLONE`.
pub(crate) fn probe(dir: &Path) -> bool {
    let tmp = match tempfile::Builder::new()
        .prefix(".reflink-probe-")
        .tempdir_in(dir)
    {
        Ok(t) => t,
        Err(_) => return false,
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let Ok(()) = std::fs::write(&a, [0u8; 4096]) else {
        return false;
    };
    match (File::open(&a), File::create(&b)) {
        (Ok(src), Ok(dest)) => ficlone(&dest, &src).is_ok(),
        _ => false,
    }
}

fn lock(root: &Path) -> Result<Flock<File>, String> {
    let path = root.join("reflink.lock");
    let file = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", path.display()))
}

/// Makes the image (once) and mounts it at `mnt`, under the store's lock.
fn mount_image(root: &Path, mnt: &Path, image: &Path) -> Result<(PathBuf, String), String> {
    let _lock = lock(root)?;
    // Another process may have mounted it while we waited for the lock.
    if let Some(found) = mounted_image(mnt, image) {
        return Ok(found);
    }
    if !image.exists() {
        make_image(root, image)?;
    }
    std::fs::create_dir_all(mnt).map_err(|e| format!("create {}: {e}", mnt.display()))?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("open {}: {e}", image.display()))?;
    let (device, _attached) = attach_loop(&file, image).map_err(|e| e.to_string())?;
    let mut last = String::new();
    // Right after an unmount the image's previous loop device and superblock go away
    // asynchronously; until then the same filesystem cannot be mounted again: retry briefly.
    let attempts = ["xfs", "btrfs"].into_iter().cycle().take(2 * 10);
    for (i, fstype) in attempts.enumerate() {
        if i >= 2 && i % 2 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        match sys::mount(
            "mount the store image at",
            Some(&device),
            mnt,
            Some(fstype),
            MsFlags::MS_NOATIME,
            None,
        ) {
            Ok(()) => {
                if !probe(mnt) {
                    let _ = sys::umount("unmount the store image at", mnt);
                    return Err(format!(
                        "{} mounted as {fstype} but cannot reflink (made without reflink=1?); \
                         remove it to have it made again",
                        image.display()
                    ));
                }
                return Ok((device, fstype.into()));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "{last} (is {} an XFS or btrfs image?)",
        image.display()
    ))
}

/// Makes a sparse XFS (reflink=1) image, or btrfs when only mkfs.btrfs is installed; the
/// file appears under its name only once complete.
fn make_image(root: &Path, image: &Path) -> Result<(), String> {
    let size = image_size(root);
    let tmp = root.join(format!(".reflink.img.{}", std::process::id()));
    let made = (|| {
        let f = File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        f.set_len(size)
            .map_err(|e| format!("size {}: {e}", tmp.display()))?;
        drop(f);
        let tools: [(&str, &[&str]); 2] = [
            ("mkfs.xfs", &["-q", "-m", "reflink=1"]),
            ("mkfs.btrfs", &["-q"]),
        ];
        for (tool, args) in tools {
            match Command::new(tool).args(args).arg(&tmp).output() {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => {
                    return Err(format!(
                        "{tool} {} failed: {}",
                        tmp.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("run {tool}: {e}")),
            }
        }
        Err("neither mkfs.xfs nor mkfs.btrfs is installed (apt-get install xfsprogs)".into())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{} cannot reflink and no reflink image could be made for it: {e}",
            root.display()
        ));
    }
    std::fs::rename(&tmp, image).map_err(|e| format!("rename to {}: {e}", image.display()))
}

/// The image's (sparse) size: the store filesystem's size, between 16 GiB and 1 TiB.
fn image_size(root: &Path) -> u64 {
    nix::sys::statvfs::statvfs(root)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(MIN_IMAGE)
        .clamp(MIN_IMAGE, MAX_IMAGE)
}

/// The loop device and filesystem type of the mount at `mnt`, if it is our image.
fn mounted_image(mnt: &Path, image: &Path) -> Option<(PathBuf, String)> {
    let mnt = std::fs::canonicalize(mnt).ok()?;
    let image = std::fs::canonicalize(image).ok()?;
    // The last mount at a mount point is the visible one.
    let m = sys::mountinfo::read()
        .into_iter()
        .rfind(|m| m.point == mnt)?;
    let device = PathBuf::from(&m.source);
    let backing = loop_backing_file(&device)?;
    (std::fs::canonicalize(&backing).ok()? == image).then_some((device, m.fstype))
}

/// The filesystem type of the mount that holds `path`.
pub(crate) fn fs_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    sys::mountinfo::read()
        .into_iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .map(|m| m.fstype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_does_not_reflink() {
        // /dev/shm is a tmpfs on every Linux system with glibc.
        if fs_type(Path::new("/dev/shm")).as_deref() == Some("tmpfs") {
            assert!(!probe(Path::new("/dev/shm")));
        }
    }

    #[test]
    fn a_missing_directory_does_not_reflink() {
        assert!(!probe(Path::new("/nonexistent/pristine")));
    }

    #[test]
    fn the_memo_keeps_this_boots_lines_and_is_not_written_when_only_looking() {
        let root = tempfile::tempdir().unwrap();
        let Some(key) = filesystem_key(root.path()) else {
            return; // a kernel before 6.8: nothing is remembered (probed every time)
        };
        let memo = root.path().join(PROBE_MEMO);
        let works = probe_remembered(root.path(), root.path(), false);
        assert!(!memo.exists(), "written while only looking");
        std::fs::write(&memo, "old-boot 12 yes\n").unwrap();
        assert_eq!(probe_remembered(root.path(), root.path(), true), works);
        let answer = if works { "yes" } else { "no" };
        assert_eq!(
            std::fs::read_to_string(&memo).unwrap(),
            format!("{key} {answer}\n")
        );
        // Only the memo is left: no staged copy.
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [PROBE_MEMO]);
    }
}
