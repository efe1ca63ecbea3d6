//! Configuration: the raw layer (TOML file, `FERRY_RECEIVER_*` environment,
//! flags; later layers win) resolved into the one [`Config`] the program uses.
//!
//! Every raw value is kept as text with where it came from, so an error can
//! name the key and the source. Nothing below `main` reads the environment:
//! the caller passes it in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every key the receiver understands, in the order of `config/receiver.toml`.
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "storage_url",
    "s3_endpoint",
    "s3_region",
    "s3_part_size",
    "s3_buffer_limit",
    "database_max_connections",
    "database_timeout",
    "collect_grace",
    "collect_interval",
    "max_episode_size",
    "max_concurrent_uploads",
    "max_uploads_per_device",
    "max_connections",
    "admin_token_file",
    "remediation",
    "rejected_window",
    "behind_after",
    "status_page",
    "tls_cert",
    "tls_key",
    "body_read_timeout",
    "min_upload_rate",
    "shutdown_grace",
    "log_format",
];

/// Prefix of the environment variables: `FERRY_RECEIVER_<KEY>` (upper case).
pub const ENV_PREFIX: &str = "FERRY_RECEIVER_";

/// The default `remediation` template. `{your_commit}` and `{head_commit}`
/// are replaced when a 412 is rendered.
pub const DEFAULT_REMEDIATION: &str = "commit {your_commit} is not on this receiver's allow-list; \
update the device to {head_commit}, or ask the operator to run \
`ferry-receiver commits allow {your_commit}`";

/// A configuration error. It always names the key (or the file) at fault;
/// `main` exits 2 with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` (from {source_name}): {message}")]
    Invalid {
        key: &'static str,
        source_name: String,
        message: String,
    },
}

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::Flag => f.write_str("command line"),
        }
    }
}

/// The raw layer: key → (text, source). Later `set`s override earlier ones.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<&'static str, (String, Source)>,
}

fn known_key(key: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| *k == key)
}

