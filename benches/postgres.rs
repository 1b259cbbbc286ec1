//! PostgreSQL benchmark: what a test pays for a private, seeded, ready database, measured
//! side by side in one criterion run.
//!
//! - `pg/pristine_ready_25mb`: one container over the seeded layer (`examples/postgres/`),
//!   in which PostgreSQL starts as the `postgres` user, becomes ready (polled every 1 ms,
//!   the way `pg_ctl -w` does: the postmaster.pid status line), accepts a connection over
//!   TCP 127.0.0.1:5432 in the container's own network namespace and answers `SELECT 1`;
//!   then the container is torn down.
//! - `pg/template_clone_25mb`: what users do today. One long-running PostgreSQL on the host
//!   (same tuning, port 54329), per iteration `CREATE DATABASE x TEMPLATE seeded STRATEGY
//!   FILE_COPY`, connect to `x`, `SELECT 1`, `DROP DATABASE x`.
//! - `pg/pristine_ready_1gb`: the first measurement over a ~1 GiB seed (should not grow with
//!   the seed's size: nothing is copied until written).
//!
//! `cargo bench --bench postgres` (as root, PostgreSQL 15 installed). The seeded layers are
//! built on first use and cached in `target/pristine` (the 1 GiB one takes a few minutes).
//! `PRISTINE_BENCH_QUICK=1` takes fewer samples; `PRISTINE_PG_BIG_SCALE=N` changes the big
//! seed's scale (default 46: a database of about 1 GiB).

#[path = "../examples/postgres/layer.rs"]
#[allow(dead_code)]
mod layer;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use postgres::{Client, NoTls};
use pristine::{Container, Image};

/// Set in the container: this process is the command inside it.
const INNER_ENV: &str = "PRISTINE_PG_BENCH_INNER";
/// Port of the host's template server.
const TEMPLATE_PORT: u16 = 54329;

