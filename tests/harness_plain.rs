//! Ordinary `#[test]`s, unaware of pristine, for testing `pristine wrap` under nextest. When
//! `PRISTINE_PLAIN_OUT` names a directory, each test records where it ran (hostname, its
//! pid, PID 1's command line, whether a host-only marker file is visible); otherwise they
//! only check what holds anywhere.

use std::path::Path;

fn record(test: &str) {
    let Some(out) = std::env::var_os("PRISTINE_PLAIN_OUT") else {
        return;
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let init = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let init = String::from_utf8_lossy(&init).replace('\0', " ");
    // A file written here lands in this test's container only (no bind covers /etc).
    std::fs::write("/etc/pristine-plain-marker", test).unwrap();
    let line = format!(
        "{test}\t{}\t{}\t{}\t{}\n",
        host.trim(),
        std::process::id(),
        init.trim(),
        std::env::current_dir().unwrap().display()
    );
    std::fs::write(Path::new(&out).join(test), line).unwrap();
}

#[test]
fn first() {
    record("first");
    assert_eq!(2 + 2, 4);
}

#[test]
fn second() {
    record("second");
}

#[test]
fn third() {
    record("third");
}
