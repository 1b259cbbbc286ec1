//! Waiting for a container: output, the init's report, exit, and the timeout, in one
//! `poll` loop on the calling thread (no helper threads per container).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::sys;

pub(super) struct Supervised {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub report: Vec<u8>,
    /// How the init itself ended, rendered.
    pub wait: String,
    pub timed_out: bool,
}

/// Collects everything until every pipe is closed, which happens when the init and with it
/// every process of the container are gone (PID 1 exiting kills the PID namespace). On the
/// deadline the init is SIGKILLed, which takes the whole container down at once, including
/// processes that ignore SIGTERM. Both the kill and the wait go through its pidfd (from the
/// clone itself), never by pid: a zygote's container is reaped by the kernel, and its pid
/// may be reused at once.
pub(super) fn supervise(
    is_child: bool,
    pidfd: &OwnedFd,
    report: OwnedFd,
    output: Option<(OwnedFd, OwnedFd)>,
    deadline: Option<Instant>,
) -> Supervised {
    let mut streams: Vec<(Option<OwnedFd>, Vec<u8>)> = vec![(Some(report), Vec::new())];
    if let Some((out, err)) = output {
        streams.push((Some(out), Vec::new()));
        streams.push((Some(err), Vec::new()));
    }
    let mut timed_out = false;
    let mut buf = vec![0u8; 64 * 1024];
    while streams.iter().any(|(fd, _)| fd.is_some()) {
        let timeout = match deadline {
            Some(d) if !timed_out => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = sys::pidfd_signal(pidfd, Signal::SIGKILL);
                    timed_out = true;
                    continue;
                }
                // One more millisecond than left, so the deadline has passed on waking.
                let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
            _ => PollTimeout::NONE,
        };
        let open: Vec<usize> = (0..streams.len())
            .filter(|&i| streams[i].0.is_some())
            .collect();
        let mut pfds: Vec<PollFd<'_>> = open
            .iter()
            .map(|&i| {
                PollFd::new(
                    streams[i].0.as_ref().expect("open").as_fd(),
                    PollFlags::POLLIN,
                )
            })
            .collect();
        match poll(&mut pfds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        for (k, &i) in open.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            let (fd, data) = &mut streams[i];
            match nix::unistd::read(fd.as_ref().expect("open"), &mut buf) {
                Ok(0) => *fd = None,
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => *fd = None,
            }
        }
    }
    // A container started by the zygote is its child, not ours (the kernel reaps it).
    let wait = if !is_child {
        "ended (started by the zygote)".to_string()
    } else {
        match sys::wait_pidfd(pidfd) {
            Ok(ended) => ended.to_string(),
            Err(e) => format!("waitid failed: {e}"),
        }
    };
    let mut it = streams.into_iter().map(|(_, d)| d);
    let report = it.next().unwrap_or_default();
    let stdout = it.next().unwrap_or_default();
    let stderr = it.next().unwrap_or_default();
    Supervised {
        stdout,
        stderr,
        report,
        wait,
        timed_out,
    }
}
