//! Services: commands started inside a test's container before its body, each with a
//! readiness check, a start timeout and a log file.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hints::Hint;

/// Where services' logs go inside the container (`DIR/NAME.log`), if the image lets the
/// container create it; otherwise [`FALLBACK_LOG_DIR`] (e.g. rootless on the host image,
/// where `/var/log` belongs to an unmapped user).
pub const LOG_DIR: &str = "/var/log/pristine";
/// Where services' logs go when [`LOG_DIR`] cannot be created.
pub const FALLBACK_LOG_DIR: &str = "/tmp/pristine-log";

/// The log directory, created on first use (inside the container only).
fn log_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<&'static Path> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if std::fs::create_dir_all(LOG_DIR).is_ok() {
            Path::new(LOG_DIR)
        } else {
            Path::new(FALLBACK_LOG_DIR)
        }
    })
}

/// How often readiness is checked.
const POLL: Duration = Duration::from_millis(1);

/// How to tell that a service is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ready {
    /// As soon as it has been started.
    Started,
    /// A TCP connection to `127.0.0.1:PORT` succeeds.
    Tcp(u16),
    /// The unix socket at this path accepts a connection.
    UnixSocket(PathBuf),
    /// This command (run as the service's user) exits with 0.
    Command(Vec<String>),
    /// The service's log (stdout + stderr) contains this text.
    LogContains(String),
    /// A TCP connection succeeds to `127.0.0.1` on the lowest TCP port the test's image
    /// exposes (its config's `ExposedPorts`).
    ImagePort,
    /// `127.0.0.1:port` answers `send` with a reply that starts with `expect` (e.g. Redis's
    /// `PING` and `+PONG`: a server still loading its data answers `-LOADING`).
    TcpReply {
        /// The port.
        port: u16,
        /// What to send once connected.
        send: Vec<u8>,
        /// What the reply must start with.
        expect: Vec<u8>,
    },
}

/// A command started inside the container before the test body, e.g. a database server.
///
/// ```
/// use std::time::Duration;
/// use pristine::testing::Service;
///
/// let web = Service::new("web", ["python3", "-m", "http.server", "8000"])
///     .ready_tcp(8000)
///     .start_timeout(Duration::from_secs(5));
/// assert_eq!(web.name(), "web");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Service {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) user: Option<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: Option<PathBuf>,
    pub(crate) ready: Ready,
    pub(crate) start_timeout: Duration,
}

impl Service {
    /// A service called `name` (used in messages and as its log file's name) running `argv`
    /// (the program is looked up in the container's `PATH`). Ready as soon as started,
    /// unless a `ready_*` check is set; start timeout 30 s.
    pub fn new<I, S>(name: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Service {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            user: None,
            env: Vec::new(),
            workdir: None,
            ready: Ready::Started,
            start_timeout: Duration::from_secs(30),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs it as this user of the container's `/etc/passwd` (uid, primary and supplementary
    /// groups, `HOME`, `USER`), instead of the container's root.
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.user = Some(name.into());
        self
    }

    /// Sets an environment variable for it.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Its working directory (default: the test's).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Ready when `127.0.0.1:port` accepts a TCP connection.
    pub fn ready_tcp(mut self, port: u16) -> Self {
        self.ready = Ready::Tcp(port);
        self
    }

    /// Ready when `127.0.0.1` accepts a TCP connection on the lowest TCP port the image
    /// exposes (`ExposedPorts` of an imported image's config): e.g. a database image's
    /// server, without repeating its port. An image that exposes no TCP port fails the
    /// service at once.
    pub fn ready_image_port(mut self) -> Self {
        self.ready = Ready::ImagePort;
        self
    }

    /// Ready when `127.0.0.1:port` answers `send` with a reply starting with `expect`.
    pub fn ready_tcp_reply(
        mut self,
        port: u16,
        send: impl Into<Vec<u8>>,
        expect: impl Into<Vec<u8>>,
    ) -> Self {
        self.ready = Ready::TcpReply {
            port,
            send: send.into(),
            expect: expect.into(),
        };
        self
    }

    /// Ready when the unix socket at `path` accepts a connection.
    pub fn ready_unix_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.ready = Ready::UnixSocket(path.into());
        self
    }

