//! What runs inside a test's container: the re-executed test binary starts the services,
//! waits for them, runs the one test body and reports how long each part took.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::harness::{monotonic_ns, Ctx, Group};
use super::service::{read_log, Running, Service};

/// Environment variable set in a test's container: the name of the test to run there.
pub const INSIDE_ENV: &str = "PRISTINE_TEST_INSIDE";
/// Environment variable set in a test's container: when the outer process started creating
/// it (monotonic ns), for the start latency.
pub(crate) const T0_ENV: &str = "PRISTINE_TEST_T0";
/// Environment variable set in a test's container whose image exposes ports (its config's
/// `ExposedPorts`): them, comma-separated (`5432/tcp,53/udp`), for
/// [`Service::ready_image_port`](super::Service::ready_image_port).
pub const PORTS_ENV: &str = "PRISTINE_IMAGE_PORTS";
/// Prefix of the line with the inner timings, the last line of the inner stdout.
const TIMINGS_PREFIX: &str = "##pristine-timings ";

/// Monotonic timestamps (ns) reported by the inner process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timings {
    /// The inner process started (after exec, in its `main`).
    pub(crate) entered: u64,
    /// All services were ready; the body started.
    pub(crate) ready: u64,
    /// The body returned.
    pub(crate) done: u64,
}

impl Timings {
    fn line(&self) -> String {
        format!(
            "{TIMINGS_PREFIX}entered={} ready={} done={}\n",
            self.entered, self.ready, self.done
        )
    }

    /// Splits the timings line off the captured stdout.
    pub(crate) fn strip(stdout: &[u8]) -> (String, Option<Timings>) {
        let text = String::from_utf8_lossy(stdout);
        let Some(at) = text.rfind(TIMINGS_PREFIX) else {
            return (text.into_owned(), None);
        };
        if at != 0 && !text[..at].ends_with('\n') {
            return (text.into_owned(), None);
        }
        let line = text[at + TIMINGS_PREFIX.len()..]
            .lines()
            .next()
            .unwrap_or("");
        let get = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        let timings = match (get("entered"), get("ready"), get("done")) {
            (Some(entered), Some(ready), Some(done)) => Some(Timings {
                entered,
                ready,
                done,
            }),
            _ => None,
        };
        let rest = text[at..]
            .find('\n')
            .map(|n| &text[at + n + 1..])
            .unwrap_or("");
        // `finish` put the line after a newline of its own.
        let before = &text[..at];
        let before = before.strip_suffix('\n').unwrap_or(before);
        (format!("{before}{rest}"), timings)
    }
}

/// Runs test `name` here, inside its container, and exits: 0 if it passed, 1 if it failed
/// or its services did not come up, 101 if it panicked.
pub(crate) fn run(groups: &[Group], name: &str) -> ! {
    let entered = monotonic_ns();
    let Some((group, test)) = groups
        .iter()
        .find_map(|g| g.tests.iter().find(|t| t.name == name).map(|t| (g, t)))
    else {
        say!("pristine: no test named {name:?} in this binary (inside its container)");
        std::process::exit(2);
    };
    let mut running: Vec<Running> = Vec::new();
    for service in &group.services {
        match service.start() {
            Ok(r) => running.push(r),
            Err(e) => {
                say!("error: {e}");
                print_logs(&mut running, Some(service));
                finish(2, None);
            }
        }
    }
    let ctx = Ctx {
        name: name.to_string(),
        services: running
            .iter()
            .map(|r| (r.name.clone(), r.log.clone()))
            .collect(),
    };
    let ready = monotonic_ns();
    let result = catch_unwind(AssertUnwindSafe(|| (test.body)(&ctx)));
    let done = monotonic_ns();
    let code = match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let mut msg = format!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            say!("{msg}");
            1
        }
        // The panic hook has printed the message.
        Err(_) => 101,
    };
    if code != 0 {
        print_logs(&mut running, None);
    }
    finish(
        code,
        Some(Timings {
            entered,
            ready,
            done,
        }),
    )
}

fn print_logs(running: &mut [Running], failed: Option<&Service>) {
    let mut err = std::io::stderr().lock();
    for r in running {
        let state = match r.child.try_wait() {
            Ok(Some(status)) => format!("ended: {status}"),
            _ => "running".into(),
        };
        let _ = write!(
            err,
            "\n---- service {} log ({}, ready after {:.1?}, {state}) ----\n{}",
            r.name,
            r.log.display(),
            r.ready_after,
            read_log(&r.log)
        );
    }
    if let Some(s) = failed {
        let log = s.log_path();
        let _ = write!(
            err,
            "\n---- service {} log ({}) ----\n{}",
            s.name,
            log.display(),
            read_log(&log)
        );
    }
}

fn finish(code: i32, timings: Option<Timings>) -> ! {
    let mut out = std::io::stdout().lock();
    if let Some(t) = timings {
        // On a line of its own, so that the outer process can split it off.
        let _ = out.write_all(format!("\n{}", t.line()).as_bytes());
    }
    let _ = out.flush();
    let _ = std::io::stderr().flush();
    // Services end with the container: its init kills every process when this one exits.
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_timings_line() {
        let t = Timings {
            entered: 1,
            ready: 2,
            done: 3,
        };
        let out = format!("hello\nworld\n\n{}", t.line());
        assert_eq!(
            Timings::strip(out.as_bytes()),
            ("hello\nworld\n".into(), Some(t))
        );
        let out = format!("partial\n{}", t.line());
        assert_eq!(Timings::strip(out.as_bytes()), ("partial".into(), Some(t)));
        let out = format!("inline{}", t.line());
        assert_eq!(Timings::strip(out.as_bytes()).1, None);
        assert_eq!(Timings::strip(b"plain\n"), ("plain\n".into(), None));
    }
}