impl RawConfig {
    /// Reads a TOML file. Unknown keys and values of the wrong type are
    /// errors naming the key.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        self.merge_toml(&text, path)
    }

    /// Merges the text of a TOML file (`path` is only used in messages).
    pub fn merge_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })?;
        for (key, value) in table {
            let Some(k) = known_key(&key) else {
                return Err(ConfigError::Parse {
                    path: path.to_owned(),
                    message: format!("unknown key `{key}` (known keys: {})", KEYS.join(", ")),
                });
            };
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(ConfigError::Invalid {
                        key: k,
                        source_name: path.display().to_string(),
                        message: format!(
                            "expected a string or an integer, found {}",
                            other.type_str()
                        ),
                    })
                }
            };
            self.values.insert(k, (text, Source::File(path.to_owned())));
        }
        Ok(())
    }

    /// Merges `FERRY_RECEIVER_<KEY>` variables from `vars` (normally
    /// `std::env::vars()`). Unknown `FERRY_RECEIVER_*` names are ignored
    /// except `FERRY_RECEIVER_CONFIG`, which clap reads.
    pub fn merge_env<I: IntoIterator<Item = (String, String)>>(&mut self, vars: I) {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if let Some(k) = known_key(&rest.to_ascii_lowercase()) {
                self.values.insert(k, (value, Source::Env(name)));
            }
        }
    }

    /// Sets one value from a command-line flag.
    pub fn set_flag(&mut self, key: &'static str, value: impl Into<String>) {
        debug_assert!(known_key(key).is_some(), "{key}");
        self.values.insert(key, (value.into(), Source::Flag));
    }

    fn get(&self, key: &'static str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    /// Parses one key with `parse`, turning its error into one naming the key.
    fn parse<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some((text, source)) => {
                parse(text.trim())
                    .map(Some)
                    .map_err(|message| ConfigError::Invalid {
                        key,
                        source_name: source.to_string(),
                        message,
                    })
            }
        }
    }

    /// Resolves defaults and validates every value.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let nonempty = |s: &str| {
            if s.is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(s.to_owned())
            }
        };
        let listen = self
            .parse("listen", |s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8420: {e}"))
            })?
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8420)));
        let data_dir = PathBuf::from(
            self.parse("data_dir", nonempty)?
                .unwrap_or_else(|| "./ferry-data".to_owned()),
        );
        let database = match self.parse("database_url", parse_database_url)? {
            Some(d) => d,
            None => Database::Sqlite(data_dir.join("index.sqlite")),
        };
        let storage = self.storage(&data_dir)?;
        let database_max_connections = self
            .parse("database_max_connections", positive)?
            .unwrap_or(16) as u32;
        let database_timeout = self
            .parse("database_timeout", parse_duration)?
            .unwrap_or(Duration::from_secs(5));
        let collect_grace = self
            .parse("collect_grace", parse_duration)?
            .unwrap_or(Duration::from_secs(3600));
        let collect_interval = self
            .parse("collect_interval", parse_duration)?
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_millis(10));
        let max_episode_size = self
            .parse("max_episode_size", parse_size)?
            .unwrap_or(4 * 1024 * 1024 * 1024);
        let max_concurrent_uploads = self
            .parse("max_concurrent_uploads", positive)?
            .unwrap_or(64);
        let max_uploads_per_device = self
            .parse("max_uploads_per_device", positive)?
            .unwrap_or(4)
            .min(max_concurrent_uploads);
        let max_connections = self
            .parse("max_connections", |s| {
                if s == "auto" {
                    return Ok(None);
                }
                match s.parse::<usize>() {
                    Ok(n) if n < MIN_CONNECTIONS => {
                        Err(format!("must be at least {MIN_CONNECTIONS} (or \"auto\")"))
                    }
                    Ok(n) => Ok(Some(n)),
                    Err(e) => Err(format!(
                        "{s:?} is not a number of connections or \"auto\": {e}"
                    )),
                }
            })?
            .flatten();
        let admin_token_file = self.parse("admin_token_file", nonempty)?.map(PathBuf::from);
        let remediation = self
            .parse("remediation", |s| Ok(s.to_owned()))?
            .unwrap_or_else(|| DEFAULT_REMEDIATION.to_owned());
        let rejected_window = self
            .parse("rejected_window", parse_duration)?
            .unwrap_or(Duration::from_secs(7 * 24 * 3600));
        let behind_after = self
            .parse("behind_after", parse_duration)?
            .unwrap_or(Duration::from_secs(24 * 3600));
        let status_page = self
            .parse("status_page", |s| match s {
                "admin" => Ok(StatusPage::Admin),
                "public" => Ok(StatusPage::Public),
                "off" => Ok(StatusPage::Off),
                _ => Err(format!("{s:?} is none of \"admin\", \"public\", \"off\"")),
            })?
            .unwrap_or(StatusPage::Admin);
        let tls_cert = self.parse("tls_cert", nonempty)?.map(PathBuf::from);
        let tls_key = self.parse("tls_key", nonempty)?.map(PathBuf::from);
        let tls = match (tls_cert, tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => return Err(missing_pair(self, "tls_key", "tls_cert")),
            (None, Some(_)) => return Err(missing_pair(self, "tls_cert", "tls_key")),
        };
        let body_read_timeout = self
            .parse("body_read_timeout", parse_duration)?
            .unwrap_or(Duration::from_secs(30));
        let min_upload_rate = self
            .parse("min_upload_rate", |s| {
                let s = s.strip_suffix("/s").unwrap_or(s);
                if s == "0" {
                    return Ok(0);
                }
                parse_size(s).map_err(|e| format!("{e} (a rate like 1KiB/s, or 0 to disable)"))
            })?
            .unwrap_or(1024);
        let shutdown_grace = self
            .parse("shutdown_grace", parse_duration)?
            .unwrap_or(Duration::from_secs(10));
        let log_format = self
            .parse("log_format", |s| match s {
                "human" => Ok(LogFormat::Human),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("{s:?} is neither \"human\" nor \"json\"")),
            })?
            .unwrap_or(LogFormat::Human);
        Ok(Config {
            listen,
            data_dir,
            database,
            database_max_connections,
            database_timeout,
            storage,
            collect_grace,
            collect_interval,
            max_episode_size,
            max_concurrent_uploads,
            max_uploads_per_device,
            max_connections,
            admin_token_file,
            remediation,
            rejected_window,
            behind_after,
            status_page,
            tls,
            body_read_timeout,
            min_upload_rate,
            shutdown_grace,
            log_format,
        })
    }
}

