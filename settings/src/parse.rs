//! Parsers of the value types both programs use (SPEC §5: durations `5s`,
//! `10m`, `7d`; sizes `512MiB`). Each takes the trimmed text of a value
//! and says what was expected when it is not one; the engine adds the key,
//! the source and the text.

use std::path::PathBuf;
use std::time::Duration;

/// Durations: `5s`, `10m`, `7d`, `1h 30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 5s, 10m, 7d: {e}"))
}

/// A duration greater than zero.
pub fn nonzero_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be greater than zero")),
        d => Ok(d),
    }
}

/// Sizes: a plain number of bytes or `512MiB`, `4 GiB`, `1GB`; more than 0.
pub fn size(s: &str) -> Result<u64, String> {
    let n = s
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{s:?} is not a size like 512MiB: {e}"))?
        .as_u64();
    if n == 0 {
        return Err(format!("{s:?}: must be more than 0 bytes"));
    }
    Ok(n)
}

/// Rates in bytes per second: `1MiB`, `512KiB/s`, `1000000`; more than 0.
pub fn rate(s: &str) -> Result<u64, String> {
    let t = s.strip_suffix("/s").unwrap_or(s).trim();
    size(t).map_err(|e| format!("{e} (a rate like 1MiB/s)"))
}

/// An integer in `min..=max`.
pub fn int_in(s: &str, min: i64, max: i64) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{s:?}: expected {min}..={max}")),
        Err(e) => Err(format!("{s:?} is not an integer: {e}")),
    }
}

/// A count of at least 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a positive integer: {e}")),
    }
}

/// Any text, as it is.
pub fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// Text that must not be empty.
pub fn nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(s.to_owned())
}

/// A path; an empty one is an error.
pub fn path(s: &str) -> Result<PathBuf, String> {
    nonempty(s).map(PathBuf::from)
}

/// A path, or nothing when empty (a key that an empty value turns off).
pub fn optional_path(s: &str) -> Result<Option<PathBuf>, String> {
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// The value of `s` among `choices` (name, value).
pub fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    match choices.iter().find(|(name, _)| *name == s) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(format!("{s:?} is none of {}", names.join(", ")))
        }
    }
}

/// Log output on stderr (key `log_format` of both programs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// `human` or `json`.
pub fn log_format(s: &str) -> Result<LogFormat, String> {
    one_of(s, &[("human", LogFormat::Human), ("json", LogFormat::Json)])
}
