//! Device and admin tokens: generation, hashing and constant-time checks.
//!
//! A device token is 32 random bytes from the OS, shown once as `fry_` +
//! 64 hex characters. Only its sha256 is stored; a request's token is
//! hashed, looked up by hash, and the hashes are compared in constant time.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every device token, so that a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "fry_";

/// A fresh device token: `fry_` + 64 hex characters of OS randomness.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two token hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Constant-time check of a presented token against a known one. Both are
/// hashed first, so the time does not depend on where they differ nor on
/// their lengths.
pub fn token_matches(presented: &str, known: &str) -> bool {
    hashes_equal(&hash(presented), &hash(known))
}

/// The token of an `Authorization: Bearer <token>` header value. The scheme
/// is case-insensitive (RFC 9110); an empty token is no token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(a[4..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn hash_is_sha256_of_the_token_text() {
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(token_matches("fry_x", "fry_x"));
        assert!(!token_matches("fry_x", "fry_y"));
        assert!(!token_matches("", "fry_y"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
