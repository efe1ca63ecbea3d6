//! Validated identifiers: parse once at the edge, then pass the typed value.
//!
//! Each type is a `String` underneath so that it can be stored, logged and
//! put in a path without conversion, but the only ways to build one are the
//! parsers here, so a value of the type is always valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier. The `&'static str` names what
/// was expected, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    #[error("empty {0}")]
    Empty(&'static str),
    #[error("{what} is {len} characters long; expected {expected}")]
    Length {
        what: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("{what} contains {ch:?} at position {pos}; expected {expected}")]
    Character {
        what: &'static str,
        ch: char,
        pos: usize,
        expected: &'static str,
    },
}

macro_rules! string_newtype {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseIdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An episode id: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
///
/// The first character is alphanumeric, so `.` and `..` are never ids, and
/// `/` is never allowed, so an id is always a single, safe path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpisodeId(String);
string_newtype!(EpisodeId, "episode id");

impl EpisodeId {
    /// Longest valid id, in bytes (all valid characters are ASCII).
    pub const MAX_LEN: usize = 128;
    const EXPECTED: &'static str = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}";

    pub fn parse(s: &str) -> Result<Self, ParseIdError> {
        const WHAT: &str = "episode id";
        if s.is_empty() {
            return Err(ParseIdError::Empty(WHAT));
        }
        if s.len() > Self::MAX_LEN {
            return Err(ParseIdError::Length {
                what: WHAT,
                len: s.chars().count(),
                expected: Self::EXPECTED,
            });
        }
        for (pos, ch) in s.chars().enumerate() {
            let ok = if pos == 0 {
                ch.is_ascii_alphanumeric()
            } else {
                ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
            };
            if !ok {
                return Err(ParseIdError::Character {
                    what: WHAT,
                    ch,
                    pos,
                    expected: Self::EXPECTED,
                });
            }
        }
        Ok(Self(s.to_owned()))
    }
}

fn parse_lower_hex(s: &str, what: &'static str, len: usize) -> Result<String, ParseIdError> {
    let expected = if len == 40 {
        "40 lowercase hex characters"
    } else {
        "64 lowercase hex characters"
    };
    if s.is_empty() {
        return Err(ParseIdError::Empty(what));
    }
    if let Some((pos, ch)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(ParseIdError::Character {
            what,
            ch,
            pos,
            expected,
        });
    }
    if s.len() != len {
        return Err(ParseIdError::Length {
            what,
            len: s.len(),
            expected,
        });
    }
    Ok(s.to_owned())
}

/// A code commit: exactly 40 lowercase hex characters (a full git SHA-1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Commit(String);
string_newtype!(Commit, "commit");

impl Commit {
    /// Strict parse, as on the wire: lowercase only.
    pub fn parse(s: &str) -> Result<Self, ParseIdError> {
        parse_lower_hex(s, "commit", 40).map(Self)
    }

    /// Lenient parse for humans (command lines, `meta.json` written by
    /// other tools): surrounding whitespace is trimmed and upper case is
    /// folded before the strict parse.
    pub fn parse_lenient(s: &str) -> Result<Self, ParseIdError> {
        Self::parse(&s.trim().to_ascii_lowercase())
    }
}

/// A sha256 digest: exactly 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(String);
string_newtype!(Sha256, "sha256");

impl Sha256 {
    pub fn parse(s: &str) -> Result<Self, ParseIdError> {
        parse_lower_hex(s, "sha256", 64).map(Self)
    }

    /// Build from the 32 raw bytes of a finished digest.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in bytes {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn episode_id_accepts_the_spec_grammar() {
        for ok in ["a", "A", "0", "ep-2026.11.22_001", &"x".repeat(128)] {
            assert!(EpisodeId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn episode_id_rejects_traversal_and_odd_names() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "../etc",
            "a\\b",
            "a b",
            "a%2Fb",
            "é",
            "a\0",
            &"x".repeat(129),
            &"x".repeat(200),
        ] {
            assert!(EpisodeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_is_strict_on_the_wire_and_lenient_for_humans() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert!(Commit::parse(c).is_ok());
        assert!(Commit::parse(&c.to_uppercase()).is_err());
        assert_eq!(
            Commit::parse_lenient(&format!(" {} ", c.to_uppercase()))
                .unwrap()
                .as_str(),
            c
        );
        assert!(Commit::parse(&c[..39]).is_err());
        assert!(Commit::parse(&format!("{c}0")).is_err());
        assert!(matches!(
            Commit::parse("zz"),
            Err(ParseIdError::Character { pos: 0, .. })
        ));
    }

    #[test]
    fn sha256_round_trips_through_bytes() {
        let bytes = [0xabu8; 32];
        let s = Sha256::from_bytes(&bytes);
        assert_eq!(s.as_str(), "ab".repeat(32));
        assert_eq!(Sha256::parse(s.as_str()).unwrap(), s);
    }

    #[test]
    fn serde_rejects_invalid_values() {
        let r: Result<EpisodeId, _> = serde_json::from_str("\"../x\"");
        assert!(r.is_err());
        let r: EpisodeId = serde_json::from_str("\"ep1\"").unwrap();
        assert_eq!(r.as_str(), "ep1");
    }

    proptest! {
        #[test]
        fn any_parsed_id_is_one_safe_path_component(s in "\\PC{0,140}") {
            if let Ok(id) = EpisodeId::parse(&s) {
                prop_assert!(!id.as_str().contains('/'));
                prop_assert!(id.as_str() != "." && id.as_str() != "..");
                prop_assert!(id.as_str().len() <= 128);
            }
        }

        #[test]
        fn grammar_matches_exactly(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,127}") {
            prop_assert!(EpisodeId::parse(&s).is_ok());
        }
    }
}
