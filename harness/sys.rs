//! Every system call pristine makes for container setup goes through this module.
//!
//! Most calls are thin wrappers over `nix`; the few that `nix` does not cover (the
//! vfork-style `clone` that starts the init process, `SIOCSIFFLAGS`, xattrs) use `libc`
//! directly. Each `unsafe` block says why it is sound. Failures come back as [`SysError`],
//! which always names the operation and, where there is one, the path.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::Pid;

pub mod blockdev;
pub(crate) mod mountinfo;
pub mod tree;

/// A failed system call: which operation, on which path, and the kernel's error number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}{}: {errno}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
pub struct SysError {
    /// The operation, as a short phrase ("mount overlay", "pivot_root").
    pub op: &'static str,
    /// The path the operation was applied to, if any.
    pub path: Option<PathBuf>,
    /// The error number the kernel returned.
    pub errno: Errno,
}

impl SysError {
    pub(crate) fn new(op: &'static str, path: Option<&Path>, errno: Errno) -> Self {
        Self {
            op,
            path: path.map(Path::to_path_buf),
            errno,
        }
    }
}

/// Result of a wrapped system call.
pub type SysResult<T> = Result<T, SysError>;

fn at<T>(op: &'static str, path: &Path, r: nix::Result<T>) -> SysResult<T> {
    r.map_err(|e| SysError::new(op, Some(path), e))
}

fn no_path<T>(op: &'static str, r: nix::Result<T>) -> SysResult<T> {
    r.map_err(|e| SysError::new(op, None, e))
}

// ---------------------------------------------------------------------------------------
// Mounts

/// `mount(2)`. `op` names the mount for error messages ("mount overlay", "mount proc").
pub fn mount(
    op: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> SysResult<()> {
    at(
        op,
        target,
        nix::mount::mount(source, target, fstype, flags, data),
    )
}

/// `umount2(target, 0)`: fails with `EBUSY` while anything uses the mount.
pub fn umount(op: &'static str, target: &Path) -> SysResult<()> {
    at(op, target, nix::mount::umount2(target, MntFlags::empty()))
}

/// Makes `new_root` the root of this mount namespace and detaches the old root.
///
/// Uses the `pivot_root(".", ".")` idiom (as runc and bubblewrap do): after the call the old
/// root is stacked on top of the new one at `/`, so unmounting `.` removes exactly the old
/// root and no directory for it is needed inside the new root.
pub fn pivot_root_and_detach(new_root: &Path) -> SysResult<()> {
    at("chdir to new root", new_root, nix::unistd::chdir(new_root))?;
    at("pivot_root", new_root, nix::unistd::pivot_root(".", "."))?;
    // MNT_DETACH: processes outside (there are none in this namespace) may still use it; it
    // disappears as soon as nothing references it.
    at(
        "detach old root",
        Path::new("/"),
        nix::mount::umount2(".", MntFlags::MNT_DETACH),
    )?;
    at("chdir", Path::new("/"), nix::unistd::chdir("/"))
}

/// Creates a device node.
pub fn mknod(path: &Path, kind: SFlag, perm: u32, major: u64, minor: u64) -> SysResult<()> {
    at(
        "mknod",
        path,
        nix::sys::stat::mknod(
            path,
            kind,
            Mode::from_bits_truncate(perm),
            nix::sys::stat::makedev(major, minor),
        ),
    )
}

/// Moves the calling process into a new cgroup namespace, rooted at its cgroup now; a
/// no-op on kernels without cgroup namespaces (Linux < 4.6).
pub fn unshare_cgroup_namespace() -> SysResult<()> {
    if !Path::new("/proc/self/ns/cgroup").exists() {
        return Ok(());
    }
    no_path(
        "unshare cgroup namespace",
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP),
    )
}

/// Sets the process umask, returning the previous one.
pub fn umask(mask: u32) -> u32 {
    nix::sys::stat::umask(Mode::from_bits_truncate(mask)).bits()
}

// ---------------------------------------------------------------------------------------
// Identity and network

