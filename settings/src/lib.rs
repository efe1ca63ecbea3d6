//! The configuration engine both programs use (SPEC §5): a TOML file, then
//! `FERRY_<PROGRAM>_<KEY>` environment variables, then command-line flags,
//! each layer overriding the one before; every value kept as text with
//! where it came from until a key's parser reads it, so that a bad value is
//! an error naming the key and its source (the programs exit 2 with it).
//!
//! A program declares each key once with [`keys!`]: its name, the type its
//! parser gives, its default and its doc comment. The program's `Config`
//! is then built from [`Layers::get`] / [`Layers::opt`] of those keys, plus
//! whatever checks span several keys. [`check_example`] and
//! [`keys_not_shown`] hold a shipped example file to the declaration.
//!
//! Hand-rolled rather than `figment`: the layering is thirty lines here,
//! while figment would bring its own value model (env values typed by
//! guessing), its own error text (which names "`FERRY_AGENT_` environment
//! variable(s)" rather than the variable), proc-macro dependencies, and
//! still need our parsers for durations, sizes and rates.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub mod parse;

pub use parse::LogFormat;

/// One configuration key of a program: its name in the file (lower case;
/// upper case after the program's prefix in the environment), its default
/// as it would be written in the file (`None`: unset unless given), and
/// the parser that turns its text into the value.
pub struct Key<T: 'static> {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub parse: fn(&str) -> Result<T, String>,
}

/// A key with its type erased, for lists of a program's keys.
pub trait Declared: Sync {
    fn name(&self) -> &'static str;
    fn default(&self) -> Option<&'static str>;
    /// Whether `text` is a valid value of the key.
    fn check(&self, text: &str) -> Result<(), String>;
}

impl<T> Declared for Key<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn default(&self) -> Option<&'static str> {
        self.default
    }
    fn check(&self, text: &str) -> Result<(), String> {
        (self.parse)(text.trim()).map(drop)
    }
}

