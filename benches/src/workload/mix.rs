//! The operations of the load phase and their mix: `--mix` weights and
//! the fixed schedule a connection cycles through.

use std::fmt;

/// Longest operation schedule built from `--mix` ratios.
pub const MIX_SCHEDULE_LEN_MAX: usize = 1000;
/// Number of operation kinds (length of per-kind arrays).
pub const OP_KINDS: usize = 4;

/// Operations the load phase issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Create,
    Apply,
    Get,
    /// One BATCH (mode atomic) of `--batch-ops` APPLY_EVENTs.
    Batch,
}

impl OpKind {
    pub const ALL: [OpKind; OP_KINDS] = [OpKind::Create, OpKind::Apply, OpKind::Get, OpKind::Batch];
    /// Kinds `--mix` may name. A batch shares its instances with nothing:
    /// mixed with single applies, a connection's pipelined requests could
    /// reach an instance in another order than sent (the batch's shards are
    /// prepared one after another), and states could not be predicted.
    pub const MIXABLE: [OpKind; 3] = [OpKind::Create, OpKind::Apply, OpKind::Get];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Apply => "apply",
            OpKind::Get => "get",
            OpKind::Batch => "batch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the operations, e.g. `apply=70,get=30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Weight per [`OpKind::index`].
    pub weights: [u32; OP_KINDS],
}

impl Mix {
    pub fn only(kind: OpKind) -> Mix {
        let mut weights = [0; OP_KINDS];
        weights[kind.index()] = 1;
        Mix { weights }
    }

    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; OP_KINDS];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected op=weight"))?;
            let kind = OpKind::MIXABLE
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| format!("unknown op '{name}' (create, apply, get)"))?;
            weights[kind.index()] = weight
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': weight must be a non-negative integer"))?;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err("every weight is 0".into());
        }
        Ok(Mix { weights })
    }

    pub fn uses(&self, kind: OpKind) -> bool {
        self.weights[kind.index()] > 0
    }

    /// A fixed interleaving of the operations in proportion to the weights
    /// (smooth weighted round robin): deterministic, no random numbers.
    pub fn schedule(&self) -> Vec<OpKind> {
        let gcd = self
            .weights
            .iter()
            .filter(|&&w| w > 0)
            .fold(0u32, |a, &b| gcd(a, b));
        let mut weights = self.weights.map(|w| w / gcd.max(1));
        let mut total: u32 = weights.iter().sum();
        if total as usize > MIX_SCHEDULE_LEN_MAX {
            // Scale down; keep every used op at least once.
            let scale = total as f64 / MIX_SCHEDULE_LEN_MAX as f64;
            weights = weights.map(|w| {
                if w == 0 {
                    0
                } else {
                    ((w as f64 / scale) as u32).max(1)
                }
            });
            total = weights.iter().sum();
        }
        let mut current = [0i64; OP_KINDS];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..OP_KINDS {
                current[i] += weights[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            schedule.push(OpKind::ALL[best]);
        }
        schedule
    }

    pub fn describe(&self) -> String {
        OpKind::ALL
            .iter()
            .filter(|k| OpKind::MIXABLE.contains(k) || self.weights[k.index()] > 0)
            .map(|k| format!("{}={}", k.name(), self.weights[k.index()]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_schedule_follows_the_weights() {
        let mix = Mix::parse("apply=70,get=30,create=0").unwrap();
        let s = mix.schedule();
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().filter(|&&k| k == OpKind::Apply).count(), 7);
        assert_eq!(s.iter().filter(|&&k| k == OpKind::Get).count(), 3);
        assert!(Mix::parse("apply=0").is_err());
        assert!(Mix::parse("put=1").is_err());
    }

    #[test]
    fn batches_cannot_be_mixed() {
        assert!(Mix::parse("apply=1,batch=1").is_err());
        assert_eq!(
            Mix::only(OpKind::Batch).describe(),
            "create=0,apply=0,get=0,batch=1"
        );
    }
}
