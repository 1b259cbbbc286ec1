//! Integration tests of `pristine::oci`: the malicious layer corpus in
//! tests/data/malicious (regenerate with tests/data/make_corpus.py), an
//! export → import round trip, archive formats, digest checks, and (when
//! podman is installed) interoperability with `podman load` / `podman save`.

mod common;
use common::layer_format as whiteout;

use pristine::oci::{export_archive, extract_layer, import_archive, ImageConfig, OciError};
use std::collections::BTreeMap;
use std::error::Error as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The error and all of its sources, one message per line.
fn chain(e: &OciError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str("\n  caused by: ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn corpus(name: &str) -> PathBuf {
    common::manifest_dir()
        .join("tests/data/malicious")
        .join(name)
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- corpus

/// (file, entry named in the error, words the error must contain)
const MALICIOUS: &[(&str, &str, &str)] = &[
    ("dotdot.tar", "../escape.txt", "`..`"),
    ("nested-dotdot.tar", "a/../../escape.txt", "`..`"),
    ("absolute.tar", "/tmp/pristine-abs-escape.txt", "absolute"),
    ("symlink-write-through.tar", "link/escape.txt", "symlink"),
    ("symlink-dir-chain.tar", "a/b/escape.txt", "symlink"),
    (
        "symlink-absolute-write-through.tar",
        "etc/pristine-pwned",
        "symlink",
    ),
    ("hardlink-absolute.tar", "passwd", "hardlink"),
    ("hardlink-dotdot.tar", "h", "hardlink"),
    ("hardlink-forward.tar", "h", "not a file extracted earlier"),
    ("hardlink-through-symlink.tar", "h", "hardlink"),
    ("whiteout-dotdot.tar", ".wh..", "whiteout"),
];

fn assert_rejected(file: &str, entry: &str, words: &str) {
    let work = tempfile::tempdir().unwrap();
    let parent = work.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("layer");
    let f = fs::File::open(corpus(file)).unwrap();
    let err = extract_layer(f, &dest).expect_err(file);
    let msg = chain(&err);
    assert!(
        matches!(err, OciError::UnsafeEntry { .. }),
        "{file}: wrong kind: {msg}"
    );
    assert!(
        msg.contains(&format!("`{entry}`")),
        "{file}: error must name `{entry}`: {msg}"
    );
    assert!(
        msg.contains(words),
        "{file}: error must say `{words}`: {msg}"
    );
    assert!(!dest.exists(), "{file}: destination left behind");
    assert!(
        dir_names(&parent).is_empty(),
        "{file}: leftovers {:?}",
        dir_names(&parent)
    );
    // Nothing escaped next to the destination's parent either.
    assert_eq!(
        dir_names(work.path()),
        ["parent"],
        "{file}: something escaped"
    );
    assert!(!Path::new("/tmp/pristine-abs-escape.txt").exists());
    assert!(!Path::new("/etc/pristine-pwned").exists());
}

#[test]
fn malicious_corpus_is_rejected_and_leaves_nothing() {
    for (file, entry, words) in MALICIOUS {
        assert_rejected(file, entry, words);
    }
}

#[test]
fn corpus_is_complete() {
    // Every tar in the corpus is covered by a test case.
    let mut listed: Vec<&str> = MALICIOUS.iter().map(|m| m.0).collect();
    listed.push("device-node.tar");
    listed.sort();
    let on_disk: Vec<String> = dir_names(&corpus(""))
        .into_iter()
        .filter(|n| n.ends_with(".tar"))
        .collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn device_nodes_need_root() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("layer");
    let res = extract_layer(fs::File::open(corpus("device-node.tar")).unwrap(), &dest);
    if is_root() {
        let stats = res.unwrap();
        assert_eq!(stats.special_files, 1);
        let meta = fs::symlink_metadata(dest.join("dev/mem")).unwrap();
        assert_eq!(meta.rdev(), libc::makedev(1, 1));
    } else {
        let err = res.unwrap_err();
        let msg = chain(&err);
        assert!(
            msg.contains("`dev/mem`") && msg.contains("device node"),
            "{msg}"
        );
        assert!(
            dir_names(work.path()).is_empty(),
            "leftovers {:?}",
            dir_names(work.path())
        );
    }
}

#[test]
fn truncated_and_garbage_streams_fail_cleanly() {
    let data = fs::read(corpus("hardlink-forward.tar")).unwrap();
    for (name, bytes) in [
        ("truncated", data[..700].to_vec()),
        ("garbage", vec![0x55u8; 4096]),
        ("truncated gzip", vec![0x1f, 0x8b, 8, 0, 0, 0]),
    ] {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("layer");
        let err = extract_layer(&bytes[..], &dest).expect_err(name);
        assert!(
            matches!(err, OciError::ReadLayer { .. }),
            "{name}: {}",
            chain(&err)
        );
        assert!(dir_names(work.path()).is_empty(), "{name}: leftovers");
    }
}

// ---------------------------------------------------------------- layers

/// A node of a layer tree, as compared by the round trip.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<i64>,
    content: Vec<u8>,
    opaque: bool,
}

/// Everything observable about a layer directory, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let owner = is_root().then_some((m.uid(), m.gid()));
            let (kind, content, mtime) = if whiteout::is_whiteout(&m) {
                ("whiteout", Vec::new(), None)
            } else if ft.is_dir() {
                ("dir", Vec::new(), Some(m.mtime()))
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                (
                    "symlink",
                    t.to_string_lossy().as_bytes().to_vec(),
                    Some(m.mtime()),
                )
            } else {
                ("file", fs::read(&p).unwrap(), Some(m.mtime()))
            };
            let mode = if ft.is_symlink() || kind == "whiteout" {
                0
            } else {
                m.mode() & 0o7777
            };
            let opaque = ft.is_dir() && whiteout::is_opaque(&p);
            out.insert(
                rel,
                Node {
                    kind,
                    mode,
                    owner,
                    mtime,
                    content,
                    opaque,
                },
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn set_mtime(p: &Path, secs: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid C string and `times` an array of two timespecs,
    // both alive for the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

fn write_file(p: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the 2-layer test image: a base, and a top layer that deletes,
/// replaces and hides files of the base. Returns the two layer dirs.
fn build_layers(work: &Path) -> Vec<PathBuf> {
    let base = work.join("base");
    write_file(&base.join("etc/config"), b"version=1\n", 0o644);
    write_file(&base.join("etc/secret"), b"s3cret\n", 0o600);
    write_file(&base.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write_file(&base.join("data/old/a.txt"), b"a\n", 0o644);
    write_file(&base.join("data/old/b.txt"), b"b\n", 0o640);
    write_file(&base.join("suid"), b"x", 0o4755);
    write_file(&base.join("hard1"), b"shared inode\n", 0o644);
    fs::hard_link(base.join("hard1"), base.join("hard2")).unwrap();
    symlink("etc/config", base.join("config-link")).unwrap();
    symlink("/absolute/target/ok", base.join("abs-link")).unwrap();
    fs::create_dir_all(base.join("locked")).unwrap();
    write_file(&base.join("locked/inner"), b"inner\n", 0o444);
    fs::set_permissions(base.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    if is_root() {
        write_file(&base.join("owned"), b"owned\n", 0o640);
        std::os::unix::fs::lchown(base.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(base.join("config-link"), Some(42), Some(43)).unwrap();
    }

    let top = work.join("top");
    // Replaced file.
    write_file(&top.join("etc/config"), b"version=2\n", 0o644);
    // Deleted files.
    fs::create_dir_all(top.join("bin")).unwrap();
    whiteout::make_whiteout(&top.join("bin/tool"));
    whiteout::make_whiteout(&top.join("etc/secret"));
    // Replaced directory: opaque, with new content only.
    write_file(&top.join("data/old/c.txt"), b"c\n", 0o644);
    whiteout::make_opaque(&top.join("data/old"));
    // Replaced symlink.
    symlink("etc/other", top.join("config-link")).unwrap();

    for layer in [&base, &top] {
        for (path, _) in snapshot(layer) {
            set_mtime(&layer.join(path), 1_650_000_000);
        }
        set_mtime(layer, 1_650_000_000);
    }
    vec![base, top]
}

fn test_config() -> ImageConfig {
    let mut c = ImageConfig::default();
    c.env = vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi there".into()];
    c.cmd = vec!["--serve".into()];
    c.entrypoint = vec!["/bin/tool".into()];
    c.working_dir = Some("/data".into());
    c.user = Some("1000:1000".into());
    c.exposed_ports = vec!["8080/tcp".into()];
    c
}

#[test]
fn export_import_round_trip_preserves_layers() {
    let work = tempfile::tempdir().unwrap();
    let layers = build_layers(work.path());
    let out = work.path().join("image.tar");
    export_archive(
        &layers,
        &test_config(),
        &out,
        Some("localhost/pristine-test:1"),
    )
    .unwrap();

    let dest = work.path().join("imported");
    let img = import_archive(&out, &dest).unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.config, test_config());
    assert_eq!(img.references, ["localhost/pristine-test:1"]);
    assert_eq!(
        img.diff_ids, img.layer_digests,
        "layers are exported uncompressed"
    );
    for (i, (orig, got)) in layers.iter().zip(&img.layers).enumerate() {
        assert!(got.starts_with(&dest));
        let name = got.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            format!("{i}-{}", &img.diff_ids[i]["sha256:".len()..][..12])
        );
        let (a, b) = (snapshot(orig), snapshot(got));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "layer {i} paths"
        );
        for (path, node) in &a {
            assert_eq!(Some(node), b.get(path), "layer {i}: {path}");
        }
    }
    // Hardlinks stay hardlinks.
    let base = &img.layers[0];
    assert_eq!(
        fs::metadata(base.join("hard1")).unwrap().ino(),
        fs::metadata(base.join("hard2")).unwrap().ino()
    );
    // The top layer's deletions are whiteouts, its replaced dir is opaque.
    let top = &img.layers[1];
    assert!(whiteout::is_whiteout_path(&top.join("bin/tool")));
    assert!(whiteout::is_whiteout_path(&top.join("etc/secret")));
    assert!(whiteout::is_opaque(&top.join("data/old")));
    assert!(!whiteout::is_opaque(&top.join("data")));
    if is_root() {
        let m = fs::symlink_metadata(base.join("owned")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    // Restore permissions so the temp dir can be removed by any user.
    fs::set_permissions(base.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(layers[0].join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Lists (path, type) of every entry of layer `index` of an exported archive.
fn layer_entries(archive: &Path, index: usize) -> Vec<(String, tar::EntryType)> {
    let members = read_members(archive);
    let idx: serde_json::Value = serde_json::from_slice(&members["index.json"]).unwrap();
    let mdigest = idx["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&members[&blob_name(mdigest)]).unwrap();
    let ldigest = manifest["layers"][index]["digest"].as_str().unwrap();
    let mut a = tar::Archive::new(&members[&blob_name(ldigest)][..]);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().entry_type(),
            )
        })
        .collect()
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn read_members(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn write_members(archive: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(archive).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn export_writes_tar_whiteout_markers_and_is_deterministic() {
    let work = tempfile::tempdir().unwrap();
    let layers = build_layers(work.path());
    let a = work.path().join("a.tar");
    let b = work.path().join("b.tar");
    export_archive(&layers, &test_config(), &a, Some("x:1")).unwrap();
    export_archive(&layers, &test_config(), &b, Some("x:1")).unwrap();
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "export is not deterministic"
    );

    let top: Vec<String> = layer_entries(&a, 1).into_iter().map(|e| e.0).collect();
    for want in [
        "bin/.wh.tool",
        "etc/.wh.secret",
        "data/old/.wh..wh..opq",
        "data/old/c.txt",
    ] {
        assert!(top.iter().any(|n| n == want), "{want} missing from {top:?}");
    }
    let mut sorted = top.clone();
    sorted.sort_by_key(|n| n.replace(".wh..wh..opq", "").replace(".wh.", ""));
    assert_eq!(top, sorted, "entries are not sorted");
    let base = layer_entries(&a, 0);
    assert!(
        base.iter()
            .any(|(n, t)| n == "hard2" && *t == tar::EntryType::Link),
        "{base:?}"
    );
    // No overlay-private xattrs leak into the image.
    let raw = fs::read(&a).unwrap();
    assert!(
        !raw.windows(8).any(|w| w == b"overlay."),
        "overlay xattr leaked"
    );
    // A different config changes the digest.
    let mut other = test_config();
    other.cmd.push("--more".into());
    export_archive(&layers, &other, &b, Some("x:1")).unwrap();
    assert_ne!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    for l in &layers {
        let _ = fs::set_permissions(l.join("locked"), fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn tampered_blob_is_detected_and_import_cleans_up() {
    let work = tempfile::tempdir().unwrap();
    let layers = build_layers(work.path());
    let good = work.path().join("good.tar");
    export_archive(&layers, &test_config(), &good, None).unwrap();
    let mut members: Vec<(String, Vec<u8>)> = read_members(&good).into_iter().collect();
    let mut flipped = false;
    for (_, data) in members.iter_mut() {
        if let Some(pos) = data.windows(10).position(|w| w == b"version=1\n") {
            data[pos + 8] = b'9';
            flipped = true;
        }
    }
    assert!(flipped);
    let bad = work.path().join("bad.tar");
    write_members(&bad, &members);
    let dest = work.path().join("imported");
    let err = import_archive(&bad, &dest).unwrap_err();
    assert!(
        matches!(err, OciError::DigestMismatch { .. }),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("layer 0"), "{}", chain(&err));
    assert!(!dest.exists(), "import left {dest:?} behind");

    // Into an existing dest_dir: only what import created is removed.
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("mine"), b"").unwrap();
    import_archive(&bad, &dest).unwrap_err();
    assert_eq!(dir_names(&dest), ["mine"]);
    for l in &layers {
        let _ = fs::set_permissions(l.join("locked"), fs::Permissions::from_mode(0o755));
    }
}

// ------------------------------------------------- hand-built archives

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn desc(mt: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": mt, "digest": sha(data), "size": data.len()})
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI layout whose index.json points to a nested index with two
/// platforms; only the host's one has the expected content. Layer 0 is
/// gzip-compressed, layer 1 plain.
fn nested_oci_archive(path: &Path, layer1_media_type: &str) {
    nested_oci_archive_with(path, layer1_media_type, false)
}

/// With `swap_gzip`, the stored layer 0 blob is a different gzip stream of
/// the same size and the same tar: only the blob digest does not match.
fn nested_oci_archive_with(path: &Path, layer1_media_type: &str, swap_gzip: bool) {
    let l0 = layer_tar(&[("hello.txt", b"hello\n")]);
    let l0gz = gzip(&l0);
    let l1 = layer_tar(&[(".wh.hello.txt", b""), ("bye.txt", b"bye\n")]);
    // Layer 1's blob as its media type says (an xz one is its magic bytes and junk).
    let l1_blob = match layer1_media_type {
        t if t.ends_with("+zstd") => zstd::encode_all(l1.as_slice(), 3).unwrap(),
        t if t.ends_with("+xz") => [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], &l1].concat(),
        _ => l1.clone(),
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": goarch(), "os": "linux",
        "config": {"Env": ["A=1"], "Cmd": ["run"], "WorkingDir": "/w"},
        "rootfs": {"type": "layers", "diff_ids": [sha(&l0), sha(&l1)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &l0gz),
                   desc(layer1_media_type, &l1_blob)]
    }))
    .unwrap();
    let other_config =
        br#"{"architecture":"s390x","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let other_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", other_config), "layers": []
    }))
    .unwrap();
    let mut mdesc = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    mdesc["platform"] = serde_json::json!({"architecture": goarch(), "os": "linux"});
    let mut odesc = desc(
        "application/vnd.oci.image.manifest.v1+json",
        &other_manifest,
    );
    odesc["platform"] = serde_json::json!({"architecture": "s390x", "os": "linux"});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [odesc, mdesc]
    }))
    .unwrap();
    let mut ndesc = desc("application/vnd.oci.image.index.v1+json", &nested);
    ndesc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "nested:1"});
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [ndesc]})).unwrap();
    let mut members = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("./index.json".to_string(), index),
    ];
    let l0_name = blob_name(&sha(&l0gz));
    for blob in [
        l0gz,
        l1_blob,
        config,
        manifest,
        other_config.to_vec(),
        other_manifest,
        nested,
    ] {
        members.push((blob_name(&sha(&blob)), blob));
    }
    if swap_gzip {
        for (name, data) in members.iter_mut() {
            if *name == l0_name {
                // Bytes 4..8 of a gzip header are its MTIME, ignored when
                // decompressing: same size, same tar, different digest.
                data[4] ^= 0x5a;
            }
        }
    }
    write_members(path, &members);
}

