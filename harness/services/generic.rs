//! Any command of the base image, with setup steps frozen into layers and a wait strategy.

use std::time::Duration;

use crate::layers::{BaseSpec, LayerSpec};
use crate::testing::Service;

use super::{ReadyMade, ServicesError};

/// When a [`Generic`] service is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// As soon as it has started.
    Started,
    /// `127.0.0.1:PORT` accepts a TCP connection.
    Port(u16),
    /// Its output (stdout and stderr) contains this text.
    Log(String),
    /// This command exits with 0 (retried until it does).
    Command(Vec<String>),
}

/// Any command of the base image (or the host) as a service: optional setup layers run
/// once and frozen (e.g. an init step), a wait strategy and a start timeout.
///
/// ```no_run
/// use std::time::Duration;
/// use pristine::services::{Generic, Stack};
/// use pristine::LayerSpec;
///
/// let web = Generic::new("web", ["python3", "-m", "http.server", "8000", "-d", "/srv/site"])
///     .setup(LayerSpec::new("site").run(["sh", "-c", "mkdir -p /srv/site && echo hi > /srv/site/index.html"]))
///     .wait_port(8000)
///     .timeout(Duration::from_secs(10));
/// let stack = Stack::host().with(web);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Generic {
    name: String,
    argv: Vec<String>,
    setup: Vec<LayerSpec>,
    wait: Wait,
    timeout: Duration,
    user: Option<String>,
    env: Vec<(String, String)>,
    host_inputs: Vec<String>,
}

impl Generic {
    /// A service `name` running `argv` (looked up in the image's `PATH`); ready when
    /// started unless a `wait_*` is set; timeout 30 s.
    pub fn new<I, S>(name: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Generic {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            setup: Vec::new(),
            wait: Wait::Started,
            timeout: Duration::from_secs(30),
            user: None,
            env: Vec::new(),
            host_inputs: Vec::new(),
        }
    }

    /// A layer of setup steps, run once over the base and frozen (its name is prefixed with
    /// the service's: `NAME-LAYER`).
    pub fn setup(mut self, layer: LayerSpec) -> Self {
        self.setup.push(layer);
        self
    }

    /// Waits for `127.0.0.1:port` to accept a connection.
    pub fn wait_port(self, port: u16) -> Self {
        self.wait(Wait::Port(port))
    }

    /// Waits for `text` in its output.
    pub fn wait_log(self, text: impl Into<String>) -> Self {
        self.wait(Wait::Log(text.into()))
    }

    /// Waits for `argv` to exit with 0.
    pub fn wait_command<I, S>(self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wait(Wait::Command(argv.into_iter().map(Into::into).collect()))
    }

    /// Sets the wait strategy.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// How long it may take to become ready (default 30 s); then the test fails, naming the
    /// service and what it waited for.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs it as this user of the image.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets an environment variable for it.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// On the host base: what of the host the setup layers depend on (see
    /// [`Recipe::host_inputs`](crate::Recipe::host_inputs)); without it, every package.
    pub fn host_inputs<I, S>(mut self, inputs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.host_inputs.extend(inputs.into_iter().map(Into::into));
        self
    }
}

impl ReadyMade for Generic {
    fn name(&self) -> &str {
        &self.name
    }

    fn layers(&self, _base: &BaseSpec) -> Result<Vec<LayerSpec>, ServicesError> {
        if self.argv.is_empty() {
            return Err(ServicesError::BadConfig {
                service: self.name.clone(),
                reason: "no command to run".into(),
            });
        }
        Ok(self
            .setup
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.name = format!("{}-{}", self.name, l.name);
                l
            })
            .collect())
    }

    fn host_inputs(&self) -> Vec<String> {
        self.host_inputs.clone()
    }

    fn service(&self) -> Service {
        let mut s = Service::new(self.name.clone(), self.argv.clone()).start_timeout(self.timeout);
        s = match &self.wait {
            Wait::Started => s,
            Wait::Port(p) => s.ready_tcp(*p),
            Wait::Log(t) => s.ready_log(t.clone()),
            Wait::Command(argv) => s.ready_command(argv.clone()),
        };
        if let Some(u) = &self.user {
            s = s.user(u.clone());
        }
        for (k, v) in &self.env {
            s = s.env(k.clone(), v.clone());
        }
        s
    }
}
