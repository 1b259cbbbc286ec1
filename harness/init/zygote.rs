//! The zygote: a long-lived, single-threaded copy of pristine's binary that forks
//! containers on behalf of a multithreaded caller.
//!
//! A multithreaded process may not run anything but `exec` in a child, so without it every
//! container would pay for an exec of the init program (dynamic loader, runtime start-up,
//! spec parsing: over a millisecond). The zygote is exec'd once per caller process; being
//! single-threaded, it can fork a container's PID 1 that runs the setup directly. The
//! caller sends a request (the spec as JSON, plus the stdio and report pipe ends as
//! `SCM_RIGHTS`) over a `SOCK_SEQPACKET` socket and gets the container's pid back.
//!
//! Lifetimes: the zygote dies with the caller's thread that started it (a dedicated
//! thread that never exits), and each container dies with the zygote.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::wire::InitSpec;
use crate::sys::{self, IdMaps};

/// The hidden first argument that makes pristine's binary a zygote.
pub(crate) const ZYGOTE_ARG: &str = "__pristine_zygote";
/// The zygote's end of the socket.
pub(crate) const ZYGOTE_SOCKET_FD: RawFd = 3;
/// Largest request, in bytes (the spec is a few KiB; the environment dominates).
pub(crate) const MAX_REQUEST: usize = 1 << 20;

/// One container to start. Sent with exactly four descriptors: stdin, stdout, stderr and
/// the report pipe's write end.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ZygoteRequest {
    pub spec: InitSpec,
    pub flags: i32,
    pub uid_map: Option<Vec<u8>>,
    pub gid_map: Option<Vec<u8>>,
}

/// The answer to a [`ZygoteRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ZygoteReply {
    /// The container's PID 1, as a pid of the caller's (and zygote's) namespace. Sent with
    /// one descriptor, its pidfd from the clone itself: the kernel reaps the zygote's
    /// children at once, so the caller could not open one safely by pid.
    Started(i32),
    /// `clone` failed.
    Failed { op: String, errno: i32 },
}

/// The zygote's main loop. Returns when the caller closes its end of the socket.
pub(crate) fn serve() -> i32 {
    let _ = sys::set_parent_death_signal(Signal::SIGKILL);
    // Containers are reaped by the kernel: the caller learns how they ended from their
    // report pipe, so the zygote never waits for them.
    sys::set_sigchld_ignored(true);
    // SAFETY: the caller's clone child dup2'ed our socket end onto this descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(ZYGOTE_SOCKET_FD) };
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(_) => return 1,
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        // SAFETY: SCM_RIGHTS installed these descriptors in this process.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return 0; // the caller is gone
        }
        let (reply, pidfd) = match (
            serde_json::from_slice::<ZygoteRequest>(&buf[..len]),
            fds.len(),
        ) {
            (Ok(req), 4) => start(&req, &fds),
            (Ok(_), n) => failed(
                format!("zygote request with {n} descriptors instead of 4"),
                libc::EINVAL,
            ),
            (Err(e), _) => failed(format!("parse zygote request: {e}"), libc::EINVAL),
        };
        drop(fds);
        let json = serde_json::to_vec(&reply).expect("replies serialize");
        let iov = [std::io::IoSlice::new(&json)];
        let raw: Vec<RawFd> = pidfd.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsg = if raw.is_empty() { &[][..] } else { &cmsg[..] };
        if sendmsg::<()>(sock.as_raw_fd(), &iov, cmsg, MsgFlags::empty(), None).is_err() {
            return 1;
        }
        drop(pidfd);
    }
}

fn failed(op: String, errno: i32) -> (ZygoteReply, Option<OwnedFd>) {
    (ZygoteReply::Failed { op, errno }, None)
}

fn start(req: &ZygoteRequest, fds: &[OwnedFd]) -> (ZygoteReply, Option<OwnedFd>) {
    let maps = match (&req.uid_map, &req.gid_map) {
        (Some(u), Some(g)) => Some(IdMaps {
            uid_map: u.clone(),
            gid_map: g.clone(),
        }),
        _ => None,
    };
    let stdio = [
        (fds[0].as_raw_fd(), 0),
        (fds[1].as_raw_fd(), 1),
        (fds[2].as_raw_fd(), 2),
    ];
    let report_fd = fds[3].as_raw_fd();
    let mut child = || {
        // The zygote ignores SIGCHLD; PID 1 must see its children's deaths.
        sys::set_sigchld_ignored(false);
        // SAFETY: in the forked child, the report pipe's write end is ours alone.
        let report = unsafe { File::from_raw_fd(report_fd) };
        super::entry::run_forked(&req.spec, report)
    };
    let mut on_error = |step: &'static str, errno: Errno| {
        super::entry::report_start_failure(report_fd, step, errno)
    };
    crate::setup::prepare(&req.spec.ops);
    // SAFETY: the zygote is single-threaded (it starts no thread), and `stdio` holds the
    // descriptors received with this request, open until it is answered.
    let cgroup = crate::cgroups::open_v2_dir(&req.spec.ops);
    let started = unsafe {
        sys::clone_fork(
            CloneFlags::from_bits_truncate(req.flags),
            cgroup.as_ref().map(std::os::fd::AsFd::as_fd),
            maps.as_ref(),
            &stdio,
            &mut child,
            &mut on_error,
        )
    };
    match started {
        Ok((pid, pidfd)) => (ZygoteReply::Started(pid.as_raw()), Some(pidfd)),
        Err(e) => failed(e.op.to_string(), e.errno as i32),
    }
}
