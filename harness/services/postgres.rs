//! PostgreSQL: `initdb` and the seed run once as build steps, the server is stopped cleanly
//! and frozen; each test starts its own server on a copy-on-write copy of the data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layers::{BaseSpec, BuildError, LayerSpec};
use crate::testing::Service;

use super::stack::failed_layer;
use super::{ReadyMade, ServicesError};

/// What PostgreSQL logs once it accepts connections: the readiness check.
pub(crate) const READY_LINE: &str = "database system is ready to accept connections";

/// Settings for a throwaway server that starts in milliseconds; nothing here is safe for
/// data you keep (every test's copy is thrown away). [`Postgres::setting`] overrides them.
const THROWAWAY: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", "/tmp"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "16MB"),
    ("max_connections", "20"),
    ("max_worker_processes", "0"),
    ("max_parallel_workers", "0"),
    ("max_wal_senders", "0"),
    ("max_logical_replication_workers", "0"),
    ("max_replication_slots", "0"),
    ("wal_level", "minimal"),
    ("wal_buffers", "1MB"),
    ("min_wal_size", "2MB"),
    ("max_wal_size", "64MB"),
    ("autovacuum", "off"),
    ("jit", "off"),
    ("huge_pages", "off"),
    ("update_process_title", "off"),
    ("dynamic_shared_memory_type", "mmap"),
    ("log_min_messages", "log"),
];

/// Step 1 of `NAME-init`, as root: finds the server binaries (the host's, given first, or
/// the image's), links them at `STATE/bin` and makes the data directory.
const FIND_BIN: &str = r#"# postgres: find the server binaries, make the data directory
set -eu
state=$1; user=$2; shift 2
for d in "$@" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) /usr/local/bin /usr/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/psql" ]; then
        mkdir -p "$state/data" && chmod 700 "$state/data" && ln -sfn "$d" "$state/bin"
        # Rootless, chown is refused and not needed (the next step maps the caller to $user).
        chown "$user:" "$state" "$state/data" 2>/dev/null || true
        exit 0
    fi
done
echo "pristine: no PostgreSQL server binaries (initdb, postgres, pg_ctl, psql) in the image" >&2
exit 3
"#;

/// Step 2 of `NAME-init`, as the server's user: initdb and the settings.
const INITDB: &str = r#"# postgres: initdb
set -eu
state=$1; superuser=$2; conf=$3
# 1 MB WAL segments: a test's first write copies the current segment up whole.
"$state/bin/initdb" -D "$state/data" --wal-segsize=1 --auth=trust --username="$superuser" \
    --encoding=UTF8 --locale=C --no-sync --no-instructions >/tmp/initdb.log 2>&1 \
    || { cat /tmp/initdb.log >&2; exit 1; }
printf '%s\n' "$conf" >>"$state/data/postgresql.conf"
"#;

/// The step of `NAME-seed`, as the server's user: start, create the database, load each
/// file (stopping at the first error, which psql reports as `psql:FILE:LINE: ERROR: …`),
/// checkpoint (so that a test's server starts without recovery), stop cleanly.
const SEED: &str = r#"# postgres: start, load the seed, checkpoint, stop cleanly
set -eu
state=$1; superuser=$2; db=$3; port=$4; shift 4
"$state/bin/pg_ctl" -D "$state/data" -l /tmp/pg-seed.log -w -t 300 start >/dev/null \
    || { echo "pristine: PostgreSQL did not start for seeding; its log:" >&2; cat /tmp/pg-seed.log >&2; exit 1; }
sql() { "$state/bin/psql" -h /tmp -p "$port" -U "$superuser" -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ "$db" != postgres ]; then sql -d postgres -c "CREATE DATABASE \"$db\""; fi
for f in "$@"; do sql -d "$db" -f "$f"; done
# Once for every test: hint bits set and rows frozen (a test's first read would otherwise
# write every page it reads), the visibility map made, the planner's statistics gathered.
sql -d "$db" -c "VACUUM (FREEZE, ANALYZE)"
sql -d "$db" -c CHECKPOINT
"$state/bin/pg_ctl" -D "$state/data" -m fast -w stop >/dev/null
"#;

/// Where a test finds its PostgreSQL (the same in every test's container).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConnection {
    /// `127.0.0.1`: the server listens in each test's own network namespace.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The superuser (trust authentication: no password).
    pub user: String,
    /// The database.
    pub database: String,
}

/// A seed source.
#[derive(Debug, Clone)]
enum Seed {
    Sql(PathBuf),
    Migrations(PathBuf),
}