impl RawConfig {
    /// `storage_url` with the keys of its backend: a local directory
    /// (default `<data_dir>/objects`) or an S3 bucket (SPEC §7).
    fn storage(&self, data_dir: &Path) -> Result<Storage, ConfigError> {
        let url = self.parse("storage_url", parse_storage_url)?;
        let s3_keys = [
            "s3_endpoint",
            "s3_region",
            "s3_part_size",
            "s3_buffer_limit",
        ];
        let Some(StorageUrl::S3 { bucket, prefix }) = url else {
            if let Some(key) = s3_keys.into_iter().find(|k| self.get(k).is_some()) {
                let (_, source) = self.get(key).expect("just found");
                return Err(ConfigError::Invalid {
                    key,
                    source_name: source.to_string(),
                    message: "only applies when storage_url is an s3:// URL".into(),
                });
            }
            return Ok(Storage::Local(match url {
                Some(StorageUrl::Local(p)) => p,
                _ => data_dir.join("objects"),
            }));
        };
        let nonempty = |s: &str| match s.is_empty() {
            true => Err("must not be empty".to_owned()),
            false => Ok(s.to_owned()),
        };
        let part_size = self.parse("s3_part_size", parse_size)?.unwrap_or(8 << 20);
        if part_size < 5 << 20 {
            let (_, source) = self.get("s3_part_size").expect("set, as it is small");
            return Err(ConfigError::Invalid {
                key: "s3_part_size",
                source_name: source.to_string(),
                message: "must be at least 5MiB (the smallest S3 multipart part)".into(),
            });
        }
        let buffer_limit = self
            .parse("s3_buffer_limit", parse_size)?
            .unwrap_or(256 << 20)
            .max(part_size);
        Ok(Storage::S3(S3Storage {
            bucket,
            prefix,
            endpoint: self.parse("s3_endpoint", nonempty)?,
            region: self.parse("s3_region", nonempty)?,
            part_size,
            buffer_limit,
        }))
    }
}

fn missing_pair(raw: &RawConfig, missing: &'static str, present: &'static str) -> ConfigError {
    let source_name = raw
        .get(present)
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    ConfigError::Invalid {
        key: missing,
        source_name,
        message: format!("`{present}` is set, so `{missing}` must be set too"),
    }
}

/// The smallest `max_connections`: room for the connections kept for
/// health, readiness, metrics and the admin API while shedding.
pub const MIN_CONNECTIONS: usize = 64;

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a positive integer: {e}")),
    }
}

/// Which index database to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

fn parse_database_url(s: &str) -> Result<Database, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Ok(Database::Postgres(s.to_owned()));
    }
    let path = s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))
        .unwrap_or(s);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path.contains("://") {
        return Err(format!(
            "{s:?} is neither a postgres:// URL nor a SQLite file (sqlite://PATH or PATH)"
        ));
    }
    Ok(Database::Sqlite(PathBuf::from(path)))
}

/// Where objects live (`storage_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A local directory (`file://PATH` or `PATH`).
    Local(PathBuf),
    /// An S3-compatible bucket (`s3://BUCKET/PREFIX`).
    S3(S3Storage),
}

