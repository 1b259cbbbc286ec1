//! Carrying a host binary into an image that may lack a compatible libc: the binary, its ELF
//! interpreter and the shared libraries it needs are bind-mounted read-only under
//! [`CARRY_DIR`], and the binary is run through the carried interpreter:
//! `/.pristine/ld.so --library-path /.pristine/lib /.pristine/bin ARGS…`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Bind;

/// The private directory carried files appear under inside the container.
pub const CARRY_DIR: &str = "/.pristine";

/// Why a binary cannot be carried.
#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    /// The binary could not be read.
    #[error("failed to read the ELF headers of {path}: {source}")]
    Read {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF64 little-endian executable.
    #[error(
        "cannot carry {path}: {reason} (only x86-64/aarch64-style ELF64 LE binaries are supported)"
    )]
    NotElf {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The interpreter could not list the libraries.
    #[error("failed to list the shared libraries of {path} with `{interp} --list`: {detail}\n  hint: the binary must be runnable on this host")]
    List {
        /// The binary.
        path: PathBuf,
        /// Its interpreter.
        interp: PathBuf,
        /// What happened.
        detail: String,
    },
}

/// How to run a binary inside an image: extra binds and the command prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Read-only binds of the binary, the interpreter and the libraries.
    pub binds: Vec<Bind>,
    /// The command that runs the binary; append its arguments.
    pub argv: Vec<String>,
}

/// Plans carrying `binary` (reads its ELF headers; runs its interpreter's `--list` once).
pub fn carry(binary: &Path) -> Result<Carried, CarryError> {
    let bin_target = format!("{CARRY_DIR}/bin");
    let ro = |source: &Path, target: String| Bind {
        source: source.to_path_buf(),
        target: target.into(),
        readonly: true,
    };
    let interp = match interpreter(binary)? {
        // Statically linked: nothing else to carry.
        None => {
            return Ok(Carried {
                binds: vec![ro(binary, bin_target.clone())],
                argv: vec![bin_target],
            })
        }
        Some(i) => i,
    };
    let out = Command::new(&interp)
        .arg("--list")
        .arg(binary)
        .output()
        .map_err(|e| CarryError::List {
            path: binary.into(),
            interp: interp.clone(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(CarryError::List {
            path: binary.into(),
            interp,
            detail: format!(
                "{}: {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let lib_dir = format!("{CARRY_DIR}/lib");
    let ld_target = format!("{CARRY_DIR}/ld.so");
    let mut binds = vec![
        ro(binary, bin_target.clone()),
        ro(&interp, ld_target.clone()),
    ];
    for (soname, path) in parse_list(&text) {
        binds.push(ro(&path, format!("{lib_dir}/{soname}")));
    }
    Ok(Carried {
        binds,
        argv: vec![ld_target, "--library-path".into(), lib_dir, bin_target],
    })
}

/// `NAME => /path (0x…)` lines of `ld.so --list` output.
pub(crate) fn parse_list(text: &str) -> Vec<(String, PathBuf)> {
    let mut libs: Vec<(String, PathBuf)> = Vec::new();
    for line in text.lines() {
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = rest.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') && !libs.iter().any(|(n, _)| n == name) {
            libs.push((name.to_string(), PathBuf::from(path)));
        }
    }
    libs
}

/// The `PT_INTERP` of an ELF64 little-endian binary, if it has one.
pub(crate) fn interpreter(path: &Path) -> Result<Option<PathBuf>, CarryError> {
    use std::io::Read;
    let read = |limit: u64| -> Result<Vec<u8>, CarryError> {
        let mut data = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut data))
            .map_err(|source| CarryError::Read {
                path: path.into(),
                source,
            })?;
        Ok(data)
    };
    let not_elf = |reason| CarryError::NotElf {
        path: path.into(),
        reason,
    };
    // The program headers and the interpreter's name sit at the start of the file.
    match parse_interp(&read(64 * 1024)?) {
        Err(reason) if reason.contains("truncated") || reason.contains("range") => {
            parse_interp(&read(u64::MAX)?).map_err(not_elf)
        }
        r => r.map_err(not_elf),
    }
}

fn parse_interp(data: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    const PT_INTERP: u32 = 3;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not ELF64 little-endian");
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let phoff = u64_at(0x20).ok_or("truncated header")? as usize;
    let phentsize = u16_at(0x36).ok_or("truncated header")? as usize;
    let phnum = u16_at(0x38).ok_or("truncated header")? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or("truncated program header")? != PT_INTERP {
            continue;
        }
        let off = u64_at(ph + 8).ok_or("truncated program header")? as usize;
        let size = u64_at(ph + 32).ok_or("truncated program header")? as usize;
        let raw = data.get(off..off + size).ok_or("PT_INTERP out of range")?;
        let s = raw.split(|&b| b == 0).next().unwrap_or(&[]);
        let s = std::str::from_utf8(s).map_err(|_| "PT_INTERP is not UTF-8")?;
        return Ok(Some(PathBuf::from(s)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ld_so_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_list(text),
            vec![
                (
                    "libgcc_s.so.1".to_string(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1")
                ),
                (
                    "libc.so.6".to_string(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
                ),
            ]
        );
    }

    #[test]
    fn finds_the_interpreter_of_this_binary() {
        let me = std::env::current_exe().unwrap();
        let interp = interpreter(&me)
            .unwrap()
            .expect("a dynamically linked test binary");
        assert!(interp.is_absolute() && interp.exists(), "{interp:?}");
        assert!(matches!(
            parse_interp(b"not an elf at all, definitely not, no no no no no no no no no no no no"),
            Err("not an ELF file")
        ));
    }
}
