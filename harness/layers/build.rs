//! Building recipes into cached layers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::catalog::{now, tree_size, BaseRecord, Catalog, ImageRecord, LayerMeta};
use super::error::{io, BuildError};
use super::hostkey::{host_base_key, HostKeyInput};
use super::key::{layer_key, rootfs_base_key};
use super::progress::{with_ambient, BuildEvent, LayerPos, Progress, StepPos};
use super::recipe::{BaseSpec, LayerSpec, Recipe, Step};
use crate::image::Image;
use crate::store::{remove_tree, Store};
use crate::{Container, Upper};

/// Default time limit of one run step.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// One layer of a build.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// Layer name.
    pub name: String,
    /// Content-addressed key.
    pub key: String,
    /// Whether it was found in the store (no container started).
    pub cached: bool,
    /// Time spent on this layer (lookup, or build and commit).
    pub duration: Duration,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image: the base and every layer, ready for [`Container::new`].
    pub image: Image,
    /// Each layer, bottom first.
    pub layers: Vec<BuiltLayer>,
}

impl Recipe {
    /// Builds whatever is not cached yet and returns the image.
    pub fn build(&self, store: &Store) -> Result<Image, BuildError> {
        self.build_report(store).map(|b| b.image)
    }

    /// Like [`Recipe::build`], also saying which layers were cached.
    ///
    /// Safe to call from many processes at once (nextest runs one process per test): each
    /// layer is built under an exclusive lock on its key, and whoever comes second finds the
    /// layer published and reuses it. A failed or interrupted build publishes nothing.
    /// Progress goes to the reporter installed on this thread by
    /// [`with_progress`](super::with_progress), if any.
    pub fn build_report(&self, store: &Store) -> Result<Built, BuildError> {
        with_ambient(|progress| self.build_with_progress(store, progress))
    }

