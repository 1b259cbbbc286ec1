//! Container ids: 128 random bits, so that processes in different PID namespaces or on
//! different hosts sharing one store never pick the same id.

/// 32 lowercase hex digits from the kernel's random pool.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // getrandom(2) on the kernel's pool blocks only before the pool is first initialized
    // (early boot); `fill` retries EINTR. If it fails anyway, fall back to what std's
    // hasher seeds itself with (also from the kernel), mixed with time and pid.
    if crate::sys::random_bytes(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(crate::sys::monotonic_ns() as u128);
            h.write_u32(std::process::id());
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_128_bit_hex_and_distinct() {
        let a = super::random_id();
        let b = super::random_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
