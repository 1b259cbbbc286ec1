//! Validation of paths found inside layer tars.

/// Splits a tar entry path into its components, rejecting anything that could
/// leave the layer: absolute paths, `..` components and NUL bytes. Empty and
/// `.` components are dropped, so `./a//b/` gives `["a", "b"]` and `./` gives
/// an empty list (the layer root).
pub(crate) fn entry_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("has an empty path");
    }
    if raw.contains(&0) {
        return Err("has a NUL byte in its path");
    }
    if raw[0] == b'/' {
        return Err("is an absolute path; layer entries must be relative to the layer root");
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                return Err("has a `..` path component, which would escape the layer root");
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Joins components back into a display/lookup key (`a/b/c`).
pub(crate) fn join(components: &[&[u8]]) -> Vec<u8> {
    components.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> Vec<String> {
        entry_components(p.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn normalizes_harmless_forms() {
        assert_eq!(ok("a/b/c"), ["a", "b", "c"]);
        assert_eq!(ok("./a//b/./c/"), ["a", "b", "c"]);
        assert!(ok("./").is_empty());
        assert!(ok(".").is_empty());
        assert_eq!(ok("a/...b/..c"), ["a", "...b", "..c"]);
    }

    #[test]
    fn rejects_escapes() {
        for bad in ["../x", "a/../../x", "a/..", "..", "./../x"] {
            let e = entry_components(bad.as_bytes()).unwrap_err();
            assert!(e.contains("`..`"), "{bad}: {e}");
        }
        for bad in ["/etc/passwd", "//x", "/"] {
            let e = entry_components(bad.as_bytes()).unwrap_err();
            assert!(e.contains("absolute"), "{bad}: {e}");
        }
        assert!(entry_components(b"").is_err());
        assert!(entry_components(b"a\0b").is_err());
    }

    #[test]
    fn join_round_trips() {
        assert_eq!(join(&entry_components(b"./a/b").unwrap()), b"a/b");
        assert_eq!(join(&[]), b"");
    }
}
