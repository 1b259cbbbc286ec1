//! The one duration grammar of every command, environment variable and recipe field.
//!
//! A duration is a plain number of seconds (`30`, `1.5`) or humantime text (`500ms`, `10s`,
//! `2m`, `1h 30m`, `7d`); it must be more than zero and at most [`MAX_DURATION`]. Anything
//! else (`0s`, `1e30`, `500000000000y`, `-1`, `inf`) is an error that says so, never a
//! panic: deadlines computed from a duration cannot overflow.

use std::time::Duration;

/// The longest duration accepted: 100 years (365-day years).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Neither a number of seconds nor humantime text.
    #[error("bad duration {text:?}: {reason} (examples: 30, 1.5, 500ms, 10s, 2m, 1h 30m, 7d)")]
    Syntax {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Zero.
    #[error("bad duration {0:?}: it must be more than zero")]
    Zero(String),
    /// More than [`MAX_DURATION`].
    #[error("bad duration {0:?}: it must be at most 100 years (36500d)")]
    TooLong(String),
}

/// Parses a duration (see the module documentation).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let syntax = |reason: String| DurationError::Syntax {
        text: text.to_string(),
        reason,
    };
    let d = if is_plain_number(t) {
        // Digits with at most one point: no sign, exponent, `inf` or `NaN`.
        let secs: f64 = t.parse().map_err(|e| syntax(format!("{e}")))?;
        if secs > MAX_DURATION.as_secs_f64() {
            return Err(DurationError::TooLong(text.to_string()));
        }
        Duration::try_from_secs_f64(secs).map_err(|e| syntax(e.to_string()))?
    } else {
        match humantime::parse_duration(t) {
            Ok(d) => d,
            Err(humantime::DurationError::NumberOverflow) => {
                return Err(DurationError::TooLong(text.to_string()))
            }
            Err(e) => return Err(syntax(e.to_string())),
        }
    };
    if d.is_zero() {
        Err(DurationError::Zero(text.to_string()))
    } else if d > MAX_DURATION {
        Err(DurationError::TooLong(text.to_string()))
    } else {
        Ok(d)
    }
}

fn is_plain_number(t: &str) -> bool {
    !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes().filter(|&b| b == b'.').count() <= 1
        && t.bytes().any(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seconds_and_humantime() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 500ms "), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
    }

    #[test]
    fn refuses_zero_extreme_and_malformed_values() {
        for bad in ["0", "0s", "0.0", "0ms"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Zero(_))),
                "{bad}"
            );
        }
        for long in [
            "500000000000y",
            "36501d",
            "99999999999999999999999",
            "18446744073709551616s",
        ] {
            assert!(
                matches!(parse_duration(long), Err(DurationError::TooLong(_))),
                "{long}: {:?}",
                parse_duration(long)
            );
        }
        for bad in [
            "",
            "1e30",
            "-1",
            "inf",
            "NaN",
            "1..2",
            ".",
            "2 parsecs",
            "ms",
            "1.5.s",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax { .. })),
                "{bad}: {:?}",
                parse_duration(bad)
            );
        }
    }
}