    /// Ready when `argv` exits with 0 (it is retried until then).
    pub fn ready_command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ready = Ready::Command(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Ready when its output contains `text`.
    pub fn ready_log(mut self, text: impl Into<String>) -> Self {
        self.ready = Ready::LogContains(text.into());
        self
    }

    /// How long it may take to become ready (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Its log file inside the container (creates the log directory: call it there only).
    pub(crate) fn log_path(&self) -> PathBuf {
        log_dir().join(format!("{}.log", self.name))
    }
}

/// Why a service could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The log file could not be created.
    #[error("failed to create the log file {path} of service {service:?}: {source}")]
    Log {
        /// The service.
        service: String,
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service's user is not in the container's `/etc/passwd`.
    #[error("service {service:?}: no user {user:?} in the container's /etc/passwd{hint}")]
    NoSuchUser {
        /// The service.
        service: String,
        /// The user asked for.
        user: String,
        /// What to do.
        hint: Hint,
    },
    /// The program could not be started.
    #[error("failed to start service {service:?} ({program}): {source}{hint}")]
    Spawn {
        /// The service.
        service: String,
        /// Its program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
        /// What to do.
        hint: Hint,
    },
    /// The service exited before it was ready.
    #[error("service {service:?} exited with {status} before it was ready (log: {log})")]
    Exited {
        /// The service.
        service: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// The service did not become ready within its start timeout.
    #[error("service {service:?} was not ready after {} ({check}){hint}", humantime::format_duration(*.timeout))]
    NotReady {
        /// The service.
        service: String,
        /// The start timeout.
        timeout: Duration,
        /// The readiness check, described.
        check: String,
        /// What to do.
        hint: Hint,
    },
}

/// A running service.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    pub(crate) child: Child,
    /// From spawning it to its readiness.
    pub(crate) ready_after: Duration,
}

/// A user of the container's `/etc/passwd`, with its groups from `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: String,
    pub(crate) groups: Vec<u32>,
}

/// Looks `name` up in `passwd` and `group` (the files' contents).
pub(crate) fn lookup_user(name: &str, passwd: &str, group: &str) -> Option<User> {
    let fields = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)?;
    let uid = fields[2].parse().ok()?;
    let gid: u32 = fields[3].parse().ok()?;
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    Some(User {
        name: name.to_string(),
        uid,
        gid,
        home: fields[5].to_string(),
        groups,
    })
}

fn unmapped_hint(user: &User) -> Hint {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let mapped = map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && (f[0]..f[0] + f[2]).contains(&u64::from(user.uid))
    });
    if mapped {
        Hint(None)
    } else {
        Hint(Some(format!(
            "uid {} of {:?} is not mapped in this container's user namespace: rootless \
             containers map only your own uid (to root); run the tests as root, or give the \
             service no user",
            user.uid, user.name
        )))
    }
}

