//! Whom a container's command runs as: Docker's user forms (`NAME`, `UID`, `NAME:GROUP`,
//! `UID:GID`, …) resolved through the image's own `/etc/passwd` and `/etc/group`, read
//! inside the image's layers (never through a symlink out of them), as runc's
//! `GetExecUser` does.

use std::path::Path;

use crate::error::ConfigError;
use crate::sys::inroot::{self, Found};
use crate::Image;

/// The most of `/etc/passwd` or `/etc/group` read: a larger one is an error, not a hang.
const FILE_LIMIT: u64 = 16 << 20;

/// A resolved user: uid, primary gid and supplementary groups (the primary first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The home directory of its passwd entry, if it has one.
    pub home: Option<String>,
}

/// Resolves `spec` (`USER[:GROUP]`, each a name or a number) in `image`. A numeric uid
/// needs no passwd entry (its gid is then 0, as Docker's); a name must have one. Without a
/// group, the user's supplementary groups are those `/etc/group` lists it in.
pub(crate) fn resolve(image: &Image, spec: &str) -> Result<Ids, ConfigError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") {
        return Err(ConfigError::BadUser(spec.to_string()));
    }
    let passwd = image_text(image, "/etc/passwd")?;
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(&passwd)
            .find(|e| e.uid == uid)
            .unwrap_or(Entry {
                name: "",
                uid,
                gid: 0,
                home: "",
            }),
        Err(_) => passwd_entries(&passwd)
            .find(|e| e.name == user)
            .ok_or_else(|| ConfigError::UnknownUser(user.to_string()))?,
    };
    let home = Some(entry.home.to_string()).filter(|h| h.starts_with('/'));
    let group_file = image_text(image, "/etc/group")?;
    if let Some(g) = group {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(&group_file)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| ConfigError::UnknownGroup(g.to_string()))?,
        };
        return Ok(Ids {
            uid: entry.uid,
            gid,
            groups: vec![gid],
            home,
        });
    }
    let mut groups = vec![entry.gid];
    if !entry.name.is_empty() {
        for g in group_entries(&group_file) {
            if g.members.split(',').any(|m| m == entry.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    Ok(Ids {
        uid: entry.uid,
        gid: entry.gid,
        groups,
        home,
    })
}

/// The text of the file at `path` in `image`: from the uppermost layer that has it; empty
/// if none has it or a layer hides it (a whiteout).
fn image_text(image: &Image, path: &str) -> Result<String, ConfigError> {
    let err = |source| ConfigError::ImageFile {
        path: path.into(),
        source,
    };
    for layer in image.lowers() {
        let bytes = match inroot::probe(&layer, Path::new(path)).map_err(err)? {
            Found::Absent => continue,
            Found::Hidden => None,
            Found::File { .. } => {
                inroot::read_file(&layer, Path::new(path), FILE_LIMIT).map_err(err)?
            }
        };
        return Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned());
    }
    Ok(String::new())
}

struct Entry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// The well-formed lines of a passwd file (`name:pw:uid:gid:…`); others are skipped.
fn passwd_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next();
        Some(Entry {
            name,
            uid,
            gid,
            home: f.next().unwrap_or(""),
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// The well-formed lines of a group file (`name:pw:gid:members`).
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        Some(GroupEntry {
            name,
            gid: f.next()?.parse().ok()?,
            members: f.next().unwrap_or(""),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn image_with(passwd: &str, group: &str) -> (tempfile::TempDir, Image) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        std::fs::write(tmp.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(tmp.path().join("etc/group"), group).unwrap();
        let image = Image::rootfs(tmp.path());
        (tmp, image)
    }

    const PASSWD: &str =
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbad line\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\naudio:x:29:app\n";

    #[test]
    fn resolves_docker_user_forms() {
        let (_t, image) = image_with(PASSWD, GROUP);
        let ids = |s| resolve(&image, s).map(|i| (i.uid, i.gid, i.groups));
        assert_eq!(ids("app").unwrap(), (1000, 1000, vec![1000, 10, 29]));
        assert_eq!(ids("1000").unwrap(), (1000, 1000, vec![1000, 10, 29]));
        assert_eq!(ids("4242").unwrap(), (4242, 0, vec![0]));
        assert_eq!(ids("app:wheel").unwrap(), (1000, 10, vec![10]));
        assert_eq!(ids("app:77").unwrap(), (1000, 77, vec![77]));
        let home = |s| resolve(&image, s).unwrap().home;
        assert_eq!(home("app").as_deref(), Some("/home/app"));
        assert_eq!(home("4242"), None);
        assert!(matches!(ids("nobody"), Err(ConfigError::UnknownUser(u)) if u == "nobody"));
        assert!(matches!(ids("app:staff"), Err(ConfigError::UnknownGroup(g)) if g == "staff"));
        assert!(matches!(ids(":1"), Err(ConfigError::BadUser(_))));
        assert!(matches!(ids("app:"), Err(ConfigError::BadUser(_))));
    }

    /// `/etc/passwd` as a symlink to a host file is read inside the layer: the host's file
    /// never is.
    #[test]
    fn never_reads_through_a_symlink_out_of_the_image() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "evil:x:7:7::/:/bin/sh\n").unwrap();
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir(layer.path().join("etc")).unwrap();
        symlink(host.path().join("passwd"), layer.path().join("etc/passwd")).unwrap();
        symlink("../../../../../../..", layer.path().join("etc/up")).unwrap();
        let image = Image::rootfs(layer.path());
        assert!(matches!(
            resolve(&image, "evil"),
            Err(ConfigError::UnknownUser(_))
        ));
        assert_eq!(image_text(&image, "/etc/up/etc/group").unwrap(), "");
    }

    /// The uppermost layer's file wins; a whiteout hides the ones below.
    #[test]
    fn the_uppermost_layer_wins_and_whiteouts_hide() {
        let (_t, base) = image_with(PASSWD, GROUP);
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/passwd"), "app:x:5:6::/:/bin/sh\n").unwrap();
        let image = base.clone().layer(upper.path());
        assert_eq!(resolve(&image, "app").unwrap().uid, 5);
        // A FIFO where the file should be is not opened (it would block): no file.
        let fifo = tempfile::tempdir().unwrap();
        std::fs::create_dir(fifo.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &fifo.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let image = base.layer(fifo.path());
        assert!(matches!(
            resolve(&image, "app"),
            Err(ConfigError::UnknownUser(_))
        ));
    }
}
