//! A pulled image's layers: each fetched, verified and extracted into the store once,
//! under its key's lock, in parallel (one rayon task per layer, as many at a time as
//! there are CPUs).
//!
//! A layer's key is that of an imported layer (its parent's key and its `diff_id`), so a
//! pulled and an imported image share their layers, and a layer already stored is neither
//! fetched nor extracted again. The blob is downloaded into the layer's staging directory
//! (guarded by the key's lock, which `gc` respects), checked against its digest as it
//! arrives, extracted with the hostile-archive checks of [`crate::oci::extract_layer`],
//! checked against its `diff_id`, and deleted; only then is the layer renamed into place.
//! Another process pulling the same image waits on the key's lock and then finds the layer.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Mutex;

use nix::fcntl::Flock;
use rayon::prelude::*;

use super::error::PullError;
use super::remote::Remote;
use crate::layers::{BuildError, Catalog, LayerMeta};
use crate::oci::Descriptor;

/// One layer to make present: its key and parent key, its blob and its `diff_id`.
pub(crate) struct Wanted<'a> {
    pub(crate) key: String,
    pub(crate) parent: String,
    pub(crate) blob: &'a Descriptor,
    pub(crate) diff_id: &'a str,
}

/// Makes every layer present; returns a lease on each (bottom first) and how many were
/// downloaded (the others were stored already).
pub(crate) fn fetch_all(
    remote: &Remote,
    catalog: &Catalog,
    wanted: &[Wanted<'_>],
) -> Result<(Vec<Flock<File>>, usize), PullError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.min(wanted.len()).max(1))
        .thread_name(|i| format!("pristine-layer-{i}"))
        .build()
        .map_err(|e| PullError::Io {
            reference: remote.given.clone(),
            action: "start the layer threads for",
            path: catalog.store_root().to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    // Collected into a Result: the first failure stops the layers not started yet.
    let fetched: Vec<(Flock<File>, bool)> = pool.install(|| {
        wanted
            .par_iter()
            .map(|w| fetch_one(remote, catalog, w))
            .collect::<Result<_, _>>()
    })?;
    let downloaded = fetched.iter().filter(|(_, fresh)| *fresh).count();
    Ok((
        fetched.into_iter().map(|(lease, _)| lease).collect(),
        downloaded,
    ))
}

fn fetch_one(
    remote: &Remote,
    catalog: &Catalog,
    w: &Wanted<'_>,
) -> Result<(Flock<File>, bool), PullError> {
    // `publish_once` speaks BuildError; the pull's own error is kept aside.
    let failure = Mutex::new(None);
    let result = catalog.publish_once(&w.key, |staging| {
        fill(remote, staging, w).map_err(|e| {
            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            BuildError::Io {
                op: "pull layer",
                path: staging.to_path_buf(),
                source: std::io::Error::other("see the pull error"),
            }
        })
    });
    match result {
        Ok((stored, lease)) => {
            catalog.touch(&w.key);
            Ok((lease, !stored))
        }
        Err(e) => Err(failure
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(PullError::Store {
                reference: remote.given.clone(),
                source: Box::new(e),
            })),
    }
}

/// Downloads, verifies and extracts one layer into `staging/root`.
fn fill(remote: &Remote, staging: &Path, w: &Wanted<'_>) -> Result<LayerMeta, PullError> {
    let digest = &w.blob.digest;
    crate::oci::parse_sha256(digest).map_err(|p| remote.bad("a layer descriptor", p))?;
    let Ok(want) = u64::try_from(w.blob.size) else {
        return Err(remote.bad(&format!("layer {digest}"), "a negative size".into()));
    };
    let blob = staging.join("blob");
    remote.blob_to_file(digest, want, &blob)?;
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        let reference = remote.given.clone();
        move |source| PullError::Io {
            reference,
            action,
            path,
            source,
        }
    };
    let size = std::fs::metadata(&blob)
        .map_err(io("inspect the downloaded layer", &blob))?
        .len();
    if size != want {
        return Err(remote.bad(
            &format!("layer {digest}"),
            format!("{size} bytes where its descriptor says {}", w.blob.size),
        ));
    }
    let root = staging.join("root");
    std::fs::remove_dir(&root).map_err(io("prepare", &root))?;
    let diff_id = extract(remote, &blob, &root, digest)?;
    if diff_id != w.diff_id {
        return Err(remote.bad(
            &format!("layer {digest}"),
            format!(
                "its content has digest {diff_id} but the config's diff_id is {}",
                w.diff_id
            ),
        ));
    }
    std::fs::remove_file(&blob).map_err(io("remove the downloaded layer", &blob))?;
    Ok(LayerMeta {
        key: w.key.clone(),
        parent: w.parent.clone(),
        name: format!(
            "pull {}",
            w.diff_id
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or(w.diff_id)
        ),
        created: crate::layers::now_secs(),
        size: crate::layers::tree_size(&root),
    })
}

/// Extracts the (plain, gzip or zstd, told by its magic bytes) layer blob into `root`,
/// returning the digest of the uncompressed tar.
fn extract(remote: &Remote, blob: &Path, root: &Path, digest: &str) -> Result<String, PullError> {
    let file = File::open(blob).map_err(|source| PullError::Io {
        reference: remote.given.clone(),
        action: "read the downloaded layer",
        path: blob.to_path_buf(),
        source,
    })?;
    let stats = crate::oci::extract_layer(BufReader::with_capacity(1 << 20, file), root).map_err(
        |source| PullError::Layer {
            reference: remote.given.clone(),
            digest: digest.to_string(),
            source: Box::new(source),
        },
    )?;
    Ok(stats.diff_id)
}
