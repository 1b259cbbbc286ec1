//! PID 1: start the command, forward signals to it, reap orphans, and take every process of
//! the container down when the command exits.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::entry::cstring;
use crate::sys;

/// Signals PID 1 passes on to the command.
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The command, converted to C strings before `fork`.
pub(crate) struct PreparedCommand {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    /// Drop to this `(uid, gid)` before exec, if not already it.
    user: Option<(u32, u32)>,
    /// With these supplementary groups (at least the gid).
    groups: Vec<u32>,
}

impl PreparedCommand {
    pub(crate) fn new(
        path: &Path,
        argv: &[String],
        env: &[String],
        workdir: &Path,
        user: Option<(u32, u32, &[u32])>,
    ) -> Result<Self, i32> {
        Ok(Self {
            path: cstring(path)?,
            argv: argv.iter().map(cstring).collect::<Result<_, _>>()?,
            envp: env.iter().map(cstring).collect::<Result<_, _>>()?,
            workdir: cstring(workdir)?,
            user: user.map(|(uid, gid, _)| (uid, gid)),
            groups: match user {
                Some((_, gid, [])) => vec![gid],
                Some((_, _, groups)) => groups.to_vec(),
                None => Vec::new(),
            },
        })
    }
}

/// How the command ended.
pub(crate) enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Runs the command as PID 1's only child and waits for it. `Err(errno)` if it could not be
/// executed (no such file, not executable, bad working directory).
pub(crate) fn run(cmd: &PreparedCommand) -> Result<Ended, i32> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for &sig in FORWARDED {
        mask.add(sig);
    }
    // Block before fork so no signal is lost between fork and the wait loop. Blocked
    // signals are also the only way PID 1 of a namespace receives signals from outside it
    // without installing handlers.
    let mut command_mask = sys::block_signals(&mask).map_err(|e| e.errno as i32)?;
    // The command gets the mask PID 1 was started with, minus ours: a foreground run starts
    // PID 1 with the forwarded signals already blocked (see `container::spawn`), which is
    // for PID 1 only.
    for sig in mask.iter() {
        command_mask.remove(sig);
    }
    let (err_r, err_w) = sys::pipe_high().map_err(|e| e.errno as i32)?;
    let argv: Vec<*const libc::c_char> = cmd
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = cmd
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();

    let err_fd = err_w.as_raw_fd();
    let mut exec = || {
        // The command leads a process group of its own, as a shell's job would, so that a
        // terminal's SIGINT and SIGQUIT reach all of it (`wait_loop`).
        let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
        let _ = sys::set_signal_mask(&command_mask);
        sys::reset_sigpipe();
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers into `cmd`'s C
        // strings, all alive until exec; this is the new child, about to exec.
        let errno = unsafe {
            sys::exec_command(cmd.user, &cmd.groups, &cmd.workdir, &cmd.path, &argv, &envp)
        };
        sys::write_raw(err_fd, &(errno as i32).to_ne_bytes());
        sys::exit_now(127);
    };
    // SAFETY: the child (sharing our memory until it execs) only makes system calls on
    // data prepared above (`sigprocmask`, `sigaction`, `prctl`, credentials, `chdir`,
    // `execve`, `write`, `_exit`) and writes nothing but its own stack; PID 1 is
    // single-threaded.
    let child = unsafe { sys::spawn_vforked(&mut exec) }.map_err(|e| e.errno as i32)?;
    drop(err_w);
    let mut buf = [0u8; 4];
    if let Ok(4) = nix::unistd::read(&err_r, &mut buf) {
        let _ = waitpid(child, None);
        return Err(i32::from_ne_bytes(buf));
    }
    Ok(wait_loop(child, &mask))
}

/// Where a forwarded signal goes: SIGINT and SIGQUIT, which a terminal sends to its whole
/// foreground process group (Ctrl-C, Ctrl-Backslash), to the command's process group, so that in
/// `pristine shell` they interrupt the shell's running command as they would on the
/// terminal; the others to the command alone.
fn forward_target(child: Pid, sig: Signal) -> i32 {
    match sig {
        Signal::SIGINT | Signal::SIGQUIT => -child.as_raw(),
        _ => child.as_raw(),
    }
}

fn wait_loop(child: Pid, mask: &SigSet) -> Ended {
    loop {
        let Ok(sig) = mask.wait() else { continue };
        if sig != Signal::SIGCHLD {
            // The command may have left its group (`setsid`): then it gets the signal alone.
            if sys::kill(forward_target(child, sig), sig).is_err() {
                let _ = sys::kill(child.as_raw(), sig);
            }
            continue;
        }
        // Reap everything that has exited: the command, and orphans re-parented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    return finish(Ended::Exited(code));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    return finish(Ended::Signaled(sig as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// The command is gone: everything else in the container goes with it. (PID 1 exiting
/// would also make the kernel kill the namespace, but killing first means no process
/// outlives the command by even the time it takes us to report.)
fn finish(ended: Ended) -> Ended {
    let _ = sys::kill(-1, Signal::SIGKILL);
    ended
}