/// Sets the UTS hostname.
pub fn sethostname(name: &str) -> SysResult<()> {
    no_path("sethostname", nix::unistd::sethostname(name))
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> SysResult<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = no_path(
        "socket for loopback setup",
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ),
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`; `req` is a valid, initialised ifreq that
    // lives for the duration of the call, and `sock` is an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc < 0 {
        return Err(SysError::new(
            "bring loopback up (SIOCSIFFLAGS lo)",
            None,
            Errno::last(),
        ));
    }
    Ok(())
}

/// Whether `path` is on overlayfs (so that an overlay over it stacks one level deeper: the
/// kernel allows two). An unreadable path counts as not.
pub fn is_overlayfs(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, OVERLAYFS_SUPER_MAGIC};
    statfs(path).is_ok_and(|s| s.filesystem_type() == OVERLAYFS_SUPER_MAGIC)
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount's 64-bit id, never reused until reboot.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// The never-reused id of the mount that holds `path` (`STATX_MNT_ID_UNIQUE`, Linux 6.8),
/// or `None` on older kernels, where mount ids are reused and so identify nothing.
pub fn unique_mount_id(path: &Path) -> Option<u64> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let flags = StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = statx(CWD, path, AtFlags::empty(), flags).ok()?;
    (st.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(st.stx_mnt_id)
}

/// The calling process's effective uid and gid.
pub fn effective_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

// ---------------------------------------------------------------------------------------
// Processes and signals

/// Sends `sig` to `pid` (negative pids address groups, -1 everything visible).
pub fn kill(pid: i32, sig: Signal) -> SysResult<()> {
    no_path("kill", nix::sys::signal::kill(Pid::from_raw(pid), sig))
}

/// How a waited-for child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal (its number: real-time signals have no name) killed it.
    Signaled(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Exited(code) => write!(f, "exit code {code}"),
            Ended::Signaled(sig) => match Signal::try_from(sig) {
                Ok(named) => write!(f, "signal {named}"),
                Err(_) => write!(f, "signal {sig}"),
            },
        }
    }
}

/// How a child ended, waited for through its pidfd (`waitid(P_PIDFD)`, Linux 5.4): never
/// another process that reused its pid.
pub(crate) fn wait_pidfd(pidfd: &OwnedFd) -> SysResult<Ended> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    use std::os::fd::AsFd;
    loop {
        let status = match waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            // Without WNOHANG there is always a status.
            Ok(Some(status)) => status,
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(SysError::new(
                    "waitid(P_PIDFD)",
                    None,
                    Errno::from_raw(e.raw_os_error()),
                ))
            }
        };
        return Ok(match status.terminating_signal() {
            Some(sig) if !status.exited() => Ended::Signaled(sig),
            _ => Ended::Exited(status.exit_status().unwrap_or(0)),
        });
    }
}

/// Sends `sig` to the process `pidfd` refers to (never to another one that reused its pid).
pub fn pidfd_signal(pidfd: &OwnedFd, sig: Signal) -> SysResult<()> {
    let sig = rustix::process::Signal::from_named_raw(sig as i32)
        .ok_or_else(|| SysError::new("pidfd_send_signal", None, Errno::EINVAL))?;
    rustix::process::pidfd_send_signal(pidfd, sig)
        .map_err(|e| SysError::new("pidfd_send_signal", None, Errno::from_raw(e.raw_os_error())))
}

/// Asks the kernel to send `sig` to this process when its parent thread exits.
pub fn set_parent_death_signal(sig: Signal) -> SysResult<()> {
    no_path(
        "prctl(PR_SET_PDEATHSIG)",
        nix::sys::prctl::set_pdeathsig(sig),
    )
}

/// Blocks `set` in this thread and returns the previous mask.
pub fn block_signals(set: &SigSet) -> SysResult<SigSet> {
    let mut old = SigSet::empty();
    no_path(
        "sigprocmask",
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), Some(&mut old)),
    )?;
    Ok(old)
}

/// Replaces this thread's signal mask.
pub fn set_signal_mask(set: &SigSet) -> SysResult<()> {
    no_path(
        "sigprocmask",
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(set), None),
    )
}

/// Restores the default disposition of `SIGPIPE`.
///
/// Used in the init's child before `exec`: Rust's runtime ignores `SIGPIPE` in the init, and
/// ignored signals stay ignored across `exec`. This is what `std::process::Command` does
/// too; the init installs no other handler (it waits for signals with them blocked), so
/// nothing else needs resetting, and one call instead of one per signal keeps the hot path
/// short.
pub fn reset_sigpipe() {
    // SAFETY: installing SIG_DFL runs no user code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
}

/// Ignores (`true`) or restores the default disposition of `SIGCHLD`. The zygote ignores
/// it so the kernel reaps containers; their PID 1 must restore it to see its children.
pub fn set_sigchld_ignored(ignored: bool) {
    let handler = if ignored {
        nix::sys::signal::SigHandler::SigIgn
    } else {
        nix::sys::signal::SigHandler::SigDfl
    };
    // SAFETY: SIG_IGN and SIG_DFL run no user code.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGCHLD, handler) };
}

/// The pidfd of the process [`forward_signals`]'s handler passes signals to (-1: none).
static FORWARD_PIDFD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Sets (or, with `None`, clears) the pidfd of the process that signals caught by
/// [`forward_signals`] go to; it must stay open until the target is cleared.
pub fn set_forward_target(pidfd: Option<RawFd>) {
    FORWARD_PIDFD.store(pidfd.unwrap_or(-1), std::sync::atomic::Ordering::SeqCst);
}

/// Installs handlers for `signals` that pass each one on to the process set with
/// [`set_forward_target`]; with no target, the signal takes its default action.
pub fn forward_signals(signals: &[Signal]) {
    extern "C" fn forward(sig: libc::c_int) {
        let pidfd = FORWARD_PIDFD.load(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: pidfd_send_signal (a raw system call), signal and raise are
        // async-signal-safe; the pidfd stays open while it is the target.
        unsafe {
            if pidfd >= 0 {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            } else {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
    }
    for &sig in signals {
        // SAFETY: the handler only calls async-signal-safe functions and reads an atomic.
        let _ = unsafe {
            nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::Handler(forward))
        };
    }
}

/// Ends the process at once: no destructors, no atexit handlers, no stdio flush (for
/// forked children, which must not run their parent's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call and does not return.
    unsafe { libc::_exit(code) }
}

/// One `write(2)` of `data` to `fd`, async-signal-safe; the byte count or -1.
pub fn write_raw(fd: RawFd, data: &[u8]) -> isize {
    // SAFETY: `data` is a live buffer of `data.len()` bytes.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// Becomes `uid`/`gid` with supplementary `groups`, unless already `uid` (a rootless
/// container mapped to that user). Async-signal-safe: for forked children before exec.
/// The order is the one the kernel needs: groups and gid while still privileged.
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: plain system calls on live data.
    unsafe {
        if libc::geteuid() == uid {
            return Ok(());
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// In a forked child: clears ambient capabilities (the init may hold some when the caller
/// is mapped to a non-root user), drops to `user` with supplementary `groups`, changes to `workdir` and executes
/// `path`. Returns only on failure, with the errno. Async-signal-safe.
///
/// # Safety
/// `argv` and `envp` must be NULL-terminated arrays of pointers to NUL-terminated strings
/// that stay alive for the call (execve reads them); the caller must be a forked child that
/// is about to exec (it changes the process's credentials and working directory).
pub(crate) unsafe fn exec_command(
    user: Option<(u32, u32)>,
    groups: &[u32],
    workdir: &CStr,
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Errno {
    // SAFETY: prctl takes no pointers; chdir and execve read NUL-terminated strings and
    // NULL-terminated arrays (built by the caller) that outlive the call.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if let Some((uid, gid)) = user {
            if let Err(e) = become_user(uid, gid, groups) {
                return e;
            }
        }
        if libc::chdir(workdir.as_ptr()) == 0 {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
    }
    Errno::last()
}

/// Fills `buf` from the kernel's random pool (`getrandom(2)`, retried on EINTR).
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: shared by all containers (they have no time
/// namespace), so timestamps taken inside and outside compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Creates a pipe whose two ends are close-on-exec and numbered at least 5, so that they can
/// be `dup2`ed onto fds 0–4 of a child without colliding with their targets.
pub fn pipe_high() -> SysResult<(OwnedFd, OwnedFd)> {
    let (r, w) = no_path("pipe", nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))?;
    Ok((raise_fd(r)?, raise_fd(w)?))
}

/// Duplicates `fd` to a close-on-exec descriptor numbered at least 5.
pub fn raise_fd(fd: OwnedFd) -> SysResult<OwnedFd> {
    if fd.as_raw_fd() >= 5 {
        return Ok(fd);
    }
    let raw = no_path(
        "fcntl(F_DUPFD_CLOEXEC)",
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(5)),
    )?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

// ---------------------------------------------------------------------------------------
// Starting the init process

/// Everything the child of [`clone_exec`] needs, prepared in the parent so that the child
/// only makes system calls: no allocation, no locks (the parent may be multithreaded).
pub struct ExecRequest {
    /// Program to execute (the pristine init).
    pub program: CString,
    /// `argv`, NUL-terminated C strings.
    pub argv: Vec<CString>,
    /// `envp`, `KEY=VALUE` C strings.
    pub envp: Vec<CString>,
    /// `(source, target)` descriptor pairs to `dup2` in the child. Sources are ≥ 5 (see
    /// [`pipe_high`]) or equal to their target (inherited as is).
    pub fds: Vec<(RawFd, RawFd)>,
    /// When set, the child is in a new user namespace and writes these id maps itself,
    /// before `exec`, while it still holds every capability in that namespace.
    pub id_maps: Option<IdMaps>,
    /// Keep every capability across `exec` as ambient capabilities. Needed when the caller
    /// is mapped to a non-zero uid inside (exec by a non-root uid otherwise drops them).
    pub ambient_caps: bool,
    /// A cgroup v2 directory to create the child in (`clone3` with `CLONE_INTO_CGROUP`,
    /// Linux 5.7), so that it never runs outside it; where that fails, the child starts in
    /// the caller's cgroup and its setup joins (`SetupOp::JoinCgroups`).
    pub cgroup: Option<RawFd>,
}

/// The contents of `/proc/self/{uid_map,gid_map}` for a rootless container.
pub struct IdMaps {
    /// e.g. `"0 1000 1\n"`.
    pub uid_map: Vec<u8>,
    /// e.g. `"0 1000 1\n"`.
    pub gid_map: Vec<u8>,
}

/// Pointers into an [`ExecRequest`], laid out as `execve(2)` wants them.
struct ExecPtrs {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// Starts a process in new namespaces (`flags`) that immediately `exec`s `req.program`.
///
/// This is a vfork-style clone (`CLONE_VM | CLONE_VFORK`, like `posix_spawn`): the parent
/// is suspended until the child has called `execve` or exited, so the child may use the
/// parent's memory read-only, and nothing is copied. Between clone and exec the child makes
/// only async-signal-safe system calls on data prepared here — never allocation or locking,
/// which could deadlock on a lock held by another thread of the parent at clone time.
///
/// With `req.cgroup` the child is instead created in that cgroup by a fork-style `clone3`
/// (see [`clone_exec_into_cgroup`]); it makes the same calls before exec.
///
/// Returns the child's pid (as seen from the caller). If the child fails before `exec`, the
/// error names the step.
pub fn clone_exec(flags: CloneFlags, req: &ExecRequest) -> SysResult<(Pid, OwnedFd)> {
    let ptrs = ExecPtrs {
        argv: req
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        envp: req
            .envp
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
    };
    // The child reports a pre-exec failure as (step, errno) through this pipe; a successful
    // exec closes it (close-on-exec), so EOF means "exec happened".
    let (err_r, err_w) = pipe_high()?;
    let err_fd = err_w.as_raw_fd();

    let (pid, pidfd) = match clone_exec_into_cgroup(flags, req, &ptrs, err_fd) {
        Some(child) => child,
        None => clone_exec_vfork(flags, req, &ptrs, err_fd)?,
    };
    drop(err_w);
    exec_outcome(pid, pidfd, req, err_r)
}

/// [`clone_exec`]'s child created in `req.cgroup` by a fork-style `clone3` (no
/// `CLONE_VM`: a raw `clone3` cannot give the child a stack of its own), with its pidfd
/// from the clone itself: `None` without a cgroup, or where the kernel refuses (the caller
/// then uses the vfork-style clone).
fn clone_exec_into_cgroup(
    flags: CloneFlags,
    req: &ExecRequest,
    ptrs: &ExecPtrs,
    err_fd: RawFd,
) -> Option<(Pid, OwnedFd)> {
    // SAFETY: the descriptor is the caller's open cgroup directory, alive for the call.
    let cgroup = unsafe { std::os::fd::BorrowedFd::borrow_raw(req.cgroup?) };
    // SAFETY: like fork, the child runs on its own copy of our memory. Before exec it only
    // makes the raw, async-signal-safe system calls of `child_after_clone` on its copies of
    // `req` and `ptrs`, so a lock another thread held at the clone does not matter.
    // CLONE_VFORK suspends us until it has exec'd or exited, as on the vfork-style path.
    let (pid, pidfd) = unsafe { clone3_into_cgroup(flags | CloneFlags::CLONE_VFORK, cgroup) };
    match pid {
        p if p < 0 => None,
        0 => {
            child_after_clone(req, ptrs, err_fd);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        // SAFETY: CLONE_PIDFD gave us this new descriptor, close-on-exec, owned by nobody else.
        p => Some((Pid::from_raw(p as i32), unsafe {
            OwnedFd::from_raw_fd(pidfd)
        })),
    }
}

/// [`clone_exec`]'s child by a vfork-style clone (`CLONE_VM | CLONE_VFORK`), with its
/// pidfd from the clone itself (`CLONE_PIDFD`).
fn clone_exec_vfork(
    flags: CloneFlags,
    req: &ExecRequest,
    ptrs: &ExecPtrs,
    err_fd: RawFd,
) -> SysResult<(Pid, OwnedFd)> {
    let mut stack = CloneStack::new(64 * 1024)?;
    let mut child = || -> isize { child_after_clone(req, ptrs, err_fd) };
    let mut child: &mut dyn FnMut() -> isize = &mut child;
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut dyn FnMut` below, alive until the parent resumes.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut() -> isize) };
        f() as libc::c_int
    }
    let all = flags | CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child shares our address space (CLONE_VM). It runs `child_after_clone` on
    // its own stack (the top of `stack`, 16-byte aligned, alive until the parent resumes,
    // which CLONE_VFORK delays until the child has exec'd or exited), and that function only
    // performs raw system calls on data borrowed from `req`/`ptrs`, which outlive the
    // child's use of them for the same reason. It never returns into our frames. With
    // CLONE_PIDFD the kernel stores the child's pidfd in `pidfd` (the `parent_tid` slot).
    let pid = unsafe {
        let stack = stack.as_mut_slice();
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            trampoline,
            top.cast(),
            all.bits() | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&mut child as *mut &mut dyn FnMut() -> isize).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(SysError::new("clone", None, Errno::last()));
    }
    // SAFETY: CLONE_PIDFD gave us this new descriptor (close-on-exec) and nothing else owns it.
    Ok((Pid::from_raw(pid), unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// Whether [`clone_exec`]'s child `pid` exec'd: EOF on `err_r`, or the failed step.
fn exec_outcome(
    pid: Pid,
    pidfd: OwnedFd,
    req: &ExecRequest,
    err_r: OwnedFd,
) -> SysResult<(Pid, OwnedFd)> {
    let mut buf = [0u8; 8];
    let n = nix::unistd::read(&err_r, &mut buf).unwrap_or(0);
    if n == 8 {
        let step = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
        let errno = Errno::from_raw(i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes")));
        // The child has exited with 127; reap it so no zombie stays behind.
        let _ = wait_pidfd(&pidfd);
        let op = match step {
            STEP_PDEATHSIG => "prctl(PR_SET_PDEATHSIG) in the new container",
            STEP_SETGROUPS => "write /proc/self/setgroups in the new user namespace",
            STEP_UID_MAP => "write /proc/self/uid_map in the new user namespace",
            STEP_GID_MAP => "write /proc/self/gid_map in the new user namespace",
            STEP_DUP2 => "dup2 in the new container",
            STEP_CAPS => "raise ambient capabilities in the new user namespace",
            _ => "execve of the pristine init",
        };
        let path = (step == STEP_EXEC).then(|| {
            use std::os::unix::ffi::OsStrExt;
            PathBuf::from(std::ffi::OsStr::from_bytes(req.program.as_bytes()))
        });
        return Err(SysError { op, path, errno });
    }
    Ok((pid, pidfd))
}

const STEP_PDEATHSIG: u32 = 1;
const STEP_SETGROUPS: u32 = 2;
const STEP_UID_MAP: u32 = 3;
const STEP_GID_MAP: u32 = 4;
const STEP_DUP2: u32 = 5;
const STEP_EXEC: u32 = 6;
const STEP_CAPS: u32 = 7;

/// `struct __user_cap_header_struct` (capability(7)).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (64 capability bits).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Makes every permitted capability inheritable and ambient, so it survives `execve` by a
/// non-root uid. Async-signal-safe: only system calls on stack data.
///
/// # Safety
/// Raw system calls; the pointers are to live stack values.
unsafe fn raise_ambient_caps() -> bool {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(
        libc::SYS_capget,
        &mut header as *mut CapHeader,
        data.as_mut_ptr(),
    ) != 0
    {
        return false;
    }
    for d in &mut data {
        d.inheritable = d.permitted;
    }
    if libc::syscall(
        libc::SYS_capset,
        &mut header as *mut CapHeader,
        data.as_ptr(),
    ) != 0
    {
        return false;
    }
    for cap in 0..64u32 {
        let word = data[(cap / 32) as usize].permitted;
        if word & (1 << (cap % 32)) != 0 {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            );
        }
    }
    true
}

/// Runs in the cloned child. Async-signal-safe system calls only (see [`clone_exec`]).
fn child_after_clone(req: &ExecRequest, ptrs: &ExecPtrs, err_fd: RawFd) -> isize {
    let fail = |step: u32| -> isize {
        let errno = Errno::last_raw();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&step.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is on our stack.
        unsafe {
            libc::write(err_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY (whole function): raw system calls on pointers to NUL-terminated buffers and
    // arrays that the parent prepared and keeps alive while it is suspended by CLONE_VFORK.
    unsafe {
        // Die with the caller, even if it is SIGKILLed: the container is PID 1 of its own
        // PID namespace, so its death takes every process of the container with it.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return fail(STEP_PDEATHSIG);
        }
        if let Some(maps) = &req.id_maps {
            // Order matters: an unprivileged process must deny setgroups before it may write
            // gid_map, and both maps must be written before exec, because exec by a uid that
            // is not mapped to root drops every capability in the namespace.
            if !write_proc_file(c"/proc/self/setgroups", b"deny") {
                return fail(STEP_SETGROUPS);
            }
            if !write_proc_file(c"/proc/self/uid_map", &maps.uid_map) {
                return fail(STEP_UID_MAP);
            }
            if !write_proc_file(c"/proc/self/gid_map", &maps.gid_map) {
                return fail(STEP_GID_MAP);
            }
        }
        if req.ambient_caps && !raise_ambient_caps() {
            return fail(STEP_CAPS);
        }
        for &(src, dst) in &req.fds {
            if src != dst && libc::dup2(src, dst) < 0 {
                return fail(STEP_DUP2);
            }
        }
        libc::execve(req.program.as_ptr(), ptrs.argv.as_ptr(), ptrs.envp.as_ptr());
        fail(STEP_EXEC)
    }
}

/// Closes every descriptor from 3 up except `keep` (`close_range(2)`, Linux ≥ 5.9; with a
/// loop over `/proc/self/fd` as the fallback).
///
/// # Safety
/// Every descriptor but `keep` (and 0–2) is closed, including ones owned by `OwnedFd`s or
/// `File`s still alive in this process: the caller must be a freshly forked child that
/// never uses (nor drops) any of them afterwards.
pub(crate) unsafe fn close_fds_except(keep: RawFd) {
    let ranges = [(3, keep - 1), (keep + 1, libc::c_int::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes descriptors; nothing here uses the closed ones.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                last as libc::c_uint,
                0,
            )
        };
        if rc != 0 {
            let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd >= first && fd <= last)
                .collect();
            for fd in fds {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Whether this process has exactly one thread (reads `/proc/self/task`).
///
/// If it has, no other thread can be holding a lock (allocator, stdio) at the moment of a
/// `fork`, so a forked child may run ordinary Rust code.
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() == 1)
        .unwrap_or(false)
}

/// Starts a process in new namespaces (`flags`) that runs `child` without `exec`: a
/// fork-style clone (no `CLONE_VM`, so the child has its own copy-on-write memory).
///
/// Only for single-threaded callers (see [`single_threaded`]): the child then inherits no
/// lock held by another thread and may allocate. Before `child` runs, the clone child sets
/// die-with-parent, writes its id maps (rootless; it holds every capability in its new user
/// namespace, and keeps them since it does not exec) and installs `fds`. If one of those
/// steps fails, `on_error(step, errno)` runs in the child, which then exits with 127.
///
/// # Safety
/// The calling process must be single-threaded (see [`single_threaded`]): the child runs
/// `child` and `on_error`, ordinary code that may allocate or take locks, which would
/// deadlock on a lock another thread held at the moment of the clone. The descriptors in
/// `fds` must be open.
///
/// With `cgroup` (a cgroup v2 directory), the child is created in that cgroup
/// (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7), so it never runs outside it; where the
/// kernel cannot (older, cgroup v1, `clone3` filtered), it starts in the caller's cgroup
/// and its setup joins (`SetupOp::JoinCgroups`).
pub(crate) unsafe fn clone_fork(
    flags: CloneFlags,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    id_maps: Option<&IdMaps>,
    fds: &[(RawFd, RawFd)],
    child: &mut dyn FnMut(),
    on_error: &mut dyn FnMut(&'static str, Errno),
) -> SysResult<(Pid, OwnedFd)> {
    let mut body = || -> isize {
        // SAFETY: plain system calls on live stack data, in the child.
        let failed = unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                Some("prctl(PR_SET_PDEATHSIG) in the new container")
            } else if let Some(maps) = id_maps {
                if !write_proc_file(c"/proc/self/setgroups", b"deny") {
                    Some("write /proc/self/setgroups in the new user namespace")
                } else if !write_proc_file(c"/proc/self/uid_map", &maps.uid_map) {
                    Some("write /proc/self/uid_map in the new user namespace")
                } else if !write_proc_file(c"/proc/self/gid_map", &maps.gid_map) {
                    Some("write /proc/self/gid_map in the new user namespace")
                } else {
                    None
                }
            } else {
                None
            }
        };
        let failed = failed.or_else(|| {
            fds.iter().find_map(|&(src, dst)| {
                // SAFETY: dup2 on descriptors the parent opened for us.
                (src != dst && unsafe { libc::dup2(src, dst) } < 0)
                    .then_some("dup2 in the new container")
            })
        });
        if let Some(step) = failed {
            on_error(step, Errno::last());
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        child();
        // SAFETY: as above; `child` is not expected to return.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: no CLONE_VM: the child gets its own copy of memory, like fork, and goes on
    // here on its copy of this stack. The caller guarantees it is single-threaded, so the
    // child inherits no lock held by another thread and may run ordinary code.
    match unsafe { fork_with_pidfd(flags, cgroup) }? {
        (0, _) => {
            body();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        (pid, Some(pidfd)) => Ok((Pid::from_raw(pid), pidfd)),
        (_, None) => unreachable!("the parent always gets a pidfd"),
    }
}

/// A fork-style clone into new namespaces (`flags`) that hands the parent the child's pidfd
/// from the clone itself (`CLONE_PIDFD`), so that the child can be signalled and waited
/// for before anything could reap it (the zygote ignores SIGCHLD: the kernel reaps its
/// children, and a pidfd opened after the clone could name another process). With
/// `cgroup`, `clone3(CLONE_INTO_CGROUP)`; where that fails (a kernel before 5.7, a cgroup
/// v1 directory, `clone3` filtered), the classic `clone`, which takes `CLONE_PIDFD` too
/// (Linux 5.2). `(0, None)` in the child, `(pid, Some(pidfd))` in the parent.
///
/// # Safety
/// As for `fork`: the caller must be single-threaded, and the child may only do what is
/// safe after a fork.
unsafe fn fork_with_pidfd(
    flags: CloneFlags,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
) -> SysResult<(i32, Option<OwnedFd>)> {
    let (mut pid, mut pidfd) = (-1, -1);
    if let Some(cgroup) = cgroup {
        // SAFETY: the caller is single-threaded and its child does only what is safe after
        // a fork (this function's contract).
        let (p, fd) = unsafe { clone3_into_cgroup(flags, cgroup) };
        (pid, pidfd) = (p as i32, fd);
    }
    if pid < 0 {
        let all = flags.bits() as libc::c_ulong
            | libc::CLONE_PIDFD as libc::c_ulong
            | libc::SIGCHLD as libc::c_ulong;
        // SAFETY: `clone(flags, stack, parent_tid, …)`, the first three arguments alike on
        // x86_64 and aarch64 (the last two, null here, differ in order); a null stack makes
        // it a fork, the child going on here on its own copy of this stack; CLONE_PIDFD
        // stores the pidfd at `parent_tid`.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                all,
                std::ptr::null_mut::<libc::c_void>(),
                &mut pidfd as *mut libc::c_int,
                std::ptr::null_mut::<libc::c_int>(),
                0 as libc::c_ulong,
            )
        } as i32;
    }
    match pid {
        p if p < 0 => Err(SysError::new("clone", None, Errno::last())),
        0 => Ok((0, None)),
        // SAFETY: CLONE_PIDFD gave us this new descriptor, close-on-exec, owned by nobody else.
        p => Ok((p, Some(unsafe { OwnedFd::from_raw_fd(pidfd) }))),
    }
}

/// A fork-style `clone3` (no stack, no `CLONE_VM`: the child goes on here on its own copy
/// of this stack) with `flags`, created in `cgroup` (`CLONE_INTO_CGROUP`, Linux 5.7) and
/// handing the parent the child's pidfd (`CLONE_PIDFD`). Returns what `clone3` returned
/// (the child's pid, 0 in the child, -1 where the kernel refuses) and the pidfd.
///
/// # Safety
/// As for `fork`: in a multithreaded caller the child may make only async-signal-safe
/// calls until it execs or exits.
unsafe fn clone3_into_cgroup(
    flags: CloneFlags,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> (libc::c_long, libc::c_int) {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: flags.bits() as u32 as u64 | CLONE_INTO_CGROUP | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid `clone_args` of the size passed, alive for the call; the
    // kernel writes the pidfd into `pidfd` before either side returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    (pid, pidfd)
}

/// The stack of a clone child: fresh anonymous memory, of which only the pages the child
/// touches are ever faulted in. (`vec![0; N]` zeroes it first, and past glibc's mmap
/// threshold, which grows as large blocks are freed, that faults in every page: 80 page
/// faults per container for the two clones.)
pub(crate) struct CloneStack {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl CloneStack {
    pub(crate) fn new(len: usize) -> SysResult<Self> {
        // SAFETY: a new private anonymous mapping, at an address the kernel chooses.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        match std::ptr::NonNull::new(ptr.cast::<u8>()) {
            Some(ptr) if ptr.as_ptr().cast() != libc::MAP_FAILED => Ok(CloneStack { ptr, len }),
            _ => Err(SysError::new("mmap a clone stack", None, Errno::last())),
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes mapped readable and writable by `new` (anonymous memory starts
        // zeroed, so initialised), unmapped only by `drop`; borrowed mutably from `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for CloneStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `new`, no longer borrowed.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Starts a child that shares this process's memory until it execs or exits
/// (`CLONE_VM | CLONE_VFORK`, the way `posix_spawn` starts one): no page tables are copied,
/// and neither side then takes copy-on-write faults, which a fork of pristine's own (large)
/// process costs. The calling thread is suspended until the child has exec'd or exited.
/// Every signal is blocked around the clone, and the child sets every caught signal back
/// to its default before `child` runs, so no handler of the caller's can run in the child
/// on the shared memory; `child` sets the mask the command is to have.
///
/// # Safety
/// `child` runs on a stack of its own but in the caller's memory: it may make only
/// async-signal-safe calls, write no memory but its own stack (no allocation, no lock),
/// and must end in `execve` or [`exit_now`], never return or unwind. The caller must be
/// single-threaded (a container's PID 1): `child` may change its credentials through
/// glibc (`setgroups`, `setgid`, `setuid`), which in a multithreaded process would signal
/// the other threads to change theirs too, from a child that shares their memory.
pub(crate) unsafe fn spawn_vforked(child: &mut dyn FnMut()) -> SysResult<Pid> {
    let mut stack = CloneStack::new(64 * 1024)?;
    let old = block_signals(&SigSet::all())?;
    let mut body = || -> isize {
        reset_caught_signals();
        child();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: with CLONE_VM the child runs `body` in our memory, on `stack` (alive until
    // it execs or exits, since CLONE_VFORK suspends us until then); `body` only makes
    // system calls (the caller's guarantee for `child`) and never returns.
    let started = unsafe {
        nix::sched::clone(
            Box::new(&mut body),
            stack.as_mut_slice(),
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(Signal::SIGCHLD as i32),
        )
    };
    let _ = set_signal_mask(&old);
    started.map_err(|e| SysError::new("clone", None, e))
}

/// Sets every signal that has a handler back to its default disposition (ignored ones stay
/// ignored): in a vfork-style child, where a handler would run on its parent's memory.
/// Async-signal-safe.
fn reset_caught_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        // SAFETY: `sigaction` reads and writes the two structs on this stack; the C
        // library refuses (EINVAL) the signals it reserves, which are then left alone.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction == libc::SIG_DFL
                || old.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &default, std::ptr::null_mut());
        }
    }
}

/// `struct clone_args` of `clone3(2)` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Writes `data` to a procfs file in a single `write(2)`, as the id-map files require.
///
/// # Safety
/// Async-signal-safe; `path` must be NUL-terminated (guaranteed by `CStr`).
unsafe fn write_proc_file(path: &CStr, data: &[u8]) -> bool {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return false;
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    n == data.len() as isize
}

// ---------------------------------------------------------------------------------------
/// Extended attributes: thin wrappers over the libc xattr calls (nix has none), used by
/// the overlay whiteout helpers and OCI extraction.
pub(crate) mod xattr {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cpath(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    }

    fn cname(name: &[u8]) -> io::Result<CString> {
        CString::new(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "xattr name contains a NUL byte",
            )
        })
    }

    /// The result of a set/remove call that returns 0 or -1 with errno.
    fn check(rc: libc::c_int) -> io::Result<()> {
        match rc {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// A read's result, with "no such attribute" or "xattrs not supported here" (and no
    /// permission to read them) as `None`.
    fn absent_as_none(res: io::Result<Vec<u8>>) -> io::Result<Option<Vec<u8>>> {
        match res {
            Ok(v) => Ok(Some(v)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA | libc::ENOTSUP | libc::EPERM | libc::EACCES)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Calls `get(buf_ptr, buf_len)` (a getxattr-style call) until the value fits.
    fn read_value(mut get: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        loop {
            let n = get(buf.as_mut_ptr().cast(), buf.len());
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ERANGE) {
                return Err(err);
            }
            // Ask for the size, then retry with a buffer that large.
            let size = get(std::ptr::null_mut(), 0);
            if size < 0 {
                return Err(io::Error::last_os_error());
            }
            if size as usize > 1 << 24 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "xattr too large",
                ));
            }
            buf = vec![0u8; (size as usize).max(buf.len() * 2)];
        }
    }

    /// Reads xattr `name` of `path` without following a symlink; `None` if absent.
    pub(crate) fn lget(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
        lget_raw(path, name.as_bytes())
    }

    /// Reads xattr `name` (raw bytes) of `path` without following a symlink; `None` if
    /// absent.
    pub(crate) fn lget_raw(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let p = cpath(path)?;
        let n = cname(name)?;
        absent_as_none(read_value(|ptr, len| {
            // SAFETY: `p` and `n` are valid NUL-terminated strings alive for the
            // call; `ptr` is either null with `len` 0 or points to a writable
            // buffer of `len` bytes owned by `read_value`.
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), ptr, len) }
        }))
    }

    /// Sets xattr `name` on `path` without following a symlink.
    pub(crate) fn lset(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cname(name.as_bytes())?;
        // SAFETY: `p` and `n` are valid C strings and `value` is a live slice
        // of `value.len()` bytes; lsetxattr only reads them during the call.
        check(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    }

    /// Sets xattr `name` (raw bytes) on the open file `fd`.
    pub(crate) fn fset_raw(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
        let n = cname(name)?;
        // SAFETY: `fd` is an open fd borrowed for the call, `n` is a valid C
        // string and `value` a live slice; fsetxattr only reads them.
        check(unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    }

    /// Sets xattr `name` on the open file `fd`.
    pub(crate) fn fset(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
        fset_raw(fd, name.as_bytes(), value)
    }

    /// Removes xattr `name` from `path` without following a symlink.
    pub(crate) fn lremove(path: &Path, name: &str) -> io::Result<()> {
        let p = cpath(path)?;
        let n = cname(name.as_bytes())?;
        // SAFETY: `p` and `n` are valid C strings alive for the call.
        check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
    }

    /// Lists the xattr names of `path` (not following a symlink), sorted.
    /// Filesystems without xattr support give an empty list.
    pub(crate) fn llist(path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let p = cpath(path)?;
        let res = read_value(|ptr, len| {
            // SAFETY: `p` is a valid C string; `ptr`/`len` describe a writable
            // buffer owned by `read_value`, or are null/0 to query the size.
            unsafe { libc::llistxattr(p.as_ptr(), ptr.cast(), len) }
        });
        let raw = match res {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<Vec<u8>> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        Ok(names)
    }

    #[cfg(test)]
    mod tests {
        use std::os::fd::AsFd;

        #[test]
        fn names_need_not_be_utf8() {
            // Beside the sources (a disk filesystem: tmpfs may lack user xattrs); the
            // directory is found at run time, as an archive may run elsewhere.
            let here = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into());
            let dir = tempfile::tempdir_in(here).unwrap();
            let file = dir.path().join("f");
            let f = std::fs::File::create(&file).unwrap();
            let name = b"user.pristine-\xff";
            if let Err(e) = super::fset_raw(f.as_fd(), name, b"v") {
                // A filesystem without user xattrs: nothing to check here.
                assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{e}");
                return;
            }
            assert_eq!(super::lget_raw(&file, name).unwrap(), Some(b"v".to_vec()));
            assert!(super::llist(&file).unwrap().contains(&name.to_vec()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The new mount API (Linux ≥ 5.2; overlayfs' `lowerdir+` needs ≥ 6.8)

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn fd_result(op: &'static str, path: Option<&Path>, rc: libc::c_long) -> SysResult<OwnedFd> {
    if rc < 0 {
        return Err(SysError::new(op, path, Errno::last()));
    }
    // SAFETY: the system call returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
    what: &Path,
) -> SysResult<()> {
    // SAFETY: fsconfig reads the NUL-terminated key/value strings (or NULL) during the call;
    // `fs` is an open fs context.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            key.map_or(std::ptr::null(), CStr::as_ptr),
            value.map_or(std::ptr::null(), CStr::as_ptr),
            0,
        )
    };
    if rc < 0 {
        return Err(SysError::new(
            "configure overlay (fsconfig)",
            Some(what),
            Errno::last(),
        ));
    }
    Ok(())
}

fn path_cstring(p: &Path) -> SysResult<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SysError::new("path", Some(p), Errno::EINVAL))
}

/// Mounts an overlay at `target` through the new mount API, passing one lower layer per
/// `fsconfig("lowerdir+")` call: no limit from the 4096-byte option page, so stacks of
/// hundreds of layers work. `lowers` is uppermost first, as for `lowerdir=`.
pub fn mount_overlay_layered(
    target: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    userxattr: bool,
    volatile: bool,
) -> SysResult<()> {
    // SAFETY: fsopen reads a NUL-terminated filesystem name.
    let fs = fd_result("fsopen overlay", Some(target), unsafe {
        libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC)
    })?;
    for lower in lowers {
        fsconfig(
            &fs,
            FSCONFIG_SET_STRING,
            Some(c"lowerdir+"),
            Some(&path_cstring(lower)?),
            lower,
        )?;
    }
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"upperdir"),
        Some(&path_cstring(upper)?),
        upper,
    )?;
    fsconfig(
        &fs,
        FSCONFIG_SET_STRING,
        Some(c"workdir"),
        Some(&path_cstring(work)?),
        work,
    )?;
    if userxattr {
        fsconfig(&fs, FSCONFIG_SET_FLAG, Some(c"userxattr"), None, target)?;
    }
    if volatile {
        fsconfig(&fs, FSCONFIG_SET_FLAG, Some(c"volatile"), None, target)?;
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None, target)?;
    // SAFETY: fsmount takes an fs context fd that has been created above.
    let mnt = fd_result("fsmount overlay", Some(target), unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0)
    })?;
    let ctarget = path_cstring(target)?;
    // SAFETY: move_mount reads the NUL-terminated strings during the call; `mnt` is a
    // detached mount fd from fsmount.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(SysError::new(
            "move_mount overlay",
            Some(target),
            Errno::last(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Confinement

pub(crate) mod inroot;

/// Takes this process (a container's PID 1, not a session leader) out of the caller's
/// process group and away from the caller's controlling terminal, without a new session:
/// `setpgid(0, 0)`, then `ioctl(TIOCNOTTY)` on `/dev/tty` if there is a terminal to leave.
/// Afterwards `/dev/tty` fails with ENXIO here and in every process forked later, and
/// `TIOCSTI` on the caller's terminal (e.g. inherited as stdin) needs `CAP_SYS_ADMIN`.
/// The caller keeps its terminal: `TIOCNOTTY` by a process that does not lead its session
/// clears its own link only.
pub(crate) fn leave_terminal() -> SysResult<()> {
    no_path(
        "setpgid(0, 0)",
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)),
    )?;
    let tty = Path::new("/dev/tty");
    let flags = nix::fcntl::OFlag::O_RDWR
        | nix::fcntl::OFlag::O_NOCTTY
        | nix::fcntl::OFlag::O_NONBLOCK
        | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(tty, flags, Mode::empty()) {
        Ok(fd) => fd,
        // No controlling terminal (ENXIO), or one that was hung up (EIO): nothing to leave.
        Err(Errno::ENXIO) | Err(Errno::EIO) => return Ok(()),
        Err(e) => return Err(SysError::new("open", Some(tty), e)),
    };
    // SAFETY: TIOCNOTTY takes no argument; `fd` is an open terminal.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCNOTTY) };
    match rc {
        0 => Ok(()),
        _ => Err(SysError::new("ioctl(TIOCNOTTY)", Some(tty), Errno::last())),
    }
}

/// Sets `no_new_privs`: no `execve` grants privileges again (setuid bits and file
/// capabilities are ignored), and a seccomp filter may be loaded without `CAP_SYS_ADMIN`.
pub(crate) fn set_no_new_privs() -> SysResult<()> {
    no_path(
        "prctl(PR_SET_NO_NEW_PRIVS)",
        nix::sys::prctl::set_no_new_privs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child comes with its pidfd from the clone itself; it is signalled and reaped
    /// through it, and once reaped the pidfd reaches no other process.
    #[test]
    fn children_are_signalled_and_reaped_through_their_pidfd() {
        let req = ExecRequest {
            program: c"/bin/sleep".into(),
            argv: vec![c"sleep".into(), c"60".into()],
            envp: Vec::new(),
            fds: Vec::new(),
            id_maps: None,
            ambient_caps: false,
            cgroup: None,
        };
        let (_pid, pidfd) = clone_exec(CloneFlags::empty(), &req).unwrap();
        pidfd_signal(&pidfd, Signal::SIGKILL).unwrap();
        assert_eq!(wait_pidfd(&pidfd).unwrap(), Ended::Signaled(libc::SIGKILL));
        assert_eq!(
            pidfd_signal(&pidfd, Signal::SIGKILL).unwrap_err().errno,
            Errno::ESRCH
        );
        assert_eq!(wait_pidfd(&pidfd).unwrap_err().errno, Errno::ECHILD);
    }
}
