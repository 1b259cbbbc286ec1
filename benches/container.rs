//! How long one container takes, against what the kernel alone needs and against other tools.
//!
//! All groups run in the same process, one after the other, so their ratios are meaningful
//! even on a noisy machine (compare ratios, not absolute figures, across runs).
//!
//! - `cycle/`: one `/bin/true` per iteration, from process spawn to reaped exit:
//!   - `plain_spawn_true`: `std::process::Command`, no namespaces at all;
//!   - `kernel_floor_true`: the same steps as pristine with nothing else, raw libc calls
//!     from this process (clone with mount/pid/net/uts/ipc namespaces → rprivate `/` →
//!     tmpfs → overlay of `/` → `pivot_root` → `/proc` → exec → wait);
//!   - `pristine_true_tmpfs` / `pristine_true_disk_upper`: the library, upper on a tmpfs
//!     or in the store on disk;
//!   - `pristine_true_privileged`: the tmpfs case without confinement (no capability
//!     drop, seccomp filter, `/proc` masking or new session): what hardening costs is
//!     `pristine_true_tmpfs` minus this;
//!   - `pristine_true_host_layer`: the library over the host image plus one stored layer;
//!   - `pristine_cli_true`: the `pristine run` process, for a process-level comparison;
//!   - `bwrap_true`: bubblewrap, when it is on `PATH` (no copy-on-write).
//! - `throughput/`: two threads running containers back to back, reported in elements
//!   (containers) per second.
//!
//! At the end a summary is printed: criterion's medians (from its `estimates.json`) and,
//! because groups measured minutes apart see different loads on a shared machine, the
//! medians of an interleaved pass (every cycle case in turn, in short blocks), with the
//! ratios of both, and the throughput in containers per second. Then the throughput cases
//! again, interleaved: in each round the floor, the library, `pristine run` and bubblewrap
//! each run 40 containers on 2 workers, in turn, and the medians of the rounds and their
//! ratios are printed (the ratios to hold against bubblewrap). HTML plots are off.
//! Before criterion starts, a CPU pass runs the cycle cases in turn, single-threaded, and
//! reads what this process and its children spent (getrusage): CPU per container against
//! the kernel floor, robust to the machine's load.
//! A filter that matches no benchmark (`cargo bench --bench container -- interleaved`)
//! skips criterion's groups and runs only the interleaved passes.
//!
//! The kernel floor needs root (it mounts without a user namespace) and is skipped, like a
//! missing or unusable `bwrap`, with a printed note. Being a fork-like clone of this
//! process, the floor also copies the benchmark's own page tables, which pristine (a
//! vfork-style clone + exec) does not; with two workers those copies contend on the shared
//! address space.
//!
//! `PRISTINE_BENCH_QUICK=1` shortens everything (fewer samples, shorter windows).

use std::ffi::CString;
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use std::sync::OnceLock;

use pristine::{Container, Image, LayerSpec, Recipe, Store, Upper};

/// Containers per throughput iteration (split evenly over the workers).
const THROUGHPUT_CONTAINERS: u64 = 100;
/// Worker threads for the throughput group.
const WORKERS: u64 = 2;

const CYCLE: &str = "cycle";
const THROUGHPUT: &str = "throughput";