#[test]
fn nested_index_selects_host_platform_and_mixed_compression() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("nested.tar");
    nested_oci_archive(&archive, "application/vnd.oci.image.layer.v1.tar");
    let img = import_archive(&archive, &work.path().join("out")).unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.references, ["nested:1"]);
    assert_eq!(img.config.env, ["A=1"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(
        fs::read(img.layers[0].join("hello.txt")).unwrap(),
        b"hello\n"
    );
    assert!(whiteout::is_whiteout_path(&img.layers[1].join("hello.txt")));
    assert_ne!(img.layer_digests[0], img.diff_ids[0], "layer 0 is gzip");
}

#[test]
fn compressed_blob_digest_is_verified() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("swapped.tar");
    nested_oci_archive_with(&archive, "application/vnd.oci.image.layer.v1.tar", true);
    let dest = work.path().join("out");
    let err = import_archive(&archive, &dest).unwrap_err();
    let msg = chain(&err);
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains("layer 0 blob"), "{msg}");
    assert!(!dest.exists());
}

#[test]
fn zstd_layers_are_imported() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("zstd.tar");
    nested_oci_archive(&archive, "application/vnd.oci.image.layer.v1.tar+zstd");
    let img = import_archive(&archive, &work.path().join("out")).unwrap();
    assert_eq!(fs::read(img.layers[1].join("bye.txt")).unwrap(), b"bye\n");
    assert!(whiteout::is_whiteout_path(&img.layers[1].join("hello.txt")));
    assert_ne!(img.layer_digests[1], img.diff_ids[1], "layer 1 is zstd");
}