/// An S3 bucket and how to reach it. Credentials are never here: they come
/// the standard AWS way (environment, profile, instance role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Storage {
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `None`: AWS itself, or `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Bytes per multipart part (at least 5 MiB, S3's smallest part).
    pub part_size: u64,
    /// Part buffers of all uploads together hold at most this many bytes.
    pub buffer_limit: u64,
}

enum StorageUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

fn parse_storage_url(s: &str) -> Result<StorageUrl, String> {
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
            return Err(format!("{s:?}: {bucket:?} is not an S3 bucket name"));
        }
        return Ok(StorageUrl::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    let path = s.strip_prefix("file://").unwrap_or(s);
    if path.is_empty() || path.contains("://") {
        return Err(format!(
            "{s:?} is neither a local directory (file://PATH or PATH) nor an s3://BUCKET/PREFIX URL"
        ));
    }
    Ok(StorageUrl::Local(PathBuf::from(path)))
}

/// Sizes: a plain number of bytes or `512MiB`, `4 GiB`, `1GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let n = s
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{s:?} is not a size like 512MiB: {e}"))?
        .as_u64();
    if n == 0 {
        return Err("must be more than 0 bytes".to_owned());
    }
    Ok(n)
}

/// Durations: `5s`, `10m`, `7d`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 10m: {e}"))
}

/// Log output on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Who may see the status page (`GET /`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPage {
    /// The admin token, as a bearer token or the HTTP Basic password.
    Admin,
    /// Anyone who reaches the port.
    Public,
    /// No page: 404.
    Off,
}

/// PEM files of the server certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: Database,
    /// PostgreSQL connections per replica.
    pub database_max_connections: u32,
    /// How long a request waits for a database connection (and a new
    /// connection for the server) before the answer is 503.
    pub database_timeout: Duration,
    /// Where the content-addressed objects live.
    pub storage: Storage,
    /// An object no row references is collected once it is this old.
    pub collect_grace: Duration,
    /// Time between two rounds of collection.
    pub collect_interval: Duration,
    pub max_episode_size: u64,
    pub max_concurrent_uploads: usize,
    /// Upload slots one device may hold at once (at most
    /// `max_concurrent_uploads`), so that one device cannot starve the rest.
    pub max_uploads_per_device: usize,
    /// Open connections accepted; `None`: derived from the file-descriptor
    /// limit at start (`crate::admission`).
    pub max_connections: Option<usize>,
    pub admin_token_file: Option<PathBuf>,
    /// The 412 remediation template.
    pub remediation: String,
    /// How far back `commits rejected` and the status page look.
    pub rejected_window: Duration,
    /// A device with no upload for this long is "falling behind".
    pub behind_after: Duration,
    pub status_page: StatusPage,
    pub tls: Option<TlsFiles>,
    /// Longest pause between two pieces of an upload body.
    pub body_read_timeout: Duration,
    /// Slowest average body rate (bytes per second) accepted once an upload
    /// is older than twice `body_read_timeout`; 0 disables the check.
    pub min_upload_rate: u64,
    /// How long in-flight uploads may run on after SIGTERM.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

