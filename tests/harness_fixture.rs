//! A harness target for the harness's own tests. Under plain `cargo test` it runs the tests
//! that must pass (services, isolation, carrying into a busybox image, groups); with
//! `PRISTINE_FIXTURE_FAILING=1` it also registers tests that fail, panic, hang or whose
//! service never comes up, which `tests/harness_suite.rs` drives and checks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use pristine::testing::{Harness, Service, TestResult};
use pristine::Image;

/// Declared with the attribute instead of the builder: the same harness runs it, in its own
/// container of the first group's image.
#[pristine::test]
fn attribute_declared_runs_in_its_container() -> TestResult {
    if std::process::id() != 2 {
        return Err(format!("pid {}: not under the container's init", std::process::id()).into());
    }
    std::fs::write("/etc/pristine-fixture-attribute", "mine")?;
    Ok(())
}

/// Attribute-declared tests in a module: named `attribute::NAME`, as with `#[test]`.
mod attribute {
    use std::net::TcpStream;

    use pristine::testing::Ctx;

    /// Joins the `svc` group: its image and services, and the `svc::` prefix.
    #[pristine::test(group = "svc")]
    fn uses_the_groups_services(ctx: &Ctx) {
        assert!(ctx.name().ends_with("attribute::uses_the_groups_services"));
        TcpStream::connect("127.0.0.1:8000").expect("the group's web service is up");
        assert!(ctx.service_log_path("web").is_some());
    }

    #[pristine::test]
    #[ignore = "only with --ignored"]
    fn ignored_by_attribute() {}
}

