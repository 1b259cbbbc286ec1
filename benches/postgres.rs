//! PostgreSQL benchmark: what a test pays for a private, seeded, ready database, pristine
//! against the peers, measured side by side in one run (interleaved rounds, medians).
//!
//! ```sh
//! cargo bench --bench postgres                    # both parts (as root, PostgreSQL 15)
//! cargo bench --bench postgres -- pertest         # one test at 30 MB and at ~1 GiB
//! cargo bench --bench postgres -- suite           # the demo's 60-test suite vs the peers
//! cargo bench --bench postgres -- start           # services::Postgres vs the hand-made layer
//! cargo bench --bench postgres -- --rounds 5      # more rounds (default 3)
//! ```
//!
//! `pertest`: one test that reads one row and updates one row of `pgbench_accounts`, on a
//! `pgbench -i -s 2` seed (30 MB) and a `pgbench -i -s 70` seed (~1 GiB; scales from
//! `PRISTINE_PG_SMALL_SCALE` / `PRISTINE_PG_BIG_SCALE`):
//! - pristine: a container over the seeded layer (upper placed by default, i.e. on the
//!   store's reflink filesystem when there is one); PostgreSQL starts, becomes ready, the
//!   test connects, reads, updates; the container is torn down;
//! - pristine with a tmpfs upper (the old default) for comparison;
//! - template clone: one PostgreSQL on the host, `CREATE DATABASE x TEMPLATE … STRATEGY
//!   FILE_COPY`, connect, the same read and update, `DROP DATABASE x`.
//!
//! Then, once each, what a pristine test holds while it runs (measured at the end of the
//! test, PostgreSQL still running): the page cache and shared memory charged to it (its own
//! memory cgroup) and the bytes its upper layer took on disk.
//!
//! `start`: the demo's 60 tests (2 at a time) on `services::Postgres` (the demo) and on the
//! hand-made layer the demo used before (`benches/postgres/layer.rs`, `build.sh`), in
//! interleaved rounds: the median per-test start latency (container + PostgreSQL ready)
//! and PostgreSQL's own start, per round and over the rounds.
//!
//! `suite`: the demo's 60 tests (`examples/postgres/demo.rs`, 30 MB seed, 2 at a time):
//! pristine (the demo itself) against one shared PostgreSQL with a clone per test (WAL_LOG,
//! PostgreSQL 15's default, and FILE_COPY) and with all 60 clones made up front (FILE_COPY;
//! their time counted, IntegreSQL's way). The peers' server keeps its data in /var/tmp
//! (`PRISTINE_PG_PEER_DIR` elsewhere, e.g. `/dev/shm` for a server in memory).
//!
//! Runs from any checkout path: the container runs this binary bound read-only at
//! `/.pristine/bin`, the layer's files are compiled in, and this binary serves as the
//! containers' init. Layers are cached in the default store (the ~1 GiB one takes minutes
//! to build once).

#[path = "../examples/postgres/demo.rs"]
mod demo;
#[path = "postgres/layer.rs"]
mod layer;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use pristine::{Bind, Container, Image, Store, Upper};

/// Set in the container: this process is the test inside it.
const INNER_ENV: &str = "PRISTINE_PG_BENCH_INNER";
/// Set in the container when the host measures the test's memory at its end.
const MEASURE_ENV: &str = "PRISTINE_PG_BENCH_MEASURE";
/// Set for a child of the bench that runs the demo's suite.
const DEMO_ENV: &str = "PRISTINE_PG_BENCH_DEMO";
/// Port of the host's template server.
const TEMPLATE_PORT: u16 = 54329;
/// Where the bench binary appears in the container.
const EXE_IN: &str = "/.pristine/bin";
/// The host directory for the measurement handshake, in the container.
const MEASURE_IN: &str = "/.pristine/measure";
/// The test's read and update.
const READ_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
const UPDATE_SQL: &str = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1";

