//! What a build reports as it goes: one event per layer found in the cache, per layer built
//! and per step, in order ([`BuildEvent`]), and a reporter that shows them on stderr
//! ([`StderrProgress`]: a spinner line on a terminal, plain lines otherwise). stdout is never
//! written: a test binary's `--list` output must hold only test lines.
//!
//! [`Recipe::build_with_progress`](super::Recipe::build_with_progress) reports to the
//! reporter it is given; [`Recipe::build`](super::Recipe::build) to the one installed for
//! the calling thread by [`with_progress`] (the test harness does this around a group's image
//! function), else to none.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Which layer of a build an event is about.
#[derive(Debug, Clone, Copy)]
pub struct LayerPos<'a> {
    /// Layer name.
    pub name: &'a str,
    /// Content-addressed key.
    pub key: &'a str,
    /// Position in the recipe, from 1.
    pub index: usize,
    /// Number of layers in the recipe.
    pub total: usize,
}

/// Which step of a layer an event is about.
#[derive(Debug, Clone, Copy)]
pub struct StepPos<'a> {
    /// The layer.
    pub layer: LayerPos<'a>,
    /// Position in the layer, from 1.
    pub index: usize,
    /// Number of steps in the layer.
    pub total: usize,
}

/// One thing a build did, in the order it happened.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum BuildEvent<'a> {
    /// The layer was found in the store: nothing ran.
    Cached(LayerPos<'a>),
    /// The layer is being built; its steps follow.
    Building(LayerPos<'a>, usize),
    /// A step starts (`what`: the command or the copy, rendered).
    StepStarted(StepPos<'a>, &'a str),
    /// A step succeeded.
    StepDone(StepPos<'a>, Duration),
    /// A step failed (`why`: how it ended) with this output; nothing is published.
    StepFailed {
        /// The step.
        step: StepPos<'a>,
        /// How it ended (exit status, timeout, or why it could not run).
        why: &'a str,
        /// Its standard output.
        stdout: &'a str,
        /// Its standard error.
        stderr: &'a str,
    },
    /// The layer was built and published.
    Built(LayerPos<'a>, Duration),
}

/// Receives a build's events.
pub trait Progress {
    /// Called for each event, in order, on the building thread.
    fn event(&mut self, event: &BuildEvent<'_>);
}

impl<F: FnMut(&BuildEvent<'_>)> Progress for F {
    fn event(&mut self, event: &BuildEvent<'_>) {
        self(event)
    }
}

thread_local! {
    static AMBIENT: RefCell<Option<Box<dyn Progress>>> = const { RefCell::new(None) };
}

/// Runs `f` with `progress` receiving the events of every [`Recipe::build`] and
/// [`Recipe::build_report`] it makes on this thread.
///
/// [`Recipe::build`]: super::Recipe::build
/// [`Recipe::build_report`]: super::Recipe::build_report
pub fn with_progress<T>(progress: Box<dyn Progress>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Box<dyn Progress>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            AMBIENT.with(|a| *a.borrow_mut() = prev);
        }
    }
    let _restore = Restore(AMBIENT.with(|a| a.replace(Some(progress))));
    f()
}

/// Runs `f` with this thread's reporter ([`with_progress`]), or with none.
pub(crate) fn with_ambient<T>(f: impl FnOnce(&mut dyn Progress) -> T) -> T {
    let Some(mut progress) = AMBIENT.with(|a| a.borrow_mut().take()) else {
        return f(&mut |_: &BuildEvent<'_>| {});
    };
    let out = f(&mut *progress);
    AMBIENT.with(|a| *a.borrow_mut() = Some(progress));
    out
}

/// Whether a reporter is installed on this thread ([`with_progress`]).
#[cfg(test)]
pub(crate) fn reporter_installed() -> bool {
    AMBIENT.with(|a| a.borrow().is_some())
}

/// Shows a build on stderr: on a terminal one spinner line for the running step above the
/// finished ones; otherwise one plain line per event, prefixed `pristine: `.
pub struct StderrProgress {
    /// The spinner, on a terminal while a layer is being built.
    bar: Option<ProgressBar>,
    /// The running step, as the spinner shows it.
    step: String,
    terminal: bool,
    failed_output: bool,
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl StderrProgress {
    /// A reporter that also prints a failed step's output.
    pub fn new() -> Self {
        Self {
            bar: None,
            step: String::new(),
            terminal: std::io::stderr().is_terminal(),
            failed_output: true,
        }
    }

    /// Whether to print a failed step's output (default: yes). The test harness says no:
    /// the failure it reports carries the output already.
    #[must_use]
    pub fn failed_output(mut self, show: bool) -> Self {
        self.failed_output = show;
        self
    }

    /// Always plain lines, even on a terminal.
    #[must_use]
    pub fn plain(mut self) -> Self {
        self.terminal = false;
        self
    }

    /// A finished line: above the spinner on a terminal, else a plain line.
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.terminal => say(format_args!("{text}")),
            None => say(format_args!("pristine: {text}")),
        }
    }

    fn spinner(&mut self, prefix: String) {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {prefix}: {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(prefix);
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn failed(&mut self, step: &StepPos<'_>, why: &str, stdout: &str, stderr: &str) {
        self.finish();
        self.line(&format!(
            "{}: step {} failed: {why}",
            layer(&step.layer),
            pos(step)
        ));
        if !self.failed_output {
            return;
        }
        for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
            if text.is_empty() {
                continue;
            }
            self.line(&format!(
                "{}: step {} {name}:",
                layer(&step.layer),
                pos(step)
            ));
            for l in text.lines() {
                say(format_args!("  | {l}"));
            }
        }
    }
}

fn layer(l: &LayerPos<'_>) -> String {
    format!("layer {}/{} {}", l.index, l.total, l.name)
}

fn pos(s: &StepPos<'_>) -> String {
    format!("{}/{}", s.index, s.total)
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

impl Progress for StderrProgress {
    fn event(&mut self, event: &BuildEvent<'_>) {
        match *event {
            BuildEvent::Cached(l) => {
                self.line(&format!("{}: cached ({})", layer(&l), short(l.key)))
            }
            BuildEvent::Building(l, steps) => {
                let s = if steps == 1 { "" } else { "s" };
                let text = format!(
                    "{}: building ({}), {steps} step{s}",
                    layer(&l),
                    short(l.key)
                );
                self.line(&text);
                if self.terminal {
                    self.spinner(layer(&l));
                }
            }
            BuildEvent::StepStarted(s, what) => {
                self.step = format!("step {}: {what}", pos(&s));
                match &self.bar {
                    Some(bar) => bar.set_message(self.step.clone()),
                    None => self.line(&format!("{}: {}", layer(&s.layer), self.step)),
                }
            }
            // On a terminal the line replaces the spinner's, so it says which step it was.
            BuildEvent::StepDone(s, took) => {
                let done = match &self.bar {
                    Some(_) => format!("{} done in {took:.1?}", self.step),
                    None => format!("step {} done in {took:.1?}", pos(&s)),
                };
                self.line(&format!("{}: {done}", layer(&s.layer)));
            }
            BuildEvent::StepFailed {
                step,
                why,
                stdout,
                stderr,
            } => self.failed(&step, why, stdout, stderr),
            BuildEvent::Built(l, took) => {
                self.finish();
                self.line(&format!("{}: built in {took:.1?}", layer(&l)));
            }
        }
    }
}

impl Drop for StderrProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A line on stderr; a closed stderr (`pristine build 2>&1 | head`) is not an error.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ambient_reporter_is_scoped_to_the_call_and_restored() {
        let seen = std::rc::Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        let record = move |e: &BuildEvent<'_>| s.borrow_mut().push(format!("{e:?}"));
        let l = LayerPos {
            name: "a",
            key: "k",
            index: 1,
            total: 1,
        };
        with_progress(Box::new(record), || {
            with_ambient(|p| p.event(&BuildEvent::Cached(l)));
            // Nested use (a build inside a build's reporter) finds none, and no panic.
            with_ambient(|_outer| with_ambient(|q| q.event(&BuildEvent::Cached(l))));
        });
        with_ambient(|p| p.event(&BuildEvent::Cached(l)));
        assert_eq!(seen.borrow().len(), 1, "{:?}", seen.borrow());
    }
}
