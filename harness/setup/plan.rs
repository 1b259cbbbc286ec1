//! Planning: from a container's configuration to the ordered list of setup steps.
//!
//! The order follows bubblewrap and youki, and each step is where it is for a reason:
//!
//! 1. `/` is made rprivate first, so that no mount made afterwards can propagate back to the
//!    host's namespace (the host's `/` is usually shared).
//! 2. A tmpfs base holds the upper and work directories and the new root's mount point. It
//!    lives only in the container's mount namespace, so it vanishes with it, even if the
//!    caller is SIGKILLed; the upper being in RAM makes copy-up and teardown cheap.
//! 3. The overlay becomes the new root. Layers over the host root (as root) go over a
//!    read-only overlay view of `/`, since overlayfs refuses a lower nested in another one
//!    of the same filesystem; the rootless host root is one overlay per top-level directory,
//!    and a directory that holds the store goes over a view of itself in the same way.
//! 4. `/proc`, `/dev` and `/tmp` are mounted inside the new root before `pivot_root`, while
//!    the host's `/dev` is still reachable for rootless device binds.
//! 5. User volumes come last among the mounts so that they win over anything above.
//! 6. `pivot_root` and detaching the old root: after this the host filesystem is
//!    unreachable.
//! 7. Hostname and loopback touch no filesystem and go last.

use std::path::{Path, PathBuf};

use super::SetupOp;
use crate::confine::{procfs, Privileges};
use crate::container::Bind;
use crate::rootfs::devices::dev_ops;
use crate::rootfs::host::{mode_bits, HostEntry};
use crate::rootfs::overlay::{overlay_options, OverlayOptionsError};

/// Where the container's lower layers come from.
#[derive(Debug, Clone)]
pub(crate) enum RootfsSource {
    /// One overlay with these lowers, uppermost first (root mode host image: `["/"]`).
    Lowers(Vec<PathBuf>),
    /// Layers (uppermost first) over the host root, in root mode: one overlay whose bottom
    /// lower is a read-only overlay view of `/` (see [`SetupOp::HostView`]).
    LayersOverHost(Vec<PathBuf>),
    /// The rootless host root, entry by entry, under optional layers (uppermost first).
    HostEntries {
        /// Top-level entries of the host root.
        entries: Vec<HostEntry>,
        /// Layers stacked over the host root, uppermost first.
        layers: Vec<PathBuf>,
    },
}

/// Where the upper and work directories live.
#[derive(Debug, Clone)]
pub(crate) enum UpperPlacement {
    /// On the tmpfs base, limited to `size`.
    Tmpfs {
        /// The tmpfs's size limit.
        size: crate::Size,
    },
    /// On disk, in the container's own runtime directory.
    Disk {
        /// The directory `upper` and `work` are below, reached from it without symlinks.
        beneath: PathBuf,
        /// Upper directory.
        upper: PathBuf,
        /// Work directory (same filesystem as `upper`).
        work: PathBuf,
        /// Thrown away or only kept for inspection, never mounted again: overlayfs need
        /// not sync it (`volatile`).
        volatile: bool,
    },
}

/// Everything the plan depends on.
pub(crate) struct PlanInput<'a> {
    /// Mount point of the tmpfs base (an existing, empty host directory).
    pub base: &'a Path,
    pub rootfs: &'a RootfsSource,
    pub upper: &'a UpperPlacement,
    pub rootless: bool,
    pub binds: &'a [Bind],
    pub hostname: &'a str,
    /// `cgroup.procs` files to join, if the container has limits.
    pub cgroups: &'a [PathBuf],
    /// What the container's processes may do beyond the default confinement.
    pub privileges: &'a Privileges,
    /// Size limits of `/tmp` and `/dev/shm`.
    pub tmp_size: crate::Size,
    pub shm_size: crate::Size,
}

