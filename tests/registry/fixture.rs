//! A real registry for the pull tests: Debian's `docker-registry` (the reference
//! distribution registry) on a free loopback port, images written as OCI layouts here
//! and pushed with skopeo, and a proxy that breaks transfers off.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common;

/// Fails with the reason if a tool the tests need is missing.
pub fn need(tools: &[&str]) {
    for t in tools {
        assert!(
            common::which(t).is_some(),
            "{t} is needed (apt-get install docker-registry skopeo; .ci/run installs them)"
        );
    }
}

/// A scratch directory `nobody` can enter too.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("registry-")
        .tempdir_in(common::scratch_base())
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A running `docker-registry serve`, killed when dropped.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Registry {
    /// Starts a registry; with `user`, basic auth (htpasswd, bcrypt) is required.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        need(&["docker-registry"]);
        let dir = scratch();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 5).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: pristine-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child: Some(child),
            dir,
            port,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen:\n{}", self.log());
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// How many GETs of blob `digest` of `repo` the registry served.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        self.log().matches(&needle).count()
    }

    /// How many GETs of manifests of `repo` the registry served.
    pub fn manifest_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/manifests/");
        self.log().matches(&needle).count()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Pushes the image named `img` in the OCI layout `layout` to `docker://DEST`, keeping