fn main() {
    let failing = std::env::var_os("PRISTINE_FIXTURE_FAILING").is_some();
    let mut h = Harness::new()
        .test("pid_and_hostname_are_the_containers", |_| {
            let host = nix::unistd::gethostname()?
                .into_string()
                .unwrap_or_default();
            if !host.starts_with("pristine-") {
                return Err(format!("hostname {host:?}").into());
            }
            // PID 1 is the init, this test binary its only child.
            if std::process::id() != 2 {
                return Err(format!("pid {}", std::process::id()).into());
            }
            Ok(())
        })
        .test("writes_stay_private", |ctx| {
            let p = Path::new("/etc/pristine-fixture-private");
            if p.exists() {
                return Err("a previous test's write is visible".into());
            }
            std::fs::write(p, ctx.name())?;
            Ok(())
        })
        .test_ignored("ignored_but_passes", |_| Ok(()));

    h = h
        .group("isolation")
        .service(Service::new("idle", ["sleep", "1000"]));
    for i in 0..4 {
        h = h.test(format!("same_file_and_port_{i}"), move |_| {
            // Every test binds the same port and writes the same file, at the same time.
            let listener = TcpListener::bind("127.0.0.1:7000")?;
            std::fs::write("/etc/pristine-shared", format!("{i}"))?;
            std::thread::sleep(Duration::from_millis(150));
            let mut s = TcpStream::connect("127.0.0.1:7000")?;
            s.write_all(format!("{i}").as_bytes())?;
            let (mut conn, _) = listener.accept()?;
            let mut got = String::new();
            drop(s);
            conn.read_to_string(&mut got)?;
            let file = std::fs::read_to_string("/etc/pristine-shared")?;
            if got != i.to_string() || file != i.to_string() {
                return Err(format!("saw port data {got:?}, file {file:?}").into());
            }
            Ok(())
        });
    }

    h = h
        .group("svc")
        .service(
            Service::new(
                "web",
                ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"],
            )
            .workdir("/usr/share")
            .ready_tcp(8000)
            .start_timeout(Duration::from_secs(60)),
        )
        .service(
            Service::new(
                "sock",
                [
                    "python3",
                    "-c",
                    "import socket,time; s=socket.socket(socket.AF_UNIX); s.bind('/tmp/svc.sock'); s.listen(); print('bound', flush=True); time.sleep(1000)",
                ],
            )
            .ready_unix_socket("/tmp/svc.sock"),
        )
        .service(
            Service::new(
                "flag",
                ["sh", "-c", "sleep 0.05; echo up > /tmp/flag; exec sleep 1000"],
            )
            .ready_command(["test", "-e", "/tmp/flag"]),
        )
        .service(
            Service::new(
                "chatty",
                ["sh", "-c", "echo starting; echo LISTENING on 1 >&2; exec sleep 1000"],
            )
            .ready_log("LISTENING"),
        )
        .test("all_ready_before_the_body_and_logged", |ctx| {
            let mut s = TcpStream::connect("127.0.0.1:8000")?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            if !resp.starts_with("HTTP/1.0 200") {
                return Err(format!("response {resp:?}").into());
            }
            std::os::unix::net::UnixStream::connect("/tmp/svc.sock")?;
            if std::fs::read_to_string("/tmp/flag")? != "up\n" {
                return Err("flag".into());
            }
            // The service's log file has its output (python logs requests to stderr).
            let mut web = String::new();
            for _ in 0..1000 {
                web = ctx.service_log("web");
                if web.contains("\"GET / HTTP/1.0\" 200") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if !web.contains("\"GET / HTTP/1.0\" 200") {
                return Err(format!("web log: {web:?}").into());
            }
            let chatty = ctx.service_log("chatty");
            if chatty != "starting\nLISTENING on 1\n" {
                return Err(format!("chatty log: {chatty:?}").into());
            }
            Ok(())
        })
        .test("same_port_in_every_container", |_| {
            // Port 8000 is taken by this container's own web service only.
            if TcpListener::bind("127.0.0.1:8000").is_ok() {
                return Err("port 8000 was free: the service is not running here".into());
            }
            Ok(())
        });

    if nix::unistd::geteuid().is_root() {
        h = h
            .group("user")
            .service(
                Service::new(
                    "as_nobody",
                    [
                        "sh",
                        "-c",
                        "id -u > /tmp/uid; id -G > /tmp/gids; exec sleep 1000",
                    ],
                )
                .user("nobody")
                .ready_command(["test", "-s", "/tmp/gids"]),
            )
            .test("service_runs_as_its_user", |_| {
                let uid = std::fs::read_to_string("/tmp/uid")?;
                let gids = std::fs::read_to_string("/tmp/gids")?;
                if uid.trim() != "65534" || gids.trim() != "65534" {
                    return Err(format!("uid {uid:?}, gids {gids:?}").into());
                }
                Ok(())
            });
    }

    h = h
        .group("busybox")
        .image(busybox_rootfs)
        .service(
            Service::new(
                "loop",
                ["sh", "-c", "echo ready; while true; do sleep 1; done"],
            )
            .ready_log("ready"),
        )
        .test("runs_without_the_hosts_libc", |_| {
            let libc = [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/bin/python3",
            ];
            if let Some(p) = libc.iter().find(|p| Path::new(p).exists()) {
                return Err(format!("{p} exists: this is not the busybox image").into());
            }
            let out = std::process::Command::new("sh")
                .args(["-c", "echo $((6*7))"])
                .output()?;
            if out.stdout != b"42\n" {
                return Err(format!("busybox sh said {:?}", out.stdout).into());
            }
            std::fs::write("/bin/new-file", "x")?;
            Ok(())
        });

    // An image whose config exposes a port: the service is ready once it listens there.
    h = h
        .group("exposed")
        .image(|| {
            let mut config = pristine::oci::ImageConfig::default();
            config.exposed_ports = vec!["53/udp".into(), "8000/tcp".into()];
            busybox_rootfs().map(|i| i.with_config(config))
        })
        .service(
            Service::new("web", ["busybox", "httpd", "-f", "-p", "127.0.0.1:8000"])
                .ready_image_port()
                .start_timeout(Duration::from_secs(30)),
        )
        .test("service_ready_on_the_images_port", |_| {
            let ports = std::env::var(pristine::testing::PORTS_ENV)?;
            if ports != "53/udp,8000/tcp" {
                return Err(format!("{} is {ports:?}", pristine::testing::PORTS_ENV).into());
            }
            TcpStream::connect("127.0.0.1:8000")?;
            Ok(())
        });

    if failing {
        h = h
            .group("fail")
            // `hangs` must time out; the rest of the suite keeps the generous limit a
            // loaded machine needs.
            .group_timeout(Duration::from_secs(2))
            .test("returns_an_error", |_| {
                println!("to stdout: before the error");
                eprintln!("to stderr: before the error");
                Err("deliberate failure".into())
            })
            .test("panics", |_| {
                let v: Vec<u32> = Vec::new();
                assert_eq!(v.len(), 1, "deliberate panic");
                Ok(())
            })
            .test("hangs", |_| {
                println!("about to hang");
                std::thread::sleep(Duration::from_secs(3600));
                Ok(())
            })
            .test_ignored("ignored_and_fails", |_| Err("ignored but fails".into()))
            .group("down")
            .service(
                Service::new(
                    "never",
                    [
                        "sh",
                        "-c",
                        "echo 'cannot bind: address in use' >&2; exec sleep 1000",
                    ],
                )
                .ready_tcp(9)
                .start_timeout(Duration::from_millis(300)),
            )
            .test("service_never_ready", |_| Ok(()))
            .group("kept")
            .image(data_layer_image)
            .test("fails_after_writing", |_| {
                std::fs::write("/data/edit.txt", "after\n")?;
                std::fs::remove_file("/data/gone.txt")?;
                std::fs::create_dir_all("/data/new/dir")?;
                std::fs::write("/data/new/dir/file.txt", "new\n")?;
                Err("deliberate failure after writing".into())
            });
    }
    h.run()
}

/// A scratch directory owned by this user, shared by the processes of one user; reused
/// across runs (it holds images built once).
fn scratch(name: &str) -> PathBuf {
    // Under plain `cargo test`: cargo's scratch directory for integration tests, if this
    // user can write it (not the shared temporary directory, which would keep them).
    let base = std::env::var_os("PRISTINE_FIXTURE_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(common::scratch_base);
    base.join(format!("{name}-{}", nix::unistd::geteuid()))
}

/// Builds `dir` with `fill` once: into a temporary sibling, then renamed into place.
fn build_once(
    dir: PathBuf,
    fill: impl Fn(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, String> {
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    fill(&tmp).map_err(|e| format!("fill {}: {e}", tmp.display()))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(format!("rename to {}: {e}", dir.display())),
    }
}

/// A rootfs with nothing but a static busybox (no libc): `apt-get install busybox-static`.
fn busybox_rootfs() -> Result<Image, String> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err(
            "/bin/busybox not found: install busybox-static (apt-get install busybox-static)"
                .into(),
        );
    }
    let dir = build_once(scratch("pristine-fixture-busybox"), |root| {
        for d in ["bin", "etc", "tmp", "proc", "dev", "var/log"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(busybox, root.join("bin/busybox"))?;
        for applet in ["sh", "sleep", "echo", "cat", "ls", "test", "id", "true"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        Ok(())
    })?;
    Ok(Image::rootfs(dir))
}

/// The host image with a layer of data files at /data.
fn data_layer_image() -> Result<Image, String> {
    let dir = build_once(scratch("pristine-fixture-data-layer"), |root| {
        let d = root.join("data");
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("keep.txt"), "keep\n")?;
        std::fs::write(d.join("edit.txt"), "before\n")?;
        std::fs::write(d.join("gone.txt"), "gone\n")?;
        Ok(())
    })?;
    Ok(Image::host().layer(dir))
}