impl Service {
    /// Starts it with its output in its log file and waits until it is ready.
    pub(crate) fn start(&self) -> Result<Running, ServiceError> {
        if self.ready == Ready::ImagePort && image_tcp_port().is_none() {
            return Err(ServiceError::NotReady {
                service: self.name.clone(),
                timeout: Duration::ZERO,
                check: self.describe_check(),
                hint: Hint(Some(
                    "wait on a port of its own with Service::ready_tcp(PORT)".into(),
                )),
            });
        }
        let log = self.log_path();
        let io_log = |source| ServiceError::Log {
            service: self.name.clone(),
            path: log.clone(),
            source,
        };
        std::fs::create_dir_all(log_dir()).map_err(io_log)?;
        let out = File::create(&log).map_err(io_log)?;
        let err = out.try_clone().map_err(io_log)?;
        let user = match &self.user {
            None => None,
            Some(name) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                Some(lookup_user(name, &passwd, &group).ok_or_else(|| {
                    ServiceError::NoSuchUser {
                        service: self.name.clone(),
                        user: name.clone(),
                        hint: Hint(Some(
                            "add the user to the image (e.g. in a layer), or use a user that \
                             exists there"
                                .into(),
                        )),
                    }
                })?)
            }
        };
        let mut cmd = self.command(&self.argv, user.as_ref());
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| ServiceError::Spawn {
            service: self.name.clone(),
            program: self.argv.first().cloned().unwrap_or_default(),
            hint: match (&user, source.raw_os_error()) {
                (Some(u), Some(libc::EINVAL | libc::EPERM)) => unmapped_hint(u),
                (_, Some(libc::ENOENT)) => Hint(Some(
                    "the program must exist in the container's image, in its PATH".into(),
                )),
                _ => Hint(None),
            },
            source,
        })?;
        let deadline = started + self.start_timeout.min(crate::duration::MAX_DURATION);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ServiceError::Exited {
                    service: self.name.clone(),
                    status,
                    log,
                });
            }
            if self.is_ready(user.as_ref(), &log) {
                return Ok(Running {
                    name: self.name.clone(),
                    log,
                    child,
                    ready_after: started.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ServiceError::NotReady {
                    service: self.name.clone(),
                    timeout: self.start_timeout,
                    check: self.describe_check(),
                    hint: Hint(Some(format!(
                        "see its log below; raise Service::start_timeout if it is merely slow \
                         (log: {})",
                        log.display()
                    ))),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn command(&self, argv: &[String], user: Option<&User>) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env_remove(super::inside::INSIDE_ENV)
            .env_remove(super::inside::T0_ENV);
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        if let Some(u) = user {
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
            let (uid, gid, groups) = (u.uid, u.gid, u.groups.clone());
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // async-signal-safe system calls of `sys::become_user` on data prepared before
            // the fork (no allocation). std's own uid/gid would run setuid before this hook,
            // after which setgroups is no longer permitted, and its `groups` is unstable.
            unsafe {
                cmd.pre_exec(move || {
                    crate::sys::become_user(uid, gid, &groups).map_err(std::io::Error::from)
                });
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn is_ready(&self, user: Option<&User>, log: &Path) -> bool {
        match &self.ready {
            Ready::Started => true,
            Ready::Tcp(port) => tcp_ready(*port),
            Ready::ImagePort => image_tcp_port().is_some_and(tcp_ready),
            Ready::UnixSocket(path) => UnixStream::connect(path).is_ok(),
            Ready::TcpReply { port, send, expect } => tcp_reply(*port, send, expect),
            Ready::Command(argv) => {
                if argv.is_empty() {
                    return true;
                }
                self.command(argv, user)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            }
            Ready::LogContains(text) => {
                let mut buf = Vec::new();
                File::open(log)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map(|_| String::from_utf8_lossy(&buf).contains(text.as_str()))
                    .unwrap_or(false)
            }
        }
    }

    fn describe_check(&self) -> String {
        match &self.ready {
            Ready::Started => "started".into(),
            Ready::Tcp(p) => format!("waiting for a TCP connection to 127.0.0.1:{p}"),
            Ready::UnixSocket(p) => format!("waiting for unix socket {}", p.display()),
            Ready::TcpReply { port, send, expect } => format!(
                "waiting for 127.0.0.1:{port} to answer {:?} with {:?}",
                String::from_utf8_lossy(send).trim_end(),
                String::from_utf8_lossy(expect)
            ),
            Ready::Command(argv) => format!("waiting for {:?} to exit 0", argv.join(" ")),
            Ready::LogContains(t) => format!("waiting for {t:?} in its log"),
            Ready::ImagePort => match image_tcp_port() {
                Some(p) => format!(
                    "waiting for a TCP connection to 127.0.0.1:{p}, the image's exposed port"
                ),
                None => "the image exposes no TCP port (no ExposedPorts in its config)".into(),
            },
        }
    }
}

fn tcp_ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

/// The lowest TCP port of the test's image, from [`PORTS_ENV`](super::PORTS_ENV).
fn image_tcp_port() -> Option<u16> {
    lowest_tcp_port(&std::env::var(super::inside::PORTS_ENV).ok()?)
}

fn lowest_tcp_port(ports: &str) -> Option<u16> {
    ports
        .split(',')
        .filter_map(crate::oci::ExposedPort::parse)
        .filter(|p| p.protocol == crate::oci::Protocol::Tcp)
        .map(|p| p.port)
        .min()
}

/// Whether `127.0.0.1:port` answers `send` with a reply that starts with `expect`.
fn tcp_reply(port: u16, send: &[u8], expect: &[u8]) -> bool {
    use std::io::Write;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    if conn.write_all(send).is_err() {
        return false;
    }
    let mut reply = vec![0; expect.len()];
    conn.read_exact(&mut reply).is_ok() && reply == expect
}

/// Reads a log file for display; a missing one reads as a note.
pub(crate) fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) if b.is_empty() => "(empty)\n".into(),
        Ok(b) => {
            let mut s = String::from_utf8_lossy(&b).into_owned();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Err(e) => format!("(cannot read {}: {e})\n", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users_and_their_groups() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:110:PG:/var/lib/postgresql:/bin/bash\n";
        let group = "postgres:x:110:\nssl-cert:x:109:postgres,other\nwheel:x:10:root\n";
        let u = lookup_user("postgres", passwd, group).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str(), u.groups),
            (104, 110, "/var/lib/postgresql", vec![110, 109])
        );
        assert_eq!(lookup_user("nobody", passwd, group), None);
    }

    #[test]
    fn the_image_port_is_its_lowest_tcp_port() {
        assert_eq!(lowest_tcp_port("53/udp,8080/tcp,5432/tcp"), Some(5432));
        assert_eq!(lowest_tcp_port("9000"), Some(9000));
        assert_eq!(lowest_tcp_port("53/udp"), None);
        assert_eq!(lowest_tcp_port(""), None);
    }
}
