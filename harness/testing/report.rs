//! Presentation: the failure report of a test and the timing summary. Sees outcomes, never
//! processes.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use super::carry::CARRY_DIR;
use super::inside::Timings;
use crate::diff::Change;
use crate::ExitStatus;

/// How long one test's container took, as seen by the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestTiming {
    /// The test.
    pub name: String,
    /// From starting to create the container to its teardown (the whole test).
    pub total: Duration,
    /// From starting to create the container to the test binary running inside it.
    pub container_up: Option<Duration>,
    /// From starting to create the container to the body starting, services ready: the
    /// start latency a test pays.
    pub ready: Option<Duration>,
    /// The body itself.
    pub body: Option<Duration>,
}

impl TestTiming {
    pub(crate) fn new(name: &str, t0: u64, total: Duration, inner: Option<&Timings>) -> Self {
        let since = |t: u64| Duration::from_nanos(t.saturating_sub(t0));
        TestTiming {
            name: name.to_string(),
            total,
            container_up: inner.map(|i| since(i.entered)),
            ready: inner.map(|i| since(i.ready)),
            body: inner.map(|i| Duration::from_nanos(i.done.saturating_sub(i.ready))),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Median, 90th percentile and maximum.
fn stats(mut v: Vec<Duration>) -> Option<(Duration, Duration, Duration)> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.9), v[v.len() - 1]))
}

/// `pristine: N containers; …` or nothing if no test ran in a container.
pub(crate) fn summary(timings: &[TestTiming]) -> Option<String> {
    if timings.is_empty() {
        return None;
    }
    let mut s = format!(
        "pristine: {} test container{}",
        timings.len(),
        if timings.len() == 1 { "" } else { "s" }
    );
    let line = |label: &str, v: Vec<Duration>, s: &mut String| {
        if let Some((p50, p90, max)) = stats(v) {
            let _ = write!(
                s,
                "\n  {label:<34} median {}, p90 {}, max {}",
                ms(p50),
                ms(p90),
                ms(max)
            );
        }
    };
    line(
        "container up (binary running):",
        timings.iter().filter_map(|t| t.container_up).collect(),
        &mut s,
    );
    line(
        "start latency (services ready):",
        timings.iter().filter_map(|t| t.ready).collect(),
        &mut s,
    );
    line(
        "whole test incl. teardown:",
        timings.iter().map(|t| t.total).collect(),
        &mut s,
    );
    Some(s)
}

/// Everything a failure report shows.
pub(crate) struct FailureInput<'a> {
    pub(crate) name: &'a str,
    pub(crate) id: &'a str,
    pub(crate) status: ExitStatus,
    pub(crate) timed_out: bool,
    pub(crate) timeout: Duration,
    /// Whether the limit is the group's own ([`super::Harness::group_timeout`]).
    pub(crate) group_timeout: bool,
    pub(crate) duration: Duration,
    pub(crate) stdout: &'a str,
    pub(crate) stderr: &'a str,
    /// The kept upper layer and what it changed.
    pub(crate) kept: Option<(&'a Path, Result<&'a Vec<Change>, String>)>,
    pub(crate) keep_asked: bool,
    /// The memory limit, if the test's container was OOM-killed.
    pub(crate) oom_killed: Option<u64>,
}

