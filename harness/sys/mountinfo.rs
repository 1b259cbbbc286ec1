//! `/proc/self/mountinfo`, parsed once for everyone who reads it (the host root's mount
//! points, the store's image and filesystem type, cgroup v1 hierarchies).
//!
//! A line is `ID PARENT MAJ:MIN ROOT POINT OPTS [TAGS…] - TYPE SOURCE SUPER_OPTS`. The table
//! is bytes, not text: a mount point need not be UTF-8 (any directory name can be mounted
//! on), paths are kept exactly, and one such line must not hide the others.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory of its filesystem that is mounted (field 4).
    pub(crate) root: PathBuf,
    /// Where it is mounted (field 5).
    pub(crate) point: PathBuf,
    /// The filesystem type.
    pub(crate) fstype: String,
    /// The source (a device, or what the filesystem was given).
    pub(crate) source: String,
    /// The superblock's options (e.g. a cgroup v1 hierarchy's controllers).
    pub(crate) super_opts: String,
}

/// The mounts of a mountinfo table; lines that are not mountinfo lines are skipped.
pub(crate) fn parse(table: &[u8]) -> Vec<Mount> {
    table
        .split(|b| *b == b'\n')
        .filter_map(parse_line)
        .collect()
}

/// This process's mounts (empty if `/proc` cannot be read).
pub(crate) fn read() -> Vec<Mount> {
    std::fs::read("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// One mountinfo line.
pub(crate) fn parse_line(line: &[u8]) -> Option<Mount> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (left, right) = (&line[..sep], &line[sep + 3..]);
    let mut left = left.split(|b| *b == b' ').skip(3);
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(unescape(b)));
    let root = path(left.next()?);
    let point = path(left.next()?);
    let mut right = right.split(|b| *b == b' ');
    let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
    Some(Mount {
        root,
        point,
        fstype: text(right.next()?),
        source: text(right.next()?),
        super_opts: right.next().map(text).unwrap_or_default(),
    })
}

/// A mountinfo field with its `\ooo` escapes (space, tab, newline, backslash) decoded.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn lines_with_escapes_tags_and_bytes_that_are_not_utf8() {
        let table =
            b"36 35 7:0 /sub /srv/a\\040b rw,noatime shared:1 master:2 - xfs /dev/loop0 rw,attr2\n\
                      37 35 0:25 / /tmp/\xc0E rw - tmpfs tmpfs rw\n\
                      not a mountinfo line\n";
        let m = parse(table);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].root, PathBuf::from("/sub"));
        assert_eq!(m[0].point, PathBuf::from("/srv/a b"));
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("xfs", "/dev/loop0")
        );
        assert_eq!(m[0].super_opts, "rw,attr2");
        assert_eq!(m[1].point.as_os_str().as_bytes(), b"/tmp/\xc0E");
        assert!(parse_line(b"garbage").is_none());
    }
}