fn main() {
    pristine::main_if_requested();
    let demo = std::env::var(DEMO_ENV).ok();
    if demo.as_deref() == Some("layer") {
        hand_made_demo();
    }
    if demo.is_some() || std::env::var_os(pristine::testing::INSIDE_ENV).is_some() {
        demo::main(demo::Config {
            per_kind: 12,
            skip_if_unable: false,
            host_trials: Vec::new(),
        });
    }
    if std::env::var_os(INNER_ENV).is_some() {
        inner();
    }
    if let Err(why) = layer::preflight() {
        eprintln!("postgres benchmark skipped: {why}");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3);
    let want = |part: &str| {
        let parts = ["pertest", "suite", "start"];
        !args.iter().any(|a| parts.contains(&a.as_str())) || args.iter().any(|a| a == part)
    };
    if want("pertest") {
        per_test(rounds);
    }
    if want("suite") {
        suite(rounds);
    }
    if want("start") {
        start(rounds);
    }
}

/// The demo as it was before `services::Postgres`: the hand-made layer, its service.
fn hand_made_demo() -> ! {
    let harness = pristine::testing::Harness::new()
        .image(|| layer::build(1).map(|l| l.image))
        .service(
            pristine::testing::Service::new(
                "postgres",
                [
                    format!("{}/postgres", layer::PG_BIN),
                    "-D".into(),
                    layer::DATA_DIR.into(),
                ],
            )
            .user(layer::PG_USER)
            .ready_log(layer::READY_LINE)
            .start_timeout(Duration::from_secs(30)),
        );
    let cfg = demo::Config {
        per_kind: 12,
        skip_if_unable: false,
        host_trials: Vec::new(),
    };
    demo::run(cfg, harness, hand_made_connect, layer::preflight)
}

fn hand_made_connect() -> Result<(Client, String), Box<dyn std::error::Error + Send + Sync>> {
    let db = Client::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )?;
    Ok((db, layer::recorded_fingerprint()?))
}

// ---------------------------------------------------------------------------------------
// Start latency: services::Postgres against the hand-made layer

fn start(rounds: usize) {
    let variants = [
        ("services::Postgres (the demo)", "services"),
        ("hand-made layer (old demo)", "layer"),
    ];
    // One warm-up round: builds both layers, warms the page cache.
    for (_, v) in variants {
        run_demo_variant(v);
    }
    let (mut starts, mut pgs) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for r in 0..rounds {
        for (i, (name, v)) in variants.iter().enumerate() {
            let (start, pg) = run_demo_variant(v);
            eprintln!("round {r}: {name}: start latency median {start:.1} ms, PostgreSQL start {pg:.1} ms");
            starts[i].push(start);
            pgs[i].push(pg);
        }
    }
    println!("\nper-test start latency, the demo's 60 tests 2 at a time, medians of {rounds} interleaved rounds:");
    println!(
        "  {:<32} {:>14} {:>18}",
        "", "start latency", "PostgreSQL start"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        println!(
            "  {name:<32} {:>11.1} ms {:>15.1} ms",
            median(starts[i].clone()),
            median(pgs[i].clone())
        );
    }
    let ratio = |v: &[Vec<f64>; 2]| median(v[0].iter().zip(&v[1]).map(|(a, b)| a / b).collect());
    println!(
        "  services / hand-made, paired by round: start latency {:.2}x, PostgreSQL start {:.2}x",
        ratio(&starts),
        ratio(&pgs)
    );
}

