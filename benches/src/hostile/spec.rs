//! `--hostile slowloris=N,unread=N,biglist=N`: the kinds of hostile
//! client and how many connections of each.

use super::HOSTILE_CONNECTIONS_MAX;

/// Number of hostile kinds.
pub const KINDS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostileKind {
    Slowloris,
    Unread,
    Biglist,
}

impl HostileKind {
    pub const ALL: [HostileKind; KINDS] = [
        HostileKind::Slowloris,
        HostileKind::Unread,
        HostileKind::Biglist,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostileKind::Slowloris => "slowloris",
            HostileKind::Unread => "unread",
            HostileKind::Biglist => "biglist",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many hostile connections of each kind: `slowloris=32,unread=8,biglist=4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostileSpec {
    counts: [usize; KINDS],
}

impl HostileSpec {
    /// Parses `kind=N,...`; kinds left out get 0.
    pub fn parse(text: &str) -> Result<HostileSpec, String> {
        let mut counts = [None; KINDS];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected kind=count"))?;
            let kind = HostileKind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    format!("unknown hostile kind '{name}' (slowloris, unread, biglist)")
                })?;
            let count: usize = count
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': count must be a non-negative integer"))?;
            if counts[kind.index()].replace(count).is_some() {
                return Err(format!("'{}' given twice", kind.name()));
            }
        }
        let spec = HostileSpec {
            counts: counts.map(|c| c.unwrap_or(0)),
        };
        match spec.total() {
            0 => Err("every count is 0 (leave --hostile out for no hostile clients)".into()),
            n if n > HOSTILE_CONNECTIONS_MAX => Err(format!(
                "{n} hostile connections: at most {HOSTILE_CONNECTIONS_MAX}"
            )),
            _ => Ok(spec),
        }
    }

    pub fn count(&self, kind: HostileKind) -> usize {
        self.counts[kind.index()]
    }

    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// The spec in the syntax it was given in, every kind named.
    pub fn describe(&self) -> String {
        HostileKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.count(*k)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_each_kind_once() {
        let spec = HostileSpec::parse("slowloris=32, unread=8,biglist=4").unwrap();
        assert_eq!(spec.count(HostileKind::Slowloris), 32);
        assert_eq!(spec.count(HostileKind::Unread), 8);
        assert_eq!(spec.count(HostileKind::Biglist), 4);
        assert_eq!(spec.total(), 44);
        assert_eq!(spec.describe(), "slowloris=32,unread=8,biglist=4");
        let partial = HostileSpec::parse("unread=2").unwrap();
        assert_eq!(partial.describe(), "slowloris=0,unread=2,biglist=0");
        for bad in [
            "",
            "unread=0",
            "x=1",
            "unread",
            "unread=-1",
            "unread=1,unread=2",
            "slowloris=1001",
        ] {
            assert!(HostileSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
