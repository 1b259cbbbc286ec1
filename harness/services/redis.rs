//! Redis: the seed is loaded once by a build step (commands, an AOF or an RDB file) and
//! saved as the RDB file that every test's server loads at start.

use std::path::PathBuf;
use std::time::Duration;

use crate::layers::{BaseSpec, BuildError, LayerSpec};
use crate::testing::Service;

use super::stack::failed_layer;
use super::{ReadyMade, ServicesError};

/// The seed step: start a server on the state directory (loading an RDB copied there
/// first), apply each command file line by line (an error reply stops it, naming the file
/// and line) or pipe each AOF in, save the RDB file, shut down.
const SEED: &str = r#"# redis: start, load the seed, save dump.rdb, shut down
set -eu
state=$1; port=$2; shift 2
redis-server --port "$port" --bind 127.0.0.1 --dir "$state" --dbfilename dump.rdb --save '' \
    --appendonly no --protected-mode no --logfile /tmp/redis-seed.log &
server=$!
cli() { redis-cli --no-raw -p "$port" "$@"; }
i=0
until [ "$(cli ping 2>/dev/null)" = PONG ]; do
    i=$((i + 1))
    if [ $i -gt 3000 ] || ! kill -0 $server 2>/dev/null; then
        echo "pristine: redis-server did not answer PING; its log:" >&2
        cat /tmp/redis-seed.log >&2; exit 1
    fi
    sleep 0.01
done
for spec in "$@"; do
    kind=${spec%%:*}; f=${spec#*:}
    if [ "$kind" = aof ]; then
        out=$(cli --pipe <"$f" 2>&1) || { echo "pristine-redis-seed:$f:0: $out" >&2; exit 1; }
        continue
    fi
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        case $line in '' | '#'*) continue ;; esac
        out=$(printf '%s\n' "$line" | cli 2>&1)
        case $out in
            '(error)'*) echo "pristine-redis-seed:$f:$n: $out" >&2; exit 1 ;;
        esac
    done <"$f"
done
cli save >/dev/null
cli shutdown nosave >/dev/null 2>&1 || true
wait $server || true
"#;

/// A seed source.
#[derive(Debug, Clone)]
enum Seed {
    /// redis-cli commands, one per line (`#` comments).
    Commands(PathBuf),
    /// An append-only file (RESP commands), piped in.
    Aof(PathBuf),
}

/// Redis from the base's `redis-server` (Debian's `redis-server` package on the host),
/// seeded once, ready when it answers `PING` with `PONG`.
///
/// ```no_run
/// use pristine::services::Redis;
///
/// let redis = Redis::new().seed_commands("fixtures/cache.redis"); // SET k v, HSET h f v, …
/// assert_eq!(redis.url(), "redis://127.0.0.1:6379");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Redis {
    name: String,
    port: u16,
    rdb: Option<PathBuf>,
    seeds: Vec<Seed>,
    start_timeout: Duration,
    build_timeout: Duration,
}

impl Default for Redis {
    fn default() -> Self {
        Self::new()
    }
}

impl Redis {
    /// Redis named `redis` on port 6379 (each test's container has its own network), no
    /// seed, start timeout 30 s.
    pub fn new() -> Self {
        Redis {
            name: "redis".into(),
            port: 6379,
            rdb: None,
            seeds: Vec::new(),
            start_timeout: Duration::from_secs(30),
            build_timeout: Duration::from_secs(3600),
        }
    }

    /// The service's name (default `redis`): its log, layers and `/srv/pristine-NAME`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The port inside each test's container (default 6379).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts from this RDB file (loaded before the other seeds).
    pub fn seed_rdb(mut self, file: impl Into<PathBuf>) -> Self {
        self.rdb = Some(file.into());
        self
    }

    /// Runs the commands of this file, one per line as `redis-cli` reads them (quotes
    /// allowed, `#` comments and blank lines skipped); an error reply fails the build,
    /// naming the line. One `redis-cli` per line: for big seeds use an AOF or RDB.
    pub fn seed_commands(mut self, file: impl Into<PathBuf>) -> Self {
        self.seeds.push(Seed::Commands(file.into()));
        self
    }

    /// Pipes this append-only file (RESP, as `appendonly.aof` or `redis-cli --pipe` take
    /// it) in.
    pub fn seed_aof(mut self, file: impl Into<PathBuf>) -> Self {
        self.seeds.push(Seed::Aof(file.into()));
        self
    }