/// Computes the setup steps for one container. Fails only if an overlay's options cannot
/// be expressed, which is checked here so that nothing is created for a bad plan.
pub(crate) fn plan(input: &PlanInput<'_>) -> Result<Vec<SetupOp>, OverlayOptionsError> {
    let base = input.base;
    let root = base.join("root");
    let (upper, work, size) = match input.upper {
        UpperPlacement::Tmpfs { size } => (base.join("upper"), base.join("work"), *size),
        // The base still holds the root mount point; it needs almost no space.
        UpperPlacement::Disk { upper, work, .. } => {
            (upper.clone(), work.clone(), crate::Size::mib(1))
        }
    };
    let beneath = match input.upper {
        UpperPlacement::Tmpfs { .. } => base.to_path_buf(),
        UpperPlacement::Disk { beneath, .. } => beneath.clone(),
    };
    // A confined container honours no setuid bit and opens no device node outside /dev.
    let nosuid = !input.privileges.privileged;
    let volatile = matches!(input.upper, UpperPlacement::Disk { volatile: true, .. });
    let mut ops = Vec::new();
    if !input.cgroups.is_empty() {
        ops.push(SetupOp::JoinCgroups {
            procs: input.cgroups.to_vec(),
        });
    }
    ops.extend([
        SetupOp::MakeRootPrivate,
        SetupOp::Tmpfs {
            target: base.to_path_buf(),
            options: format!("size={size},mode=0755"),
            nodev: true,
        },
    ]);
    // The upper directory is the root of the new root's overlay (or, per directory, the
    // new root itself), whose mode `/` shows.
    for dir in [&upper, &work, &root] {
        ops.push(SetupOp::mkdir(dir));
    }
    match input.rootfs {
        RootfsSource::Lowers(lowers) => ops.push(SetupOp::Overlay {
            target: root.clone(),
            lowers: lowers.clone(),
            upper: upper.clone(),
            work: work.clone(),
            beneath: beneath.clone(),
            userxattr: input.rootless,
            nosuid,
            volatile,
        }),
        RootfsSource::LayersOverHost(layers) => {
            let (view, empty) = (base.join("host"), base.join("empty"));
            for dir in [&view, &empty] {
                ops.push(SetupOp::mkdir(dir));
            }
            ops.push(SetupOp::HostView {
                source: "/".into(),
                target: view.clone(),
                empty,
                userxattr: input.rootless,
            });
            let mut lowers = layers.clone();
            lowers.push(view);
            ops.push(SetupOp::Overlay {
                target: root.clone(),
                lowers,
                upper: upper.clone(),
                work: work.clone(),
                beneath: beneath.clone(),
                userxattr: input.rootless,
                nosuid,
                volatile,
            });
        }
        RootfsSource::HostEntries { entries, layers } => {
            // The new root is the upper directory itself, bound to the root mount point: new
            // top-level entries land in the upper layer like everything else (and pivot_root
            // gets the mount point it needs). Each top-level directory's overlay is mounted
            // over its own upper subdirectory, reached through that bind.
            ops.push(SetupOp::Bind {
                source: upper.clone(),
                target: root.clone(),
                readonly: false,
                recursive: false,
            });
            // overlayfs refuses a layer (or an on-disk upper) nested inside another lower
            // on the same filesystem ("overlapping lowerdir path"). The caller marks the
            // directories that hold one (`HostEntry::Viewed`, or `Split` on the way to it);
            // any directory that still contains one is bound read-only instead of overlaid.
            let mut nested: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
            if let UpperPlacement::Disk { upper, work, .. } = input.upper {
                nested.extend([upper.as_path(), work.as_path()]);
            }
            let dirs = HostDirs {
                base,
                upper: &upper,
                work: &work,
                beneath: &beneath,
                root: &root,
                layers,
                nested: &nested,
                userxattr: input.rootless,
                nosuid,
                volatile,
            };
            dirs.entry_ops(Path::new(""), entries, &mut ops);
        }
    }
    ops.push(SetupOp::mkdir(root.join("proc")));
    ops.push(SetupOp::Proc {
        target: root.join("proc"),
    });
    ops.extend(dev_ops(&root, input.rootless, input.shm_size));
    ops.push(SetupOp::mkdir(root.join("tmp")));
    ops.push(SetupOp::Tmpfs {
        target: root.join("tmp"),
        options: format!("mode=1777,size={}", input.tmp_size),
        nodev: true,
    });
    for bind in input.binds {
        let rel = bind.target.strip_prefix("/").unwrap_or(&bind.target);
        ops.push(SetupOp::Bind {
            source: bind.source.clone(),
            target: root.join(rel),
            readonly: bind.readonly,
            recursive: true,
        });
    }
    ops.push(SetupOp::PivotRoot { new_root: root });
    ops.push(SetupOp::Hostname {
        name: input.hostname.to_string(),
    });
    ops.push(SetupOp::LoopbackUp);
    // Also privileged: the caller's terminal and process group are the caller's.
    ops.push(SetupOp::LeaveTerminal);
    if !input.privileges.privileged {
        ops.extend(confinement(input.privileges));
    }
    for op in &ops {
        let op = match op {
            SetupOp::UnlessGone { op, .. } => op,
            op => op,
        };
        if let SetupOp::Overlay {
            lowers,
            upper,
            work,
            userxattr,
            volatile,
            ..
        } = op
        {
            match overlay_options(lowers, upper, work, *userxattr, *volatile) {
                // Applied through the new mount API's `lowerdir+`, one layer at a time.
                Err(OverlayOptionsError::TooLong { .. }) if layered_mount_supported() => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
    }
    Ok(ops)
}

/// The confinement steps, after `pivot_root` (the paths are the container's own), in
/// runc's order: `/proc` masked and made read-only while the init may still mount, the
/// capabilities (bounding set first, while `CAP_SETPCAP` is still there), `no_new_privs`,
/// and the seccomp filter last, since it forbids what came before.
///
/// The caller's terminal is left by [`SetupOp::LeaveTerminal`], before this, rather than by
/// a new session (`setsid`, as runc does): see README's threat model for the measurement.
fn confinement(privileges: &Privileges) -> Vec<SetupOp> {
    let mut ops: Vec<SetupOp> = procfs::MASKED
        .iter()
        .map(|p| SetupOp::MaskPath { path: p.into() })
        .collect();
    ops.extend(
        procfs::READ_ONLY
            .iter()
            .map(|p| SetupOp::ReadOnlyPath { path: p.into() }),
    );
    let keep = privileges.kept_capabilities();
    ops.extend([
        SetupOp::LimitCapabilities { keep: keep.clone() },
        SetupOp::NoNewPrivileges,
        SetupOp::Seccomp { caps: keep },
    ]);
    ops
}

/// Where the per-directory layout of the host root goes, and what it stacks.
struct HostDirs<'a> {
    /// The tmpfs base (views of host directories are mounted there).
    base: &'a Path,
    upper: &'a Path,
    work: &'a Path,
    /// Where `upper` and `work` are opened from without symlinks.
    beneath: &'a Path,
    root: &'a Path,
    /// Layers over the host root, uppermost first.
    layers: &'a [PathBuf],
    /// Directories no overlay lower may contain.
    nested: &'a [&'a Path],
    userxattr: bool,
    /// Overlays are `nosuid,nodev` (all but privileged containers).
    nosuid: bool,
    volatile: bool,
}

