//! The caller's side of the zygote (see `init/zygote.rs`): started once per process, shared
//! by all threads.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Mutex, OnceLock};

use nix::sched::CloneFlags;
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::unistd::Pid;

use crate::init::{init_program, InitSpec, ZygoteReply, MAX_REQUEST, ZYGOTE_ARG, ZYGOTE_SOCKET_FD};
use crate::sys::{self, ExecRequest, IdMaps, SysError};

struct Client {
    sock: OwnedFd,
    alive: bool,
    /// The zygote's pid: the parent of every container it starts.
    pid: i32,
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
            let _ = tx.send(started.ok().map(|p| p.as_raw()));
            loop {
                std::thread::park();
            }
        })
        .ok()?;
    let pid = rx.recv().ok()??;
    Some(Mutex::new(Client {
        sock: ours,
        alive: true,
        pid,
    }))
}

/// Asks the zygote to start a container. `None` if there is no working zygote (the caller
/// then execs an init itself); `Some(Err)` if the zygote could not clone. The container's
/// PID 1 is not the caller's child (the kernel reaps it for the zygote, and may give its
/// pid to another process): it comes with a pidfd to signal it by, `None` if it is
/// already gone.
pub(super) fn start_container(
    spec: &InitSpec,
    flags: CloneFlags,
    id_maps: Option<&IdMaps>,
    fds: [RawFd; 4],
) -> Option<Result<(Pid, Option<OwnedFd>), SysError>> {
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
    let n = match recv(c.sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        Ok(n) if n > 0 => n,
        _ => {
            c.alive = false;
            return None;
        }
    };
    let zygote = c.pid;
    drop(c);
    match serde_json::from_slice::<ZygoteReply>(&buf[..n]).ok()? {
        ZygoteReply::Started(pid) => {
            Some(Ok((Pid::from_raw(pid), sys::pidfd_of_child(pid, zygote))))
        }
        ZygoteReply::Failed { errno, .. } => Some(Err(SysError::new(
            "clone",
            None,
            nix::errno::Errno::from_raw(errno),
        ))),
    }
}

/// The zygote's `ZygoteRequest` (`init/zygote.rs`), borrowing the spec: keep the fields alike.
#[derive(serde::Serialize)]
struct Request<'a> {
    spec: &'a InitSpec,
    flags: i32,
    uid_map: Option<Vec<u8>>,
    gid_map: Option<Vec<u8>>,
}