fn main() {
    // The library reads PRISTINE_INIT once; set it before anything (criterion, rayon) can
    // start a thread.
    std::env::set_var("PRISTINE_INIT", env!("CARGO_BIN_EXE_pristine"));

    let quick = std::env::var_os("PRISTINE_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
    let started = SystemTime::now();
    let load_before = load_average();

    // Everything on the crate's filesystem (not a possible tmpfs /tmp), so that
    // `pristine_true_disk_upper` really writes its upper layer to disk.
    let tmp = tempfile::Builder::new()
        .prefix("pristine-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temporary directory in CARGO_TARGET_TMPDIR");
    let store = tmp.path().join("store");
    let floor_dir = tmp.path().join("floor");
    std::fs::create_dir(&floor_dir).expect("create the kernel floor's mount point");
    let floor = Floor::new(&floor_dir);
    let seed = tmp.path().join("seed");
    std::fs::write(&seed, "seed\n").expect("write the layer's file");
    let layered = Recipe::host()
        .layer(LayerSpec::new("bench").copy(&seed, "/srv/pristine-bench-seed"))
        .build(&Store::open(&store).expect("open the store"))
        .unwrap_or_else(|e| panic!("build the bench layer: {e}"));
    HOST_LAYER.set(layered).expect("set once");
    let (floor, bwrap) = check_everything_works(&store, &floor, find_on_path("bwrap"));
    // Only when actually benchmarking (`cargo bench`), not for `cargo test --benches`,
    // `--list` or `--profile-time`.
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench")
        && !args
            .iter()
            .any(|a| a == "--list" || a == "--test" || a.starts_with("--profile-time"));
    // First, while this process is still single-threaded (the library then forks PID 1
    // itself, and every process of a container is reaped by this one or its children).
    let cpu = match benching {
        true => cpu_per_cycle(if quick { 3 } else { 5 }, &store, floor),
        false => Vec::new(),
    };

    // Defaults first, so that criterion's command line (`--sample-size`, ...) overrides them.
    // Plots are off: under load, drawing them took longer than measuring.
    let c = Criterion::default().without_plots().nresamples(20_000);
    let c = if quick {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
    } else {
        c.sample_size(40)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    let mut c = c.configure_from_args();

    bench_cycle(&mut c, &store, floor, bwrap.as_deref());
    bench_throughput(&mut c, &store, floor, bwrap.as_deref(), quick);
    c.final_summary();

    if benching {
        let rounds = if quick { 8 } else { 40 };
        let inter = interleaved(rounds, &store, floor, bwrap.as_deref());
        let rates =
            interleaved_throughput(if quick { 3 } else { 7 }, &store, floor, bwrap.as_deref());
        print_summary(started, &load_before, rounds, &inter);
        print_throughput(&rates);
        print_cpu(&cpu);
    }
}

/// The 1, 5 and 15 minute load averages: other work on this (small, noisy) machine skews
/// the figures, so the summary shows them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------
// The things being measured.

fn plain_spawn_true() {
    let status = Command::new("/bin/true").status().expect("spawn /bin/true");
    assert!(status.success(), "/bin/true: {status}");
}

/// The host image with one stored layer on it (built once in `main`).
static HOST_LAYER: OnceLock<Image> = OnceLock::new();

fn pristine_true(store: &Path, upper: Option<Upper>) {
    pristine_true_on(store, Image::host(), upper);
}

/// `/bin/true` in an unconfined (privileged) container, upper on a tmpfs.
fn pristine_true_privileged(store: &Path) {
    let out = Container::new(Image::host())
        .store(store)
        .privileged()
        .run(["/bin/true"])
        .unwrap_or_else(|e| panic!("pristine: {e}"));
    assert!(
        out.status.success(),
        "pristine --privileged /bin/true: {}",
        out.status
    );
}

/// `/bin/true` over the host image plus one stored layer: one overlay over a read-only
/// overlay view of `/` (as root).
fn pristine_true_host_layer(store: &Path) {
    let image = HOST_LAYER.get().expect("built in main").clone();
    pristine_true_on(store, image, None);
}

fn pristine_true_on(store: &Path, image: Image, upper: Option<Upper>) {
    let mut container = Container::new(image).store(store);
    if let Some(upper) = upper {
        container = container.upper(upper);
    }
    let out = container
        .run(["/bin/true"])
        .unwrap_or_else(|e| panic!("pristine: {e}"));
    assert!(
        out.status.success(),
        "pristine /bin/true: {}; stderr: {}",
        out.status,
        out.stderr_str()
    );
}

fn pristine_cli_true(store: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_pristine"))
        .arg("run")
        .arg("--store")
        .arg(store)
        .args(["--", "/bin/true"])
        .status()
        .expect("spawn pristine run");
    assert!(status.success(), "pristine run -- /bin/true: {status}");
}

fn bwrap_command(bwrap: &Path) -> Command {
    let mut cmd = Command::new(bwrap);
    cmd.args([
        "--unshare-all",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "/bin/true",
    ]);
    cmd
}

fn bwrap_true(bwrap: &Path) {
    let status = bwrap_command(bwrap).status().expect("spawn bwrap");
    assert!(status.success(), "bwrap /bin/true: {status}");
}

/// Everything the kernel-floor child needs, prepared before cloning so that the child
/// only makes raw libc calls (no allocation, no locks).
struct Floor {
    root: CString,
    base: CString,
    upper: CString,
    work: CString,
    new_root: CString,
    tmpfs: CString,
    overlay: CString,
    overlay_options: CString,
    proc_fs: CString,
    proc_dir: CString,
    dot: CString,
    program: CString,
}

/// Exit codes of the kernel-floor child when a step fails, and the step's name.
const FLOOR_STEPS: &[(i32, &str)] = &[
    (101, "mount --make-rprivate /"),
    (102, "mount tmpfs"),
    (103, "mkdir upper"),
    (104, "mkdir work"),
    (105, "mkdir root"),
    (106, "mount overlay"),
    (107, "chdir new root"),
    (108, "pivot_root"),
    (109, "umount2 old root"),
    (110, "chdir /"),
    (111, "mount proc"),
    (112, "execve /bin/true"),
];

impl Floor {
    fn new(base: &Path) -> Floor {
        let c = |s: &[u8]| CString::new(s).expect("no NUL in a path");
        let p = |p: PathBuf| c(p.as_os_str().as_bytes());
        let upper = base.join("u");
        let work = base.join("w");
        let mut options = b"lowerdir=/,upperdir=".to_vec();
        options.extend_from_slice(upper.as_os_str().as_bytes());
        options.extend_from_slice(b",workdir=");
        options.extend_from_slice(work.as_os_str().as_bytes());
        Floor {
            root: c(b"/"),
            base: c(base.as_os_str().as_bytes()),
            upper: p(upper),
            work: p(work),
            new_root: p(base.join("r")),
            tmpfs: c(b"tmpfs"),
            overlay: c(b"overlay"),
            overlay_options: c(&options),
            proc_fs: c(b"proc"),
            proc_dir: c(b"/proc"),
            dot: c(b"."),
            program: c(b"/bin/true"),
        }
    }

    /// One cycle: clone into new namespaces, set up the copy-on-write root, exec
    /// `/bin/true`, wait. The mounts live in the child's mount namespace and vanish with it.
    fn cycle(&self) -> Result<(), String> {
        let argv: [*const c_char; 2] = [self.program.as_ptr(), std::ptr::null()];
        let envp: [*const c_char; 1] = [std::ptr::null()];
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::SIGCHLD;
        // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork: the
        // child gets a copy of this thread's memory and stack. It only calls async-signal-safe
        // libc functions on memory prepared before the clone (`self`, `argv`, `envp`), never
        // returns (it execs or `_exit`s), and so never touches locks or the allocator.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(format!("clone: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: in the freshly cloned child, see above.
            unsafe { self.child(&argv, &envp) }
        }
        let pid = pid as libc::pid_t;
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("waitpid: {err}"));
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(());
        }
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            let step = FLOOR_STEPS
                .iter()
                .find(|(c, _)| *c == code)
                .map_or("/bin/true itself", |(_, s)| s);
            return Err(format!("child exited with {code}: {step} failed"));
        }
        Err(format!("child ended with wait status {status:#x}"))
    }

    /// The child's side of [`Floor::cycle`].
    ///
    /// # Safety
    ///
    /// Only to be called in the child of a fork-like clone; never returns.
    unsafe fn child(&self, argv: &[*const c_char; 2], envp: &[*const c_char; 1]) -> ! {
        let null = std::ptr::null::<c_char>();
        fn fail(code: i32) -> ! {
            // SAFETY: `_exit` is async-signal-safe and skips atexit handlers and stdio
            // buffers that belong to the parent.
            unsafe { libc::_exit(code) }
        }
        // SAFETY (whole block): every pointer is a NUL-terminated string owned by `self`
        // or a NULL-terminated array on the caller's stack, all valid until exec or exit.
        unsafe {
            if libc::mount(
                null,
                self.root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(101);
            }
            if libc::mount(
                self.tmpfs.as_ptr(),
                self.base.as_ptr(),
                self.tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                fail(102);
            }
            if libc::mkdir(self.upper.as_ptr(), 0o755) != 0 {
                fail(103);
            }
            if libc::mkdir(self.work.as_ptr(), 0o755) != 0 {
                fail(104);
            }
            if libc::mkdir(self.new_root.as_ptr(), 0o755) != 0 {
                fail(105);
            }
            if libc::mount(
                self.overlay.as_ptr(),
                self.new_root.as_ptr(),
                self.overlay.as_ptr(),
                0,
                self.overlay_options.as_ptr().cast(),
            ) != 0
            {
                fail(106);
            }
            if libc::chdir(self.new_root.as_ptr()) != 0 {
                fail(107);
            }
            if libc::syscall(libc::SYS_pivot_root, self.dot.as_ptr(), self.dot.as_ptr()) != 0 {
                fail(108);
            }
            if libc::umount2(self.dot.as_ptr(), libc::MNT_DETACH) != 0 {
                fail(109);
            }
            if libc::chdir(self.root.as_ptr()) != 0 {
                fail(110);
            }
            if libc::mount(
                self.proc_fs.as_ptr(),
                self.proc_dir.as_ptr(),
                self.proc_fs.as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                fail(111);
            }
            libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        fail(112)
    }
}

