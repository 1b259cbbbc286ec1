//! The harness builder and its libtest-mimic glue: discovery (building the trial list, which
//! touches neither the kernel nor any image) and execution (one container per trial).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};

use super::carry::{self, Carried};
use super::inside::{self, Timings, INSIDE_ENV, T0_ENV};
use super::registered;
use super::report::{self, TestTiming};
use super::service::Service;
use crate::layers::{with_progress, StderrProgress};
use crate::{Base, Bind, Container, Image, Keep, Stdio, Upper, User};

/// What a test body returns: `?` works on any error; a panic fails the test too.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

type Body = Arc<dyn Fn(&Ctx) -> TestResult + Send + Sync>;
type ImageFn = Arc<dyn Fn() -> Result<Image, String> + Send + Sync>;

/// Environment variable: per-test timeout (`30s`, `2m`, or seconds), overriding
/// [`Harness::timeout`].
pub const TIMEOUT_ENV: &str = "PRISTINE_TEST_TIMEOUT";
/// Environment variable: `failed` (or `on-failure`), `always` or `never`: keep the upper
/// layer of failed (or all) tests and print what they changed. Overrides [`Harness::keep`].
pub const KEEP_ENV: &str = "PRISTINE_KEEP";
/// The default per-test timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a test body gets: its name and its services.
#[derive(Debug)]
pub struct Ctx {
    pub(crate) name: String,
    pub(crate) services: Vec<(String, PathBuf)>,
}

impl Ctx {
    /// The test's full name (`group::test` in a named group).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file of service `name` (its stdout and stderr), if there is such a service.
    pub fn service_log_path(&self, name: &str) -> Option<&std::path::Path> {
        self.services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }

    /// The log of service `name` so far (empty if there is no such service).
    pub fn service_log(&self, name: &str) -> String {
        self.service_log_path(name)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

pub(crate) struct TestDef {
    pub(crate) name: String,
    pub(crate) body: Body,
    pub(crate) ignored: bool,
    /// Why the test cannot run (a `#[pristine::test]` naming an undeclared group): it is
    /// listed, and fails with this message without starting a container.
    pub(crate) misconfigured: Option<String>,
}

/// Tests sharing an image and services.
pub(crate) struct Group {
    pub(crate) prefix: String,
    image: Option<ImageFn>,
    image_cell: Arc<OnceLock<Result<Image, String>>>,
    pub(crate) services: Vec<Service>,
    binds: Vec<Bind>,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    carry: Option<bool>,
    user: Option<User>,
    timeout: Option<Duration>,
    privileges: crate::confine::Privileges,
    pub(crate) tests: Vec<TestDef>,
}

impl Group {
    fn new(prefix: String) -> Self {
        Group {
            prefix,
            image: None,
            image_cell: Arc::new(OnceLock::new()),
            services: Vec::new(),
            binds: Vec::new(),
            env: Vec::new(),
            workdir: None,
            carry: None,
            user: None,
            timeout: None,
            privileges: Default::default(),
            tests: Vec::new(),
        }
    }
}

/// Settings shared by all groups.
#[derive(Clone, Default)]
struct Settings {
    timeout: Option<Duration>,
    keep: Option<Keep>,
    upper: Option<Upper>,
    store: Option<PathBuf>,
}

/// A libtest-compatible test harness whose tests each run inside their own container.
///
/// Use it as the `main` of a `[[test]]` target with `harness = false`:
///
/// ```no_run
/// use std::time::Duration;
/// use pristine::testing::{Harness, Service};
///
/// fn main() {
///     Harness::new()
///         .image(|| Ok::<_, std::convert::Infallible>(pristine::Image::host()))
///         .service(
///             Service::new("web", ["python3", "-m", "http.server", "8000"])
///                 .ready_tcp(8000)
///                 .start_timeout(Duration::from_secs(10)),
///         )
///         .test("writes_are_private", |_ctx| {
///             std::fs::write("/etc/motd", "mine")?; // inside the container
///             Ok(())
///         })
///         .run();
/// }
/// ```
///
/// The outer process (what `cargo test` and nextest start) parses the libtest command line
/// and runs each selected test as a trial that starts a container and, inside it, this same
/// binary again with `--exact NAME --nocapture` and a marker in the environment. That inner
/// process starts the services, waits until they are ready and runs the test body.
#[must_use]
pub struct Harness {
    groups: Vec<Group>,
    settings: Settings,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A harness with one unnamed group on the host image.
    ///
    /// Calls [`crate::main_if_requested`] first, so this binary can serve as the containers'
    /// init: create the harness first thing in `main`.
    pub fn new() -> Self {
        crate::main_if_requested();
        Harness {
            groups: vec![Group::new(String::new())],
            settings: Settings::default(),
        }
    }

    fn current(&mut self) -> &mut Group {
        self.groups.last_mut().expect("there is always a group")
    }

    /// Starts a new group of tests named `name::TEST`, with its own image, services, binds
    /// and environment (none until set). Timeout, keep, upper and store stay harness-wide.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}::")
        };
        self.groups.push(Group::new(prefix));
        self
    }

