//! The key of the host's root filesystem as a base: what a layer's steps can see of it.
//!
//! The host root cannot be hashed in milliseconds, and most of it does not matter to a
//! given layer. So the key covers the system's identity (architecture, `/etc/os-release`'s
//! `ID` and `VERSION_ID`), the passwd and group entries of the users the steps run as, and
//! either
//! - the recipe's `host_inputs`: `pkg:NAME` (a Debian package and everything it depends on,
//!   by installed version) and absolute paths (their content, as copies are hashed), so
//!   that an unrelated `apt-get install` leaves a seeded database layer cached; or
//! - without `host_inputs`, every installed package and version.
//!
//! Nothing in it is an inode number or a time: machines with the same packages give the
//! same key, so layers built on one CI machine are found by the others.
//! Hosts without dpkg's database fall back to a fingerprint of `/etc` and `/usr` (their
//! inode numbers, sizes and times), which is neither precise nor portable.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::error::BuildError;
use super::key::tree_hash;

const DPKG_STATUS: &str = "/var/lib/dpkg/status";

/// One installed package: its version and what it depends on (each dependency a list of
/// alternatives).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Package {
    pub(crate) version: String,
    pub(crate) depends: Vec<Vec<String>>,
}

/// Installed packages by name, and virtual package names by the packages providing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PackageDb {
    pub(crate) packages: BTreeMap<String, Package>,
    pub(crate) provides: BTreeMap<String, Vec<String>>,
}

/// What the key of a host base covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostKeyInput<'a> {
    /// `pkg:NAME` and absolute paths, from the recipe.
    pub(crate) inputs: &'a [String],
    /// The users the recipe's steps run as (root is always there).
    pub(crate) users: &'a [String],
}

/// The key of the host root for a recipe over it.
pub(crate) fn host_base_key(store_root: &Path, k: HostKeyInput<'_>) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    h.update(b"pristine-base-host-v2\n");
    h.update(format!("arch {}\n", std::env::consts::ARCH).as_bytes());
    h.update(
        os_identity(&std::fs::read_to_string("/etc/os-release").unwrap_or_default()).as_bytes(),
    );
    for user in std::iter::once("root").chain(k.users.iter().map(String::as_str)) {
        h.update(user_entries(user).as_bytes());
    }
    let db = package_db();
    let (packages, paths): (Vec<&String>, Vec<&String>) =
        k.inputs.iter().partition(|i| i.starts_with("pkg:"));
    match db {
        Some(db) if k.inputs.is_empty() => {
            for (name, p) in &db.packages {
                h.update(format!("pkg {name} {}\n", p.version).as_bytes());
            }
        }
        Some(db) => {
            let roots: Vec<&str> = packages.iter().map(|p| &p["pkg:".len()..]).collect();
            for (name, version) in closure(db, &roots)? {
                h.update(format!("pkg {name} {version}\n").as_bytes());
            }
        }
        None if packages.is_empty() => {
            if k.inputs.is_empty() {
                h.update(fingerprint().as_bytes());
            }
        }
        None => {
            return Err(BuildError::HostKey(format!(
                "host_inputs names packages ({}), but this host has no dpkg database at \
                 {DPKG_STATUS}; name the files the steps read instead",
                packages
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    for path in paths {
        let p = Path::new(path);
        let content = match std::fs::symlink_metadata(p) {
            Ok(_) => tree_hash(store_root, p)?,
            Err(_) => "absent".into(),
        };
        h.update(format!("path {path} {content}\n").as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `host_inputs` entries: `pkg:NAME` or an absolute path without `..`.
pub(crate) fn check_input(input: &str) -> Result<(), String> {
    if let Some(name) = input.strip_prefix("pkg:") {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | ':'));
        return match ok {
            true => Ok(()),
            false => Err(format!("host_inputs entry {input:?}: not a package name")),
        };
    }
    let p = Path::new(input);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!(
            "host_inputs entry {input:?}: expected pkg:NAME or an absolute path without '..'"
        ));
    }
    Ok(())
}

/// `ID` and `VERSION_ID` of an os-release file.
fn os_identity(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("ID=") || l.starts_with("VERSION_ID="))
        .map(|l| format!("os {l}\n"))
        .collect()
}

/// The passwd line of `user` and the group line of its primary group (both empty where
/// absent): a data directory built as `postgres` belongs to postgres' uid.
fn user_entries(user: &str) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or("");
    let gid = line.split(':').nth(3).unwrap_or("");
    let gline = group
        .lines()
        .find(|l| !gid.is_empty() && l.split(':').nth(2) == Some(gid))
        .unwrap_or("");
    // The password field and the group's member list are not what a step sees of a user.
    let fields = |l: &str, skip: usize| -> String {
        l.split(':')
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, f)| f)
            .collect::<Vec<_>>()
            .join(":")
    };
    format!("user {user} {} {}\n", fields(line, 1), fields(gline, 3))
}

/// The host's package database, read once per process.
fn package_db() -> Option<&'static PackageDb> {
    static DB: OnceLock<Option<PackageDb>> = OnceLock::new();
    DB.get_or_init(|| {
        std::fs::read_to_string(DPKG_STATUS)
            .ok()
            .map(|t| parse_status(&t))
    })
    .as_ref()
}