/// Runs the demo (`services`) or the hand-made one (`layer`) in a child, 2 tests at a time;
/// returns its median start latency and PostgreSQL start, in ms, from its summary.
fn run_demo_variant(variant: &str) -> (f64, f64) {
    let exe = std::env::current_exe().expect("locate the bench binary");
    let out = Command::new(exe)
        .env(DEMO_ENV, variant)
        .args(["--test-threads", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {variant} demo failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p50 = |label: &str| -> f64 {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| {
                l[l.find(label)? + label.len()..]
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {label:?} line in the demo's summary:\n{stdout}"))
    };
    (
        p50("start latency (container + PostgreSQL)"),
        p50("PostgreSQL start (up -> ready)"),
    )
}

fn scale(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn build_layer(seed: layer::Seed) -> layer::Layer {
    eprintln!("seeded layer {seed:?}: looking it up (built once, then cached)...");
    let l = layer::build_seed(seed).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "seeded layer {seed:?}: {} database, {} in {:.1} s",
        l.db_size,
        if l.cached { "cached" } else { "built" },
        l.took.as_secs_f64()
    );
    l
}

// ---------------------------------------------------------------------------------------
// One test at two sizes

fn per_test(rounds: usize) {
    // Before any container: every process of this part (pristine's zygote included) is
    // then charged to this cgroup, where a test's memory is read.
    let cgroup = MemoryCgroup::enter();
    let (small_scale, big_scale) = (
        scale("PRISTINE_PG_SMALL_SCALE", 2),
        scale("PRISTINE_PG_BIG_SCALE", 70),
    );
    let small = build_layer(layer::Seed::Pgbench(small_scale));
    let big = build_layer(layer::Seed::Pgbench(big_scale));
    let store = Store::open_default().expect("open the default store");
    println!("\nstore:\n{}", pristine::store::describe(&store));
    let server = TemplateServer::start(&[
        ("small", Seed::Pgbench(small_scale)),
        ("big", Seed::Pgbench(big_scale)),
    ])
    .unwrap_or_else(|e| panic!("template server: {e}"));

    let tmpfs = Upper::Tmpfs(pristine::DEFAULT_UPPER_SIZE);
    let cases: Vec<Case<'_>> = vec![
        (
            format!("pristine, {}", small.db_size),
            Box::new(|| pristine_test(&small.image, Upper::Auto, None)),
        ),
        (
            format!("pristine, {}", big.db_size),
            Box::new(|| pristine_test(&big.image, Upper::Auto, None)),
        ),
        (
            format!("pristine, tmpfs upper, {}", small.db_size),
            Box::new(|| pristine_test(&small.image, tmpfs.clone(), None)),
        ),
        (
            format!("pristine, tmpfs upper, {}", big.db_size),
            Box::new(|| pristine_test(&big.image, tmpfs.clone(), None)),
        ),
        (
            format!("template clone FILE_COPY, {}", small.db_size),
            Box::new(|| server.clone_test("small")),
        ),
        (
            format!("template clone FILE_COPY, {}", big.db_size),
            Box::new(|| server.clone_test("big")),
        ),
    ];
    let t = interleaved(&cases, rounds);
    println!(
        "\none test (connect, read one row, update one row), {rounds} interleaved rounds:\n  \
         {:<44} {:>8} {:>9}",
        "", "median", "quietest"
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        println!(
            "  {name:<44} {:>6.1} ms {:>6.1} ms",
            t.median(i) * 1e3,
            t.min(i) * 1e3
        );
    }
    println!(
        "  pristine {} / {}: {}  (target <= 1.2x)",
        big.db_size,
        small.db_size,
        t.ratio(1, 0)
    );
    println!(
        "  pristine / template clone, {}: {}",
        big.db_size,
        t.ratio(1, 5)
    );
    println!(
        "  pristine / template clone, {}: {}",
        small.db_size,
        t.ratio(0, 4)
    );
    println!("\nwhat one pristine test holds at its end (PostgreSQL still running):");
    for (label, image, upper) in [
        (&small.db_size, &small.image, Upper::Auto),
        (&big.db_size, &big.image, Upper::Auto),
        (&small.db_size, &small.image, tmpfs.clone()),
        (&big.db_size, &big.image, tmpfs.clone()),
    ] {
        let how = if upper == Upper::Auto {
            "default upper"
        } else {
            "tmpfs upper  "
        };
        let cg = cgroup.as_ref().map_err(String::clone);
        match cg.and_then(|cg| measure(image, upper, &store, cg)) {
            Ok(m) => println!("  {how}, {label:<8}: {m}"),
            Err(e) => println!("  {how}, {label:<8}: not measured: {e}"),
        }
    }
}

/// A named thing to time.
type Case<'a> = (String, Box<dyn Fn() + 'a>);

/// Runs each case once per round, in order, `rounds` times; the median seconds of each.
fn interleaved(cases: &[Case<'_>], rounds: usize) -> Timings {
    // One warm-up round: builds, first page cache reads, connections.
    for (_, f) in cases {
        f();
    }
    let mut times = vec![Vec::new(); cases.len()];
    for r in 0..rounds {
        for (i, (name, f)) in cases.iter().enumerate() {
            let t = Instant::now();
            f();
            let s = t.elapsed().as_secs_f64();
            eprintln!("round {r}: {name}: {:.1} ms", s * 1e3);
            times[i].push(s);
        }
    }
    Timings(times)
}

/// Seconds per case and round.
struct Timings(Vec<Vec<f64>>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Timings {
    fn median(&self, i: usize) -> f64 {
        median(self.0[i].clone())
    }

    /// The quietest round's time.
    fn min(&self, i: usize) -> f64 {
        self.0[i].iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The median over rounds of case `i`'s time over case `j`'s in the same round.
    fn paired(&self, i: usize, j: usize) -> f64 {
        median(
            self.0[i]
                .iter()
                .zip(&self.0[j])
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// `i / j` three ways: medians, quietest rounds, and round by round.
    fn ratio(&self, i: usize, j: usize) -> String {
        format!(
            "{:>5.2}x (medians), {:.2}x (quietest), {:.2}x (median of rounds)",
            self.median(i) / self.median(j),
            self.min(i) / self.min(j),
            self.paired(i, j)
        )
    }
}

fn bench_container(image: &Image, upper: Upper) -> Container {
    let exe = std::env::current_exe().expect("locate the bench binary");
    Container::new(image.clone())
        .upper(upper)
        .env(INNER_ENV, "1")
        .bind(Bind {
            source: exe,
            target: EXE_IN.into(),
            readonly: true,
        })
        .timeout(Duration::from_secs(120))
}

fn pristine_test(image: &Image, upper: Upper, measure_dir: Option<&Path>) {
    let mut c = bench_container(image, upper);
    if let Some(dir) = measure_dir {
        c = c.env(MEASURE_ENV, "1").bind(Bind {
            source: dir.to_path_buf(),
            target: MEASURE_IN.into(),
            readonly: false,
        });
    }
    let out = c.run([EXE_IN]).expect("run a container");
    assert!(
        out.status.success(),
        "inside the container: {} {}",
        out.stdout_str(),
        out.stderr_str()
    );
}

/// Inside the container: start PostgreSQL, wait until it is ready, connect, read, update.
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
    let pid_file = PathBuf::from(layer::DATA_DIR).join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
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
            fail("postgres was not ready after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut db = Client::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )
    .unwrap_or_else(|e| fail(format!("connect: {e}")));
    read_and_update(&mut db).unwrap_or_else(|e| fail(e));
    if std::env::var_os(MEASURE_ENV).is_some() {
        handshake();
    }
    // PostgreSQL is killed with the container.
    std::process::exit(0)
}

/// The test: read one row, update it, read it back.
fn read_and_update(db: &mut Client) -> Result<(), String> {
    let before: i32 = db
        .query_one(READ_SQL, &[])
        .map_err(|e| format!("read: {e}"))?
        .get(0);
    db.batch_execute(UPDATE_SQL)
        .map_err(|e| format!("update: {e}"))?;
    let after: i32 = db
        .query_one(READ_SQL, &[])
        .map_err(|e| format!("read back: {e}"))?
        .get(0);
    if after != before + 1 {
        return Err(format!("the update did not take: {before} then {after}"));
    }
    Ok(())
}

/// Tells the host the test is done and waits (at most 60 s) until it has measured.
fn handshake() {
    let dir = Path::new(MEASURE_IN);
    let _ = std::fs::write(dir.join("done"), "");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------
// A test's memory and disk

/// What a test held at its end.
struct Held {
    /// Page cache and shared memory (tmpfs files included) charged to the test.
    cache: i64,
    /// Of which shared memory (tmpfs upper, PostgreSQL's shared buffers).
    shmem: i64,
    /// Anonymous memory of its processes.
    rss: i64,
    /// Bytes newly allocated on the store's filesystem (its upper layer on disk).
    disk: i64,
    /// The whole system's `Shmem` (tmpfs files included) grew by this much: a cross-check
    /// that does not depend on cgroup accounting (other processes add noise).
    system_shmem: i64,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: i64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "page cache + shmem {:>7.1} MB (shmem {:>6.1} MB), process memory {:>5.1} MB, \
             upper on disk {:>7.1} MB; system-wide Shmem {:>+7.1} MB",
            mb(self.cache),
            mb(self.shmem),
            mb(self.rss),
            mb(self.disk),
            mb(self.system_shmem)
        )
    }
}

/// A memory cgroup (v1) this process moves into while measuring; its children (the
/// container) are charged there.
struct MemoryCgroup {
    dir: PathBuf,
    parent_procs: PathBuf,
}

impl MemoryCgroup {
    fn enter() -> Result<Self, String> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.stat").exists() {
            return Err("no cgroup v1 memory controller at /sys/fs/cgroup/memory".into());
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let rel = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let _ = f.next();
                f.next()?
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| f.next())?
            })
            .ok_or("this process is in no memory cgroup")?;
        let parent = root.join(rel.trim_start_matches('/'));
        let dir = parent.join(format!("pristine-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let me = std::process::id().to_string();
        std::fs::write(dir.join("cgroup.procs"), &me).map_err(|e| e.to_string())?;
        Ok(MemoryCgroup {
            dir,
            parent_procs: parent.join("cgroup.procs"),
        })
    }

    fn stat(&self) -> Result<(i64, i64, i64), String> {
        let s = std::fs::read_to_string(self.dir.join("memory.stat")).map_err(|e| e.to_string())?;
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok((get("cache"), get("shmem"), get("rss")))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.parent_procs, std::process::id().to_string());
        // pristine's zygote lives there until this process exits: the cgroup is then empty,
        // and the next container with limits removes it (a `pristine-` leftover).
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `Shmem` of /proc/meminfo, in bytes.
fn system_shmem() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Shmem:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn used_bytes(dir: &Path) -> i64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| ((s.blocks() - s.blocks_free()) * s.fragment_size()) as i64)
        .unwrap_or(0)
}

/// How long memory figures take to settle: the kernel frees a finished container's tmpfs
/// shortly after its last process is gone, and flushes a cgroup's `memory.stat` counters
/// every 2 s.
const SETTLE: Duration = Duration::from_millis(2500);

/// Runs one test (after a warm run, so that the seed's shared page cache is not charged to
/// it) and measures, at its end, what its cgroup holds beyond what this process held.
fn measure(image: &Image, upper: Upper, store: &Store, cg: &MemoryCgroup) -> Result<Held, String> {
    pristine_test(image, upper.clone(), None);
    std::thread::sleep(SETTLE);
    let dir = tempfile::Builder::new()
        .prefix("pristine-pg-measure-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (cache0, shmem0, rss0) = cg.stat()?;
    let disk0 = used_bytes(store.root());
    let sys0 = system_shmem();
    let done = dir.path().join("done");
    let go = dir.path().join("go");
    let at_end = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(SETTLE);
            let r = cg
                .stat()
                .map(|st| (st, used_bytes(store.root()), system_shmem()));
            let _ = std::fs::write(&go, "");
            r
        });
        pristine_test(image, upper, Some(dir.path()));
        waiter.join().expect("the measuring thread")
    })?;
    let ((cache, shmem, rss), disk, sys) = at_end;
    Ok(Held {
        cache: cache - cache0,
        shmem: shmem - shmem0,
        rss: rss - rss0,
        disk: disk - disk0,
        system_shmem: sys - sys0,
    })
}

