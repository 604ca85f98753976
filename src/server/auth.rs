//! Bearer-token authentication (docs/PROTOCOL.md §3.3): tokens are configured as SHA-256
//! hashes; a presented token is hashed and compared with every configured
//! hash in constant time, so timing reveals neither which hash nor how much
//! of it matched.

use sha2::{Digest, Sha256};
use shards::{EngineError, ErrorCode};

pub struct TokenSet {
    required: bool,
    hashes: Vec<[u8; 32]>,
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

impl TokenSet {
    /// `hashes` were validated by the configuration (64 hex characters).
    pub fn new(required: bool, hashes: &[String]) -> Self {
        TokenSet {
            required,
            hashes: hashes.iter().filter_map(|h| decode_hex32(h)).collect(),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// AUTH: `Ok(())` authenticates the session.
    pub fn check(&self, method: &str, token: &str) -> Result<(), EngineError> {
        let failed = |why: &str| {
            EngineError::new(
                ErrorCode::AuthFailed,
                format!("authentication failed: {why}"),
            )
        };
        if method != "bearer" {
            return Err(failed(&format!("unsupported auth method: {method}")));
        }
        if !self.required {
            return if token.is_empty() {
                Err(failed("empty token"))
            } else {
                Ok(())
            };
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut matched = 0u8;
        for hash in &self.hashes {
            let diff = hash
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            matched |= (diff == 0) as u8;
        }
        if matched == 1 {
            Ok(())
        } else {
            Err(failed("invalid token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn bearer_tokens_are_checked_against_hashes() {
        let set = TokenSet::new(true, &[SECRET_HASH.to_string()]);
        assert!(set.check("bearer", "secret").is_ok());
        let e = set.check("bearer", "wrong").unwrap_err();
        assert_eq!(e.code, ErrorCode::AuthFailed);
        assert_eq!(e.message, "authentication failed: invalid token");
        assert_eq!(
            set.check("basic", "secret").unwrap_err().message,
            "authentication failed: unsupported auth method: basic"
        );
    }

    #[test]
    fn without_required_auth_any_non_empty_token_passes() {
        let set = TokenSet::new(false, &[]);
        assert!(set.check("bearer", "x").is_ok());
        assert_eq!(
            set.check("bearer", "").unwrap_err().message,
            "authentication failed: empty token"
        );
    }
}
