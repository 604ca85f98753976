//! A small deterministic PRNG for the randomized batch tests.

/// A small deterministic PRNG (xorshift64*), seeded per test and printed.
pub struct Rng(pub u64);

impl Rng {
    pub fn seeded(name: &str) -> Rng {
        let seed = match std::env::var("CORESTATE_TEST_SEED") {
            Ok(s) => s.parse().expect("CORESTATE_TEST_SEED is a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{name}: seed {seed} (set CORESTATE_TEST_SEED to repeat)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
