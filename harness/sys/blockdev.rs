//! Reflinks and loop devices: `FICLONE` (does a filesystem share blocks between files?) and
//! `LOOP_CONFIGURE` (a loop device over an image file, for the store's reflink filesystem).
//!
//! nix has neither request and libc only the `FICLONE` number; the loop structures are the
//! kernel's `linux/loop.h` (stable ABI since Linux 5.8 for `LOOP_CONFIGURE`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{SysError, SysResult};

/// `ioctl(dest, FICLONE, src)`: makes `dest` share all of `src`'s blocks. Fails with
/// `EOPNOTSUPP`/`EINVAL` where the filesystem cannot (ext4, tmpfs) and `EXDEV` across
/// filesystems.
pub fn ficlone(dest: &File, src: &File) -> Result<(), Errno> {
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor by value and writes no memory of ours.
    let r = unsafe { libc::ioctl(dest.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    Errno::result(r).map(drop)
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// Detach the device when its last user (the mount) lets go of it.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `image` (open read-write) to a free loop device that detaches itself once its
/// last user (the mount made from it) is gone. Returns the device's path; the returned
/// file keeps it attached until the mount holds it.
pub fn attach_loop(image: &File, image_path: &Path) -> SysResult<(PathBuf, File)> {
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = File::options()
        .read(true)
        .write(true)
        .open(ctl_path)
        .map_err(|e| io_err("open", ctl_path, e))?;
    // Another process may take the free device between the two calls: try a few times.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and writes no memory.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        let n = Errno::result(n).map_err(|e| SysError::new("find a free loop device", None, e))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let file = File::options()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| io_err("open", &dev, e))?;
        let mut config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            // SAFETY: an all-zero loop_info64 is the kernel's "no options" value.
            info: unsafe { std::mem::zeroed() },
            reserved: [0; 8],
        };
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = image_path.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        config.info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: `config` is a valid loop_config that outlives the call; the kernel only
        // reads it.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CONFIGURE, &config) };
        match Errno::result(r) {
            Ok(_) => return Ok((dev, file)),
            Err(Errno::EBUSY) => continue,
            Err(e) => return Err(SysError::new("attach the store image to", Some(&dev), e)),
        }
    }
    Err(SysError::new("find a free loop device", None, Errno::EBUSY))
}

/// The image file behind loop device `dev` (`/dev/loopN`), if it has one.
pub fn loop_backing_file(dev: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let name = dev.file_name()?.to_str()?;
    // Bytes: the file's path need not be UTF-8.
    let mut s = std::fs::read(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    if s.last() == Some(&b'\n') {
        s.pop();
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(s)))
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> SysError {
    SysError::new(
        op,
        Some(path),
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structures_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn ficlone_fails_cleanly_across_filesystems_or_where_unsupported() {
        // /proc can never share blocks with anything: whatever the temp dir's filesystem,
        // cloning a proc file into it is refused, not a crash.
        let dir = tempfile::tempdir().unwrap();
        let dest = File::create(dir.path().join("d")).unwrap();
        let src = File::open("/proc/self/status").unwrap();
        assert!(ficlone(&dest, &src).is_err());
    }
}
