//! User mapping for rootless containers.

use crate::sys::IdMaps;

/// Maps the caller's uid and gid to root inside the container: the only mapping an
/// unprivileged process may write for itself (no `newuidmap` helper needed).
pub fn own_ids_as_root(uid: u32, gid: u32) -> IdMaps {
    IdMaps {
        uid_map: format!("0 {uid} 1\n").into_bytes(),
        gid_map: format!("0 {gid} 1\n").into_bytes(),
    }
}

/// Maps the caller's uid and gid to `uid`/`gid` inside: the container then runs entirely
/// as that user (e.g. a service that refuses to run as root), still unprivileged outside.
pub fn own_ids_as(uid_inside: u32, gid_inside: u32, uid: u32, gid: u32) -> IdMaps {
    IdMaps {
        uid_map: format!("{uid_inside} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid_inside} {gid} 1\n").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_caller_to_root() {
        let m = super::own_ids_as_root(65534, 65533);
        assert_eq!(m.uid_map, b"0 65534 1\n");
        assert_eq!(m.gid_map, b"0 65533 1\n");
        let m = super::own_ids_as(104, 106, 1000, 1000);
        assert_eq!(m.uid_map, b"104 1000 1\n");
    }
}