impl Config {
    /// Temporary upload files live here, on the same file system as the
    /// objects so that the final rename is atomic.
    pub fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

/// Renders a remediation template: `{your_commit}` and `{head_commit}` are
/// replaced; without a head commit `{head_commit}` reads "the current head
/// commit (none is set on the receiver)".
pub fn render_remediation(template: &str, your_commit: &str, head_commit: Option<&str>) -> String {
    let head = head_commit.unwrap_or("the current head commit (none is set on the receiver)");
    template
        .replace("{your_commit}", your_commit)
        .replace("{head_commit}", head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        raw.merge_toml(toml, Path::new("test.toml"))?;
        raw.merge_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        raw.resolve()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = resolve("", &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8420");
        assert_eq!(c.data_dir, PathBuf::from("./ferry-data"));
        assert_eq!(
            c.database,
            Database::Sqlite(PathBuf::from("./ferry-data/index.sqlite"))
        );
        assert_eq!(
            c.storage,
            Storage::Local(PathBuf::from("./ferry-data/objects"))
        );
        assert_eq!(c.max_episode_size, 4 << 30);
        assert_eq!(c.max_concurrent_uploads, 64);
        assert_eq!(c.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.min_upload_rate, 1024);
        assert!(c.admin_token_file.is_none() && c.tls.is_none());
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let mut raw = RawConfig::default();
        raw.merge_toml(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/f\"\nmax_episode_size = \"1MiB\"",
            Path::new("t"),
        )
        .unwrap();
        raw.merge_env([
            ("FERRY_RECEIVER_LISTEN".to_owned(), "127.0.0.1:2".to_owned()),
            ("FERRY_RECEIVER_DATA_DIR".to_owned(), "/e".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ]);
        raw.set_flag("listen", "127.0.0.1:3");
        let c = raw.resolve().unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.data_dir, PathBuf::from("/e"));
        assert_eq!(c.max_episode_size, 1 << 20);
    }

    #[test]
    fn sizes_and_durations_read_like_humans_write_them() {
        let c = resolve(
            "max_episode_size = \"512MiB\"\nbody_read_timeout = \"10m\"\nshutdown_grace = \"7d\"\nmax_concurrent_uploads = 3",
            &[],
        )
        .unwrap();
        assert_eq!(c.max_episode_size, 512 << 20);
        assert_eq!(c.body_read_timeout, Duration::from_secs(600));
        let rate = |v: &str| {
            resolve(&format!("min_upload_rate = \"{v}\""), &[]).map(|c| c.min_upload_rate)
        };
        assert_eq!(rate("64KiB/s").unwrap(), 64 << 10);
        assert_eq!(rate("0").unwrap(), 0);
        assert!(rate("fast").is_err());
        assert_eq!(c.shutdown_grace, Duration::from_secs(7 * 86400));
        assert_eq!(c.max_concurrent_uploads, 3);
        assert_eq!(
            resolve("max_episode_size = 1000", &[])
                .unwrap()
                .max_episode_size,
            1000
        );
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let e = resolve("max_episode_size = \"lots\"", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_episode_size") && e.contains("test.toml"),
            "{e}"
        );
        let e = resolve("", &[("FERRY_RECEIVER_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`listen`") && e.contains("FERRY_RECEIVER_LISTEN"),
            "{e}"
        );
        let e = resolve("colour = \"red\"", &[]).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = resolve("max_concurrent_uploads = 0", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_concurrent_uploads"), "{e}");
        let e = resolve("tls_cert = \"/c.pem\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key"), "{e}");
        let e = resolve("log_format = \"xml\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_format"), "{e}");
        let e = resolve("storage_url = \"s3://b\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage_url"), "{e}");
        let e = resolve("s3_region = \"eu-central-1\"", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("s3_region") && e.contains("s3://"), "{e}");
        let e = resolve(
            "storage_url = \"s3://bucket\"\ns3_part_size = \"1MiB\"",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s3_part_size") && e.contains("5MiB"), "{e}");
        let e = resolve("listen = [1]", &[]).unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn database_and_storage_urls() {
        let c = resolve(
            "database_url = \"postgres://u@h/db\"\nstorage_url = \"file:///srv/objects\"",
            &[],
        )
        .unwrap();
        assert_eq!(c.database, Database::Postgres("postgres://u@h/db".into()));
        assert_eq!(c.storage, Storage::Local(PathBuf::from("/srv/objects")));
        let c = resolve(
            "storage_url = \"s3://ferry-episodes/prod/\"\ns3_endpoint = \"http://127.0.0.1:9000\"",
            &[("FERRY_RECEIVER_S3_REGION", "eu-central-1")],
        )
        .unwrap();
        assert_eq!(
            c.storage,
            Storage::S3(S3Storage {
                bucket: "ferry-episodes".into(),
                prefix: "prod".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-central-1".into()),
                part_size: 8 << 20,
                buffer_limit: 256 << 20,
            })
        );
        let c = resolve("database_url = \"sqlite:///var/x.db\"", &[]).unwrap();
        assert_eq!(c.database, Database::Sqlite(PathBuf::from("/var/x.db")));
    }

    #[test]
    fn remediation_is_rendered_from_the_template() {
        let r = render_remediation(
            "run {your_commit}, not {head_commit}; {your_commit}",
            "aaa",
            Some("bbb"),
        );
        assert_eq!(r, "run aaa, not bbb; aaa");
        let r = render_remediation(DEFAULT_REMEDIATION, "aaa", None);
        assert!(r.contains("aaa") && r.contains("none is set"), "{r}");
    }
}
