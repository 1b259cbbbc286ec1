//! Pulling a multi-layer image: `pristine pull` against `podman pull` of the same image
//! from the same loopback registry (Debian's docker-registry), interleaved, cold (empty
//! store / storage) and warm (everything held), plus pristine's first container on the
//! freshly pulled image. The image is PostgreSQL 15 on Debian 12 (mmdebstrap, four gzip
//! layers; built once and cached under target/tmp). As root (podman runs in a private
//! mount namespace, so its storage mounts never reach the host's).
//!
//! `tools/pull-bench` (or `cargo bench --bench pull`); `PULL_BENCH_ROUNDS` (default 5).

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

/// podman with its own storage under `root`, in a private mount namespace.
fn podman(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "podman"])
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "overlay", "--events-backend", "none"])
        .args(args);
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
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
    let blobs: u64 = std::fs::read_dir(layout.dir.join("blobs/sha256"))
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
        // Alternate which tool goes first, so neither always gets the warmer page cache.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for tool in order {
            if tool == 0 {
                took[0].push(timed(&mut pristine(&store, &["pull", &reference])));
                took[4].push(timed(&mut pristine(
                    &store,
                    &[
                        "run",
                        "--image",
                        &reference,
                        "--",
                        "/usr/lib/postgresql/15/bin/postgres",
                        "--version",
                    ],
                )));
                took[2].push(timed(&mut pristine(&store, &["pull", &reference])));
            } else {
                let pull = ["pull", "--quiet", "--tls-verify=false", reference.as_str()];
                took[1].push(timed(&mut podman(&pod, &pull)));
                took[3].push(timed(&mut podman(&pod, &pull)));
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
