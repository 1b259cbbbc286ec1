//! The init's `main`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;

use super::reaper::{self, PreparedCommand};
use super::wire::{InitReport, InitSpec, REPORT_FD, SPEC_FD};
use crate::sys;

/// The hidden first argument that turns a pristine-enabled binary into a container init.
pub(crate) const INIT_ARG: &str = "__pristine_init";

/// Set when this binary called [`main_if_requested`], so it can serve as its own init.
pub(crate) static SELF_IS_INIT: AtomicBool = AtomicBool::new(false);

/// Turns this process into a container init if it was started as one; otherwise returns.
///
/// Call it first thing in `main` of any binary that starts containers (pristine's CLI and
/// test harness already do). It lets pristine re-execute the binary itself as the
/// container's init, instead of looking for the `pristine` executable.
pub fn main_if_requested() {
    let mut args = std::env::args_os();
    match args.nth(1).as_deref().and_then(|a| a.to_str()) {
        Some(INIT_ARG) => std::process::exit(run()),
        Some(super::zygote::ZYGOTE_ARG) => std::process::exit(super::zygote::serve()),
        _ => {}
    }
    SELF_IS_INIT.store(true, Ordering::Relaxed);
}

fn run() -> i32 {
    // SAFETY: the caller's clone child dup2'ed the report pipe onto REPORT_FD; nothing else
    // in this fresh process owns it.
    let report_file = unsafe { File::from_raw_fd(REPORT_FD) };
    // The command must not inherit the report pipe, or the caller could not see EOF.
    let _ = nix::fcntl::fcntl(
        // SAFETY: REPORT_FD is open (owned by report_file) for the duration of this call.
        unsafe { BorrowedFd::borrow_raw(REPORT_FD) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // Re-arm die-with-parent: it survives exec in practice, but setting it again is cheap
    // and makes the guarantee independent of credential changes during exec.
    let _ = sys::set_parent_death_signal(Signal::SIGKILL);
    let report = match read_spec() {
        Ok(spec) => run_container(&spec),
        Err(detail) => InitReport::SetupFailed(crate::setup::ApplyError {
            index: 0,
            step: "read container spec".into(),
            op: "read spec".into(),
            path: None,
            errno: None,
            detail,
        }),
    };
    finish(report, report_file)
}

/// The container's PID 1 when it was forked directly from a single-threaded caller (no
/// exec): same setup and reaping as the exec'd init, with the spec already in memory.
/// Never returns.
pub(crate) fn run_forked(spec: &InitSpec, report_file: File) -> ! {
    // A fork has all of its parent's descriptors (locks held by the caller, other
    // containers' pipes in a zygote); PID 1 keeps only its stdio and the report pipe.
    // SAFETY: a forked child that ends in `exit_now` below: no descriptor of the caller's
    // (now closed) is used or dropped afterwards.
    unsafe { sys::close_fds_except(report_file.as_raw_fd()) };
    let report = run_container(spec);
    let code = finish(report, report_file);
    // No atexit handlers or buffers of the caller's copy of the process.
    sys::exit_now(code)
}

/// Reports, from a forked container child, that a step before the init code failed.
/// `report_fd` is the report pipe's write end.
pub(crate) fn report_start_failure(
    report_fd: std::os::fd::RawFd,
    step: &'static str,
    errno: nix::errno::Errno,
) {
    let report = InitReport::SetupFailed(crate::setup::ApplyError {
        index: 0,
        step: step.to_string(),
        op: step.to_string(),
        path: None,
        errno: Some(errno as i32),
        detail: errno.desc().to_string(),
    });
    if let Ok(json) = serde_json::to_vec(&report) {
        sys::write_raw(report_fd, &json);
    }
}

fn finish(report: InitReport, mut report_file: File) -> i32 {
    let code = match &report {
        InitReport::Exited(code) => *code,
        InitReport::Signaled(sig) => 128 + sig,
        _ => 127,
    };
    if let Ok(json) = serde_json::to_vec(&report) {
        let _ = report_file.write_all(&json);
    }
    code
}

fn run_container(spec: &InitSpec) -> InitReport {
    // Exact modes for device nodes and mount points; restored for the command below.
    let old_umask = sys::umask(0);
    if let Err(e) = crate::setup::apply(&spec.ops) {
        return InitReport::SetupFailed(e);
    }
    sys::umask(old_umask);
    if spec.create_workdir {
        // Inside the container's own root: `..` and symlinks end in it. A failure shows
        // in the check below.
        let _ = std::fs::create_dir_all(&spec.workdir);
    }
    if let Err(e) = check_workdir(&spec.workdir, spec.ops.len()) {
        return InitReport::SetupFailed(e);
    }

    let program = &spec.argv[0];
    let path = match resolve_program(program, &spec.env) {
        Some(p) => p,
        None => {
            return InitReport::ExecFailed {
                program: program.clone(),
                errno: libc::ENOENT,
            }
        }
    };
    let user = spec
        .user
        .map(|(uid, gid)| (uid, gid, spec.groups.as_slice()));
    let cmd = match PreparedCommand::new(&path, &spec.argv, &spec.env, &spec.workdir, user) {
        Ok(cmd) => cmd,
        Err(errno) => {
            return InitReport::ExecFailed {
                program: program.clone(),
                errno,
            }
        }
    };
    match reaper::run(&cmd) {
        Ok(reaper::Ended::Exited(code)) => InitReport::Exited(code),
        Ok(reaper::Ended::Signaled(sig)) => InitReport::Signaled(sig),
        Err(errno) => InitReport::ExecFailed {
            program: program.clone(),
            errno,
        },
    }
}

/// A missing working directory is reported as such, not as a program that cannot be run
/// (the command's `chdir` failing just before its `exec` looks like the latter).
fn check_workdir(workdir: &std::path::Path, index: usize) -> Result<(), crate::setup::ApplyError> {
    let errno = match std::fs::metadata(workdir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => libc::ENOTDIR,
        Err(e) => e.raw_os_error().unwrap_or(libc::ENOENT),
    };
    Err(crate::setup::ApplyError {
        index,
        step: format!("change to the working directory {}", workdir.display()),
        op: "chdir".into(),
        path: Some(workdir.to_path_buf()),
        errno: Some(errno),
        detail: format!(
            "the working directory {} is not a directory in the container ({}); create it in the image or choose another one",
            workdir.display(),
            nix::errno::Errno::from_raw(errno).desc()
        ),
    })
}

fn read_spec() -> Result<InitSpec, String> {
    // SAFETY: the caller's clone child dup2'ed the spec pipe onto SPEC_FD; we take ownership
    // and close it when done.
    let mut file = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| format!("reading the container spec from fd {SPEC_FD}: {e}"))?;
    let spec: InitSpec =
        serde_json::from_slice(&buf).map_err(|e| format!("parsing the container spec: {e}"))?;
    if spec.argv.is_empty() {
        return Err("empty command".into());
    }
    Ok(spec)
}

/// Finds `program` the way a shell would, in the container's `PATH`.
fn resolve_program(program: &str, env: &[String]) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(crate) fn cstring(s: impl AsRef<std::ffi::OsStr>) -> Result<CString, i32> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| libc::EINVAL)
}