/// PostgreSQL, initialised and seeded once, started warm in every test.
///
/// From the host's installation (Debian's `postgresql-NN`; the newest under
/// `/usr/lib/postgresql`, or [`bin_dir`](Self::bin_dir)) on [`Stack::host`](super::Stack::host),
/// or from a base image that has the server binaries (its `postgres` user runs it).
///
/// ```no_run
/// use pristine::services::Postgres;
///
/// let pg = Postgres::new()
///     .database("app")
///     .migrations("migrations")          // 001_schema.sql, 002_data.sql, … in name order
///     .seed_sql("fixtures/users.sql");   // then this
/// assert_eq!(pg.url(), "postgresql://postgres@127.0.0.1:5432/app");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Postgres {
    name: String,
    bin_dir: Option<PathBuf>,
    os_user: String,
    superuser: String,
    database: String,
    port: u16,
    seeds: Vec<Seed>,
    settings: Vec<(String, String)>,
    start_timeout: Duration,
    build_timeout: Duration,
}

impl Default for Postgres {
    fn default() -> Self {
        Self::new()
    }
}

impl Postgres {
    /// PostgreSQL named `postgres`, superuser `postgres`, database `postgres`, port 5432
    /// (every test's container has its own network, so parallel tests share the port),
    /// no seed, start timeout 30 s, build steps 1 h each.
    pub fn new() -> Self {
        Postgres {
            name: "postgres".into(),
            bin_dir: None,
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            database: "postgres".into(),
            port: 5432,
            seeds: Vec::new(),
            settings: Vec::new(),
            start_timeout: Duration::from_secs(30),
            build_timeout: Duration::from_secs(3600),
        }
    }

    /// The service's name (default `postgres`): its log, its layers (`NAME-init`,
    /// `NAME-seed`) and its state directory (`/srv/pristine-NAME`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The directory of `initdb`, `postgres`, `pg_ctl` and `psql` in the image (default:
    /// the newest `/usr/lib/postgresql/*/bin`, else `/usr/local/bin` or `/usr/bin`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// The system user that runs the server (default `postgres`; PostgreSQL refuses root).
    pub fn os_user(mut self, user: impl Into<String>) -> Self {
        self.os_user = user.into();
        self
    }

    /// The database superuser tests connect as (default `postgres`, trust authentication).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.superuser = user.into();
        self
    }

    /// The database that is seeded and that tests connect to (default `postgres`; another
    /// name is created before the seed).
    pub fn database(mut self, db: impl Into<String>) -> Self {
        self.database = db.into();
        self
    }

    /// The port inside each test's container (default 5432).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Loads this SQL file into the database, after the seeds added before (psql, stopping
    /// at the first error).
    pub fn seed_sql(mut self, file: impl Into<PathBuf>) -> Self {
        self.seeds.push(Seed::Sql(file.into()));
        self
    }

    /// Loads every `*.sql` file of this directory, in the order of their names (e.g.
    /// `001_schema.sql`, `002_data.sql`), after the seeds added before.
    pub fn migrations(mut self, dir: impl Into<PathBuf>) -> Self {
        self.seeds.push(Seed::Migrations(dir.into()));
        self
    }

    /// A `postgresql.conf` setting (`key = 'value'`), over the throwaway defaults (fsync off,
    /// small shared buffers, no background workers, …).
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// How long a test's server may take to accept connections (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long each build step (initdb, the seed) may take (default 1 h).
    pub fn build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    /// The connection URL from inside a test's container,
    /// `postgresql://USER@127.0.0.1:PORT/DB`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}",
            self.superuser, self.port, self.database
        )
    }

    /// The same as a libpq keyword string, `host=127.0.0.1 port=PORT user=USER dbname=DB`
    /// (what the `postgres` crate's `Client::connect` takes).
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port, self.superuser, self.database
        )
    }

    /// Host, port, user and database for a test to connect to.
    pub fn connection(&self) -> PgConnection {
        PgConnection {
            host: "127.0.0.1".into(),
            port: self.port,
            user: self.superuser.clone(),
            database: self.database.clone(),
        }
    }

    /// Where the data directory is inside the image.
    pub fn data_dir(&self) -> PathBuf {
        self.state().join("data")
    }

    fn state(&self) -> PathBuf {
        super::state_dir(&self.name)
    }

    fn bad(&self, reason: impl Into<String>) -> ServicesError {
        ServicesError::BadConfig {
            service: self.name.clone(),
            reason: reason.into(),
        }
    }
}

