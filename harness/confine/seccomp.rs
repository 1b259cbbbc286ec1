//! The seccomp filter: Docker's default profile (moby `profiles/seccomp/default.json`) as an
//! allow list compiled with `seccompiler`; everything else fails with `EPERM`.
//!
//! Departures, all stricter: `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)` are refused (as
//! bubblewrap does), `io_uring_*` are not allowed (newer Docker releases removed
//! them too: they bypass the filter), and system calls of other ABIs (i386, x32) are
//! refused, since the filter only knows x86_64 numbers. System calls that Docker opens only
//! with a capability (`mount` with `CAP_SYS_ADMIN`, `reboot` with `CAP_SYS_BOOT`…) are opened
//! here the same way, for the capabilities the container keeps.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::BpfProgram;
#[cfg(test)]
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use super::bpf::Verdict;
use crate::sys::SysError;

macro_rules! nrs {
    ($($name:ident),* $(,)?) => { &[$(libc::$name),*] };
}

/// Allowed unconditionally (Docker's first group, x86_64 names, less `io_uring_*`).
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[libc::c_long] = nrs![
    SYS_accept,
    SYS_accept4,
    SYS_access,
    SYS_adjtimex,
    SYS_alarm,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_chmod,
    SYS_chown,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_ctl_old,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fork,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_futimesat,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_get_thread_area,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_io_setup,
    SYS_io_submit,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_lstat,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_mknod,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_name_to_handle_at,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_pause,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_poll,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_pselect6,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlink,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rmdir,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_select,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_set_robust_list,
    SYS_setsid,
    SYS_setsockopt,
    SYS_set_thread_area,
    SYS_set_tid_address,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_stat,
    SYS_statfs,
    SYS_statx,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlink,
    SYS_unlinkat,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_vfork,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
    // Docker: minKernel 4.8 (the kernel's ptrace checks suffice from there on).
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_ptrace,
    // Docker: amd64 only.
    SYS_arch_prctl,
    SYS_modify_ldt,
];

/// Allowed system calls that the `libc` crate has no constant for (x86_64 numbers from the
/// kernel's `syscall_64.tbl`).
#[cfg(target_arch = "x86_64")]
const ALLOWED_UNNAMED: &[libc::c_long] = &[
    333, // io_pgetevents
];