#[test]
fn xz_layers_are_reported_unsupported_and_cleaned_up() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("xz.tar");
    nested_oci_archive(&archive, "application/vnd.oci.image.layer.v1.tar+xz");
    let dest = work.path().join("out");
    let err = import_archive(&archive, &dest).unwrap_err();
    let msg = chain(&err);
    match &err {
        OciError::Layer {
            index: 1, source, ..
        } => {
            assert!(matches!(**source, OciError::Unsupported { .. }), "{msg}");
        }
        _ => panic!("{msg}"),
    }
    assert!(msg.contains("unsupported xz-compressed layer"), "{msg}");
    assert!(!dest.exists(), "layer 0 was extracted and must be removed");
}

/// A legacy `docker save` archive: `<id>/layer.tar`, `<hex>.json` config,
/// and a second layer that is a symlink to the first's tar (docker's dedup).
#[test]
fn legacy_docker_save_archive_imports() {
    let work = tempfile::tempdir().unwrap();
    let l0 = layer_tar(&[("etc/motd", b"legacy\n")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "User": "app"},
        "rootfs": {"type": "layers", "diff_ids": [sha(&l0), sha(&l0)]}
    }))
    .unwrap();
    let config_name = format!("{}.json", &sha(&config)["sha256:".len()..]);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["legacy:latest"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]
    }]))
    .unwrap();
    let archive = work.path().join("docker.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    for (name, data) in [
        ("manifest.json", &manifest),
        (config_name.as_str(), &config),
        ("aaa/layer.tar", &l0),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    b.finish().unwrap();
    drop(b);

    let img = import_archive(&archive, &work.path().join("out")).unwrap();
    assert_eq!(img.references, ["legacy:latest"]);
    assert_eq!(img.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(img.config.user.as_deref(), Some("app"));
    assert_eq!(img.config_digest, sha(&config));
    assert_eq!(img.layers.len(), 2);
    for l in &img.layers {
        assert_eq!(fs::read(l.join("etc/motd")).unwrap(), b"legacy\n");
    }

    // A config whose content does not match its digest name is refused.
    let bad = work.path().join("bad.tar");
    let mut members: Vec<(String, Vec<u8>)> = read_members(&archive).into_iter().collect();
    for (name, data) in members.iter_mut() {
        if *name == config_name {
            data.push(b' ');
        }
    }
    members.retain(|(n, _)| n != "bbb/layer.tar");
    write_members(&bad, &members);
    let err = import_archive(&bad, &work.path().join("out2")).unwrap_err();
    assert!(
        matches!(err, OciError::DigestMismatch { .. }),
        "{}",
        chain(&err)
    );
    assert!(!work.path().join("out2").exists());
}

#[test]
fn archive_errors_name_the_problem() {
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty.tar");
    write_members(&empty, &[("README".into(), b"hi".to_vec())]);
    let err = import_archive(&empty, &work.path().join("o")).unwrap_err();
    assert!(
        chain(&err).contains("index.json") && chain(&err).contains("manifest.json"),
        "{}",
        chain(&err)
    );
    assert!(!work.path().join("o").exists());

    let traversal = work.path().join("traversal.tar");
    let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1}]}"#;
    write_members(&traversal, &[("index.json".into(), index.to_vec())]);
    let err = import_archive(&traversal, &work.path().join("o")).unwrap_err();
    assert!(
        chain(&err).contains("not a valid sha256 digest"),
        "{}",
        chain(&err)
    );

    let missing = work.path().join("missing.tar");
    let err = import_archive(&missing, &work.path().join("o")).unwrap_err();
    assert!(chain(&err).contains("missing.tar"), "{}", chain(&err));
}