impl Postgres {
    /// The host's server binaries, checked before building on the host base.
    fn host_bin_dir(&self) -> Result<PathBuf, ServicesError> {
        const PROGRAMS: &[&str] = &["initdb", "postgres", "pg_ctl", "psql"];
        let candidates: Vec<PathBuf> = match &self.bin_dir {
            Some(d) => vec![d.clone()],
            None => newest_first(Path::new("/usr/lib/postgresql")),
        };
        super::find_bin_dir(candidates.iter().map(PathBuf::as_path), PROGRAMS).ok_or_else(|| {
            ServicesError::NotInstalled {
                service: self.name.clone(),
                what: "PostgreSQL's server binaries (initdb, postgres, pg_ctl, psql)".into(),
                looked: match &self.bin_dir {
                    Some(d) => d.display().to_string(),
                    None => "/usr/lib/postgresql/*/bin".into(),
                },
                hint: "install the server, on Debian 12: apt-get install postgresql-15 (Ubuntu \
                       24.04: postgresql-16); or point Postgres::bin_dir at its binaries"
                    .into(),
            }
        })
    }

    fn check_host_user(&self) -> Result<(), ServicesError> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let prefix = format!("{}:", self.os_user);
        if passwd.lines().any(|l| l.starts_with(&prefix)) {
            return Ok(());
        }
        Err(ServicesError::NotInstalled {
            service: self.name.clone(),
            what: format!(
                "the user {:?} (PostgreSQL refuses to run as root)",
                self.os_user
            ),
            looked: "/etc/passwd".into(),
            hint: "Debian's postgresql packages create `postgres`; or: adduser --system --group \
                   postgres, or name another user with Postgres::os_user"
                .into(),
        })
    }

    fn check_names(&self) -> Result<(), ServicesError> {
        for (what, v) in [
            ("database", &self.database),
            ("user", &self.superuser),
            ("os_user", &self.os_user),
        ] {
            if !super::plain_name(v) {
                return Err(self.bad(format!(
                    "{what} {v:?}: use 1 to 63 letters, digits, `_` or `-`"
                )));
            }
        }
        for (k, _) in &self.settings {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                return Err(self.bad(format!("setting {k:?} is not a postgresql.conf name")));
            }
        }
        Ok(())
    }

    /// The seed files in load order, each with its name in the image.
    fn seed_files(&self) -> Result<Vec<(PathBuf, PathBuf)>, ServicesError> {
        let mut files = Vec::new();
        for seed in &self.seeds {
            match seed {
                Seed::Sql(f) => files.push(super::readable(&self.name, f)?),
                Seed::Migrations(dir) => files.extend(self.migration_files(dir)?),
            }
        }
        let seed_dir = self.state().join("seed");
        Ok(files
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let to = seed_dir.join(format!("{:03}-{name}", i + 1));
                (f, to)
            })
            .collect())
    }

    fn migration_files(&self, dir: &Path) -> Result<Vec<PathBuf>, ServicesError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ServicesError::SeedFile {
            service: self.name.clone(),
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql") && p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(self.bad(format!(
                "the migrations directory {} has no *.sql files",
                dir.display()
            )));
        }
        files
            .iter()
            .map(|f| super::readable(&self.name, f))
            .collect()
    }

    fn conf_lines(&self) -> Vec<String> {
        let port = self.port.to_string();
        THROWAWAY
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain([("port", port.as_str())])
            .chain(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''")))
            .collect()
    }

    fn init_layer(&self, host_bin: Option<PathBuf>) -> LayerSpec {
        let state = self.state().display().to_string();
        let mut find = vec!["sh".into(), "-c".into(), FIND_BIN.into(), "sh".into()];
        find.extend([state.clone(), self.os_user.clone()]);
        find.extend(
            host_bin
                .or(self.bin_dir.clone())
                .map(|d| d.display().to_string()),
        );
        let mut initdb = vec!["sh".into(), "-c".into(), INITDB.into(), "sh".into()];
        initdb.extend([state, self.superuser.clone()]);
        initdb.push(self.conf_lines().join("\n"));
        LayerSpec::new(format!("{}-init", self.name))
            .timeout(self.build_timeout)
            .run(find)
            .run(initdb)
            .as_user(&self.os_user)
    }

    fn seed_layer(&self, files: &[(PathBuf, PathBuf)]) -> LayerSpec {
        let state = self.state().display().to_string();
        let mut layer = LayerSpec::new(format!("{}-seed", self.name)).timeout(self.build_timeout);
        for (from, to) in files {
            layer = layer.copy(from, to);
        }
        if !files.is_empty() {
            layer = layer.run(["chmod", "-R", "a+rX", &format!("{state}/seed")]);
        }
        let mut seed = vec!["sh".into(), "-c".into(), SEED.into(), "sh".into()];
        seed.extend([
            state,
            self.superuser.clone(),
            self.database.clone(),
            self.port.to_string(),
        ]);
        seed.extend(files.iter().map(|(_, to)| to.display().to_string()));
        layer.run(seed).as_user(&self.os_user)
    }

    /// A failure of the seed step, as psql reported it (`psql:FILE:LINE: MESSAGE`).
    fn bad_seed(&self, stderr: &str) -> Option<ServicesError> {
        let files = self.seed_files().ok()?;
        let lines: Vec<&str> = stderr.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("psql:"))?;
        let rest = lines[at].strip_prefix("psql:")?;
        let (file, after) = files.iter().find_map(|(host, inside)| {
            let inside = inside.display().to_string();
            Some((host, rest.strip_prefix(inside.as_str())?.strip_prefix(':')?))
        })?;
        let (line, message) = after.split_once(':')?;
        let mut message = message.trim().to_string();
        for more in lines[at + 1..].iter().take(4) {
            message.push_str("\n    ");
            message.push_str(more);
        }
        Some(ServicesError::BadSeed {
            service: self.name.clone(),
            path: file.clone(),
            line: line.parse().ok().filter(|&l| l > 0),
            message,
        })
    }
}

