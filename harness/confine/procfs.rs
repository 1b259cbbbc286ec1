//! The parts of `/proc` a container must not read or change, as runc masks them
//! (`runc/libcontainer/specconv` defaults, which Docker and podman use).

/// Hidden: a directory gets an empty read-only tmpfs over it, a file `/dev/null`.
pub(crate) const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
];

/// Read-only: host-global kernel settings and interfaces.
pub(crate) const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