// ---------------------------------------------------------------- podman

struct Podman {
    _dir: tempfile::TempDir,
    args: Vec<String>,
}

/// A podman with private storage in a temp dir, or None (with the reason
/// printed) if podman is not installed or not usable as this user.
fn podman() -> Option<Podman> {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("skipping: podman is not installed (apt-get install -y podman)");
        return None;
    }
    if !is_root() {
        eprintln!("skipping: podman tests run as root only (private --root storage)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        format!("--root={}", dir.path().join("root").display()),
        format!("--runroot={}", dir.path().join("runroot").display()),
        "--storage-driver=vfs".to_string(),
        "--cgroup-manager=cgroupfs".to_string(),
        "--events-backend=file".to_string(),
    ];
    Some(Podman { _dir: dir, args })
}

impl Podman {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("podman")
            .args(&self.args)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn podman_loads_our_export_and_sees_the_merged_tree() {
    let Some(pm) = podman() else { return };
    let work = tempfile::tempdir().unwrap();
    let layers = build_layers(work.path());
    let out = work.path().join("image.tar");
    export_archive(
        &layers,
        &test_config(),
        &out,
        Some("localhost/pristine-export:1"),
    )
    .unwrap();
    let loaded = pm.run(&["load", "-i", out.to_str().unwrap()]);
    assert!(loaded.contains("pristine-export"), "{loaded}");
    let inspect = pm.run(&["image", "inspect", "localhost/pristine-export:1"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["Config"]["WorkingDir"], "/data");
    assert_eq!(v[0]["Config"]["Entrypoint"][0], "/bin/tool");

    // Export the merged filesystem of a container and check the top layer's
    // deletions and replacements took effect.
    let id = pm
        .run(&["create", "localhost/pristine-export:1"])
        .trim()
        .to_string();
    let merged = work.path().join("merged.tar");
    pm.run(&["export", "-o", merged.to_str().unwrap(), &id]);
    let members = read_members(&merged);
    assert_eq!(members["etc/config"], b"version=2\n");
    assert!(!members.contains_key("bin/tool"), "whiteout ignored");
    assert!(!members.contains_key("etc/secret"), "whiteout ignored");
    assert!(members.contains_key("data/old/c.txt"));
    assert!(
        !members.contains_key("data/old/a.txt"),
        "opaque dir ignored"
    );
    assert_eq!(members["hard1"], b"shared inode\n");
    for l in &layers {
        let _ = fs::set_permissions(l.join("locked"), fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn podman_saved_images_import() {
    let Some(pm) = podman() else { return };
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    write_file(&rootfs.join("etc/hello"), b"from podman\n", 0o640);
    symlink("hello", rootfs.join("etc/link")).unwrap();
    let input = work.path().join("in.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            input.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    pm.run(&[
        "import",
        "--change",
        "CMD [\"/bin/hello\"]",
        "--change",
        "ENV GREETING=hi",
        input.to_str().unwrap(),
        "localhost/pristine-import:1",
    ]);
    for format in ["oci-archive", "docker-archive"] {
        let saved = work.path().join(format!("{format}.tar"));
        pm.run(&[
            "save",
            "--format",
            format,
            "-o",
            saved.to_str().unwrap(),
            "localhost/pristine-import:1",
        ]);
        let dest = work.path().join(format!("out-{format}"));
        let img =
            import_archive(&saved, &dest).unwrap_or_else(|e| panic!("{format}: {}", chain(&e)));
        assert_eq!(img.layers.len(), 1, "{format}");
        assert_eq!(img.config.cmd, ["/bin/hello"], "{format}");
        assert!(
            img.config.env.iter().any(|e| e == "GREETING=hi"),
            "{format}: {:?}",
            img.config.env
        );
        let layer = &img.layers[0];
        assert_eq!(
            fs::read(layer.join("etc/hello")).unwrap(),
            b"from podman\n",
            "{format}"
        );
        assert_eq!(
            fs::symlink_metadata(layer.join("etc/hello"))
                .unwrap()
                .mode()
                & 0o777,
            0o640
        );
        assert_eq!(
            fs::read_link(layer.join("etc/link")).unwrap(),
            Path::new("hello")
        );
    }
}
