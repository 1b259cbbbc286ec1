//! Pulled images, measured against a loopback registry (Debian's docker-registry) serving
//! PostgreSQL 15 on Debian 12 (mmdebstrap, four gzip layers; built once and cached under
//! target/tmp). As root. Two parts, both by default:
//!
//! ```sh
//! tools/pull-bench                    # = cargo bench --bench pull (both parts)
//! tools/pull-bench pull               # pristine pull against podman pull
//! tools/pull-bench services           # time to first test, per-test start latency
//! PULL_BENCH_ROUNDS=3 tools/pull-bench  # rounds (default 5)
//! ```
//!
//! `pull`: `pristine pull` against `podman pull` of the image, interleaved, cold (empty
//! store / storage) and warm (everything held), plus pristine's first container on the
//! freshly pulled image. podman runs in a private mount namespace, so its storage mounts
//! never reach the host's.
//!
//! `services`: a suite of 20 tests on `services::Postgres` seeded with the demo's seed
//! (`examples/postgres/seed.sql`, 25 MB), over the pulled image (`Recipe::image(REF)`) and
//! over the host's PostgreSQL 15 (`Stack::host()`), each in a child process of this binary
//! with its own store, tests one at a time; per round and base: a cold store (the pull,
//! initdb and the seed, the first test), the same store warm (the first test), and all 20
//! tests for the per-test start latency (container start to PostgreSQL ready). The bases
//! alternate which goes first.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/registry/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Wall time and CPU time (user + system of the child) of one command.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

fn children_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given, which is valid.
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn timed(cmd: &mut Command) -> Took {
    let cpu = children_cpu();
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Took {
        wall,
        cpu: children_cpu() - cpu,
    }
}

fn pristine(store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(common::pristine_bin());
    c.arg(args[0]).arg("--store").arg(store).args(&args[1..]);
    c
}