/// Opened only for a kept capability, as in Docker's profile.
#[cfg(target_arch = "x86_64")]
const BY_CAPABILITY: &[(&str, &[libc::c_long])] = &[
    ("CAP_DAC_READ_SEARCH", nrs![SYS_open_by_handle_at]),
    (
        "CAP_SYS_ADMIN",
        nrs![
            SYS_bpf,
            SYS_clone3,
            SYS_fanotify_init,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fsopen,
            SYS_fspick,
            SYS_lookup_dcookie,
            SYS_mount,
            SYS_mount_setattr,
            SYS_move_mount,
            SYS_open_tree,
            SYS_perf_event_open,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_setdomainname,
            SYS_sethostname,
            SYS_setns,
            SYS_syslog,
            SYS_umount2,
            SYS_unshare
        ],
    ),
    ("CAP_SYS_BOOT", nrs![SYS_reboot]),
    ("CAP_SYS_CHROOT", nrs![SYS_chroot]),
    (
        "CAP_SYS_MODULE",
        nrs![SYS_delete_module, SYS_init_module, SYS_finit_module],
    ),
    ("CAP_SYS_PACCT", nrs![SYS_acct]),
    (
        "CAP_SYS_PTRACE",
        nrs![SYS_kcmp, SYS_pidfd_getfd, SYS_process_madvise],
    ),
    ("CAP_SYS_RAWIO", nrs![SYS_iopl, SYS_ioperm]),
    ("CAP_SYS_TIME", nrs![SYS_settimeofday, SYS_clock_settime]),
    ("CAP_SYS_TTY_CONFIG", nrs![SYS_vhangup]),
    (
        "CAP_SYS_NICE",
        nrs![
            SYS_get_mempolicy,
            SYS_mbind,
            SYS_set_mempolicy,
            SYS_set_mempolicy_home_node
        ],
    ),
    ("CAP_SYSLOG", nrs![SYS_syslog]),
    ("CAP_BPF", nrs![SYS_bpf]),
    ("CAP_PERFMON", nrs![SYS_perf_event_open]),
];

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN` (Docker's mask
/// 0x7E020000: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NAMESPACES: u64 = 0x7E02_0000;
/// `ioctl` requests refused, as bubblewrap refuses them when it makes no new session:
/// `TIOCSTI` pushes input into a terminal (the caller's, which the container shares), and
/// `TIOCLINUX` can do the same on a virtual console.
const TTY_INJECTION: &[u32] = &[0x5412, 0x541C];
/// `AF_VSOCK`: the one socket family Docker refuses (it reaches the hypervisor's host).
const AF_VSOCK: u64 = 40;
/// The `personality` values Docker allows: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE
/// (alone and with UNAME26), and the query 0xffffffff.
const PERSONALITIES: &[u32] = &[0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// A profile: the default, opened for the capabilities kept, as a BPF program.
#[derive(Debug)]
pub(crate) struct Filters {
    pub main: BpfProgram,
}

fn compile_error(e: impl std::fmt::Display) -> SysError {
    let _ = e;
    SysError::new(
        "compile the seccomp filter",
        None,
        nix::errno::Errno::EINVAL,
    )
}

#[cfg(test)]
fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

#[cfg(test)]
fn rule(c: SeccompCondition) -> SeccompRule {
    SeccompRule::new(vec![c]).expect("one condition")
}

/// The allow list's rules as `seccompiler` takes them, opened for `keep` (canonical
/// capability names): the reference for the tests.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn rules(keep: &[String]) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in ALLOWED.iter().chain(ALLOWED_UNNAMED) {
        rules.insert(nr, Vec::new());
    }
    for (cap, nrs) in BY_CAPABILITY {
        if keep.iter().any(|k| k == cap) {
            for &nr in *nrs {
                rules.insert(nr, Vec::new());
            }
        }
    }
    let admin = keep.iter().any(|k| k == "CAP_SYS_ADMIN");
    let clone = match admin {
        true => Vec::new(),
        false => vec![rule(cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(CLONE_NAMESPACES),
            0,
        ))],
    };
    rules.insert(libc::SYS_clone, clone);
    let ioctl = TTY_INJECTION
        .iter()
        .map(|&req| cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, req as u64))
        .collect();
    rules.insert(
        libc::SYS_ioctl,
        vec![SeccompRule::new(ioctl).expect("conditions")],
    );
    let socket = rule(cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, AF_VSOCK));
    rules.insert(libc::SYS_socket, vec![socket]);
    let personality = PERSONALITIES
        .iter()
        .map(|&v| rule(cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v as u64)))
        .collect();
    rules.insert(libc::SYS_personality, personality);
    rules
}

/// What the profile does with each system call it lets through, for `keep`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn verdicts(keep: &[String]) -> BTreeMap<u32, Verdict> {
    let mut v: BTreeMap<u32, Verdict> = BTreeMap::new();
    for &nr in ALLOWED.iter().chain(ALLOWED_UNNAMED) {
        v.insert(nr as u32, Verdict::Allow);
    }
    for (cap, nrs) in BY_CAPABILITY {
        if keep.iter().any(|k| k == cap) {
            for &nr in *nrs {
                v.insert(nr as u32, Verdict::Allow);
            }
        }
    }
    let admin = keep.iter().any(|k| k == "CAP_SYS_ADMIN");
    if !admin {
        v.insert(
            libc::SYS_clone as u32,
            Verdict::CloneWithout(CLONE_NAMESPACES as u32),
        );
        v.insert(libc::SYS_clone3 as u32, Verdict::Errno(libc::ENOSYS as u32));
    } else {
        v.insert(libc::SYS_clone as u32, Verdict::Allow);
    }
    v.insert(libc::SYS_ioctl as u32, Verdict::IoctlNot(TTY_INJECTION));
    v.insert(libc::SYS_socket as u32, Verdict::SocketNot(AF_VSOCK as u32));
    v.insert(
        libc::SYS_personality as u32,
        Verdict::Personality(PERSONALITIES),
    );
    v
}

/// Compiles the profile for `keep` (see [`super::bpf`] for why not with `seccompiler`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn compile(keep: &[String]) -> Result<Filters, SysError> {
    let main =
        super::bpf::compile(&verdicts(keep)).ok_or_else(|| compile_error("jump too long"))?;
    Ok(Filters { main })
}

/// `seccompiler`'s compilation of the same profile: the reference the tests hold the
/// range program to. Its `clone3` rule needs a second filter (its actions are one per
/// filter); returned as the errno to report for `clone3`, if any.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn compile_reference(keep: &[String]) -> (BpfProgram, Option<u32>) {
    let main = SeccompFilter::new(
        rules(keep),
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .unwrap();
    let admin = keep.iter().any(|k| k == "CAP_SYS_ADMIN");
    (
        main.try_into().unwrap(),
        (!admin).then_some(libc::ENOSYS as u32),
    )
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn compile(_keep: &[String]) -> Result<Filters, SysError> {
    Err(SysError::new(
        "compile the seccomp filter (only x86_64 is supported; use privileged mode)",
        None,
        nix::errno::Errno::ENOSYS,
    ))
}

/// The compiled profile for `keep`, compiled once per process and kept: a caller that
/// forks containers compiles it before the fork (see [`prepare`]), so each container only
/// loads it.
pub(crate) fn filters(keep: &[String]) -> Result<&'static Filters, SysError> {
    type Cache = std::sync::Mutex<Vec<(Vec<String>, &'static Filters)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, f)) = cache.iter().find(|(k, _)| k == keep) {
        return Ok(f);
    }
    let f: &'static Filters = Box::leak(Box::new(compile(keep)?));
    cache.push((keep.to_vec(), f));
    Ok(f)
}

/// Compiles the profile for `keep` ahead of a fork, so that the child finds it compiled.
pub(crate) fn prepare(keep: &[String]) {
    let _ = filters(keep);
}

/// Loads the profile for `keep` into this thread (`no_new_privs` must be set already).
pub(crate) fn load(keep: &[String]) -> Result<(), SysError> {
    let f = filters(keep)?;
    let load_error = |_| SysError::new("load the seccomp filter", None, nix::errno::Errno::last());
    seccompiler::apply_filter(&f.main).map_err(load_error)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod equivalence {
    use super::super::bpf::{run, RET_ERRNO, RET_KILL_PROCESS};
    use super::*;

    /// Arguments that reach every branch of the profile's conditions.
    const ARGS: &[[u64; 6]] = &[
        [0, 0, 0, 0, 0, 0],
        [40, 0x5412, 0, 0, 0, 0],
        [0x1000_0000, 0x541C, 0, 0, 0, 0],
        [0x0002_0000, 0x5413, 0, 0, 0, 0],
        [0x8, 0, 0, 0, 0, 0],
        [0x20008, 1, 0, 0, 0, 0],
        [0xffff_ffff, 0, 0, 0, 0, 0],
        [0x1_0000_0000, 0x1_0000_5412, 0, 0, 0, 0],
        [41, 0x541B, 0, 0, 0, 0],
        [0x11, 0, 0, 0, 0, 0],
    ];

    #[test]
    fn the_range_program_decides_as_seccompilers_does() {
        let default: Vec<String> = super::super::caps::DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut admin = default.clone();
        admin.extend(["CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYSLOG"].map(String::from));
        for keep in [default, admin] {
            let ours = compile(&keep).unwrap().main;
            let (reference, clone3) = compile_reference(&keep);
            for nr in (0..1100).chain([0x4000_0000, 0x4000_0001, 0x4000_0101]) {
                for args in ARGS {
                    let expected = match clone3 {
                        Some(e) if nr == libc::SYS_clone3 as u32 => RET_ERRNO | e,
                        _ => run(&reference, 0xc000_003e, nr, *args),
                    };
                    let got = run(&ours, 0xc000_003e, nr, *args);
                    assert_eq!(got, expected, "syscall {nr} args {args:x?} keep {keep:?}");
                }
            }
            // The verdicts themselves, not only their agreement.
            let x86 = |nr: libc::c_long, args| run(&ours, 0xc000_003e, nr as u32, args);
            assert_eq!(x86(libc::SYS_read, [0; 6]), super::super::bpf::RET_ALLOW);
            let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
            let tiocsti = [0, 0x5412, 0, 0, 0, 0];
            assert_eq!(
                x86(libc::SYS_ioctl, tiocsti),
                RET_ERRNO | libc::EPERM as u32
            );
            if !keep.iter().any(|k| k == "CAP_SYS_ADMIN") {
                assert_eq!(x86(libc::SYS_mount, [0; 6]), RET_ERRNO | libc::EPERM as u32);
                assert_eq!(
                    x86(libc::SYS_clone, newuser),
                    RET_ERRNO | libc::EPERM as u32
                );
            }
            // Another architecture's system call kills the process, as with seccompiler.
            assert_eq!(run(&ours, 0x4000_0003, 1, [0; 6]), RET_KILL_PROCESS);
            assert_eq!(run(&reference, 0x4000_0003, 1, [0; 6]), RET_KILL_PROCESS);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles_and_leaves_out_what_docker_leaves_out() {
        let keep: Vec<String> = super::super::caps::DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect();
        let f = compile(&keep).unwrap();
        assert!(f.main.len() < 200, "{} instructions", f.main.len());
        let r = rules(&keep);
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_reboot,
            libc::SYS_kexec_load,
            libc::SYS_bpf,
            libc::SYS_open_tree,
            libc::SYS_io_uring_setup,
            libc::SYS_syslog,
        ] {
            assert!(!r.contains_key(&nr), "syscall {nr} must not be allowed");
        }
        // Conditional: clone only without namespace flags, ioctl but not TIOCSTI.
        assert_eq!(r[&libc::SYS_clone].len(), 1);
        assert_eq!(r[&libc::SYS_ioctl].len(), 1);
    }

    #[test]
    fn an_added_capability_opens_its_system_calls() {
        let keep = vec!["CAP_SYS_ADMIN".to_string(), "CAP_SYS_BOOT".to_string()];
        let r = rules(&keep);
        assert!(r.contains_key(&libc::SYS_mount));
        assert!(r.contains_key(&libc::SYS_reboot));
        assert!(r[&libc::SYS_clone].is_empty());
        assert_eq!(verdicts(&keep)[&(libc::SYS_clone3 as u32)], Verdict::Allow);
    }
}