fn floor_true(floor: &Floor) {
    floor
        .cycle()
        .unwrap_or_else(|e| panic!("kernel floor: {e}"));
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs everything once before measuring, so that a broken setup fails with a clear message
/// instead of inside criterion. The kernel floor (needs root) and bubblewrap (needs
/// namespaces it may not get) are optional: when they cannot run, they are skipped with a
/// note. Returns the floor and bwrap to measure.
fn check_everything_works<'a>(
    store: &Path,
    floor: &'a Floor,
    bwrap: Option<PathBuf>,
) -> (Option<&'a Floor>, Option<PathBuf>) {
    plain_spawn_true();
    pristine_true(store, None);
    pristine_true_privileged(store);
    pristine_true(store, Some(Upper::Disk));
    pristine_true_host_layer(store);
    pristine_cli_true(store);
    let floor = match floor.cycle() {
        Ok(()) => Some(floor),
        Err(e) => {
            println!("note: skipping the kernel floor benchmarks (needs root): {e}");
            None
        }
    };
    let bwrap = match bwrap {
        None => {
            println!(
                "note: bwrap is not on PATH, skipping {CYCLE}/bwrap_true and {THROUGHPUT}/bwrap \
                 (apt-get install bubblewrap to compare)"
            );
            None
        }
        Some(b) => match bwrap_command(&b).output() {
            Ok(out) if out.status.success() => Some(b),
            Ok(out) => {
                println!(
                    "note: skipping bwrap, which fails here ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("note: skipping bwrap, which cannot be started: {e}");
                None
            }
        },
    };
    (floor, bwrap)
}

// ---------------------------------------------------------------------------------------
// Groups.

fn bench_cycle(c: &mut Criterion, store: &Path, floor: Option<&Floor>, bwrap: Option<&Path>) {
    let mut g = c.benchmark_group(CYCLE);
    // Milliseconds per iteration: flat sampling keeps the run time at about
    // `measurement_time` (linear sampling needs n(n+1)/2 iterations, ~7 s at 9 ms and 40
    // samples); the summary uses medians, which do not need the slope fit.
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("plain_spawn_true", |b| b.iter(plain_spawn_true));
    if let Some(floor) = floor {
        g.bench_function("kernel_floor_true", |b| b.iter(|| floor_true(floor)));
    }
    g.bench_function("pristine_true_tmpfs", |b| {
        b.iter(|| pristine_true(store, None))
    });
    g.bench_function("pristine_true_privileged", |b| {
        b.iter(|| pristine_true_privileged(store))
    });
    g.bench_function("pristine_true_disk_upper", |b| {
        b.iter(|| pristine_true(store, Some(Upper::Disk)))
    });
    g.bench_function("pristine_true_host_layer", |b| {
        b.iter(|| pristine_true_host_layer(store))
    });
    g.bench_function("pristine_cli_true", |b| b.iter(|| pristine_cli_true(store)));
    if let Some(bwrap) = bwrap {
        g.bench_function("bwrap_true", |b| b.iter(|| bwrap_true(bwrap)));
    }
    g.finish();
}

/// Runs `one` `n` times, spread over [`WORKERS`] threads working back to back.
fn in_parallel(n: u64, one: &(dyn Fn() + Sync)) {
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                for _ in 0..n / WORKERS {
                    one();
                }
            });
        }
    });
}