fn main() {
    if std::env::var_os(INNER_ENV).is_some() {
        inner();
    }
    // Before any thread exists: the container init is pristine's own binary.
    std::env::set_var("PRISTINE_INIT", env!("CARGO_BIN_EXE_pristine"));
    if let Err(why) = layer::preflight() {
        eprintln!("postgres benchmark skipped: {why}");
        return;
    }
    let quick = std::env::var_os("PRISTINE_BENCH_QUICK").is_some();
    let big_scale: u32 = std::env::var("PRISTINE_PG_BIG_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(46);
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(if quick { 10 } else { 60 })
        .warm_up_time(Duration::from_secs(if quick { 1 } else { 2 }))
        .measurement_time(Duration::from_secs(if quick { 3 } else { 8 }));

    let small = build_layer(1);
    let big = build_layer(big_scale);
    let template = TemplateServer::start().unwrap_or_else(|e| panic!("template server: {e}"));

    let exe = std::env::current_exe().expect("locate the bench binary");
    let ready_in_container = |image: &Image| {
        let out = Container::new(image.clone())
            .env(INNER_ENV, "1")
            .timeout(Duration::from_secs(30))
            .run([&exe])
            .expect("run a container");
        assert!(
            out.status.success(),
            "inside the container: {} {}",
            out.stdout_str(),
            out.stderr_str()
        );
    };

    let mut g = c.benchmark_group("pg");
    g.bench_function("pristine_ready_25mb", |b| {
        b.iter(|| ready_in_container(&small.image))
    });
    g.bench_function("template_clone_25mb", |b| b.iter(|| template.clone_cycle()));
    g.bench_function("pristine_ready_1gb", |b| {
        b.iter(|| ready_in_container(&big.image))
    });
    g.finish();
    c.final_summary();
    drop(template);

    let median = |name: &str| -> Option<f64> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/criterion/pg")
            .join(name)
            .join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    if let (Some(p), Some(t), Some(b)) = (
        median("pristine_ready_25mb"),
        median("template_clone_25mb"),
        median("pristine_ready_1gb"),
    ) {
        println!("\npostgres summary (medians):");
        println!(
            "  pristine container + PostgreSQL ready, {:>7} seed : {:>7.2} ms",
            small.db_size,
            p / 1e6
        );
        println!(
            "  CREATE DATABASE TEMPLATE clone,       {:>7} seed : {:>7.2} ms",
            small.db_size,
            t / 1e6
        );
        println!(
            "  pristine container + PostgreSQL ready, {:>7} seed : {:>7.2} ms",
            big.db_size,
            b / 1e6
        );
        println!(
            "  pristine / template clone : {:>5.2}x  (target <= 0.5x)",
            p / t
        );
        println!(
            "  {} / {} seed         : {:>5.2}x  (target <= 1.2x)",
            big.db_size,
            small.db_size,
            b / p
        );
    }
}

fn build_layer(scale: u32) -> layer::Layer {
    eprintln!("seeded layer, scale {scale}: looking it up (built once, then cached)...");
    let l = layer::build(scale).unwrap_or_else(|e| panic!("{e}"));
    if l.cached {
        eprintln!(
            "seeded layer, scale {scale}: {} database, cached (lookup {:.1} ms)",
            l.db_size,
            l.took.as_secs_f64() * 1e3
        );
    } else {
        eprintln!(
            "seeded layer, scale {scale}: {} database, built in {:.1} s",
            l.db_size,
            l.took.as_secs_f64()
        );
    }
    l
}

/// Inside the container: start PostgreSQL, wait until it is ready, connect, `SELECT 1`.
fn inner() -> ! {
    let fail = |msg: String| -> ! {
        eprintln!("{msg}");
        let log = std::fs::read_to_string("/tmp/pg.log").unwrap_or_default();
        eprintln!("---- postgres log ----\n{log}");
        std::process::exit(1)
    };
    let user = nix::unistd::User::from_name(layer::PG_USER)
        .ok()
        .flatten()
        .unwrap_or_else(|| fail(format!("no user {}", layer::PG_USER)));
    let log = std::fs::File::create("/tmp/pg.log").unwrap_or_else(|e| fail(e.to_string()));
    let mut child = Command::new(format!("{}/postgres", layer::PG_BIN))
        .args(["-D", layer::DATA_DIR])
        // As root, std drops the supplementary groups, then sets the gid and uid.
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(format!("start postgres: {e}")));
    let spawned = Instant::now();
    let pid_file = PathBuf::from(layer::DATA_DIR).join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    // What `pg_ctl -w` waits for: the postmaster writes "ready" as the 8th line of its pid
    // file once it accepts connections. We poll every millisecond, not every 100.
    loop {
        let ready = std::fs::read_to_string(&pid_file)
            .map(|s| s.lines().nth(7).map(str::trim) == Some("ready"))
            .unwrap_or(false);
        if ready {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            fail(format!("postgres exited with {status}"));
        }
        if Instant::now() > deadline {
            fail("postgres was not ready after 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ready_after = spawned.elapsed();
    let mut db = Client::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )
    .unwrap_or_else(|e| fail(format!("connect: {e}")));
    let one: i32 = db
        .query_one("SELECT 1", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| fail(format!("SELECT 1: {e}")));
    assert_eq!(one, 1);
    // For a person running the command by hand.
    println!(
        "ready after {:.1} ms, connected and queried after {:.1} ms",
        ready_after.as_secs_f64() * 1e3,
        spawned.elapsed().as_secs_f64() * 1e3
    );
    // PostgreSQL is killed with the container.
    std::process::exit(0)
}

/// A PostgreSQL server on the host with the seed in database `seeded`, the template of
/// every clone. Stopped (immediately) when dropped.
struct TemplateServer {
    _dir: tempfile::TempDir,
    data: PathBuf,
    admin: std::cell::RefCell<Client>,
}

fn as_postgres(program: &str) -> Command {
    let user = nix::unistd::User::from_name(layer::PG_USER)
        .ok()
        .flatten()
        .expect("the postgres user exists (checked by preflight)");
    let mut cmd = Command::new(format!("{}/{program}", layer::PG_BIN));
    cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl TemplateServer {
    fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("pristine-pg-template-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let user = nix::unistd::User::from_name(layer::PG_USER)
            .ok()
            .flatten()
            .ok_or("no postgres user")?;
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        let data = dir.path().join("data");
        let assets = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/postgres"));
        eprintln!(
            "template server: initdb + seed in {}...",
            dir.path().display()
        );
        run(
            as_postgres("initdb").arg("-D").arg(&data).args([
                "--wal-segsize=1",
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        )?;
        // The same tuning as the containers' servers, on its own port and socket directory.
        let mut conf =
            std::fs::read_to_string(assets.join("postgresql.conf")).map_err(|e| e.to_string())?;
        conf.push_str(&format!(
            "\nport = {TEMPLATE_PORT}\nunix_socket_directories = '{}'\n",
            dir.path().display()
        ));
        let mut all =
            std::fs::read_to_string(data.join("postgresql.conf")).map_err(|e| e.to_string())?;
        all.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), all).map_err(|e| e.to_string())?;
        run(
            as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start (is port 54329 free?)",
        )?;
        let server = TemplateServer {
            data,
            admin: std::cell::RefCell::new(
                Client::connect(
                    &format!("host=127.0.0.1 port={TEMPLATE_PORT} user=postgres dbname=postgres"),
                    NoTls,
                )
                .map_err(|e| format!("connect: {e}"))?,
            ),
            _dir: dir,
        };
        server
            .admin
            .borrow_mut()
            .batch_execute("CREATE DATABASE seeded")
            .map_err(|e| e.to_string())?;
        run(
            as_postgres("psql")
                .args(["-h", "127.0.0.1", "-p", &TEMPLATE_PORT.to_string()])
                .args(["-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(["-v", "scale=1", "-f"])
                .arg(assets.join("seed.sql"))
                .arg("seeded"),
            "seeding the template",
        )?;
        server
            .admin
            .borrow_mut()
            .batch_execute("CHECKPOINT")
            .map_err(|e| e.to_string())?;
        Ok(server)
    }

    /// Clone the seed, connect to the clone, `SELECT 1`, drop it.
    fn clone_cycle(&self) {
        let mut admin = self.admin.borrow_mut();
        admin
            .batch_execute("CREATE DATABASE x TEMPLATE seeded STRATEGY FILE_COPY")
            .expect("CREATE DATABASE");
        {
            let mut db = Client::connect(
                &format!("host=127.0.0.1 port={TEMPLATE_PORT} user=postgres dbname=x"),
                NoTls,
            )
            .expect("connect to the clone");
            let one: i32 = db.query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
            assert_eq!(one, 1);
        }
        // FORCE: the clone's backend may not have exited yet after the disconnect.
        admin
            .batch_execute("DROP DATABASE x WITH (FORCE)")
            .expect("DROP DATABASE");
    }
}

impl Drop for TemplateServer {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
