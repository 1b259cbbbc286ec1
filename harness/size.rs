//! Sizes of memory and file systems: a typed, nonzero number of bytes, parsed once from
//! text like `512m` and rendered into mount options only by pristine itself, so that no
//! user text ever reaches a mount option string.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// A nonzero number of bytes. Parsed from `65536`, `64k`, `512m`, `4g` or `1t` (binary
/// units, case-insensitive, an optional trailing `b` or `ib`: `512MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(NonZeroU64);

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("bad size {0:?}: expected a number of bytes with an optional unit k, m, g or t (e.g. 512m, 4g, 65536)")]
    Syntax(String),
    /// Zero.
    #[error("bad size {0:?}: it must be more than zero")]
    Zero(String),
    /// More than 2^64 - 1 bytes.
    #[error("bad size {0:?}: it is too large")]
    TooLarge(String),
}

impl Size {
    /// `bytes` bytes; `None` for zero.
    pub const fn bytes(bytes: u64) -> Option<Size> {
        match NonZeroU64::new(bytes) {
            Some(n) => Some(Size(n)),
            None => None,
        }
    }

    /// `n` MiB (`n` must be nonzero and small enough; for constants).
    pub const fn mib(n: u64) -> Size {
        match Size::bytes(n << 20) {
            Some(s) => s,
            None => panic!("a zero size constant"),
        }
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Size, SizeError> {
        let t = s.trim().to_ascii_lowercase();
        let t = t
            .strip_suffix("ib")
            .or_else(|| t.strip_suffix('b'))
            .unwrap_or(&t);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'k')) => (&t[..i], 10),
            Some((i, 'm')) => (&t[..i], 20),
            Some((i, 'g')) => (&t[..i], 30),
            Some((i, 't')) => (&t[..i], 40),
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SizeError::Syntax(s.to_string()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| SizeError::TooLarge(s.to_string()))?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| SizeError::TooLarge(s.to_string()))?;
        Size::bytes(bytes).ok_or_else(|| SizeError::Zero(s.to_string()))
    }
}

/// The shortest exact rendering in tmpfs syntax (`4g`, `64m`, `4097`).
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.get();
        for (shift, unit) in [(40, "t"), (30, "g"), (20, "m"), (10, "k")] {
            if b % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

/// For people: `64 MiB`, `1.5 GiB`, `4097 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if v.fract() == 0.0 => format!("{v} {}", UNITS[unit]),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_sizes() {
        let s: Size = "4g".parse().unwrap();
        assert_eq!(s.get(), 4 << 30);
        assert_eq!(s.to_string(), "4g");
        assert_eq!("512MiB".parse::<Size>().unwrap().to_string(), "512m");
        assert_eq!("65536".parse::<Size>().unwrap().to_string(), "64k");
        assert_eq!("4097".parse::<Size>().unwrap().to_string(), "4097");
        assert_eq!(" 2G ".parse::<Size>().unwrap().get(), 2 << 30);
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }

    #[test]
    fn refuses_zero_option_text_and_overflow() {
        for bad in [
            "1m,mode=0777",
            "",
            "m",
            "-1",
            "1.5g",
            "10%",
            "1 g",
            "0x10",
            "4gg",
        ] {
            assert!(
                matches!(bad.parse::<Size>(), Err(SizeError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!("0".parse::<Size>(), Err(SizeError::Zero(_))));
        assert!(matches!("0k".parse::<Size>(), Err(SizeError::Zero(_))));
        for big in ["99999999999999999999", "16777216t"] {
            assert!(
                matches!(big.parse::<Size>(), Err(SizeError::TooLarge(_))),
                "{big}"
            );
        }
    }
}