fn bench_throughput(
    c: &mut Criterion,
    store: &Path,
    floor: Option<&Floor>,
    bwrap: Option<&Path>,
    quick: bool,
) {
    let mut g = c.benchmark_group(THROUGHPUT);
    // One iteration is already ~100 containers: flat sampling, few samples.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 500 }));
    if !quick {
        g.measurement_time(Duration::from_secs(4));
    }
    g.throughput(Throughput::Elements(THROUGHPUT_CONTAINERS));
    let n = THROUGHPUT_CONTAINERS;
    let mut case = |name: &str, one: &(dyn Fn() + Sync)| {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| in_parallel(n, one))
        });
    };
    case("plain_spawn", &plain_spawn_true);
    if let Some(floor) = floor {
        case("kernel_floor", &|| floor_true(floor));
    }
    case("pristine_tmpfs", &|| pristine_true(store, None));
    if let Some(bwrap) = bwrap {
        case("bwrap", &|| bwrap_true(bwrap));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Summary from criterion's estimates.

/// Where criterion writes its results, following its own rules, with this binary's target
/// directory (`target/<profile>/deps/<bench>`) in place of `cargo metadata`.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Median time per iteration in nanoseconds, if that benchmark ran in this process.
fn median_ns(home: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(id).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).and_then(|m| m.modified()).ok()? >= since;
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// One benchmark case, run once per call.
type Case<'a> = Box<dyn Fn() + 'a>;

/// Runs of one case in a row within an interleaved round (the first is not timed).
const INTERLEAVED_BLOCK: usize = 5;

/// The cycle cases in turn, a short block of each per round: slow drifts of the machine's
/// load hit every case alike, so these ratios are steadier than those of criterion's
/// groups, which run one after the other.
fn interleaved(
    rounds: usize,
    store: &Path,
    floor: Option<&Floor>,
    bwrap: Option<&Path>,
) -> Vec<(&'static str, Vec<f64>)> {
    let mut cases: Vec<(&'static str, Case<'_>)> = vec![
        ("plain_spawn_true", Box::new(plain_spawn_true)),
        (
            "pristine_true_tmpfs",
            Box::new(|| pristine_true(store, None)),
        ),
        (
            "pristine_true_privileged",
            Box::new(|| pristine_true_privileged(store)),
        ),
        (
            "pristine_true_disk_upper",
            Box::new(|| pristine_true(store, Some(Upper::Disk))),
        ),
        (
            "pristine_true_host_layer",
            Box::new(|| pristine_true_host_layer(store)),
        ),
        ("pristine_cli_true", Box::new(|| pristine_cli_true(store))),
    ];
    if let Some(floor) = floor {
        cases.insert(1, ("kernel_floor_true", Box::new(|| floor_true(floor))));
    }
    if let Some(bwrap) = bwrap {
        cases.push(("bwrap_true", Box::new(|| bwrap_true(bwrap))));
    }
    let mut times: Vec<(&'static str, Vec<f64>)> =
        cases.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for _ in 0..rounds {
        for ((_, run), (_, t)) in cases.iter().zip(times.iter_mut()) {
            // The first run of a block absorbs what the previous case left behind (network
            // namespaces are freed asynchronously, by a kernel worker): not timed.
            run();
            for _ in 1..INTERLEAVED_BLOCK {
                let start = Instant::now();
                run();
                t.push(start.elapsed().as_nanos() as f64);
            }
        }
    }
    times
}

/// Cycles per case and round of the CPU pass.
const CPU_CYCLES: u32 = 100;

/// CPU time (user + system) of this process and of its reaped descendants, in ms.
fn cpu_ms() -> f64 {
    let ms = |who| {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    ms(libc::RUSAGE_SELF) + ms(libc::RUSAGE_CHILDREN)
}

/// CPU per container cycle, every case in turn per round: what this process and everything
/// it starts spend (getrusage), robust to the machine's load where wall times are not.
/// Work the kernel defers to its own threads (freeing a network namespace) is in no
/// process's account, for every case alike. bubblewrap is not measured here: its outer
/// process exits without reaping its PID 1, whose CPU (the setup, the command) then never
/// reaches this process's account; `tools/cycle-cpu` (perf) compares it.
fn cpu_per_cycle(
    rounds: usize,
    store: &Path,
    floor: Option<&Floor>,
) -> Vec<(&'static str, Vec<f64>)> {
    let mut cases: Vec<(&'static str, Case<'_>)> = vec![
        ("plain_spawn_true", Box::new(plain_spawn_true)),
        (
            "pristine_true_tmpfs",
            Box::new(|| pristine_true(store, None)),
        ),
        (
            "pristine_true_privileged",
            Box::new(|| pristine_true_privileged(store)),
        ),
        ("pristine_cli_true", Box::new(|| pristine_cli_true(store))),
    ];
    if let Some(floor) = floor {
        cases.insert(1, ("kernel_floor_true", Box::new(|| floor_true(floor))));
    }
    let mut cpu: Vec<(&'static str, Vec<f64>)> =
        cases.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for _ in 0..rounds {
        for ((_, run), (_, c)) in cases.iter().zip(cpu.iter_mut()) {
            run();
            let before = cpu_ms();
            for _ in 0..CPU_CYCLES {
                run();
            }
            c.push((cpu_ms() - before) / f64::from(CPU_CYCLES));
        }
    }
    cpu
}

fn print_cpu(cpu: &[(&'static str, Vec<f64>)]) {
    let of = |name: &str| {
        cpu.iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| median(c))
    };
    let rounds = cpu.first().map_or(0, |(_, c)| c.len());
    println!();
    println!(
        "CPU per cycle (getrusage of this process and its children, single-threaded, \
         {CPU_CYCLES} cycles per case and round, {rounds} rounds; median, and each round)"
    );
    for (name, c) in cpu {
        let each: Vec<String> = c.iter().map(|v| format!("{v:.3}")).collect();
        let vs_floor = match (of(name), of("kernel_floor_true")) {
            (Some(a), Some(b)) => format!("{:.2}x floor", a / b),
            _ => String::new(),
        };
        println!(
            "  {:<32} {:>8} ms {:>12}   rounds: {}",
            format!("{CYCLE}/{name}"),
            of(name).map_or("?".into(), |v| format!("{v:.3}")),
            vs_floor,
            each.join(" ")
        );
    }
}

/// One benchmark case that several workers run at once.
type SyncCase<'a> = Box<dyn Fn() + Sync + 'a>;

/// Containers per round and case of the interleaved throughput pass (split over the workers).
const INTERLEAVED_CONTAINERS: u64 = 40;

/// Throughput with [`WORKERS`] workers, the cases in turn within each round (criterion's
/// `throughput/` group runs them minutes apart, under different loads): containers per
/// second of every round, per case.
fn interleaved_throughput(
    rounds: usize,
    store: &Path,
    floor: Option<&Floor>,
    bwrap: Option<&Path>,
) -> Vec<(&'static str, Vec<f64>)> {
    let mut cases: Vec<(&'static str, SyncCase<'_>)> = vec![
        ("pristine_tmpfs", Box::new(|| pristine_true(store, None))),
        ("pristine_cli", Box::new(|| pristine_cli_true(store))),
    ];
    if let Some(floor) = floor {
        cases.insert(0, ("kernel_floor", Box::new(|| floor_true(floor))));
    }
    if let Some(bwrap) = bwrap {
        cases.push(("bwrap", Box::new(|| bwrap_true(bwrap))));
    }
    let mut rates: Vec<(&'static str, Vec<f64>)> =
        cases.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for _ in 0..rounds {
        for ((_, one), (_, r)) in cases.iter().zip(rates.iter_mut()) {
            // Untimed, as in `interleaved`: what the previous case left behind settles.
            in_parallel(WORKERS, one.as_ref());
            let start = Instant::now();
            in_parallel(INTERLEAVED_CONTAINERS, one.as_ref());
            r.push(INTERLEAVED_CONTAINERS as f64 / start.elapsed().as_secs_f64());
        }
    }
    rates
}

fn print_throughput(rates: &[(&'static str, Vec<f64>)]) {
    let rate = |name: &str| {
        rates
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| median(r))
    };
    let rounds = rates.first().map_or(0, |(_, r)| r.len());
    println!();
    println!(
        "throughput, interleaved ({WORKERS} workers, {INTERLEAVED_CONTAINERS} containers per \
         case and round, {rounds} rounds; median, and each round)"
    );
    for (name, r) in rates {
        let each: Vec<String> = r.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "  {:<32} {:>8} /s   rounds: {}",
            format!("{THROUGHPUT}/{name}"),
            rate(name).map_or("?".into(), |v| format!("{v:.0}")),
            each.join(" ")
        );
    }
    for (a, b) in [
        ("pristine_tmpfs", "bwrap"),
        ("pristine_cli", "bwrap"),
        ("pristine_tmpfs", "kernel_floor"),
    ] {
        let ratio = match (rate(a), rate(b)) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "(not run)".into(),
        };
        println!("  {:<46} {:>9}", format!("{a} / {b} (rate)"), ratio);
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn print_summary(
    started: SystemTime,
    load_before: &str,
    rounds: usize,
    inter: &[(&'static str, Vec<f64>)],
) {
    let home = criterion_home();
    let crit = |name: &str| median_ns(&home, &format!("{CYCLE}/{name}"), started);
    let inter = |name: &str| {
        inter
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, t)| median(t))
    };
    let ms = |ns: Option<f64>| ns.map_or("(not run)".to_string(), |v| format!("{:.3} ms", v / 1e6));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "(not run)".to_string(),
    };

    println!();
    println!("==== summary (medians, this run; {}) ====", home.display());
    println!(
        "load average before: {load_before}; after: {} ({} CPUs)",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "criterion: its {CYCLE}/ group; interleaved: {rounds} rounds of every case in turn, \
         {} timed runs in a row each",
        INTERLEAVED_BLOCK - 1
    );
    let cycle = [
        "plain_spawn_true",
        "kernel_floor_true",
        "pristine_true_tmpfs",
        "pristine_true_privileged",
        "pristine_true_disk_upper",
        "pristine_true_host_layer",
        "pristine_cli_true",
        "bwrap_true",
    ];
    println!(
        "{:<32} {:>11} {:>9} {:>12} {:>9}",
        "", "criterion", "vs plain", "interleaved", "vs plain"
    );
    for name in cycle {
        println!(
            "{:<32} {:>11} {:>9} {:>12} {:>9}",
            format!("{CYCLE}/{name}"),
            ms(crit(name)),
            ratio(crit(name), crit("plain_spawn_true")),
            ms(inter(name)),
            ratio(inter(name), inter("plain_spawn_true")),
        );
    }
    println!();
    println!("{:<48} {:>9} {:>12}", "ratios", "criterion", "interleaved");
    for (a, b) in [
        ("pristine_true_tmpfs", "kernel_floor_true"),
        ("pristine_true_tmpfs", "pristine_true_privileged"),
        ("pristine_cli_true", "bwrap_true"),
        ("pristine_true_disk_upper", "pristine_true_tmpfs"),
        ("pristine_true_host_layer", "pristine_true_tmpfs"),
        ("pristine_cli_true", "pristine_true_tmpfs"),
        ("kernel_floor_true", "plain_spawn_true"),
    ] {
        println!(
            "  {:<46} {:>9} {:>12}",
            format!("{a} / {b}"),
            ratio(crit(a), crit(b)),
            ratio(inter(a), inter(b))
        );
    }
    let added = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.3} ms", (a - b) / 1e6),
        _ => "(not run)".to_string(),
    };
    let (hard, soft) = ("pristine_true_tmpfs", "pristine_true_privileged");
    println!(
        "  {:<46} {:>9} {:>12}",
        "confinement added per container",
        added(crit(hard), crit(soft)),
        added(inter(hard), inter(soft))
    );
    println!();
    println!(
        "throughput ({WORKERS} workers, {THROUGHPUT_CONTAINERS} containers per iteration, median)"
    );
    for name in ["plain_spawn", "kernel_floor", "pristine_tmpfs", "bwrap"] {
        let m = median_ns(
            &home,
            &format!("{THROUGHPUT}/{name}/{THROUGHPUT_CONTAINERS}"),
            started,
        );
        let rate = m.map_or("(not run)".to_string(), |ns| {
            format!("{:.0} /s", THROUGHPUT_CONTAINERS as f64 / (ns / 1e9))
        });
        println!("  {:<32} {:>12}", format!("{THROUGHPUT}/{name}"), rate);
    }
}