impl HostDirs<'_> {
    /// The steps that reproduce host directory `/rel` (`entries`, the host's) under the new
    /// root, with what the layers add to it.
    fn entry_ops(&self, rel: &Path, entries: &[HostEntry], ops: &mut Vec<SetupOp>) {
        let host = Path::new("/").join(rel);
        // Below the top level, an entry may vanish between this plan and its mount.
        let deep = !rel.as_os_str().is_empty();
        let guarded = |source: PathBuf, op: SetupOp| match deep {
            true => SetupOp::UnlessGone {
                source,
                op: Box::new(op),
            },
            false => op,
        };
        for entry in with_layer_entries(entries, self.layers, rel) {
            let name = entry.name().to_string();
            let rel_name = rel.join(&name);
            let target = self.root.join(&rel_name);
            match entry {
                HostEntry::Overlay(_, mode)
                    if !self.nested.iter().any(|p| p.starts_with(host.join(&name))) =>
                {
                    let mut lowers: Vec<PathBuf> = self
                        .layers
                        .iter()
                        .map(|l| l.join(&rel_name))
                        .filter(|l| l.is_dir())
                        .collect();
                    let on_host = entries.iter().find(|h| h.name() == name);
                    if matches!(on_host, Some(HostEntry::Overlay(..))) {
                        lowers.push(host.join(&name));
                    }
                    ops.push(SetupOp::Mkdir {
                        path: self.upper.join(&rel_name),
                        mode,
                    });
                    ops.push(SetupOp::mkdir(self.work.join(&rel_name)));
                    let overlay = SetupOp::Overlay {
                        target,
                        lowers,
                        upper: self.upper.join(&rel_name),
                        work: self.work.join(&rel_name),
                        beneath: self.beneath.to_path_buf(),
                        userxattr: self.userxattr,
                        nosuid: self.nosuid,
                        volatile: self.volatile,
                    };
                    ops.push(guarded(host.join(&name), overlay));
                }
                HostEntry::Viewed {
                    mode, dirs, stops, ..
                } => self.viewed_ops(&rel_name, mode, &dirs, &stops, ops),
                HostEntry::Split(_, mode, children) => {
                    // A directory of the upper layer (seen through the root's bind), filled
                    // entry by entry.
                    ops.push(SetupOp::Mkdir {
                        path: self.upper.join(&rel_name),
                        mode,
                    });
                    self.entry_ops(&rel_name, &children, ops);
                }
                HostEntry::Overlay(..) | HostEntry::ReadOnlyBind(_) | HostEntry::File(_) => {
                    let bind = SetupOp::Bind {
                        source: host.join(&name),
                        target,
                        readonly: true,
                        recursive: true,
                    };
                    ops.push(guarded(host.join(&name), bind));
                }
                HostEntry::LayerFile(_, source) => ops.push(SetupOp::Bind {
                    source,
                    target,
                    readonly: true,
                    recursive: false,
                }),
                HostEntry::Symlink(_, link_target) => ops.push(SetupOp::Symlink {
                    target: link_target,
                    link: target,
                }),
            }
        }
    }

    /// The steps for host directory `/rel` that holds `stops`: an overlay of the layers'
    /// parts over a read-only view of the directory (on a superblock of its own, so the
    /// layers below it do not overlap it), with `dirs` made in the upper layer first and the
    /// stops bound read-only over it. Three mounts (with one stop), however deep it is.
    fn viewed_ops(
        &self,
        rel: &Path,
        mode: u32,
        dirs: &[(PathBuf, u32)],
        stops: &[PathBuf],
        ops: &mut Vec<SetupOp>,
    ) {
        let inside = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
        let (view, empty) = (self.base.join("views").join(rel), self.base.join("empty"));
        ops.push(SetupOp::Mkdir {
            path: self.upper.join(rel),
            mode,
        });
        ops.extend(dirs.iter().map(|(dir, mode)| SetupOp::Mkdir {
            path: self.upper.join(inside(dir)),
            mode: *mode,
        }));
        for dir in [self.work.join(rel), view.clone(), empty.clone()] {
            ops.push(SetupOp::mkdir(dir));
        }
        ops.push(SetupOp::HostView {
            source: Path::new("/").join(rel),
            target: view.clone(),
            empty,
            userxattr: self.userxattr,
        });
        let mut lowers: Vec<PathBuf> = self
            .layers
            .iter()
            .map(|l| l.join(rel))
            .filter(|l| l.is_dir())
            .collect();
        lowers.push(view);
        ops.push(SetupOp::Overlay {
            target: self.root.join(rel),
            lowers,
            upper: self.upper.join(rel),
            work: self.work.join(rel),
            beneath: self.beneath.to_path_buf(),
            userxattr: self.userxattr,
            nosuid: self.nosuid,
            volatile: self.volatile,
        });
        // Not recursive: the store holds the container's own mounts (its base, under
        // `run/mnt`), which a recursive bind would copy in; the host's mounts below a stop
        // would have made the directory a read-only bind, not a view.
        ops.extend(stops.iter().map(|stop| SetupOp::Bind {
            source: stop.clone(),
            target: self.root.join(inside(stop)),
            readonly: true,
            recursive: false,
        }));
    }
}