/// podman with its own storage under `root` and its run root under `run` (podman refuses
/// a run root longer than 50 bytes: a short directory under `/tmp`), in a private mount
/// namespace.
fn podman(root: &Path, run: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "podman"])
        .arg("--root")
        .arg(root)
        .arg("--runroot")
        .arg(run)
        .args(["--storage-driver", "overlay", "--events-backend", "none"])
        .args(args);
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // First: this binary also serves as the containers' init, and as the test suite of the
    // `services` part (in a child process and in each of its tests' containers).
    pristine::main_if_requested();
    if std::env::var_os(SUITE_ENV).is_some()
        || std::env::var_os(pristine::testing::INSIDE_ENV).is_some()
    {
        suite_child();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and runs nothing.
    if !args.iter().any(|a| a == "--bench") {
        println!("pull bench: not run (run it with `cargo bench --bench pull`)");
        return;
    }
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |part: &str| parts.is_empty() || parts.contains(&part);
    assert!(
        common::is_root(),
        "the pull bench runs as root (podman's storage, mmdebstrap)"
    );
    fixture::need(&[
        "podman",
        "skopeo",
        "docker-registry",
        "mmdebstrap",
        "unshare",
    ]);
    let rounds: usize = std::env::var("PULL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (layout, _) = fixture::postgres_layout();
    let reg = fixture::Registry::start(None);
    let reference = format!("{}/bench/postgres:15", reg.host());
    fixture::push(&layout.dir, &reference, None);
    if want("pull") {
        pull_vs_podman(&layout.dir, &reference, rounds);
    }
    if want("services") {
        services(&reference, rounds);
    }
}

/// `pristine pull` against `podman pull`, cold and warm, and pristine's first container.
fn pull_vs_podman(layout: &Path, reference: &str, rounds: usize) {
    let blobs: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let names = [
        "pristine pull, cold",
        "podman pull, cold",
        "pristine pull, warm",
        "podman pull, warm",
        "pristine first container after the cold pull",
    ];
    let mut took: Vec<Vec<Took>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        let tmp = fixture::scratch();
        let store = tmp.path().join("store");
        let pod = tmp.path().join("podman");
        let run = tempfile::Builder::new()
            .prefix("pull-bench-")
            .tempdir_in("/tmp")
            .unwrap();
        // Alternate which tool goes first, so neither always gets the warmer page cache.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for tool in order {
            if tool == 0 {
                took[0].push(timed(&mut pristine(&store, &["pull", reference])));
                took[4].push(timed(&mut pristine(
                    &store,
                    &[
                        "run",
                        "--image",
                        reference,
                        "--",
                        "/usr/lib/postgresql/15/bin/postgres",
                        "--version",
                    ],
                )));
                took[2].push(timed(&mut pristine(&store, &["pull", reference])));
            } else {
                let pull = ["pull", "--quiet", "--tls-verify=false", reference];
                took[1].push(timed(&mut podman(&pod, run.path(), &pull)));
                took[3].push(timed(&mut podman(&pod, run.path(), &pull)));
            }
        }
        // podman's storage goes in its own namespace too (nothing of it is mounted now).
        let _ = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "rm",
                "-rf",
                "--one-file-system",
            ])
            .arg(&pod)
            .arg(run.path())
            .status();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pull of a 4-layer PostgreSQL 15 image ({:.0} MB of blobs) from a loopback registry, {rounds} interleaved rounds; load average {}",
        blobs as f64 / 1e6,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("{:<48} {:>12} {:>12}", "", "median wall", "median CPU");
    for (i, name) in names.iter().enumerate() {
        let wall = median(took[i].iter().map(|t| t.wall).collect());
        let cpu = median(took[i].iter().map(|t| t.cpu).collect());
        println!("{name:<48} {wall:>12.2?} {cpu:>12.2?}");
    }
    let ratio = |a: usize, b: usize, cpu: bool| {
        let pick = |i: usize| {
            median(
                took[i]
                    .iter()
                    .map(|t| if cpu { t.cpu } else { t.wall })
                    .collect(),
            )
        };
        pick(a).as_secs_f64() / pick(b).as_secs_f64()
    };
    println!(
        "pristine / podman: cold {:.2}x wall, {:.2}x CPU; warm {:.2}x wall, {:.2}x CPU",
        ratio(0, 1, false),
        ratio(0, 1, true),
        ratio(2, 3, false),
        ratio(2, 3, true)
    );
}

// ---------------------------------------------------------------------------------------
// services: time to first test and per-test start latency, pulled image against the host

/// Set for the child that runs the suite: `host`, or the image reference to build it on.
const SUITE_ENV: &str = "PULL_BENCH_SUITE";
/// How many tests the suite has (the per-test latency runs them all).
const TESTS: usize = 20;
/// Prefix of the child's lines for the parent.
const REPORT: &str = "##pull-bench ";
/// Rows in the seed's `accounts` (`examples/postgres/seed.sql` at scale 1).
const ACCOUNTS: i64 = 10_000;

/// What the child's image closure took: the pull (or only the lookup that finds the image
/// held: `Recipe::image` then asks no registry) and whether it pulled, the build of the
/// seeded layers and how many of them were built rather than found.
static PHASES: std::sync::OnceLock<(Duration, bool, Duration, usize)> = std::sync::OnceLock::new();

/// The seed: the PostgreSQL demo's (25 MB, three tables).
fn seed_sql() -> std::path::PathBuf {
    common::manifest_dir().join("examples/postgres/seed.sql")
}

