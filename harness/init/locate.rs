//! Finding the program to execute as the container's init.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::entry::SELF_IS_INIT;

/// Locates pristine's init program, once per process.
///
/// In order: `PRISTINE_INIT`; this very binary, if it called
/// [`main_if_requested`](super::main_if_requested); a `pristine` executable beside this
/// binary or one directory up (cargo puts test binaries in `target/*/deps/`); `PATH`.
pub(crate) fn init_program() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(find).as_deref()
}

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PRISTINE_INIT") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok();
    if SELF_IS_INIT.load(Ordering::Relaxed) {
        if let Some(exe) = &exe {
            return Some(exe.clone());
        }
    }
    let mut candidates = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        candidates.push(dir.join("pristine"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("pristine"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pristine")));
    }
    candidates.into_iter().find(|c| c.is_file())
}
