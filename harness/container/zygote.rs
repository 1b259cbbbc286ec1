//! The caller's side of the zygote (see `init/zygote.rs`): started once per process, shared
//! by all threads.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Mutex, OnceLock};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::Pid;

use crate::init::{init_program, InitSpec, ZygoteReply, MAX_REQUEST, ZYGOTE_ARG, ZYGOTE_SOCKET_FD};
use crate::sys::{self, ExecRequest, IdMaps, SysError};

struct Client {
    sock: OwnedFd,
    alive: bool,
}

/// The process's zygote, started on first use; `None` if it cannot be (no init program).
fn client() -> Option<&'static Mutex<Client>> {
    static ZYGOTE: OnceLock<Option<Mutex<Client>>> = OnceLock::new();
    ZYGOTE.get_or_init(start).as_ref()
}

fn start() -> Option<Mutex<Client>> {
    if std::env::var_os("PRISTINE_NO_ZYGOTE").is_some() {
        return None;
    }
    let program = init_program()?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ok()?;
    let theirs = sys::raise_fd(theirs).ok()?;
    let req = ExecRequest {
        program: std::ffi::CString::new(program.as_os_str().as_encoded_bytes()).ok()?,
        argv: vec![
            std::ffi::CString::new(program.as_os_str().as_encoded_bytes()).ok()?,
            std::ffi::CString::new(ZYGOTE_ARG).ok()?,
        ],
        envp: Vec::new(),
        fds: vec![(theirs.as_raw_fd(), ZYGOTE_SOCKET_FD)],
        id_maps: None,
        ambient_caps: false,
        cgroup: None,
    };
    // The zygote dies with the thread that starts it (PR_SET_PDEATHSIG is per thread), so
    // start it from a thread that lives as long as the process.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("pristine-zygote".into())
        .spawn(move || {
            let started = sys::clone_exec(CloneFlags::empty(), &req);
            drop(theirs);
            // The zygote's pidfd closes here: it is never waited for (it dies with this
            // thread's process).
            let _ = tx.send(started.is_ok());
            loop {
                std::thread::park();
            }
        })
        .ok()?;
    if !rx.recv().ok()? {
        return None;
    }
    Some(Mutex::new(Client {
        sock: ours,
        alive: true,
    }))
}

/// Asks the zygote to start a container. `None` if there is no working zygote (the caller
/// then execs an init itself); `Some(Err)` if the zygote could not clone. The container's
/// PID 1 is not the caller's child (the kernel reaps it for the zygote, and may give its
/// pid to another process): it comes with its pidfd, which the zygote got from the clone
/// and passed on with its reply.
pub(super) fn start_container(
    spec: &InitSpec,
    flags: CloneFlags,
    id_maps: Option<&IdMaps>,
    fds: [RawFd; 4],
) -> Option<Result<(Pid, OwnedFd), SysError>> {
    let client = client()?;
    let request = serde_json::to_vec(&Request {
        spec,
        flags: flags.bits(),
        uid_map: id_maps.map(|m| m.uid_map.clone()),
        gid_map: id_maps.map(|m| m.gid_map.clone()),
    })
    .ok()
    .filter(|r| r.len() <= MAX_REQUEST)?;
    let mut c = client.lock().ok()?;
    if !c.alive {
        return None;
    }
    let iov = [std::io::IoSlice::new(&request)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    if sendmsg::<()>(
        c.sock.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_err()
    {
        c.alive = false;
        return None;
    }
    let mut buf = [0u8; 4096];
    let Some((n, pidfd)) = receive_reply(&c.sock, &mut buf) else {
        c.alive = false;
        return None;
    };
    drop(c);
    match serde_json::from_slice::<ZygoteReply>(&buf[..n]).ok()? {
        // Started without its pidfd cannot happen (the zygote sends one with every
        // `Started`); it would be an error, not a reason to start the container again.
        ZygoteReply::Started(pid) => {
            Some(pidfd.map(|fd| (Pid::from_raw(pid), fd)).ok_or_else(|| {
                SysError::new(
                    "receive the container's pidfd from the zygote",
                    None,
                    Errno::EPROTO,
                )
            }))
        }
        ZygoteReply::Failed { errno, .. } => {
            Some(Err(SysError::new("clone", None, Errno::from_raw(errno))))
        }
    }
}

/// Receives the zygote's reply into `buf`, with the pidfd that comes with `Started`:
/// its length and that descriptor, `None` if the zygote is gone.
fn receive_reply(sock: &OwnedFd, buf: &mut [u8]) -> Option<(usize, Option<OwnedFd>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()
    .filter(|m| m.bytes > 0)?;
    let mut pidfd = None;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: SCM_RIGHTS installed this descriptor in our process, for us.
                pidfd = Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
        }
    }
    Some((msg.bytes, pidfd))
}

/// The zygote's `ZygoteRequest` (`init/zygote.rs`), borrowing the spec: keep the fields alike.
#[derive(serde::Serialize)]
struct Request<'a> {
    spec: &'a InitSpec,
    flags: i32,
    uid_map: Option<Vec<u8>>,
    gid_map: Option<Vec<u8>>,
}
