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

    /// The error names what was expected, for the value at hand.
    #[test]
    fn hex_errors_name_the_expected_length() {
        for (r, want) in [
            (
                Commit::parse("zz").map(|_| ()),
                "40 lowercase hex characters",
            ),
            (
                Commit::parse("ab").map(|_| ()),
                "40 lowercase hex characters",
            ),
            (
                Sha256::parse("zz").map(|_| ()),
                "64 lowercase hex characters",
            ),
            (
                Sha256::parse("ab").map(|_| ()),
                "64 lowercase hex characters",
            ),
        ] {
            let e = r.unwrap_err();
            assert!(e.to_string().ends_with(want), "{e}");
        }
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

    /// The oracle for ids: SPEC §1's grammar as a regex (the regex crate,
    /// not the parser's own loop), and the error the parser must give for a
    /// string the regex rejects, computed independently.
    fn id_oracle(s: &str) -> Result<(), ParseIdError> {
        let re = regex::Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$").unwrap();
        if re.is_match(s) {
            return Ok(());
        }
        const WHAT: &str = "episode id";
        const EXPECTED: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
        if s.is_empty() {
            return Err(ParseIdError::Empty(WHAT));
        }
        if s.len() > 128 {
            return Err(ParseIdError::Length {
                what: WHAT,
                len: s.chars().count(),
                expected: EXPECTED,
            });
        }
        let first = regex::Regex::new(r"^[A-Za-z0-9]$").unwrap();
        let rest = regex::Regex::new(r"^[A-Za-z0-9._-]$").unwrap();
        let (pos, ch) = s
            .chars()
            .enumerate()
            .find(|(i, c)| {
                let one = c.to_string();
                !if *i == 0 { &first } else { &rest }.is_match(&one)
            })
            .expect("a rejected id of valid length has a bad character");
        Err(ParseIdError::Character {
            what: WHAT,
            ch,
            pos,
            expected: EXPECTED,
        })
    }

    /// Strings near the grammar: mostly its own alphabet (so that about
    /// half parse), lengths around the limit, and a few characters that
    /// must be refused (`/`, `\`, NUL, space, `%`, non-ASCII).
    fn near_ids() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[A-Za-z0-9][A-Za-z0-9._-]{0,130}",
            2 => "[A-Za-z0-9._-]{0,10}",
            2 => "[A-Za-z0-9._/\\%\\x00 é-]{1,12}",
            1 => "[A-Za-z0-9][A-Za-z0-9._-]{120,135}",
            1 => "\\PC{0,140}",
        ]
    }

    /// The oracle for commits and digests: `len` lowercase hex characters.
    fn hex_oracle(s: &str, len: usize) -> bool {
        regex::Regex::new(&format!("^[0-9a-f]{{{len}}}$"))
            .unwrap()
            .is_match(s)
    }

    fn near_hex(len: usize) -> impl Strategy<Value = String> {
        let re = |r: String| proptest::string::string_regex(&r).unwrap();
        prop_oneof![
            3 => re(format!("[0-9a-f]{{{len}}}")),
            2 => re(format!("[0-9a-fA-F]{{{},{}}}", len - 2, len + 2)),
            1 => re(format!("[ \\t]?[0-9a-gA-G]{{{},{}}}[ \\t]?", len - 1, len + 1)),
            1 => re("\\PC{0,70}".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn episode_id_parse_agrees_with_the_grammar_rejections_included(s in near_ids()) {
            let got = EpisodeId::parse(&s);
            prop_assert_eq!(got.as_ref().map(|_| ()).map_err(Clone::clone), id_oracle(&s));
            if let Ok(id) = got {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!id.as_str().contains('/'));
                prop_assert!(id.as_str() != "." && id.as_str() != "..");
            }
        }

        #[test]
        fn commit_parse_is_40_lowercase_hex_and_lenient_only_folds_and_trims(s in near_hex(40)) {
            prop_assert_eq!(Commit::parse(&s).is_ok(), hex_oracle(&s, 40), "{:?}", s);
            let folded = s.trim().to_ascii_lowercase();
            match Commit::parse_lenient(&s) {
                Ok(c) => {
                    prop_assert!(hex_oracle(c.as_str(), 40));
                    prop_assert_eq!(c.as_str(), folded.as_str());
                }
                Err(_) => prop_assert!(!hex_oracle(&folded, 40)),
            }
        }

        #[test]
        fn sha256_parse_is_64_lowercase_hex(s in near_hex(64)) {
            prop_assert_eq!(Sha256::parse(&s).is_ok(), hex_oracle(&s, 64), "{:?}", s);
        }

        #[test]
        fn sha256_from_bytes_is_lowercase_hex_of_the_bytes(b in proptest::array::uniform32(any::<u8>())) {
            let d = Sha256::from_bytes(&b);
            let want: String = b.iter().map(|x| format!("{x:02x}")).collect();
            prop_assert_eq!(d.as_str(), want.as_str());
            prop_assert!(hex_oracle(d.as_str(), 64));
            prop_assert_eq!(Sha256::parse(d.as_str()).unwrap(), d);
        }
    }

    /// The generator reaches both sides of the grammar, so the property
    /// above checks acceptance as well as rejection.
    #[test]
    fn the_id_generator_makes_valid_and_invalid_ids() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..1000 {
            let s = near_ids().new_tree(&mut runner).unwrap().current();
            if id_oracle(&s).is_ok() {
                ok += 1
            } else {
                bad += 1
            }
        }
        assert!(ok > 300 && bad > 300, "valid {ok}, invalid {bad}");
    }
}