    /// How long a test's server may take to answer `PING` (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long the seed step may take (default 1 h).
    pub fn build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    /// `redis://127.0.0.1:PORT`, from inside a test's container.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port tests connect to.
    pub fn connection_port(&self) -> u16 {
        self.port
    }

    fn state(&self) -> PathBuf {
        super::state_dir(&self.name)
    }

    /// Seed files with their names in the image and their kind (`cmd` or `aof`).
    fn seed_files(&self) -> Result<Vec<(PathBuf, PathBuf, &'static str)>, ServicesError> {
        let dir = self.state().join("seed");
        self.seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (f, kind) = match s {
                    Seed::Commands(f) => (f, "cmd"),
                    Seed::Aof(f) => (f, "aof"),
                };
                let host = super::readable(&self.name, f)?;
                let name = host
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                Ok((host, dir.join(format!("{:03}-{name}", i + 1)), kind))
            })
            .collect()
    }

    fn check_host(&self) -> Result<(), ServicesError> {
        let dirs = super::path_dirs();
        let found = super::find_bin_dir(
            dirs.iter().map(PathBuf::as_path),
            &["redis-server", "redis-cli"],
        );
        found
            .map(|_| ())
            .ok_or_else(|| ServicesError::NotInstalled {
                service: self.name.clone(),
                what: "redis-server and redis-cli".into(),
                looked: "PATH".into(),
                hint: "on Debian or Ubuntu: apt-get install redis-server".into(),
            })
    }

    /// A failure of the seed step, as the script reported it (`pristine-redis-seed:F:N: …`).
    fn bad_seed(&self, stderr: &str) -> Option<ServicesError> {
        let files = self.seed_files().ok()?;
        let rest = stderr
            .lines()
            .find_map(|l| l.strip_prefix("pristine-redis-seed:"))?;
        let (host, after) = files.iter().find_map(|(host, inside, _)| {
            let inside = inside.display().to_string();
            Some((host, rest.strip_prefix(inside.as_str())?.strip_prefix(':')?))
        })?;
        let (line, message) = after.split_once(':')?;
        Some(ServicesError::BadSeed {
            service: self.name.clone(),
            path: host.clone(),
            line: line.parse().ok().filter(|&l| l > 0),
            message: message.trim().to_string(),
        })
    }
}

impl ReadyMade for Redis {
    fn name(&self) -> &str {
        &self.name
    }

    fn layers(&self, base: &BaseSpec) -> Result<Vec<LayerSpec>, ServicesError> {
        if *base == BaseSpec::Host {
            self.check_host()?;
        }
        let state = self.state().display().to_string();
        let mut layer = LayerSpec::new(format!("{}-seed", self.name))
            .timeout(self.build_timeout)
            .run(["mkdir", "-p", &state]);
        if let Some(rdb) = &self.rdb {
            layer = layer.copy(
                super::readable(&self.name, rdb)?,
                self.state().join("dump.rdb"),
            );
        }
        let files = self.seed_files()?;
        for (host, inside, _) in &files {
            layer = layer.copy(host, inside);
        }
        let mut seed = vec!["sh".into(), "-c".into(), SEED.into(), "sh".into()];
        seed.extend([state, self.port.to_string()]);
        seed.extend(
            files
                .iter()
                .map(|(_, inside, kind)| format!("{kind}:{}", inside.display())),
        );
        Ok(vec![layer.run(seed)])
    }

    fn host_inputs(&self) -> Vec<String> {
        vec!["pkg:redis-server".into()]
    }

    fn service(&self) -> Service {
        let port = self.port.to_string();
        let state = self.state().display().to_string();
        Service::new(
            self.name.clone(),
            [
                "redis-server",
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                &state,
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
        )
        .ready_tcp_reply(self.port, "PING\r\n", "+PONG")
        .start_timeout(self.start_timeout)
    }

    fn explain(&self, err: BuildError) -> ServicesError {
        if let BuildError::StepFailed { stderr, .. } = &err {
            if let Some(e) = self.bad_seed(stderr) {
                return e;
            }
        }
        let step = match failed_layer(&err) {
            Some(_) => "seeding",
            None => "build",
        };
        ServicesError::Build {
            service: self.name.clone(),
            step: step.into(),
            source: Box::new(err),
        }
    }
}