    /// The current group's image, made on first use by a test that runs (never for
    /// `--list`), once per process. Default: [`Image::host`].
    pub fn image<F, E>(mut self, make: F) -> Self
    where
        F: Fn() -> Result<Image, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        self.current().image = Some(Arc::new(move || make().map_err(|e| e.to_string())));
        self
    }

    /// Ready-made services for the current group: its image is the stack's (the base with
    /// the services' seeded layers, built once per process in the default store, never for
    /// `--list`) and its services are started (in order) before each test body.
    pub fn services(mut self, stack: crate::services::Stack) -> Self {
        for service in stack.services() {
            self = self.service(service);
        }
        self.image(move || stack.build_default())
    }

    /// Adds a service to the current group, started (in order) before each test body.
    pub fn service(mut self, service: Service) -> Self {
        self.current().services.push(service);
        self
    }

    /// Adds a volume to the current group's containers.
    pub fn bind(mut self, bind: Bind) -> Self {
        self.current().binds.push(bind);
        self
    }

    /// Sets an environment variable in the current group's containers.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.current().env.push((key.into(), value.into()));
        self
    }

    /// The working directory of the current group's tests (default: the caller's on the
    /// host image, `/` on other images).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current().workdir = Some(dir.into());
        self
    }

    /// Runs the current group's containers (services and test bodies) as `user`. Rarely
    /// needed: when rootless and the services all run as one user, that is the default,
    /// because a rootless container has only one uid.
    pub fn user(mut self, user: User) -> Self {
        self.current().user = Some(user);
        self
    }

    /// Runs the current group's containers unconfined (see
    /// [`Container::privileged`](crate::Container::privileged), which says what this gives
    /// away): for tests of code that mounts or needs every capability.
    pub fn privileged(mut self) -> Self {
        self.current().privileges.privileged = true;
        self
    }

    /// Keeps capability `cap` in the current group's containers (see
    /// [`Container::cap_add`](crate::Container::cap_add)).
    pub fn cap_add(mut self, cap: impl Into<String>) -> Self {
        self.current().privileges.cap_add.push(cap.into());
        self
    }

    /// Whether to carry the test binary with its interpreter and libraries into the
    /// current group's image (default: on images other than the host's).
    pub fn carry(mut self, carry: bool) -> Self {
        self.current().carry = Some(carry);
        self
    }

    /// Adds a test to the current group; `body` runs inside the test's container.
    pub fn test<F>(mut self, name: impl Into<String>, body: F) -> Self
    where
        F: Fn(&Ctx) -> TestResult + Send + Sync + 'static,
    {
        let g = self.current();
        let name = format!("{}{}", g.prefix, name.into());
        g.tests.push(TestDef {
            name,
            body: Arc::new(body),
            ignored: false,
            misconfigured: None,
        });
        self
    }

    /// Adds a test that runs only with `--ignored` or `--include-ignored`.
    pub fn test_ignored<F>(mut self, name: impl Into<String>, body: F) -> Self
    where
        F: Fn(&Ctx) -> TestResult + Send + Sync + 'static,
    {
        self = self.test(name, body);
        if let Some(t) = self.current().tests.last_mut() {
            t.ignored = true;
        }
        self
    }

    /// Per-test timeout: the test is killed with its container and reported as timed out
    /// (default 60 s; `PRISTINE_TEST_TIMEOUT` overrides it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// The current group's own per-test timeout. Unlike [`Harness::timeout`], neither
    /// `PRISTINE_TEST_TIMEOUT` nor the harness-wide setting overrides it: it is for tests
    /// whose time limit is part of what they check. A slow CI machine is better served by
    /// raising the harness-wide limit.
    pub fn group_timeout(mut self, timeout: Duration) -> Self {
        self.current().timeout = Some(timeout);
        self
    }

    /// When to keep a test's upper layer (default [`Keep::Never`]; `PRISTINE_KEEP`
    /// overrides it). A kept layer's path and diff are part of the failure report.
    pub fn keep(mut self, keep: Keep) -> Self {
        self.settings.keep = Some(keep);
        self
    }

    /// Where upper layers live (default: a 4 GiB tmpfs).
    pub fn upper(mut self, upper: Upper) -> Self {
        self.settings.upper = Some(upper);
        self
    }

    /// The store directory (default: [`crate::Store::default_location`]).
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.store = Some(dir.into());
        self
    }

    /// The full names of all tests (those added here, then the `#[pristine::test]`
    /// functions of each group), in order.
    pub fn test_names(&self) -> Vec<String> {
        let registered = self.registered_tests();
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                let extra = registered.iter().filter(move |(gi, _)| *gi == i);
                g.tests
                    .iter()
                    .chain(extra.map(|(_, t)| t))
                    .map(|t| t.name.clone())
            })
            .collect()
    }

    /// The `#[pristine::test]` functions of this binary, each with the index of the group
    /// it joins. One naming a group that is not declared goes to the first group, marked
    /// misconfigured.
    fn registered_tests(&self) -> Vec<(usize, TestDef)> {
        registered::all()
            .into_iter()
            .map(|r| {
                let prefix = match r.group {
                    "" => String::new(),
                    g => format!("{g}::"),
                };
                let name = format!("{prefix}{}", r.test_name());
                let body = r.body;
                let body: Body = Arc::new(move |ctx: &Ctx| body(ctx));
                let duplicate = self
                    .groups
                    .iter()
                    .any(|g| g.tests.iter().any(|t| t.name == name));
                let (index, misconfigured) =
                    match self.groups.iter().position(|g| g.prefix == prefix) {
                        Some(i) if duplicate => (
                            i,
                            Some(format!(
                                "#[pristine::test] `{}` ({}:{}) has the name of a test added \
                                 with Harness::test: rename one of them",
                                r.name, r.file, r.line
                            )),
                        ),
                        Some(i) => (i, None),
                        None => (
                            0,
                            Some(format!(
                                "#[pristine::test(group = {:?})] on `{}` ({}:{}): the harness \
                                 declares no group {:?}; add `.group({:?})` (with its image and \
                                 services) to the Harness builder in main",
                                r.group, r.name, r.file, r.line, r.group, r.group
                            )),
                        ),
                    };
                let def = TestDef {
                    name,
                    body,
                    ignored: r.ignored,
                    misconfigured,
                };
                (index, def)
            })
            .collect()
    }

    /// Runs the harness on the libtest command line, prints a timing summary to stderr
    /// and exits with libtest's exit code.
    pub fn run(self) -> ! {
        let finished = self.execute(&Arguments::from_args());
        if let Some(s) = finished.summary() {
            say!("{s}");
        }
        finished.conclusion.exit()
    }

    /// Runs the harness with `args` and returns the conclusion and per-test timings.
    ///
    /// Inside a test's container (the re-executed binary) this runs that one test and
    /// exits instead of returning.
    pub fn execute(self, args: &Arguments) -> Finished {
        self.execute_with(args, Vec::new())
    }

    /// [`Harness::execute`], with `host` trials beside the containers' tests: plain
    /// libtest-mimic trials that run on the host, in this process, listed, filtered and
    /// reported like the others (e.g. a test that runs the whole binary again as another
    /// user). They never run inside a container.
    pub fn execute_with(mut self, args: &Arguments, host: Vec<Trial>) -> Finished {
        for (i, def) in self.registered_tests() {
            self.groups[i].tests.push(def);
        }
        if let Some(name) = std::env::var_os(INSIDE_ENV) {
            inside::run(&self.groups, &name.to_string_lossy());
        }
        let timings = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(RunConfig::from_env(&self.settings, args.nocapture));
        let mut trials = Vec::new();
        for g in self.groups {
            // Rootless, only one uid exists in a container. When the services run as one
            // user (PostgreSQL refuses root), the whole container runs as that user.
            let mut service_users: Vec<&String> =
                g.services.iter().filter_map(|s| s.user.as_ref()).collect();
            service_users.dedup();
            let rootless = !nix::unistd::geteuid().is_root();
            let user = g.user.clone().or_else(|| match service_users.as_slice() {
                [only] if rootless => Some(User::Name((*only).clone())),
                _ => None,
            });
            let group = Arc::new(GroupRun {
                user,
                image: g.image,
                image_cell: g.image_cell,
                binds: g.binds,
                env: g.env,
                workdir: g.workdir,
                carry: g.carry,
                timeout: g.timeout,
                privileges: g.privileges,
            });
            for t in g.tests {
                if let Some(why) = t.misconfigured {
                    trials.push(
                        Trial::test(t.name, move || Err(why.into())).with_ignored_flag(t.ignored),
                    );
                    continue;
                }
                let (group, config, timings) = (group.clone(), config.clone(), timings.clone());
                let name = t.name.clone();
                trials.push(
                    Trial::test(t.name, move || {
                        let (result, timing) = run_trial(&group, &config, &name);
                        if let Some(timing) = timing {
                            timings
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(timing);
                        }
                        result
                    })
                    .with_ignored_flag(t.ignored),
                );
            }
        }
        trials.extend(host);
        let conclusion = libtest_mimic::run(args, trials);
        let timings = std::mem::take(&mut *timings.lock().unwrap_or_else(|e| e.into_inner()));
        Finished {
            conclusion,
            timings,
        }
    }
}