/// The suite, in a child process (its base from `SUITE_ENV`, its store from
/// `PRISTINE_STORE`) and in each test's container: `services::Postgres` seeded with the
/// demo's seed, over the host or over the pulled image; every test reads the seed and
/// writes.
fn suite_child() -> ! {
    use pristine::services::{Postgres, Stack};
    let base = std::env::var(SUITE_ENV).unwrap_or_else(|_| "host".into());
    // In a test's container only the service matters (the seed was loaded at build time).
    let inside = std::env::var_os(pristine::testing::INSIDE_ENV).is_some();
    let pg = if inside {
        Postgres::new()
    } else {
        Postgres::new().seed_sql(seed_sql())
    };
    let conn = pg.conn_str();
    let reference = (base != "host").then(|| base.clone());
    let stack = match &reference {
        None => Stack::host(),
        Some(r) => Stack::new(pristine::Recipe::image(r.as_str())),
    }
    .with(pg);
    let mut harness = pristine::testing::Harness::new();
    for s in stack.services() {
        harness = harness.service(s);
    }
    harness = harness.image(move || -> Result<pristine::Image, String> {
        let store = pristine::Store::open_default().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut fetched = false;
        if let Some(r) = &reference {
            let catalog = pristine::layers::Catalog::new(&store).map_err(|e| e.to_string())?;
            // The name a pull of `r` records (for this loopback reference).
            let name = r.replace([':', '/', '@'], "-");
            if catalog
                .image_record(&name)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                pristine::pull::pull(&store, r, &pristine::pull::PullOptions::new())
                    .map_err(|e| e.to_string())?;
                fetched = true;
            }
        }
        let pulled = start.elapsed();
        let start = Instant::now();
        let built = stack.build_report(&store).map_err(|e| e.to_string())?;
        let fresh = built.layers.iter().filter(|l| !l.cached).count();
        let _ = PHASES.set((pulled, fetched, start.elapsed(), fresh));
        Ok(built.image)
    });
    for i in 0..TESTS {
        let conn = conn.clone();
        harness = harness.test(format!("t{i:02}"), move |_| {
            let mut db = postgres::Client::connect(&conn, postgres::NoTls)?;
            let n: i64 = db.query_one("SELECT count(*) FROM accounts", &[])?.get(0);
            if n != ACCOUNTS {
                return Err(format!("{n} accounts, the seed has {ACCOUNTS}").into());
            }
            db.execute("UPDATE accounts SET balance_cents = 0 WHERE id = 1", &[])?;
            Ok(())
        });
    }
    let finished = harness.execute(&libtest_mimic::Arguments::from_args());
    if let Some((pulled, fetched, built, fresh)) = PHASES.get() {
        println!(
            "{REPORT}phases pull={} pulled={} build={} built={fresh}",
            pulled.as_nanos(),
            u8::from(*fetched),
            built.as_nanos()
        );
    }
    for t in &finished.timings {
        if let Some(ready) = t.ready {
            println!("{REPORT}test {} ready={}", t.name, ready.as_nanos());
        }
    }
    finished.conclusion.exit()
}

/// One run of the suite in a child.
struct Suite {
    /// The image's pull (or the lookup that finds it held) and its seeded layers' build.
    pull: Duration,
    /// Whether the image was pulled.
    pulled: bool,
    build: Duration,
    /// How many seeded layers were built (not found in the store).
    built: usize,
    /// Each test's start latency: container start to PostgreSQL ready, body starting.
    ready: Vec<Duration>,
}

impl Suite {
    /// Pull + seeded layers + the first test's start latency.
    fn first_test(&self) -> Duration {
        self.pull + self.build + self.ready[0]
    }
}

/// Runs the suite on `base` (`host` or a reference) with the store `store`, its tests one
/// at a time; only test `t00` with `first_only`.
fn run_suite(base: &str, store: &Path, first_only: bool) -> Suite {
    let mut cmd = Command::new(std::env::current_exe().expect("locate the bench binary"));
    cmd.env(SUITE_ENV, base)
        .env("PRISTINE_STORE", store)
        .args(["--test-threads", "1"])
        .stdin(std::process::Stdio::null());
    if first_only {
        cmd.args(["--exact", "t00"]);
    }
    let out = cmd.output().expect("run the suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the suite on {base} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let ns = Duration::from_nanos;
    let phases = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT)?.strip_prefix("phases "))
        .unwrap_or_else(|| panic!("the suite on {base} did not report its phases:\n{stdout}"));
    let ready: Vec<Duration> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(REPORT)?.strip_prefix("test "))
        .map(|l| ns(field(l, "ready")))
        .collect();
    let want = if first_only { 1 } else { TESTS };
    assert_eq!(ready.len(), want, "tests timed on {base}:\n{stdout}");
    Suite {
        pull: ns(field(phases, "pull")),
        pulled: field(phases, "pulled") == 1,
        build: ns(field(phases, "build")),
        built: field(phases, "built") as usize,
        ready,
    }
}

fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Time to first test on a cold and on a warm store, and per-test start latency, over the
/// pulled image and over the host's PostgreSQL, interleaved.
fn services(reference: &str, rounds: usize) {
    fixture::need(&["docker-registry"]);
    assert!(
        std::path::Path::new("/usr/lib/postgresql/15/bin/postgres").is_file(),
        "the host's PostgreSQL 15 is needed (apt-get install postgresql-15)"
    );
    let bases = [("pulled image", reference), ("host's PostgreSQL", "host")];
    // [base] -> runs
    let mut cold: [Vec<Suite>; 2] = [Vec::new(), Vec::new()];
    let mut warm: [Vec<Suite>; 2] = [Vec::new(), Vec::new()];
    let mut per_test: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let tmp = fixture::scratch();
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let store = |b: usize| tmp.path().join(format!("store-{b}"));
        for b in order {
            let s = run_suite(bases[b].1, &store(b), true);
            assert!(
                s.built > 0 && (s.pulled || b == 1),
                "a cold store built or pulled nothing on {}",
                bases[b].0
            );
            eprintln!(
                "round {round}: {} cold: pull {}, seeded layers {}, first test's start {}",
                bases[b].0,
                ms(s.pull),
                ms(s.build),
                ms(s.ready[0])
            );
            cold[b].push(s);
        }
        for b in order {
            let s = run_suite(bases[b].1, &store(b), true);
            assert!(
                s.built == 0 && !s.pulled,
                "a warm store rebuilt on {}",
                bases[b].0
            );
            warm[b].push(s);
        }
        for b in order {
            per_test[b].extend(run_suite(bases[b].1, &store(b), false).ready);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nservices::Postgres (the demo's 25 MB seed) over the pulled 4-layer PostgreSQL 15 image and over the host's PostgreSQL 15, {rounds} interleaved rounds; load average {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let med =
        |v: &[Suite], f: &dyn Fn(&Suite) -> Duration| percentile(v.iter().map(f).collect(), 0.5);
    println!("{:<58} {:>14} {:>18}", "(medians)", bases[0].0, bases[1].0);
    let row = |label: &str, v: [Duration; 2]| {
        println!("{label:<58} {:>14} {:>18}", ms(v[0]), ms(v[1]));
    };
    for (label, runs) in [("cold store", &cold), ("warm store", &warm)] {
        let what = if label == "cold store" {
            "pull"
        } else {
            "image lookup (held: no registry asked)"
        };
        println!(
            "{:<58} {:>14} {:>18}",
            format!("{label}: {what}"),
            ms(med(&runs[0], &|s| s.pull)),
            "-"
        );
        row(
            &format!(
                "{label}: seeded layers ({})",
                if label == "cold store" {
                    "initdb + seed"
                } else {
                    "found"
                }
            ),
            [med(&runs[0], &|s| s.build), med(&runs[1], &|s| s.build)],
        );
        row(
            &format!("{label}: first test's start (container + PostgreSQL)"),
            [
                med(&runs[0], &|s| s.ready[0]),
                med(&runs[1], &|s| s.ready[0]),
            ],
        );
        row(
            &format!("{label}: time to first test"),
            [
                med(&runs[0], &|s| s.first_test()),
                med(&runs[1], &|s| s.first_test()),
            ],
        );
    }
    let n = per_test[0].len();
    for (label, q) in [("median", 0.5), ("p90", 0.9)] {
        row(
            &format!("per-test start latency, {label} of {n} tests"),
            [
                percentile(per_test[0].clone(), q),
                percentile(per_test[1].clone(), q),
            ],
        );
    }
}