/// its digests (and compression), with every platform of an index.
pub fn push(layout: &Path, dest: &str, creds: Option<&str>) {
    need(&["skopeo"]);
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--insecure-policy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.arg(format!("--dest-creds={c}"));
    }
    let out = cmd
        .env("REGISTRY_AUTH_FILE", no_auth_file(layout))
        .arg(format!("oci:{}:img", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An auth file that does not exist, beside `near`: skopeo's default one is under
/// `/run/containers/UID`, which `nobody` may not read.
fn no_auth_file(near: &Path) -> PathBuf {
    near.with_file_name("no-auth.json")
}

/// Deletes the manifest `dest` names from the registry (the tag goes with it).
pub fn delete(dest: &str, scratch: &Path) {
    let out = Command::new("skopeo")
        .env("REGISTRY_AUTH_FILE", no_auth_file(scratch))
        .args(["delete", "--tls-verify=false", &format!("docker://{dest}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo delete {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A layer's file.
pub enum Entry {
    Dir,
    File(Vec<u8>, u32),
    Symlink(&'static str),
}

/// A tar of `entries` (paths relative, parents first).
pub fn tar_of(entries: &[(&str, Entry)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            Entry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// How a layer blob is compressed.
#[derive(Clone, Copy)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

/// An OCI image layout directory being written.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    /// Writes a blob; returns its descriptor's digest and size.
    pub fn blob(&self, data: &[u8]) -> (String, usize) {
        let d = sha256(data);
        let p = self.dir.join("blobs/sha256").join(&d[7..]);
        std::fs::write(p, data).unwrap();
        (d, data.len())
    }

    /// An image for `linux/ARCH` of `layers` (uncompressed tars) with `env`; returns the
    /// manifest descriptor (with its platform) and the layer blobs' digests.
    pub fn image(
        &self,
        arch: &str,
        layers: &[(Vec<u8>, Comp)],
        env: &[&str],
    ) -> (serde_json::Value, Vec<String>) {
        let config = serde_json::json!({"Env": env, "Cmd": ["sh"], "WorkingDir": "/"});
        self.image_with(arch, layers, config)
    }

    /// [`Layout::image`] with `config` as the image config's `config` object (`Env`,
    /// `Entrypoint`, `Cmd`, `WorkingDir`, `User`, `ExposedPorts`, …).
    pub fn image_with(
        &self,
        arch: &str,
        layers: &[(Vec<u8>, Comp)],
        config: serde_json::Value,
    ) -> (serde_json::Value, Vec<String>) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut digests = Vec::new();
        for (tar, comp) in layers {
            diff_ids.push(sha256(tar));
            let (blob, mt) = match comp {
                Comp::Plain => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Comp::Gzip => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(tar).unwrap();
                    (
                        e.finish().unwrap(),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Comp::Zstd => (
                    zstd::encode_all(&tar[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let (d, size) = self.blob(&blob);
            digests.push(d.clone());
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": size}));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let (cd, cs) = self.blob(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": descs,
        });
        let (md, ms) = self.blob(&serde_json::to_vec(&manifest).unwrap());
        let desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
        });
        (desc, digests)
    }

    /// Makes `desc` (a manifest or index descriptor) the layout's image `img`.
    pub fn name(&self, desc: &serde_json::Value) {
        let mut desc = desc.clone();
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "img"});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    /// An index of `manifests`; returns its descriptor.
    pub fn index(&self, manifests: &[serde_json::Value]) -> serde_json::Value {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let (d, s) = self.blob(&serde_json::to_vec(&index).unwrap());
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s})
    }
}

/// The busybox image: `bin/busybox` (the host's static one) with `sh` and `cat` links in
/// a gzip layer, `etc/motd` in a zstd layer. Returns the layout and the manifest digest
/// and layer digests.
pub fn busybox(dir: PathBuf) -> (Layout, String, Vec<String>) {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("busybox is needed (apt-get install busybox-static)");
    let base = tar_of(&[
        ("bin", Entry::Dir),
        ("bin/busybox", Entry::File(bb, 0o755)),
        ("bin/sh", Entry::Symlink("busybox")),
        ("bin/cat", Entry::Symlink("busybox")),
        ("etc", Entry::Dir),
    ]);
    let top = tar_of(&[
        ("etc", Entry::Dir),
        ("etc/motd", Entry::File(b"pulled\n".to_vec(), 0o644)),
    ]);
    let layout = Layout::new(dir);
    let (desc, layers) = layout.image(
        host_arch(),
        &[(base, Comp::Gzip), (top, Comp::Zstd)],
        &["PATH=/bin", "GREETING=hello"],
    );
    layout.name(&desc);
    let digest = desc["digest"].as_str().unwrap().to_string();
    (layout, digest, layers)
}

/// What the configured image's entrypoint prints: what the process was given.
pub const SHOW: &str = r#"#!/bin/sh
echo "args=$*"
echo "env=$GREETING path=$PATH"
echo "ids=$(id -u):$(id -g)"
echo "pwd=$(pwd)"
"#;

/// A busybox image whose config says how to run it: `Env` (`PATH=/bin`,
/// `GREETING=hello`), `Entrypoint` `/bin/show` (a script printing its arguments,
/// environment, ids and working directory), `Cmd` `default cmd`, `WorkingDir` `/srv/app`
/// (not in the layers), `User` `app` (1000:1000 in the image's own passwd and group),
/// `ExposedPorts` 8080/tcp. Two layers: busybox with its applets and `/etc` (gzip), the
/// script (zstd).
pub fn configured_busybox(dir: PathBuf) -> Layout {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("busybox is needed (apt-get install busybox-static)");
    let mut base = vec![("bin", Entry::Dir), ("bin/busybox", Entry::File(bb, 0o755))];
    let applets = [
        "bin/sh",
        "bin/id",
        "bin/pwd",
        "bin/cat",
        "bin/env",
        "bin/mkdir",
        "bin/httpd",
        "bin/wget",
    ];
    base.extend(applets.iter().map(|a| (*a, Entry::Symlink("busybox"))));
    base.extend([
        ("etc", Entry::Dir),
        (
            "etc/passwd",
            Entry::File(
                b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".to_vec(),
                0o644,
            ),
        ),
        (
            "etc/group",
            Entry::File(b"root:x:0:\napp:x:1000:\n".to_vec(), 0o644),
        ),
    ]);
    let top = tar_of(&[
        ("bin", Entry::Dir),
        ("bin/show", Entry::File(SHOW.as_bytes().to_vec(), 0o755)),
    ]);
    let layout = Layout::new(dir);
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=hello"],
        "Entrypoint": ["/bin/show"],
        "Cmd": ["default", "cmd"],
        "WorkingDir": "/srv/app",
        "User": "app",
        "ExposedPorts": {"8080/tcp": {}},
    });
    let (desc, _) = layout.image_with(
        host_arch(),
        &[(tar_of(&base), Comp::Gzip), (top, Comp::Zstd)],
        config,
    );
    layout.name(&desc);
    layout
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// How the proxy misbehaves once `limit` bytes of responses went through one connection.
#[derive(Clone, Copy)]
pub enum Break {
    /// Closes the connection (a registry that dies mid-transfer).
    Cut,
    /// Sends nothing more and holds the connection (a hung registry).
    Stall,
    /// Never: passes everything, slowly (5 ms per 16 KiB).
    Slow,
}

/// A TCP proxy on a free loopback port in front of `upstream`, stopped when dropped.
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: u16, limit: usize, mode: Break) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let broken = Arc::new(AtomicUsize::new(0));
        let counted = broken.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let stopped = stopped.clone();
                        let counted = counted.clone();
                        std::thread::spawn(move || {
                            relay(client, upstream, limit, mode, stopped, counted)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, stop, broken }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many transfers reached the limit and were cut or stalled.
    pub fn broken(&self) -> usize {
        self.broken.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(
    client: TcpStream,
    upstream: u16,
    limit: usize,
    mode: Break,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut sent = 0;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match s_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = match mode {
            Break::Slow => {
                std::thread::sleep(Duration::from_millis(5));
                n
            }
            _ => n.min(limit.saturating_sub(sent)),
        };
        if c_out.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if sent >= limit && !matches!(mode, Break::Slow) {
            broken.fetch_add(1, Ordering::SeqCst);
            if let Break::Stall = mode {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            break;
        }
    }
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = s_in.shutdown(Shutdown::Both);
}

/// What the PostgreSQL image is built from (its cache key).
const PG_INPUTS: &str =
    "mmdebstrap --variant=apt --include=postgresql-15 bookworm; 4 gzip layers; v1";

/// The PostgreSQL 15 image, built once from a Debian rootfs (mmdebstrap, as root; it
/// fetches from Debian's mirror) and split by size into four gzip layers (a multi-layer
/// image, like Docker Hub's), kept as an OCI layout under the scratch directory, keyed by
/// its inputs. Returns the layout and its manifest digest.
pub fn postgres_layout() -> (Layout, String) {
    need(&["mmdebstrap"]);
    let key = &sha256(PG_INPUTS.as_bytes())[7..19];
    let dir = common::scratch_base().join(format!("pg-image-{key}"));
    let layout = Layout {
        dir: dir.join("layout"),
    };
    if let Ok(digest) = std::fs::read_to_string(dir.join("digest")) {
        return (layout, digest);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs.tar");
    let out = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=apt",
            "--include=postgresql-15",
            "--mode=root",
        ])
        .args(["bookworm"])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mmdebstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = split_rootfs(&std::fs::read(&rootfs).unwrap(), 4);
    std::fs::remove_file(&rootfs).unwrap();
    let layout = Layout::new(dir.join("layout"));
    let layers: Vec<(Vec<u8>, Comp)> = layers.into_iter().map(|l| (l, Comp::Gzip)).collect();
    let (desc, _) = layout.image(
        host_arch(),
        &layers,
        &["PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    );
    layout.name(&desc);
    let digest = desc["digest"].as_str().unwrap().to_string();
    std::fs::write(dir.join("digest"), &digest).unwrap();
    (layout, digest)
}

/// Splits a rootfs tar into `n` layer tars of about equal size: files by running size,
/// hard links with their targets, what is neither file nor directory in the first;
/// each layer gets the directory entries above its files (so its directories keep their
/// owners and modes); `dev/` is left out (a container gets its own).
pub fn split_rootfs(tar: &[u8], n: usize) -> Vec<Vec<u8>> {
    use std::collections::{HashMap, HashSet};
    let total = tar.len() as u64;
    let mut builders: Vec<tar::Builder<Vec<u8>>> =
        (0..n).map(|_| tar::Builder::new(Vec::new())).collect();
    let mut added: Vec<HashSet<PathBuf>> = vec![HashSet::new(); n];
    let mut dirs: HashMap<PathBuf, (PathBuf, tar::Header)> = HashMap::new();
    let mut placed = HashMap::new();
    let mut running = 0u64;
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let rel = path.strip_prefix(".").unwrap_or(&path).to_path_buf();
        if rel.starts_with("dev") && rel != Path::new("dev") {
            continue;
        }
        let mut header = entry.header().clone();
        let link = entry.link_name().unwrap().map(|l| l.into_owned());
        let layer = match header.entry_type() {
            tar::EntryType::Directory => {
                dirs.insert(rel.clone(), (path.clone(), header.clone()));
                0
            }
            tar::EntryType::Regular => {
                running += entry.size();
                ((running * n as u64) / total.max(1)).min(n as u64 - 1) as usize
            }
            tar::EntryType::Link => {
                let target = link.clone().unwrap();
                let target = target.strip_prefix(".").unwrap_or(&target).to_path_buf();
                *placed.get(&target).unwrap_or(&0)
            }
            _ => 0,
        };
        placed.insert(rel.clone(), layer);
        let mut ancestors: Vec<&Path> = rel.ancestors().skip(1).collect();
        ancestors.reverse();
        for a in ancestors {
            if let Some((dpath, dheader)) = dirs.get(a) {
                if added[layer].insert(a.to_path_buf()) {
                    let mut h = dheader.clone();
                    builders[layer]
                        .append_data(&mut h, dpath, std::io::empty())
                        .unwrap();
                }
            }
        }
        let b = &mut builders[layer];
        match (header.entry_type(), link) {
            (tar::EntryType::Directory, _) => {
                if added[layer].insert(rel) {
                    b.append_data(&mut header, &path, std::io::empty()).unwrap();
                }
            }
            (_, Some(target)) => b.append_link(&mut header, &path, target).unwrap(),
            (_, None) => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                b.append_data(&mut header, &path, &data[..]).unwrap();
            }
        }
    }
    builders
        .into_iter()
        .map(|b| b.into_inner().unwrap())
        .collect()
}

/// Docker Hub's anonymous bearer-token flow in front of a registry, on a free loopback
/// port, stopped when dropped: a `/v2/…` request without `Authorization: Bearer TOKEN` is
/// answered `401` with a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge;
/// `GET /token?service=…&scope=…` (no credentials needed) answers the token, or the
/// refusal status it was started with; a request bearing the token goes on to the registry
/// without its `Authorization` header. One request per connection (`Connection: close`).
pub struct TokenFront {
    pub port: u16,
    /// The token handed out.
    pub token: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

/// What a [`TokenFront`] was asked.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The decoded query pairs of each token request.
    pub token_queries: Vec<Vec<(String, String)>>,
    /// `/v2/…` requests refused for want of the token (`METHOD PATH`).
    pub rejected: Vec<String>,
    /// Requests that bore the token and went on to the registry (`METHOD PATH`).
    pub forwarded: Vec<String>,
}

/// The service a [`TokenFront`] names in its challenge.
pub const TOKEN_SERVICE: &str = "test-registry";

impl TokenFront {
    /// In front of the registry on `upstream`; with `refuse`, the token endpoint answers
    /// that status (401, 403) instead of a token.
    pub fn start(upstream: u16, refuse: Option<u16>) -> TokenFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let token =
            sha256(format!("{nanos} {port} {}", std::process::id()).as_bytes())[7..].to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let front = Front {
            port,
            upstream,
            token: token.clone(),
            refuse,
            seen: seen.clone(),
        };
        let front = Arc::new(front);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let front = front.clone();
                        std::thread::spawn(move || front.serve(client));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenFront {
            port,
            token,
            stop,
            seen,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Front {
    port: u16,
    upstream: u16,
    token: String,
    refuse: Option<u16>,
    seen: Arc<Mutex<Seen>>,
}

impl Front {
    fn serve(&self, client: TcpStream) {
        let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
        let Some((request_line, headers)) = read_head(&client) else {
            return;
        };
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let header = |name: &str| {
            headers
                .iter()
                .find_map(|(k, v)| k.eq_ignore_ascii_case(name).then_some(v.as_str()))
        };
        let mut out = &client;
        let head_only = method == "HEAD";
        if path == "/token" {
            let pairs = query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect();
            self.seen.lock().unwrap().token_queries.push(pairs);
            let _ = match self.refuse {
                Some(status) => respond(
                    &mut out,
                    head_only,
                    &format!("{status} Refused"),
                    &[],
                    r#"{"details":"access to the requested resource is not authorized"}"#,
                ),
                None => respond(
                    &mut out,
                    head_only,
                    "200 OK",
                    &[],
                    &format!(
                        r#"{{"token":"{t}","access_token":"{t}","expires_in":300}}"#,
                        t = self.token
                    ),
                ),
            };
        } else if header("authorization") == Some(&format!("Bearer {}", self.token)) {
            self.seen
                .lock()
                .unwrap()
                .forwarded
                .push(format!("{method} {path}"));
            self.forward(&request_line, &headers, client);
            return;
        } else {
            self.seen
                .lock()
                .unwrap()
                .rejected
                .push(format!("{method} {path}"));
            // The repository the request is about (`/v2/REPO/manifests/…`), as Docker
            // Hub's challenge names it.
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| {
                    ["/manifests/", "/blobs/", "/tags/"]
                        .iter()
                        .find_map(|k| p.split_once(k).map(|(r, _)| r))
                })
                .unwrap_or("");
            let mut challenge = format!(
                "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"{TOKEN_SERVICE}\"",
                self.port
            );
            if !repo.is_empty() {
                challenge.push_str(&format!(",scope=\"repository:{repo}:pull\""));
            }
            let _ = respond(
                &mut out,
                head_only,
                "401 Unauthorized",
                &[("WWW-Authenticate", &challenge)],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#,
            );
        }
        let _ = client.shutdown(Shutdown::Both);
    }

    /// Sends the request on to the registry without its `Authorization` header and with
    /// `Connection: close`, and pipes the response back until the registry closes.
    fn forward(&self, request_line: &str, headers: &[(String, String)], client: TcpStream) {
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
            return;
        };
        let mut head = format!("{request_line}\r\n");
        for (k, v) in headers {
            if !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("connection") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        if server.write_all(head.as_bytes()).is_ok() {
            let mut out = &client;
            let _ = std::io::copy(&mut server, &mut out);
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
}

/// The request line and headers of an HTTP request (no body: GET and HEAD only).
fn read_head(stream: &TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut reader = std::io::BufReader::new(stream).take(64 << 10);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut lines = lines.into_iter();
    let request_line = lines.next()?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some((request_line, headers))
}

/// A response with a JSON `body` (left out, its length kept, for a HEAD request).
fn respond(
    out: &mut impl Write,
    head_only: bool,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if !head_only {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

/// `%XX` and `+` decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