/// The failure message libtest prints for a test.
pub(crate) fn failure(f: &FailureInput<'_>) -> String {
    let mut s = String::new();
    if f.timed_out {
        let hint = if f.group_timeout {
            "the limit is its group's own: Harness::group_timeout"
        } else {
            "set PRISTINE_TEST_TIMEOUT or Harness::timeout to change the limit"
        };
        let _ = writeln!(
            s,
            "test {} timed out after {} and was killed with its container {} ({hint})",
            f.name,
            humantime::format_duration(f.timeout),
            f.id
        );
    } else if let Some(limit) = f.oom_killed {
        let _ = writeln!(
            s,
            "test {} was killed: out of memory, limit {} (container {}, {} after {})",
            f.name,
            crate::size::human(limit),
            f.id,
            f.status,
            ms(f.duration)
        );
    } else {
        let _ = writeln!(
            s,
            "test {} failed in container {} with {} after {}",
            f.name,
            f.id,
            f.status,
            ms(f.duration)
        );
    }
    section(&mut s, "stdout", f.stdout);
    section(&mut s, "stderr", f.stderr);
    match &f.kept {
        Some((upper, changes)) => {
            let _ = writeln!(s, "\n---- kept upper layer: {} ----", upper.display());
            s.push_str(&render_diff(
                changes.as_ref().map(|c| c.as_slice()).map_err(Clone::clone),
            ));
        }
        None if !f.keep_asked => {
            let _ = writeln!(
                s,
                "\n(set PRISTINE_KEEP=failed to keep the container's changes for inspection)"
            );
        }
        None => {}
    }
    s
}

fn section(s: &mut String, label: &str, text: &str) {
    if text.trim().is_empty() {
        return;
    }
    let _ = write!(s, "\n---- {label} ----\n{text}");
    if !text.ends_with('\n') {
        s.push('\n');
    }
}

/// The changes, one `A /path` line each, without the harness's own mount points.
pub fn render_diff(changes: Result<&[Change], String>) -> String {
    match changes {
        Err(e) => format!("(cannot compute the diff: {e})\n"),
        Ok(changes) => {
            let lines: Vec<String> = changes
                .iter()
                .filter(|c| !c.path.starts_with(CARRY_DIR))
                .map(|c| format!("{c}\n"))
                .collect();
            if lines.is_empty() {
                "(no changes)\n".into()
            } else {
                lines.concat()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ChangeKind;

    #[test]
    fn reports_name_status_output_and_diff() {
        let changes = vec![
            Change {
                path: "/.pristine/bin".into(),
                kind: ChangeKind::Added,
            },
            Change {
                path: "/data/new".into(),
                kind: ChangeKind::Added,
            },
        ];
        let text = failure(&FailureInput {
            name: "t",
            id: "1-2",
            status: ExitStatus::Exited(1),
            timed_out: false,
            timeout: Duration::from_secs(60),
            group_timeout: false,
            duration: Duration::from_millis(12),
            stdout: "out",
            stderr: "",
            kept: Some((Path::new("/s/kept/1-2/upper"), Ok(&changes))),
            keep_asked: true,
            oom_killed: None,
        });
        assert_eq!(
            text,
            "test t failed in container 1-2 with exit code 1 after 12.0 ms\n\n---- stdout ----\nout\n\n---- kept upper layer: /s/kept/1-2/upper ----\nA /data/new\n"
        );
    }

    #[test]
    fn reports_an_oom_kill_as_such() {
        let text = failure(&FailureInput {
            name: "t",
            id: "c",
            status: ExitStatus::Signaled(9),
            timed_out: false,
            timeout: Duration::from_secs(60),
            group_timeout: false,
            duration: Duration::from_millis(12),
            stdout: "",
            stderr: "",
            kept: None,
            keep_asked: false,
            oom_killed: Some(64 << 20),
        });
        assert!(
            text.starts_with("test t was killed: out of memory, limit 64 MiB (container c, killed by signal 9 (SIGKILL) after 12.0 ms)"),
            "{text}"
        );
    }

    #[test]
    fn summarizes_latencies() {
        assert_eq!(summary(&[]), None);
        let t = |ms| TestTiming {
            name: "x".into(),
            total: Duration::from_millis(ms * 2),
            container_up: Some(Duration::from_millis(ms)),
            ready: Some(Duration::from_millis(ms)),
            body: None,
        };
        let s = summary(&[t(1), t(2), t(3)]).unwrap();
        assert!(s.starts_with("pristine: 3 test containers"), "{s}");
        assert!(s.contains("median 2.0 ms, p90 3.0 ms, max 3.0 ms"), "{s}");
    }
}
