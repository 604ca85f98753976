//! When the WAL makes appended records durable (docs/PROTOCOL.md §11.5).

use std::fmt;
use std::str::FromStr;

/// The fsync policy of every shard's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every group commit is on disk before any of its requests is answered.
    #[default]
    EveryWrite,
    /// A data sync after every `n` appended records (per shard).
    EveryN(u64),
    /// A data sync at least every `ms` milliseconds while there is unsynced data.
    EveryMs(u64),
    /// Never sync (except on graceful shutdown).
    Never,
}

impl FsyncPolicy {
    /// True when a request is answered only after its record is on disk.
    pub fn acks_after_sync(self) -> bool {
        matches!(self, FsyncPolicy::EveryWrite)
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::EveryWrite => f.write_str("every_write"),
            FsyncPolicy::EveryN(n) => write!(f, "every_n:{n}"),
            FsyncPolicy::EveryMs(ms) => write!(f, "every_ms:{ms}"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// Parses the environment/flag syntax: `every_write` (or `everywrite`),
/// `every_n:N`, `every_ms:N`, `never`; case-insensitive. Unlike 0.3, an
/// unknown value or a bad number is an error, never a silent default.
impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let number = |rest: &str| -> Result<u64, String> {
            match rest.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("expected a positive integer after ':' in '{s}'")),
            }
        };
        match lower.as_str() {
            "every_write" | "everywrite" => Ok(FsyncPolicy::EveryWrite),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                if let Some(rest) = lower.strip_prefix("every_n:") {
                    Ok(FsyncPolicy::EveryN(number(rest)?))
                } else if let Some(rest) = lower.strip_prefix("every_ms:") {
                    Ok(FsyncPolicy::EveryMs(number(rest)?))
                } else {
                    Err(format!(
                        "unknown fsync policy '{s}' (expected every_write, every_n:N, every_ms:N or never)"
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("every_write".parse(), Ok(FsyncPolicy::EveryWrite));
        assert_eq!("EveryWrite".parse(), Ok(FsyncPolicy::EveryWrite));
        assert_eq!("every_n:50".parse(), Ok(FsyncPolicy::EveryN(50)));
        assert_eq!("every_ms:10".parse(), Ok(FsyncPolicy::EveryMs(10)));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
    }

    #[test]
    fn rejects_garbage_instead_of_defaulting() {
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert!("every_n:x".parse::<FsyncPolicy>().is_err());
        assert!("every_ms:0".parse::<FsyncPolicy>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for p in [
            FsyncPolicy::EveryWrite,
            FsyncPolicy::EveryN(7),
            FsyncPolicy::EveryMs(3),
            FsyncPolicy::Never,
        ] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }
}