// ---------------------------------------------------------------------------------------
// The demo's suite against the peers

/// The peers' ways of giving each test its own database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// `CREATE DATABASE … TEMPLATE seeded STRATEGY WAL_LOG` per test.
    WalLog,
    /// The same with `STRATEGY FILE_COPY`.
    FileCopy,
    /// All clones made up front with FILE_COPY, then the tests (clone time counted).
    Pool,
}

fn suite(rounds: usize) {
    let tests: Vec<(String, &'static str)> = demo::KINDS
        .iter()
        .flat_map(|(kind, sql)| (0..12).map(move |i| (format!("{kind}_{i:02}"), *sql)))
        .collect();
    let server = TemplateServer::start(&[("seeded", Seed::Demo(1))])
        .unwrap_or_else(|e| panic!("template server: {e}"));
    let expected = {
        let mut db = server.connect("seeded");
        demo::fingerprint(&mut db).expect("fingerprint of the template")
    };
    // The demo's layer, built before the timed runs.
    build_layer(layer::Seed::Demo(1));
    let cases: Vec<Case<'_>> = vec![
        (
            "pristine demo (examples/postgres)".into(),
            Box::new(run_demo),
        ),
        (
            "shared server, clone per test, WAL_LOG".into(),
            Box::new(|| server.peer_suite(Peer::WalLog, &tests, &expected)),
        ),
        (
            "shared server, clone per test, FILE_COPY".into(),
            Box::new(|| server.peer_suite(Peer::FileCopy, &tests, &expected)),
        ),
        (
            "shared server, 60 clones up front, FILE_COPY".into(),
            Box::new(|| server.peer_suite(Peer::Pool, &tests, &expected)),
        ),
    ];
    let t = interleaved(&cases, rounds);
    println!(
        "\nthe demo's {} tests, 2 at a time, wall time over {rounds} interleaved rounds:\n  \
         {:<46} {:>7} {:>9}",
        tests.len(),
        "",
        "median",
        "quietest"
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        println!("  {name:<46} {:>5.2} s {:>7.2} s", t.median(i), t.min(i));
    }
    let best = (1..cases.len())
        .min_by(|a, b| t.median(*a).total_cmp(&t.median(*b)))
        .expect("peers");
    println!(
        "  pristine / best peer ({}): {}  (target <= 0.8x, aim 0.5x)",
        cases[best].0,
        t.ratio(0, best)
    );
}