/// overlayfs takes `lowerdir+` through `fsconfig` from Linux 6.8 on.
fn layered_mount_supported() -> bool {
    crate::hints::kernel_version().is_some_and(|v| v >= (6, 8))
}

/// The entries of host directory `/rel` plus those only the layers add there (e.g. `/data`
/// created by a build step); an entry the uppermost layer whites out disappears.
fn with_layer_entries(entries: &[HostEntry], layers: &[PathBuf], rel: &Path) -> Vec<HostEntry> {
    let mut out: Vec<HostEntry> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for layer in layers {
        let Ok(dir) = std::fs::read_dir(layer.join(rel)) else {
            continue;
        };
        let mut names: Vec<_> = dir.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let replaced = rel.as_os_str().is_empty()
                && crate::rootfs::host::REPLACED.contains(&name.as_str());
            if replaced || !seen.insert(name.clone()) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if crate::whiteout::is_whiteout(&meta) {
                continue; // deleted by this layer: hidden from everything below
            }
            match entries.iter().find(|h| h.name() == name) {
                // What the host must show as is (mounts below, symlinks, files, the path
                // to the store) stays so.
                Some(host) if !matches!(host, HostEntry::Overlay(..)) => out.push(host.clone()),
                // The uppermost layer's directory decides the mode, as in the overlay.
                _ if meta.is_dir() => out.push(HostEntry::Overlay(name, mode_bits(&meta))),
                _ if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(e.path()) {
                        out.push(HostEntry::Symlink(name, target));
                    }
                }
                _ if meta.is_file() => out.push(HostEntry::LayerFile(name, e.path())),
                _ => {}
            }
        }
    }
    for e in entries {
        if !seen.contains(e.name()) {
            out.push(e.clone());
        }
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered plan for `rootfs` and `upper` (base `/store/run/mnt`, hostname `h`).
    fn plan_text(
        rootfs: RootfsSource,
        upper: &UpperPlacement,
        rootless: bool,
        binds: &[Bind],
    ) -> String {
        let ops = plan(&PlanInput {
            base: Path::new("/store/run/mnt"),
            rootfs: &rootfs,
            upper,
            rootless,
            binds,
            hostname: "h",
            cgroups: &[],
            privileges: &Privileges::default(),
            tmp_size: crate::DEFAULT_TMP_SIZE,
            shm_size: crate::DEFAULT_SHM_SIZE,
        })
        .unwrap();
        ops.iter().map(|op| format!("{op}\n")).collect()
    }

    #[test]
    fn privileged_containers_get_no_confinement_and_added_capabilities_are_kept() {
        let input = |privileges| {
            plan(&PlanInput {
                base: Path::new("/b"),
                rootfs: &RootfsSource::Lowers(vec!["/".into()]),
                upper: &tmpfs_upper(),
                rootless: false,
                binds: &[],
                hostname: "h",
                cgroups: &[],
                privileges,
                tmp_size: crate::DEFAULT_TMP_SIZE,
                shm_size: crate::DEFAULT_SHM_SIZE,
            })
            .unwrap()
        };
        let confining = |op: &SetupOp| {
            matches!(
                op,
                SetupOp::MaskPath { .. }
                    | SetupOp::ReadOnlyPath { .. }
                    | SetupOp::LimitCapabilities { .. }
                    | SetupOp::NoNewPrivileges
                    | SetupOp::Seccomp { .. }
            )
        };
        let privileged = Privileges {
            privileged: true,
            cap_add: vec![],
        };
        assert!(!input(&privileged).iter().any(confining));
        let admin = Privileges {
            privileged: false,
            cap_add: vec!["CAP_SYS_ADMIN".into()],
        };
        let ops = input(&admin);
        let kept = ops.iter().find_map(|op| match op {
            SetupOp::LimitCapabilities { keep } => Some(keep.clone()),
            _ => None,
        });
        assert!(kept.unwrap().contains(&"CAP_SYS_ADMIN".to_string()));
        // The filter is the last step: nothing after it needs a forbidden system call.
        assert!(matches!(ops.last(), Some(SetupOp::Seccomp { .. })));
    }

    fn tmpfs_upper() -> UpperPlacement {
        UpperPlacement::Tmpfs {
            size: crate::DEFAULT_UPPER_SIZE,
        }
    }

    #[test]
    fn root_mode_host_image_plan() {
        let binds = [Bind {
            source: "/data".into(),
            target: "/srv/data".into(),
            readonly: true,
        }];
        let text = plan_text(
            RootfsSource::Lowers(vec!["/".into()]),
            &tmpfs_upper(),
            false,
            &binds,
        );
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(text);
        });
    }

    #[test]
    fn root_mode_layers_over_host_plan() {
        let layers = vec!["/store/layers/b/root".into(), "/store/layers/a/root".into()];
        let text = plan_text(
            RootfsSource::LayersOverHost(layers),
            &tmpfs_upper(),
            false,
            &[],
        );
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(text);
        });
    }

    /// Where a view would stack overlays too deep (the directory is on overlayfs), the way
    /// to the store is split.
    #[test]
    fn rootless_plan_splits_the_way_to_the_store() {
        let entries = vec![
            HostEntry::Overlay("etc".into(), 0o755),
            HostEntry::Split(
                "var".into(),
                0o755,
                vec![
                    HostEntry::Overlay("lib".into(), 0o755),
                    HostEntry::ReadOnlyBind("store".into()),
                ],
            ),
        ];
        let rootfs = RootfsSource::HostEntries {
            entries,
            layers: vec![],
        };
        let text = plan_text(rootfs, &tmpfs_upper(), true, &[]);
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!("rootless_plan_splits_the_way_to_the_store", host_part(&text));
        });
    }

    /// The host part of a rootless plan: from the root's bind to `/proc`.
    fn host_part(text: &str) -> String {
        text.lines()
            .skip_while(|l| !l.starts_with("bind /store/run/mnt/upper"))
            .take_while(|l| !l.contains("root/proc"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn rootless_plan_views_the_directory_holding_the_store() {
        let entries = vec![
            HostEntry::Overlay("etc".into(), 0o755),
            HostEntry::Viewed {
                name: "var".into(),
                mode: 0o755,
                dirs: vec![("/var/tmp".into(), 0o1777), ("/var/tmp/u".into(), 0o700)],
                stops: vec!["/var/tmp/u/store".into()],
            },
        ];
        let rootfs = RootfsSource::HostEntries {
            entries,
            layers: vec![],
        };
        let text = plan_text(rootfs, &tmpfs_upper(), true, &[]);
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(host_part(&text));
        });
    }

    #[test]
    fn rootless_host_image_plan() {
        let rootfs = RootfsSource::HostEntries {
            entries: vec![
                HostEntry::Symlink("bin".into(), "usr/bin".into()),
                HostEntry::Overlay("etc".into(), 0o755),
                HostEntry::ReadOnlyBind("mnt".into()),
            ],
            layers: vec![],
        };
        let upper = UpperPlacement::Disk {
            beneath: "/store".into(),
            upper: "/store/containers/x/upper".into(),
            work: "/store/containers/x/work".into(),
            volatile: false,
        };
        let text = plan_text(rootfs, &upper, true, &[]);
        insta::with_settings!({snapshot_path => crate::setup::snapshots_dir()}, {
            insta::assert_snapshot!(text);
        });
    }
}