/// Declares a program's keys, each once: its doc comment, constant name,
/// type, file name, optional default, and parser; and `KEYS`, all of them
/// in the order given (the order of the example file).
///
/// ```
/// ferry_settings::keys! {
///     /// How often to look for work.
///     pub SCAN_INTERVAL: std::time::Duration = "scan_interval"
///         default "5s" => ferry_settings::parse::duration;
///     /// An optional file.
///     pub CA_FILE: Option<std::path::PathBuf> = "ca_file" => ferry_settings::parse::optional_path;
/// }
/// assert_eq!(KEYS.len(), 2);
/// ```
#[macro_export]
macro_rules! keys {
    ($(
        $(#[$attr:meta])*
        $vis:vis $id:ident : $ty:ty = $name:literal $(default $default:expr)? => $parse:expr;
    )*) => {
        $(
            $(#[$attr])*
            $vis const $id: $crate::Key<$ty> = $crate::Key {
                name: $name,
                default: $crate::keys!(@default $($default)?),
                parse: $parse,
            };
        )*
        /// Every key, in the order of the example file.
        pub const KEYS: &[&dyn $crate::Declared] = &[$(&$id),*];
    };
    (@default) => { None };
    (@default $d:expr) => { Some($d) };
}

/// A configuration error. It always names the file or the key at fault;
/// the programs exit 2 with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` (from {origin}): {message}")]
    Invalid {
        key: &'static str,
        /// Where the bad value came from (not `source`: that name is
        /// an error's cause to `thiserror`).
        origin: Source,
        message: String,
    },
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The variable's name.
    Env(String),
    /// The flag, `--data-dir`.
    Flag(String),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The layered raw values of one program: key → (text, source). A later
/// merge overrides an earlier one, so merge the file, then the
/// environment, then the flags.
#[derive(Debug, Clone)]
pub struct Layers {
    env_prefix: &'static str,
    keys: &'static [&'static dyn Declared],
    values: BTreeMap<&'static str, (String, Source)>,
}

impl fmt::Debug for dyn Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Layers {
    /// Empty layers for a program whose variables are `<env_prefix><KEY>`
    /// (`FERRY_AGENT_`) and whose keys are `keys`.
    pub fn new(env_prefix: &'static str, keys: &'static [&'static dyn Declared]) -> Layers {
        Layers {
            env_prefix,
            keys,
            values: BTreeMap::new(),
        }
    }

    fn known(&self, name: &str) -> Option<&'static str> {
        self.keys.iter().map(|k| k.name()).find(|k| *k == name)
    }

    /// Reads and merges a TOML file.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.merge_toml(&text, path)
    }

    /// Merges the text of a TOML file (`path` is for messages). An unknown
    /// key, or a value that is neither a string nor a number, is an error
    /// naming the key.
    pub fn merge_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })?;
        for (name, value) in table {
            let Some(key) = self.known(&name) else {
                let known: Vec<&str> = self.keys.iter().map(|k| k.name()).collect();
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!("unknown key `{name}` (known keys: {})", known.join(", ")),
                });
            };
            let source = Source::File(path.to_owned());
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(x) => x.to_string(),
                other => {
                    return Err(ConfigError::Invalid {
                        key,
                        origin: source,
                        message: format!(
                            "expected a string or a number, found {}",
                            other.type_str()
                        ),
                    })
                }
            };
            self.values.insert(key, (text, source));
        }
        Ok(())
    }

    /// Merges the `<prefix><KEY>` variables of `vars` (the process
    /// environment in `main`, a list in tests). Other variables, and
    /// `<prefix>` names that are no key (`FERRY_AGENT_CONFIG`, read by
    /// the programs themselves), are ignored.
    pub fn merge_env<I: IntoIterator<Item = (String, String)>>(&mut self, vars: I) {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(self.env_prefix) else {
                continue;
            };
            if let Some(key) = self.known(&rest.to_ascii_lowercase()) {
                self.values.insert(key, (value, Source::Env(name)));
            }
        }
    }

    /// Sets a key from its command-line flag, `--<key with dashes>`.
    pub fn set_flag(&mut self, key: &'static str, value: impl Into<String>) {
        assert!(self.known(key).is_some(), "{key} is not a declared key");
        let flag = format!("--{}", key.replace('_', "-"));
        self.values.insert(key, (value.into(), Source::Flag(flag)));
    }

    /// The text of a key and where it came from, if it was given.
    pub fn raw(&self, key: &str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    /// The key's value: as given, else its default, else `None`.
    pub fn opt<T>(&self, key: &Key<T>) -> Result<Option<T>, ConfigError> {
        let (text, source) = match (self.values.get(key.name), key.default) {
            (Some((text, source)), _) => (text.as_str(), source.clone()),
            (None, Some(default)) => (default, Source::Default),
            (None, None) => return Ok(None),
        };
        (key.parse)(text.trim())
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                key: key.name,
                origin: source,
                message,
            })
    }

    /// The value of a key that has a default.
    pub fn get<T>(&self, key: &Key<T>) -> Result<T, ConfigError> {
        match self.opt(key)? {
            Some(v) => Ok(v),
            None => panic!("config key {} has no default: read it with opt", key.name),
        }
    }

    /// An error about `key` whose value is fine on its own but not with
    /// the others (a TLS key without its certificate).
    pub fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            origin: self
                .values
                .get(key)
                .map_or(Source::Default, |(_, s)| s.clone()),
            message: message.into(),
        }
    }
}

/// What is wrong with the entries of an example configuration file
/// against the declared `keys`: a key set in it (`key = value`) or shown
/// commented out (`# key = value`) that is not declared, or whose value
/// does not parse. Empty when every entry is right.
pub fn check_example(text: &str, keys: &[&dyn Declared]) -> Vec<String> {
    let mut problems = Vec::new();
    for (line_no, name, value) in example_entries(text) {
        let Some(key) = keys.iter().find(|k| k.name() == name) else {
            problems.push(format!("line {line_no}: `{name}` is no declared key"));
            continue;
        };
        let text = match format!("v = {value}").parse::<toml::Table>() {
            Ok(mut t) => match t.remove("v") {
                Some(toml::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            },
            Err(e) => {
                problems.push(format!("line {line_no}: `{name}`: not a TOML value: {e}"));
                continue;
            }
        };
        if let Err(e) = key.check(&text) {
            problems.push(format!("line {line_no}: `{name}` = {value}: {e}"));
        }
    }
    problems
}

/// The declared keys an example file neither sets nor shows commented out.
pub fn keys_not_shown(text: &str, keys: &[&dyn Declared]) -> Vec<&'static str> {
    let shown: Vec<&str> = example_entries(text).map(|(_, name, _)| name).collect();
    keys.iter()
        .map(|k| k.name())
        .filter(|k| !shown.contains(k))
        .collect()
}

/// `(line number, key, value text)` of each `key = value` or
/// `# key = value` line; prose comments have no ` = ` after a bare name.
fn example_entries(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let entry = line.strip_prefix('#').unwrap_or(line).trim();
        let (name, value) = entry.split_once(" = ")?;
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            .then_some((n + 1, name, value))
    })
}

#[cfg(test)]
mod tests;