/// The `*/bin` directories under `root`, newest version first (`15` before `9.6`).
fn newest_first(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((v?, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

impl ReadyMade for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn layers(&self, base: &BaseSpec) -> Result<Vec<LayerSpec>, ServicesError> {
        self.check_names()?;
        let host_bin = match base {
            BaseSpec::Host => {
                self.check_host_user()?;
                Some(self.host_bin_dir()?)
            }
            _ => None,
        };
        let files = self.seed_files()?;
        let mut layers = vec![self.init_layer(host_bin)];
        if !files.is_empty() || self.database != "postgres" {
            layers.push(self.seed_layer(&files));
        }
        Ok(layers)
    }

    fn host_inputs(&self) -> Vec<String> {
        // Debian's layout: /usr/lib/postgresql/NN/bin comes from the package postgresql-NN.
        let Ok(bin) = self.host_bin_dir() else {
            return Vec::new();
        };
        let version = bin
            .strip_prefix("/usr/lib/postgresql")
            .ok()
            .and_then(|r| r.parent())
            .map(|v| v.display().to_string());
        version
            .map(|v| vec![format!("pkg:postgresql-{v}")])
            .unwrap_or_default()
    }

    fn service(&self) -> Service {
        let state = self.state();
        Service::new(
            self.name.clone(),
            [
                state.join("bin/postgres").display().to_string(),
                "-D".into(),
                state.join("data").display().to_string(),
            ],
        )
        .user(self.os_user.clone())
        // pg_isready's answer, without a process per poll: the server logs this line once
        // it accepts connections (a TCP connect succeeds earlier, while it still answers
        // "the database system is starting up").
        .ready_log(READY_LINE)
        .start_timeout(self.start_timeout)
    }

    fn explain(&self, err: BuildError) -> ServicesError {
        let layer = failed_layer(&err).unwrap_or_default();
        let step = if layer.ends_with("-seed") {
            "seeding"
        } else {
            "initdb"
        };
        if let BuildError::StepFailed { stderr, status, .. } = &err {
            if step == "seeding" {
                if let Some(e) = self.bad_seed(stderr) {
                    return e;
                }
            }
            if step == "initdb" && *status == crate::ExitStatus::Exited(3) {
                return ServicesError::NotInstalled {
                    service: self.name.clone(),
                    what: "PostgreSQL's server binaries (initdb, postgres, pg_ctl, psql)".into(),
                    looked: "the base image: Postgres::bin_dir, /usr/lib/postgresql/*/bin, \
                             /usr/local/bin, /usr/bin"
                        .into(),
                    hint: "use an image with PostgreSQL's server installed, or point \
                           Postgres::bin_dir at its binaries"
                        .into(),
                };
            }
        }
        ServicesError::Build {
            service: self.name.clone(),
            step: step.into(),
            source: Box::new(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["9.6", "15", "13", "notes"] {
            std::fs::create_dir(dir.path().join(v)).unwrap();
        }
        let got: Vec<String> = newest_first(dir.path())
            .iter()
            .map(|p| {
                p.parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        assert_eq!(got, ["15", "13", "9.6"]);
    }

    #[test]
    fn settings_are_quoted() {
        let pg = Postgres::new().setting("application_name", "it's");
        assert!(pg
            .conf_lines()
            .contains(&"application_name = 'it''s'".to_string()));
        assert!(pg.conf_lines().contains(&"port = '5432'".to_string()));
    }

    #[test]
    fn psql_errors_name_the_host_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.sql");
        std::fs::write(&f, "SELECT 1;\nSELEC 2;\n").unwrap();
        let pg = Postgres::new().seed_sql(&f);
        let stderr = "psql:/srv/pristine-postgres/seed/001-bad.sql:2: ERROR:  syntax error at or near \"SELEC\"\nLINE 1: SELEC 2;\n";
        match pg.bad_seed(stderr) {
            Some(ServicesError::BadSeed {
                path,
                line,
                message,
                ..
            }) => {
                assert_eq!((path, line), (f, Some(2)));
                assert!(message.contains("syntax error"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