    /// Like [`Recipe::build_report`], telling `progress` about each layer and step as the
    /// build goes (e.g. [`StderrProgress`](super::StderrProgress)).
    pub fn build_with_progress(
        &self,
        store: &Store,
        progress: &mut dyn Progress,
    ) -> Result<Built, BuildError> {
        self.validate(Path::new("<recipe>"))?;
        self.copies_no_store(store)?;
        let catalog = Catalog::new(store)?;
        let (mut image, mut parent, base_record, mut keys) = self.base(store, &catalog)?;
        let mut built = Vec::new();
        let mut leases = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let started = Instant::now();
            let key = layer_key(store.root(), &parent, self, layer)?;
            let pos = LayerPos {
                name: &layer.name,
                key: &key,
                index: i + 1,
                total: self.layers.len(),
            };
            let (cached, lease) = catalog.publish_once(&key, |staging| {
                progress.event(&BuildEvent::Building(pos, layer.steps.len()));
                let ctx = LayerCtx {
                    store,
                    below: &image,
                    layer,
                    key: &key,
                    parent: &parent,
                    pos,
                };
                self.build_layer(&ctx, staging, &mut *progress)
            })?;
            // Held until the image is recorded: `gc` must not take a layer from under the
            // build (an unnamed image's layers are leased by its containers later).
            leases.push(lease);
            progress.event(&match cached {
                true => BuildEvent::Cached(pos),
                false => BuildEvent::Built(pos, started.elapsed()),
            });
            catalog.touch(&key);
            image = image.layer(catalog.layer_root(&key));
            built.push(BuiltLayer {
                name: layer.name.clone(),
                key: key.clone(),
                cached,
                duration: started.elapsed(),
            });
            keys.push(key.clone());
            parent = key;
        }
        if let Some(name) = &self.name {
            let current = catalog.image_record(name)?;
            // An image built on an imported one runs as it does (its entrypoint, user, ...).
            let config = image.config().cloned().unwrap_or_default();
            let same = current
                .as_ref()
                .is_some_and(|r| (&r.base, &r.layers, &r.config) == (&base_record, &keys, &config));
            if !same {
                catalog.record_image(&ImageRecord {
                    name: name.clone(),
                    base: base_record,
                    layers: keys,
                    created: now(),
                    config,
                    source: None,
                })?;
                // The image's former layers go now rather than piling up until `gc`. This is
                // a cache's cleanup: if it fails, `gc` will find them, and the build stands.
                if let Some(old) = current {
                    let _ = catalog.drop_replaced(&old.layers);
                }
            }
        }
        Ok(Built {
            image,
            layers: built,
        })
    }

    /// Refuses, before anything is hashed or built, a copy whose source contains the store.
    fn copies_no_store(&self, store: &Store) -> Result<(), BuildError> {
        for layer in &self.layers {
            for step in &layer.steps {
                if let Step::Copy { from, to } = step {
                    let src = self.source_path(from);
                    contains_no_store(&src, store.root()).map_err(|reason| {
                        BuildError::BadCopy {
                            layer: layer.name.clone(),
                            from: src.clone(),
                            to: to.clone(),
                            reason,
                        }
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The image the first layer goes over, its key (the first layer's parent), its record,
    /// and the keys of the layers it already has (a named image's).
    fn base(
        &self,
        store: &Store,
        catalog: &Catalog,
    ) -> Result<(Image, String, BaseRecord, Vec<String>), BuildError> {
        Ok(match &self.base {
            BaseSpec::Host => {
                let users = self.step_users();
                let key = host_base_key(
                    store.root(),
                    HostKeyInput {
                        inputs: &self.host_inputs,
                        users: &users,
                    },
                )?;
                (Image::host(), key, BaseRecord::Host, Vec::new())
            }
            BaseSpec::Rootfs(d) => {
                let src = self.source_path(d);
                let dir = std::fs::canonicalize(&src).map_err(io("find rootfs", &src))?;
                let key = rootfs_base_key(&dir);
                (
                    Image::rootfs(&dir),
                    key,
                    BaseRecord::Rootfs(dir),
                    Vec::new(),
                )
            }
            BaseSpec::Image(name) => {
                // A named image, or a registry reference (pulled if not held).
                let record = crate::pull::resolve_or_pull(store, name)?;
                let image = catalog.image_of(&record)?;
                let parent = match record.layers.last() {
                    Some(top) => top.clone(),
                    None => match &record.base {
                        BaseRecord::Host => host_base_key(
                            store.root(),
                            HostKeyInput {
                                inputs: &[],
                                users: &[],
                            },
                        )?,
                        BaseRecord::Rootfs(d) => rootfs_base_key(d),
                        BaseRecord::Scratch => "scratch".into(),
                    },
                };
                (image, parent, record.base.clone(), record.layers.clone())
            }
        })
    }

    /// Runs the layer's steps over `ctx.below` with `staging/root` as the upper directory.
    fn build_layer(
        &self,
        ctx: &LayerCtx<'_>,
        staging: &Path,
        progress: &mut dyn Progress,
    ) -> Result<LayerMeta, BuildError> {
        let upper = staging.join("root");
        for (index, step) in ctx.layer.steps.iter().enumerate() {
            let pos = StepPos {
                layer: ctx.pos,
                index: index + 1,
                total: ctx.layer.steps.len(),
            };
            progress.event(&BuildEvent::StepStarted(pos, &describe(step)));
            let started = Instant::now();
            let result = self.run_step(ctx, &upper, index, step);
            let result = result.and_then(|()| check_size(ctx.layer, &upper, index));
            if let Err(e) = &result {
                report_failure(progress, pos, e);
            }
            result?;
            progress.event(&BuildEvent::StepDone(pos, started.elapsed()));
        }
        normalize_opaque(&upper).map_err(io("normalize opaque directories in", &upper))?;
        if !ctx.layer.keep_setuid {
            drop_privileged_files(&upper, &upper, &ctx.layer.name)?;
        }
        Ok(LayerMeta {
            key: ctx.key.to_string(),
            parent: ctx.parent.to_string(),
            name: ctx.layer.name.clone(),
            created: now(),
            size: tree_size(&upper),
        })
    }

    /// Runs step `index` of the layer into `upper`.
    fn run_step(
        &self,
        ctx: &LayerCtx<'_>,
        upper: &Path,
        index: usize,
        step: &Step,
    ) -> Result<(), BuildError> {
        let layer = ctx.layer;
        match step {
            Step::Run {
                argv,
                env,
                workdir,
                user,
            } => {
                // Steps run what the recipe says, as on a rootfs: the key of a layer does
                // not cover the base image's config.
                let mut c = Container::new(ctx.below.clone().without_config())
                    .store(ctx.store.location())
                    .upper(Upper::Dir(upper.to_path_buf()))
                    .env_clear()
                    .workdir(workdir)
                    .timeout(layer.timeout.unwrap_or(STEP_TIMEOUT));
                if let Some(u) = user {
                    c = c.user(crate::User::Name(u.clone()));
                }
                if !env.contains_key("HOME") {
                    c = c.env("HOME", "/root");
                }
                for (k, v) in env {
                    c = c.env(k, v);
                }
                let out = c.run(argv).map_err(|e| BuildError::Container {
                    layer: layer.name.clone(),
                    step: index,
                    source: Box::new(e),
                })?;
                if !out.status.success() || out.timed_out {
                    return Err(BuildError::StepFailed {
                        layer: layer.name.clone(),
                        step: index,
                        command: argv.join(" "),
                        status: out.status,
                        timed_out: out.timed_out,
                        stdout: out.stdout_str(),
                        stderr: out.stderr_str(),
                    });
                }
            }
            Step::Copy { from, to } => {
                let src = self.source_path(from);
                copy_into(ctx.below, upper, &src, to).map_err(|reason| BuildError::BadCopy {
                    layer: layer.name.clone(),
                    from: src.clone(),
                    to: to.clone(),
                    reason,
                })?;
            }
        }
        Ok(())
    }
}

/// The layer's bound ([`LayerSpec::max_size`]) against what `upper` takes on disk after
/// step `index`. Checked after each step: the bound decides what may be published, not
/// how much a step may write while it runs.
fn check_size(layer: &LayerSpec, upper: &Path, index: usize) -> Result<(), BuildError> {
    let limit = layer
        .max_size
        .unwrap_or(super::recipe::DEFAULT_LAYER_MAX_SIZE);
    let used = disk_usage(upper);
    match used > limit.get() {
        true => Err(BuildError::LayerTooLarge {
            layer: layer.name.clone(),
            step: index,
            limit,
            used,
        }),
        false => Ok(()),
    }
}

/// Bytes a tree takes on disk (allocated blocks, so sparse files count what they hold),
/// symlinks not followed.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                total = total.saturating_add(m.blocks().saturating_mul(512));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    total
}

/// Tells `progress` that step `step` failed with `e`: how it ended, and its output.
fn report_failure(progress: &mut dyn Progress, step: StepPos<'_>, e: &BuildError) {
    let (why, stdout, stderr) = match e {
        BuildError::StepFailed {
            status,
            timed_out,
            stdout,
            stderr,
            ..
        } => {
            let why = match timed_out {
                true => format!("{status}, timed out"),
                false => status.to_string(),
            };
            (why, stdout.as_str(), stderr.as_str())
        }
        other => (other.to_string(), "", ""),
    };
    progress.event(&BuildEvent::StepFailed {
        step,
        why: &why,
        stdout,
        stderr,
    });
}

/// What one layer's build works with.
struct LayerCtx<'a> {
    store: &'a Store,
    /// The image below the layer.
    below: &'a Image,
    layer: &'a LayerSpec,
    key: &'a str,
    parent: &'a str,
    pos: LayerPos<'a>,
}

/// A step as progress shows it, on one line: `run ARGV` or `copy FROM -> TO`. An argument
/// that is a whole script (several lines, long) shows as its first line and `…`.
fn describe(step: &Step) -> String {
    let short = |a: &String| match a.split_once('\n') {
        Some((first, _)) if a.len() > 80 => format!("{first} …"),
        _ => a.clone(),
    };
    let text = match step {
        Step::Run { argv, .. } => {
            let argv: Vec<String> = argv.iter().map(short).collect();
            format!("run {}", argv.join(" "))
        }
        Step::Copy { from, to } => format!("copy {} -> {}", from.display(), to.display()),
    };
    text.replace('\n', "\\n")
}

/// A copy source must not contain the store: the copy would go on copying itself into the
/// layer being built, without bound.
fn contains_no_store(src: &Path, store: &Path) -> Result<(), String> {
    let (Ok(src), Ok(store)) = (std::fs::canonicalize(src), std::fs::canonicalize(store)) else {
        return Ok(()); // A missing source is reported by the copy itself.
    };
    match store.starts_with(&src) {
        true => Err(format!(
            "it contains the store ({}); copy a directory that does not",
            store.display()
        )),
        false => Ok(()),
    }
}

/// Copies host `src` to `to` in the layer being built (`upper`), creating parent
/// directories with the modes they have below. Refuses to go through a symlink of the image
/// (the copy would shadow the link instead of following it).
fn copy_into(image: &Image, upper: &Path, src: &Path, to: &Path) -> Result<(), String> {
    std::fs::symlink_metadata(src).map_err(|e| format!("source: {e}"))?;
    let rel = to
        .strip_prefix("/")
        .map_err(|_| "destination must be absolute".to_string())?;
    let below = image.lowers();
    let mut cur = PathBuf::new();
    if let Some(parent) = rel.parent() {
        for comp in parent.components() {
            cur.push(comp);
            let here = upper.join(&cur);
            match std::fs::symlink_metadata(&here) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(format!("/{} is not a directory", cur.display())),
                Err(_) => {}
            }
            let mut mode = 0o755;
            for lower in &below {
                if let Ok(m) = std::fs::symlink_metadata(lower.join(&cur)) {
                    if m.file_type().is_symlink() {
                        return Err(format!(
                            "/{} is a symlink in the image; copy to the path it points to",
                            cur.display()
                        ));
                    }
                    if !m.is_dir() {
                        return Err(format!(
                            "/{} is not a directory in the image",
                            cur.display()
                        ));
                    }
                    mode = m.mode() & 0o7777;
                    break;
                }
            }
            std::fs::create_dir(&here).map_err(|e| format!("create /{}: {e}", cur.display()))?;
            std::fs::set_permissions(&here, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod /{}: {e}", cur.display()))?;
        }
    }
    let dst = upper.join(rel);
    if std::fs::symlink_metadata(&dst).is_ok() {
        remove_tree(&dst).map_err(|e| format!("replace {}: {e}", to.display()))?;
    }
    copy_tree(src, &dst).map_err(|e| e.to_string())
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if ft.is_dir() {
        std::fs::create_dir(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        std::fs::set_permissions(dst, meta.permissions())
    } else if ft.is_file() {
        std::fs::copy(src, dst).map(drop)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "{}: only files, directories and symlinks can be copied",
                src.display()
            ),
        ))
    }
}

/// Strips setuid and setgid bits from the files of a layer being published, and refuses
/// device nodes other than whiteouts: nothing in a layer grants privileges its recipe did
/// not ask for.
fn drop_privileged_files(dir: &Path, upper: &Path, layer: &str) -> Result<(), BuildError> {
    for e in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let path = e.map_err(io("read", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            drop_privileged_files(&path, upper, layer)?;
        } else if ft.is_file() && meta.mode() & 0o6000 != 0 {
            let mode = std::fs::Permissions::from_mode(meta.mode() & 0o1777);
            std::fs::set_permissions(&path, mode)
                .map_err(io("strip setuid/setgid bits of", &path))?;
        } else if (ft.is_char_device() || ft.is_block_device())
            && !crate::whiteout::is_whiteout(&meta)
        {
            return Err(BuildError::DeviceNode {
                layer: layer.to_string(),
                path: Path::new("/").join(path.strip_prefix(upper).unwrap_or(&path)),
            });
        }
    }
    Ok(())
}

/// Marks every opaque directory in both xattr namespaces where permitted, so a layer built
/// in one privilege mode stacks in the other (root writes `trusted.`, rootless `user.`).
fn normalize_opaque(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            let p = e.path();
            if crate::whiteout::is_opaque(&p)? {
                crate::whiteout::make_opaque(&p)?;
            }
            normalize_opaque(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Publication strips setuid/setgid bits and refuses device nodes, keeping whiteouts.
    #[test]
    fn privileged_files_are_stripped_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        std::fs::create_dir(up.join("bin")).unwrap();
        std::fs::write(up.join("bin/suid"), "x").unwrap();
        std::fs::set_permissions(up.join("bin/suid"), std::fs::Permissions::from_mode(0o6755))
            .unwrap();
        crate::whiteout::make_whiteout(&up.join("gone")).unwrap();
        drop_privileged_files(up, up, "l").unwrap();
        let mode = std::fs::metadata(up.join("bin/suid")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(crate::whiteout::is_whiteout_path(&up.join("gone")).unwrap());
        let made = nix::sys::stat::mknod(
            &up.join("bin/mem"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 1),
        );
        match made {
            Ok(()) => match drop_privileged_files(up, up, "l") {
                Err(BuildError::DeviceNode { path, .. }) => assert_eq!(path, Path::new("/bin/mem")),
                other => panic!("a device node was published: {other:?}"),
            },
            // Without CAP_MKNOD no step can make one either.
            Err(e) => assert_eq!(e, nix::errno::Errno::EPERM),
        }
    }

    #[test]
    fn a_step_is_described_on_one_line() {
        let run = Step::Run {
            argv: vec!["sh".into(), "-c".into(), "printf 'a\nb\n' > /f".into()],
            env: Default::default(),
            workdir: "/".into(),
            user: None,
        };
        assert_eq!(describe(&run), "run sh -c printf 'a\\nb\\n' > /f");
        let script = format!("# a script\n{}", "true\n".repeat(20));
        let run = Step::Run {
            argv: vec!["sh".into(), "-c".into(), script, "sh".into(), "x".into()],
            env: Default::default(),
            workdir: "/".into(),
            user: None,
        };
        assert_eq!(describe(&run), "run sh -c # a script … sh x");
        let copy = Step::Copy {
            from: "seed.sql".into(),
            to: "/srv/seed.sql".into(),
        };
        assert_eq!(describe(&copy), "copy seed.sql -> /srv/seed.sql");
    }
}
