//! What a container may use.

/// Resource limits of a container. `None` means unlimited (no cgroup is created at all
/// when every limit is `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory (and, on v1 where available, memory + swap), in bytes.
    pub memory_bytes: Option<u64>,
    /// Number of processes and threads.
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some()
    }
}

/// Parses a size like `512m`, `2g`, `64k` or `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<crate::Size>()
        .map(crate::Size::get)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_sizes() {
        assert_eq!(super::parse_size("512m"), Ok(512 << 20));
        assert_eq!(super::parse_size("2G"), Ok(2 << 30));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("lots").is_err());
        assert!(super::parse_size("0").is_err());
    }
}