/// The result of [`Harness::execute`].
#[derive(Debug)]
#[must_use]
pub struct Finished {
    /// libtest-mimic's conclusion (`.exit()` exits with its code).
    pub conclusion: Conclusion,
    /// Timings of the tests that ran in a container, in completion order.
    pub timings: Vec<TestTiming>,
}

impl Finished {
    /// A one-paragraph summary of container start latencies, if any test ran.
    pub fn summary(&self) -> Option<String> {
        report::summary(&self.timings)
    }
}

struct GroupRun {
    user: Option<User>,
    image: Option<ImageFn>,
    image_cell: Arc<OnceLock<Result<Image, String>>>,
    binds: Vec<Bind>,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    carry: Option<bool>,
    timeout: Option<Duration>,
    privileges: crate::confine::Privileges,
}

impl GroupRun {
    fn image(&self) -> Result<&Image, String> {
        self.image_cell
            .get_or_init(|| match &self.image {
                None => Ok(Image::host()),
                // Recipes built by the image function show their layers and steps on stderr
                // (a failed step's output is in the error the trial reports), as plain lines
                // even on a terminal: test result lines and other groups' builds go to the
                // same terminal meanwhile, and would tear a spinner apart.
                Some(f) => {
                    let progress = StderrProgress::new().plain().failed_output(false);
                    with_progress(Box::new(progress), || f())
                }
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Settings resolved from the builder and the environment, once.
struct RunConfig {
    timeout: Duration,
    keep: Keep,
    upper: Option<Upper>,
    store: Option<PathBuf>,
    nocapture: bool,
}

impl RunConfig {
    fn from_env(s: &Settings, nocapture: bool) -> Self {
        let mut warnings = Vec::new();
        let timeout = match std::env::var(TIMEOUT_ENV) {
            Ok(v) if !v.trim().is_empty() => match parse_timeout(&v) {
                Some(t) => t,
                None => {
                    warnings.push(format!(
                        "ignoring {TIMEOUT_ENV}={v:?}: expected a duration like 30s or 2m"
                    ));
                    s.timeout.unwrap_or(DEFAULT_TIMEOUT)
                }
            },
            _ => s.timeout.unwrap_or(DEFAULT_TIMEOUT),
        };
        let keep = match std::env::var(KEEP_ENV) {
            Ok(v) if !v.trim().is_empty() => match parse_keep(&v) {
                Some(k) => k,
                None => {
                    warnings.push(format!(
                        "ignoring {KEEP_ENV}={v:?}: expected failed, always or never"
                    ));
                    s.keep.unwrap_or(Keep::Never)
                }
            },
            _ => s.keep.unwrap_or(Keep::Never),
        };
        // A sized tmpfs upper cannot be kept (keeping puts it on disk, unsized): the size,
        // which the harness's author chose, wins over the environment's wish to keep.
        let sized = s.upper.as_ref().and_then(Upper::unkeepable_size);
        let keep = match (sized, keep) {
            (Some(size), k) if k != Keep::Never && s.keep.is_none() => {
                warnings.push(format!(
                    "not keeping failed tests' upper layers ({KEEP_ENV}): this harness's upper \
                     layer is a tmpfs of at most {size} (Harness::upper), and a kept one would \
                     be on disk without that limit"
                ));
                Keep::Never
            }
            (_, k) => k,
        };
        for w in &warnings {
            say!("pristine: {w}");
        }
        RunConfig {
            timeout,
            keep,
            upper: s.upper.clone(),
            store: s.store.clone(),
            nocapture,
        }
    }
}

/// `30s`, `1m 30s`, `500ms` or plain seconds (see [`crate::duration`]).
pub(crate) fn parse_timeout(v: &str) -> Option<Duration> {
    crate::duration::parse_duration(v).ok()
}

/// `PRISTINE_KEEP` values.
pub(crate) fn parse_keep(v: &str) -> Option<Keep> {
    match v.trim().to_ascii_lowercase().as_str() {
        "failed" | "failure" | "on-failure" | "onfailure" | "fail" => Some(Keep::OnFailure),
        "always" | "all" | "1" | "yes" => Some(Keep::Always),
        "never" | "0" | "no" => Some(Keep::Never),
        _ => None,
    }
}

/// The test binary carried into images, planned once per process.
fn carried_self() -> Result<&'static Carried, String> {
    static CARRIED: OnceLock<Result<Carried, String>> = OnceLock::new();
    CARRIED
        .get_or_init(|| {
            let exe = std::env::current_exe()
                .map_err(|e| format!("failed to locate the test binary: {e}"))?;
            carry::carry(&exe).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether `dir` of the host is visible in a container of the host image: not under the
/// container's own fresh `/tmp`, `/dev` or `/proc`.
pub(crate) fn visible_on_host_image(dir: &std::path::Path) -> bool {
    !["/tmp", "/dev", "/proc"].iter().any(|p| dir.starts_with(p))
}

/// Runs the container in `dir`, the caller's working directory, as a test expects (cargo
/// runs tests in their crate's directory, where fixtures live). Where the image would not
/// show it (under the container's fresh `/tmp`, or on another image), it is bound
/// read-only at the same path; under `/dev` or `/proc` it is left out. `/tmp` itself is
/// never bound: that would put the host's `/tmp`, read-only, over the container's fresh
/// one, where services write their logs and sockets; the container starts in its own.
pub(crate) fn keep_workdir(c: Container, dir: &std::path::Path, host_image: bool) -> Container {
    if ["/dev", "/proc"].iter().any(|p| dir.starts_with(p)) || dir == std::path::Path::new("/") {
        return c;
    }
    if dir == std::path::Path::new("/tmp") {
        return c.workdir(dir);
    }
    let c = if host_image && visible_on_host_image(dir) {
        c
    } else {
        c.bind(Bind {
            source: dir.to_path_buf(),
            target: dir.to_path_buf(),
            readonly: true,
        })
    };
    c.workdir(dir)
}

/// Monotonic clock in nanoseconds (see [`crate::sys::monotonic_ns`]).
pub(crate) fn monotonic_ns() -> u64 {
    crate::sys::monotonic_ns()
}

fn run_trial(
    group: &GroupRun,
    config: &RunConfig,
    name: &str,
) -> (Result<(), Failed>, Option<TestTiming>) {
    let image = match group.image() {
        Ok(i) => i.clone(),
        Err(e) => {
            return (
                Err(format!("failed to make the image for test {name}: {e}").into()),
                None,
            )
        }
    };
    let carry = group.carry.unwrap_or(*image.base() != Base::Host);
    let timeout = group.timeout.unwrap_or(config.timeout);
    // The test binary is the command: an image's entrypoint would run instead of it.
    let mut c = Container::new(image)
        .entrypoint(Vec::<String>::new())
        .stdio(Stdio::Capture)
        .timeout(timeout)
        .keep(config.keep);
    if let Some(u) = &config.upper {
        c = c.upper(u.clone());
    }
    if let Some(u) = &group.user {
        c = c.user(u.clone());
    }
    if group.privileges.privileged {
        c = c.privileged();
    }
    for cap in &group.privileges.cap_add {
        c = c.cap_add(cap);
    }
    if let Some(s) = &config.store {
        c = c.store(s);
    }
    let mut argv: Vec<String> = match carry {
        true => match carried_self() {
            Ok(carried) => {
                for b in &carried.binds {
                    c = c.bind(b.clone());
                }
                carried.argv.clone()
            }
            Err(e) => return (Err(format!("test {name}: {e}").into()), None),
        },
        // The host's libc is there, but the binary's own directory may not be (the
        // container's /tmp is a fresh tmpfs, for one): bind the binary itself.
        false => match std::env::current_exe() {
            Ok(exe) => {
                let target = format!("{}/bin", carry::CARRY_DIR);
                c = c.bind(Bind {
                    source: exe,
                    target: target.clone().into(),
                    readonly: true,
                });
                vec![target]
            }
            Err(e) => {
                return (
                    Err(format!("failed to locate the test binary: {e}").into()),
                    None,
                )
            }
        },
    };
    argv.extend(["--exact".into(), name.to_string(), "--nocapture".into()]);
    for b in &group.binds {
        c = c.bind(b.clone());
    }
    for (k, v) in &group.env {
        c = c.env(k, v);
    }
    match (&group.workdir, std::env::current_dir()) {
        (Some(w), _) => c = c.workdir(w),
        (None, Ok(cwd)) => c = keep_workdir(c, &cwd, !carry),
        (None, Err(_)) => {}
    }
    let t0 = monotonic_ns();
    c = c.env(INSIDE_ENV, name).env(T0_ENV, t0.to_string());
    let ports: Vec<String> = c.exposed_ports().iter().map(|p| p.to_string()).collect();
    if !ports.is_empty() {
        c = c.env(inside::PORTS_ENV, ports.join(","));
    }
    let out = match c.run(&argv) {
        Ok(out) => out,
        Err(e) => {
            return (
                Err(format!("failed to run test {name} in a container: {e}").into()),
                None,
            )
        }
    };
    let (stdout, inner) = Timings::strip(&out.stdout);
    let timing = TestTiming::new(name, t0, out.duration, inner.as_ref());
    let passed = out.status.success() && !out.timed_out;
    if passed {
        if config.nocapture {
            put!(std::io::stdout(), "{stdout}");
            put!(std::io::stderr(), "{}", out.stderr_str());
        }
        return (Ok(()), Some(timing));
    }
    let diff = out.kept.as_ref().map(|k| (k.upper(), k.diff()));
    let text = report::failure(&report::FailureInput {
        name,
        id: &out.id,
        status: out.status,
        timed_out: out.timed_out,
        timeout,
        group_timeout: group.timeout.is_some(),
        duration: out.duration,
        stdout: &stdout,
        stderr: &out.stderr_str(),
        kept: diff
            .as_ref()
            .map(|(p, d)| (p.as_path(), d.as_ref().map_err(|e| e.to_string()))),
        keep_asked: config.keep != Keep::Never,
        oom_killed: out.oom_killed,
    });
    (Err(text.into()), Some(timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_working_directory_is_bound_except_where_the_container_has_its_own() {
        let c = || Container::new(crate::Image::host());
        let tmp = keep_workdir(c(), std::path::Path::new("/tmp"), true);
        assert!(tmp.binds.is_empty());
        assert_eq!(tmp.workdir.as_deref(), Some(std::path::Path::new("/tmp")));
        let below = keep_workdir(c(), std::path::Path::new("/tmp/x/crate"), true);
        assert_eq!(below.binds.len(), 1);
        assert_eq!(below.binds[0].target, std::path::Path::new("/tmp/x/crate"));
        assert!(below.binds[0].readonly);
        let home = keep_workdir(c(), std::path::Path::new("/home/u/crate"), true);
        assert!(home.binds.is_empty());
        let proc = keep_workdir(c(), std::path::Path::new("/proc/self"), true);
        assert!(proc.binds.is_empty() && proc.workdir.is_none());
    }

    // Registered in this unit-test binary; never run by a harness (libtest runs these).
    #[crate::test(group = "nowhere")]
    fn joins_an_undeclared_group() {}

    #[crate::test]
    fn clashes_with_a_builder_test() {}

    #[test]
    fn attribute_tests_join_their_group_or_say_what_is_wrong() {
        let clash = "testing::harness::tests::clashes_with_a_builder_test";
        let h = Harness::new().test(clash, |_| Ok(()));
        let names = h.test_names();
        let lost = "nowhere::testing::harness::tests::joins_an_undeclared_group";
        assert!(names.iter().any(|n| n == lost), "{names:?}");
        let registered = h.registered_tests();
        let why = |name: &str| {
            registered
                .iter()
                .find(|(_, t)| t.name == name)
                .and_then(|(_, t)| t.misconfigured.clone())
                .unwrap_or_default()
        };
        assert!(
            why(lost).contains("declares no group \"nowhere\"; add `.group(\"nowhere\")`"),
            "{}",
            why(lost)
        );
        assert!(why(clash).contains("rename one of them"), "{}", why(clash));

        // Declared, the group takes the test as it is.
        let h = Harness::new().group("nowhere");
        let registered = h.registered_tests();
        let (group, def) = registered.iter().find(|(_, t)| t.name == lost).unwrap();
        assert_eq!((*group, def.misconfigured.as_deref()), (1, None));
        assert!((def.body)(&Ctx {
            name: lost.into(),
            services: Vec::new()
        })
        .is_ok());
    }

    #[test]
    fn parses_timeouts_and_keep() {
        assert_eq!(parse_timeout("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_keep("failed"), Some(Keep::OnFailure));
        assert_eq!(parse_keep("Always"), Some(Keep::Always));
        assert_eq!(parse_keep("sometimes"), None);
    }

    #[test]
    fn the_image_function_builds_with_progress_on_stderr() {
        use crate::layers::reporter_installed;
        let make = || match reporter_installed() {
            true => Ok(Image::host()),
            false => Err("no progress reporter while the image is made".to_string()),
        };
        let group = GroupRun {
            user: None,
            image: Some(Arc::new(make)),
            image_cell: Arc::new(OnceLock::new()),
            binds: Vec::new(),
            env: Vec::new(),
            workdir: None,
            carry: None,
            timeout: None,
            privileges: Default::default(),
        };
        assert_eq!(group.image().map(Image::base), Ok(&Base::Host));
        assert!(
            !reporter_installed(),
            "the reporter outlived the image function"
        );
    }

    #[test]
    fn listing_builds_no_image() {
        let h = Harness::new()
            .image(|| -> Result<Image, String> { panic!("must not be called") })
            .test("a", |_| Ok(()))
            .group("g")
            .test_ignored("b", |_| Ok(()));
        // (Without the `#[crate::test]` functions this unit-test binary registers.)
        let mut names = h.test_names();
        names.retain(|n| !n.contains("::harness::tests::"));
        assert_eq!(names, ["a", "g::b"]);
        let f = h.execute(&Arguments::from_iter(["bin", "--list"]));
        assert_eq!(f.conclusion.num_passed, 0);
        assert!(f.timings.is_empty());
    }
}