/// The demo's suite in a child process (its harness re-runs this binary in containers).
fn run_demo() {
    let exe = std::env::current_exe().expect("locate the bench binary");
    let out = Command::new(exe)
        .env(DEMO_ENV, "1")
        .args(["--test-threads", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    assert!(
        out.status.success(),
        "the demo failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The peers' server

/// What a template database holds.
#[derive(Debug, Clone, Copy)]
enum Seed {
    /// The demo's `seed.sql` at this scale.
    Demo(u32),
    /// `pgbench -i -s SCALE`.
    Pgbench(u32),
}

/// A PostgreSQL server on the host with the seeds in template databases. Stopped
/// (immediately) when dropped.
struct TemplateServer {
    dir: tempfile::TempDir,
    data: PathBuf,
    admin: std::sync::Mutex<Client>,
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
    fn start(seeds: &[(&str, Seed)]) -> Result<Self, String> {
        // On disk by default, as a real server's data is (`PRISTINE_PG_PEER_DIR=/dev/shm`
        // puts the peers' databases in memory instead).
        let parent = std::env::var_os("PRISTINE_PG_PEER_DIR").unwrap_or("/var/tmp".into());
        let dir = tempfile::Builder::new()
            .prefix("pristine-pg-template-")
            .tempdir_in(parent)
            .map_err(|e| e.to_string())?;
        let user = nix::unistd::User::from_name(layer::PG_USER)
            .ok()
            .flatten()
            .ok_or("no postgres user")?;
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        let data = dir.path().join("data");
        eprintln!(
            "template server: initdb + seeds in {}...",
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
            std::fs::read_to_string(data.join("postgresql.conf")).map_err(|e| e.to_string())?;
        conf.push_str(layer::asset("postgresql.conf"));
        conf.push_str(&format!(
            "\nport = {TEMPLATE_PORT}\nunix_socket_directories = '{}'\n\
             max_connections = 100\n",
            dir.path().display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).map_err(|e| e.to_string())?;
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
        let admin = Client::connect(
            &format!("host=127.0.0.1 port={TEMPLATE_PORT} user=postgres dbname=postgres"),
            NoTls,
        )
        .map_err(|e| format!("connect: {e}"))?;
        let server = TemplateServer {
            data,
            admin: std::sync::Mutex::new(admin),
            dir,
        };
        for (name, seed) in seeds {
            server.seed(name, *seed)?;
            // As `services::Postgres` ends its seed step (and so pristine's layer): hint bits
            // set and rows frozen, visibility map and planner statistics made, so that the
            // peers' clones start from the same state as pristine's copies.
            server
                .connect(name)
                .batch_execute("VACUUM (FREEZE, ANALYZE)")
                .map_err(|e| format!("VACUUM the template {name}: {e}"))?;
        }
        server
            .admin()
            .batch_execute("CHECKPOINT")
            .map_err(|e| e.to_string())?;
        Ok(server)
    }

    fn seed(&self, name: &str, seed: Seed) -> Result<(), String> {
        self.admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| e.to_string())?;
        let port = TEMPLATE_PORT.to_string();
        match seed {
            Seed::Demo(scale) => {
                let sql = self.dir.path().join("seed.sql");
                std::fs::write(&sql, layer::asset("seed.sql")).map_err(|e| e.to_string())?;
                run(
                    as_postgres("psql")
                        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                        .args(["-v", &format!("scale={scale}"), "-f"])
                        .arg(&sql)
                        .arg(name),
                    "seeding a template",
                )
            }
            Seed::Pgbench(scale) => run(
                as_postgres("pgbench")
                    .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                    .args(["-i", "-q", "-s", &scale.to_string(), name]),
                "pgbench -i",
            ),
        }
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, Client> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self, db: &str) -> Client {
        Client::connect(
            &format!("host=127.0.0.1 port={TEMPLATE_PORT} user=postgres dbname={db}"),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
    }

    fn create(&self, db: &str, template: &str, strategy: &str) {
        create(&mut self.admin(), db, template, strategy)
    }

    fn drop_db(&self, db: &str) {
        drop_db(&mut self.admin(), db)
    }
    /// Clone `template`, connect, read one row and update it, drop the clone.
    fn clone_test(&self, template: &str) {
        self.create("x", template, "FILE_COPY");
        {
            let mut db = self.connect("x");
            read_and_update(&mut db).unwrap_or_else(|e| panic!("{e}"));
        }
        self.drop_db("x");
    }

    /// The demo's tests, two at a time, each on its own clone of `seeded`.
    fn peer_suite(&self, peer: Peer, tests: &[(String, &'static str)], expected: &str) {
        let db = |i: usize| format!("t{i}");
        if peer == Peer::Pool {
            for i in 0..tests.len() {
                self.create(&db(i), "seeded", "FILE_COPY");
            }
        }
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                // Each worker has its own admin connection, as a pool of test processes has.
                s.spawn(|| {
                    let mut admin = self.connect("postgres");
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, sql)) = tests.get(i) else {
                            return;
                        };
                        match peer {
                            Peer::WalLog => create(&mut admin, &db(i), "seeded", "WAL_LOG"),
                            Peer::FileCopy => create(&mut admin, &db(i), "seeded", "FILE_COPY"),
                            Peer::Pool => {}
                        }
                        {
                            let mut c = self.connect(&db(i));
                            demo::body(&mut c, expected, name, sql)
                                .unwrap_or_else(|e| panic!("peer test {name}: {e}"));
                        }
                        drop_db(&mut admin, &db(i));
                    }
                });
            }
        });
    }
}

fn create(admin: &mut Client, db: &str, template: &str, strategy: &str) {
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} TEMPLATE {template} STRATEGY {strategy}"
        ))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {db}: {e}"));
}

fn drop_db(admin: &mut Client, db: &str) {
    // FORCE: the test's backend may not have exited yet after the disconnect.
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap_or_else(|e| panic!("DROP DATABASE {db}: {e}"));
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