/// Parses dpkg's status file: the installed packages with their versions and dependencies.
pub(crate) fn parse_status(text: &str) -> PackageDb {
    let mut db = PackageDb::default();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(f) = last.and_then(|k| fields.get_mut(k)) {
                    f.push(' ');
                    f.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim().to_string());
                last = Some(k);
            }
        }
        let (Some(name), Some(version)) = (fields.get("Package"), fields.get("Version")) else {
            continue;
        };
        if !fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"))
        {
            continue;
        }
        let mut depends = Vec::new();
        for key in ["Pre-Depends", "Depends"] {
            depends.extend(fields.get(key).map(|v| relations(v)).unwrap_or_default());
        }
        for provided in fields
            .get("Provides")
            .map(|v| relations(v))
            .unwrap_or_default()
        {
            for p in provided {
                db.provides.entry(p).or_default().push(name.clone());
            }
        }
        db.packages.insert(
            name.clone(),
            Package {
                version: version.clone(),
                depends,
            },
        );
    }
    db
}

/// `a (>= 1), b | c:any` → [[a], [b, c]]: names only.
fn relations(v: &str) -> Vec<Vec<String>> {
    v.split(',')
        .map(|alts| {
            alts.split('|')
                .filter_map(|a| a.split_whitespace().next())
                .map(|a| a.split(':').next().unwrap_or(a).to_string())
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

/// The installed packages `roots` need, with their versions: the roots, and transitively
/// every installed alternative (or provider) of each dependency.
pub(crate) fn closure(
    db: &PackageDb,
    roots: &[&str],
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<String> = Vec::new();
    for r in roots {
        if !db.packages.contains_key(*r) {
            return Err(BuildError::HostKey(format!(
                "host_inputs names package {r:?}, which is not installed on this host"
            )));
        }
        todo.push(r.to_string());
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let installed: Vec<String> = match db.packages.get(&name) {
            Some(_) => vec![name.clone()],
            None => db.provides.get(&name).cloned().unwrap_or_default(),
        };
        for n in installed {
            let Some(p) = db.packages.get(&n) else {
                continue;
            };
            out.insert(n.clone(), p.version.clone());
            for alts in &p.depends {
                todo.extend(alts.iter().cloned());
            }
            seen.insert(n);
        }
    }
    Ok(out)
}

/// Hosts without dpkg: what changes when software is installed or configured.
fn fingerprint() -> String {
    let mut s = String::new();
    for p in ["/etc", "/usr", "/usr/bin", "/usr/lib", "/usr/local/bin"] {
        if let Ok(m) = std::fs::metadata(p) {
            s.push_str(&format!("{p} {} {} {}\n", m.ino(), m.size(), m.mtime()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: postgresql-15
Status: install ok installed
Version: 15.18-0+deb12u1
Depends: libc6 (>= 2.34), libpq5 (>= 15~), postgresql-common (>= 241~) | postgresql-client-common,
 tzdata
Provides: postgresql-contrib-15

Package: libc6
Status: install ok installed
Version: 2.36-9+deb12u14
Pre-Depends: libgcc-s1

Package: libgcc-s1
Status: install ok installed
Version: 12.2.0-14

Package: libpq5
Status: install ok installed
Version: 15.18-0+deb12u1
Depends: libc6

Package: postgresql-common
Status: install ok installed
Version: 248
Depends: perl:any

Package: perl-base
Status: install ok installed
Version: 5.36.0-7
Provides: perl:any

Package: tzdata
Status: deinstall ok config-files
Version: 2024a

Package: hyperfine
Status: install ok installed
Version: 1.15.0-2
";

    #[test]
    fn a_packages_closure_follows_dependencies_alternatives_and_providers() {
        let db = parse_status(STATUS);
        assert!(!db.packages.contains_key("tzdata"), "not installed");
        let c = closure(&db, &["postgresql-15"]).unwrap();
        let names: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "libc6",
                "libgcc-s1",
                "libpq5",
                "perl-base",
                "postgresql-15",
                "postgresql-common"
            ],
            "hyperfine is not needed; perl:any is provided by perl-base"
        );
        assert_eq!(c["postgresql-15"], "15.18-0+deb12u1");
        let err = closure(&db, &["nope"]).unwrap_err().to_string();
        assert!(err.contains("\"nope\", which is not installed"), "{err}");
    }

    #[test]
    fn inputs_are_checked() {
        assert!(check_input("pkg:postgresql-15").is_ok());
        assert!(check_input("/etc/postgresql-common").is_ok());
        for bad in ["pkg:", "pkg:a b", "etc/x", "/etc/../x"] {
            assert!(check_input(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_follows_declared_inputs_and_nothing_else() {
        let store = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf");
        std::fs::write(&file, "a").unwrap();
        let inputs = vec![file.display().to_string()];
        let key = |inputs: &[String]| {
            host_base_key(store.path(), HostKeyInput { inputs, users: &[] }).unwrap()
        };
        let k1 = key(&inputs);
        assert_eq!(k1, key(&inputs), "stable");
        // A new inode, new times, same content: the same key (it must travel).
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, "a").unwrap();
        assert_eq!(k1, key(&inputs), "times and inode numbers are not in it");
        std::fs::write(&file, "b").unwrap();
        assert_ne!(k1, key(&inputs), "content is");
        std::fs::remove_file(&file).unwrap();
        assert_ne!(k1, key(&inputs), "so is absence");
    }
}
