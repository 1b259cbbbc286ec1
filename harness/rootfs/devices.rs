//! The minimal `/dev` every container gets.

use std::path::Path;

use crate::setup::SetupOp;

/// `(name, major, minor)` of the character devices in the container's `/dev`.
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Steps that build `/dev` under `root`.
///
/// As root the nodes are created with `mknod` (cheapest); in a user namespace `mknod` of a
/// real device is refused, so the host's nodes are bind-mounted instead, as bubblewrap does.
/// So they are for a root without `CAP_MKNOD` or outside the initial user namespace (a
/// podman container, rootful or rootless: see `host::may_mknod_devices`). `devpts` gets
/// the `tty` group only as root in the initial user namespace, where gid 5 is surely mapped.
pub fn dev_ops(root: &Path, rootless: bool, shm_size: crate::Size) -> Vec<SetupOp> {
    let bind_nodes = rootless || !crate::host::may_mknod_devices();
    let tty_gid = !rootless && crate::host::in_the_initial_userns();
    let dev = root.join("dev");
    let mut ops = vec![
        SetupOp::mkdir(&dev),
        SetupOp::Tmpfs {
            target: dev.clone(),
            options: "mode=0755,size=64k".into(),
            nodev: false,
        },
    ];
    for &(name, major, minor) in DEVICES {
        ops.push(if bind_nodes {
            SetupOp::BindDevice {
                source: Path::new("/dev").join(name),
                target: dev.join(name),
            }
        } else {
            SetupOp::CharDevice {
                path: dev.join(name),
                major,
                minor,
            }
        });
    }
    ops.push(SetupOp::mkdir(dev.join("pts")));
    ops.push(SetupOp::Devpts {
        target: dev.join("pts"),
        tty_gid,
    });
    ops.push(SetupOp::Symlink {
        target: "pts/ptmx".into(),
        link: dev.join("ptmx"),
    });
    ops.push(SetupOp::mkdir(dev.join("shm")));
    ops.push(SetupOp::Tmpfs {
        target: dev.join("shm"),
        options: format!("mode=1777,size={shm_size}"),
        nodev: true,
    });
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ops.push(SetupOp::Symlink {
            target: target.into(),
            link: dev.join(link),
        });
    }
    ops
}
