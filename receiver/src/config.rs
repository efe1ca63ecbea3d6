//! Configuration: every key declared once ([`KEYS`], with its type,
//! default and meaning), layered by `ferry-settings` (file <
//! `FERRY_RECEIVER_<KEY>` environment < flags) in a [`RawConfig`], and
//! resolved into the one [`Config`] the program uses, with the checks that
//! span keys (a TLS key needs its certificate, the S3 keys need an s3://
//! `storage_url`). Nothing below `main` reads the environment: the caller
//! passes it in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_settings::{keys, parse, Key, Layers, Source};

pub use ferry_settings::{ConfigError, LogFormat};

/// Prefix of the environment variables: `FERRY_RECEIVER_<KEY>` (upper case).
pub const ENV_PREFIX: &str = "FERRY_RECEIVER_";

/// The default `remediation` template. `{your_commit}` and `{head_commit}`
/// are replaced when a 412 is rendered.
pub const DEFAULT_REMEDIATION: &str = "commit {your_commit} is not on this receiver's allow-list; \
update the device to {head_commit}, or ask the operator to run \
`ferry-receiver commits allow {your_commit}`";

/// The smallest `max_connections`: room for the connections kept for
/// health, readiness, metrics and the admin API while shedding.
pub const MIN_CONNECTIONS: usize = 64;

/// The smallest `s3_part_size`: S3's smallest multipart part.
const MIN_PART_SIZE: u64 = 5 << 20;

keys! {
    /// Address to listen on; port 0 picks a free one. Flag `--listen`.
    pub LISTEN: SocketAddr = "listen" default "127.0.0.1:8420" => |s| {
        s.parse()
            .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8420: {e}"))
    };
    /// The embedded index, the local objects and the temporary upload
    /// files (`tmp/`). Flag `--data-dir`.
    pub DATA_DIR: PathBuf = "data_dir" default "./ferry-data" => parse::path;
    /// Index database: PostgreSQL URL or SQLite file; unset: SQLite at
    /// `<data_dir>/index.sqlite`.
    pub DATABASE_URL: Database = "database_url" => parse_database_url;
    /// Where objects live: a local directory or `s3://BUCKET/PREFIX`;
    /// unset: `<data_dir>/objects`.
    pub STORAGE_URL: StorageUrl = "storage_url" => parse_storage_url;
    /// S3 endpoint URL (MinIO, Ceph…); unset: AWS or `AWS_ENDPOINT_URL`.
    pub S3_ENDPOINT: String = "s3_endpoint" => parse::nonempty;
    /// S3 region; unset: `AWS_REGION`, else `us-east-1`.
    pub S3_REGION: String = "s3_region" => parse::nonempty;
    /// Bytes per multipart part, at least 5MiB.
    pub S3_PART_SIZE: u64 = "s3_part_size" default "8MiB" => |s| match parse::size(s)? {
        n if n < MIN_PART_SIZE => Err(format!(
            "{s:?}: must be at least 5MiB (the smallest S3 multipart part)"
        )),
        n => Ok(n),
    };
    /// Part buffers of all uploads together (at least one part).
    pub S3_BUFFER_LIMIT: u64 = "s3_buffer_limit" default "256MiB" => parse::size;
    /// PostgreSQL connections per replica.
    pub DATABASE_MAX_CONNECTIONS: u32 = "database_max_connections" default "16" => |s| {
        parse::positive(s).map(|n| n as u32)
    };
    /// How long a request waits for a database connection.
    pub DATABASE_TIMEOUT: Duration = "database_timeout" default "5s" => parse::duration;
    /// An object no row references is collected once it is this old.
    pub COLLECT_GRACE: Duration = "collect_grace" default "1h" => parse::duration;
    /// Time between two rounds of collection (at least 10 ms).
    pub COLLECT_INTERVAL: Duration = "collect_interval" default "1m" => |s| {
        parse::duration(s).map(|d| d.max(Duration::from_millis(10)))
    };
    /// Largest episode accepted; larger uploads get 413 unread.
    pub MAX_EPISODE_SIZE: u64 = "max_episode_size" default "4GiB" => parse::size;
    /// Uploads that may stream at once; more get 503.
    pub MAX_CONCURRENT_UPLOADS: usize = "max_concurrent_uploads" default "64" => parse::positive;
    /// Uploads one device may stream at once (at most
    /// `max_concurrent_uploads`); more get 429.
    pub MAX_UPLOADS_PER_DEVICE: usize = "max_uploads_per_device" default "4" => parse::positive;
    /// Open connections accepted; `auto` (`None`): from the
    /// file-descriptor limit. At least 64.
    pub MAX_CONNECTIONS: Option<usize> = "max_connections" default "auto" => max_connections;
    /// File of the admin API token; unset: the admin API is disabled.
    pub ADMIN_TOKEN_FILE: PathBuf = "admin_token_file" => parse::path;
    /// The 412 remediation template (`{your_commit}`, `{head_commit}`).
    pub REMEDIATION: String = "remediation" default DEFAULT_REMEDIATION => parse::text;
    /// How far back `commits rejected` and the status page look.
    pub REJECTED_WINDOW: Duration = "rejected_window" default "7d" => parse::duration;
    /// A device with no upload for this long is "falling behind".
    pub BEHIND_AFTER: Duration = "behind_after" default "24h" => parse::duration;
    /// Who may see the status page.
    pub STATUS_PAGE: StatusPage = "status_page" default "admin" => |s| {
        parse::one_of(
            s,
            &[
                ("admin", StatusPage::Admin),
                ("public", StatusPage::Public),
                ("off", StatusPage::Off),
            ],
        )
    };
    /// PEM certificate chain; with `tls_key` or not at all.
    pub TLS_CERT: PathBuf = "tls_cert" => parse::path;
    /// PEM private key; with `tls_cert` or not at all.
    pub TLS_KEY: PathBuf = "tls_key" => parse::path;
    /// Longest pause between two pieces of an upload body.
    pub BODY_READ_TIMEOUT: Duration = "body_read_timeout" default "30s" => parse::duration;
    /// Slowest average upload rate accepted; `0` disables the check.
    pub MIN_UPLOAD_RATE: u64 = "min_upload_rate" default "1KiB/s" => |s| match s {
        "0" | "0/s" => Ok(0),
        _ => parse::rate(s).map_err(|e| format!("{e}, or 0 to disable")),
    };
    /// How long an incomplete tus upload (SPEC §8) is kept after its last
    /// PATCH (or its creation) before its bytes are reclaimed.
    pub UPLOAD_EXPIRY: Duration = "upload_expiry" default "24h" => parse::duration;
    /// Incomplete tus uploads one device may have open; creating one more
    /// ends its oldest idle one.
    pub MAX_OPEN_UPLOADS_PER_DEVICE: usize = "max_open_uploads_per_device" default "4" => parse::positive;
    /// Incomplete tus uploads the receiver keeps open in all; more get 503.
    pub MAX_OPEN_UPLOADS: usize = "max_open_uploads" default "10000" => parse::positive;
    /// How long in-flight uploads may run on after SIGTERM.
    pub SHUTDOWN_GRACE: Duration = "shutdown_grace" default "10s" => parse::duration;
    /// Log format on stderr.
    pub LOG_FORMAT: LogFormat = "log_format" default "human" => parse::log_format;
}

fn max_connections(s: &str) -> Result<Option<usize>, String> {
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
}

/// The raw layer: the file, then the environment, then the flags, each
/// value with where it came from. Later merges override earlier ones.
#[derive(Debug, Clone)]
pub struct RawConfig(Layers);

impl Default for RawConfig {
    fn default() -> RawConfig {
        RawConfig(Layers::new(ENV_PREFIX, KEYS))
    }
}

impl RawConfig {
    /// Reads a TOML file. Unknown keys and values of the wrong type are
    /// errors naming the key.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        self.0.merge_file(path)
    }

    /// Merges the text of a TOML file (`path` is only used in messages).
    pub fn merge_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        self.0.merge_toml(text, path)
    }

    /// Merges `FERRY_RECEIVER_<KEY>` variables from `vars` (normally
    /// `std::env::vars()`). Unknown `FERRY_RECEIVER_*` names are ignored
    /// (`FERRY_RECEIVER_CONFIG` is clap's, `FERRY_RECEIVER_LOG` the log
    /// filter).
    pub fn merge_env<I: IntoIterator<Item = (String, String)>>(&mut self, vars: I) {
        self.0.merge_env(vars)
    }

    /// Sets one value from a command-line flag.
    pub fn set_flag(&mut self, key: &'static str, value: impl Into<String>) {
        self.0.set_flag(key, value)
    }

    /// Resolves defaults and validates every value.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let l = &self.0;
        let data_dir = l.get(&DATA_DIR)?;
        let max_concurrent_uploads = l.get(&MAX_CONCURRENT_UPLOADS)?;
        let tls = match (l.opt(&TLS_CERT)?, l.opt(&TLS_KEY)?) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => return Err(self.missing_pair(&TLS_KEY, &TLS_CERT)),
            (None, Some(_)) => return Err(self.missing_pair(&TLS_CERT, &TLS_KEY)),
        };
        Ok(Config {
            listen: l.get(&LISTEN)?,
            database: l
                .opt(&DATABASE_URL)?
                .unwrap_or_else(|| Database::Sqlite(data_dir.join("index.sqlite"))),
            storage: self.storage(&data_dir)?,
            data_dir,
            database_max_connections: l.get(&DATABASE_MAX_CONNECTIONS)?,
            database_timeout: l.get(&DATABASE_TIMEOUT)?,
            collect_grace: l.get(&COLLECT_GRACE)?,
            collect_interval: l.get(&COLLECT_INTERVAL)?,
            max_episode_size: l.get(&MAX_EPISODE_SIZE)?,
            max_concurrent_uploads,
            max_uploads_per_device: l.get(&MAX_UPLOADS_PER_DEVICE)?.min(max_concurrent_uploads),
            max_connections: l.get(&MAX_CONNECTIONS)?,
            admin_token_file: l.opt(&ADMIN_TOKEN_FILE)?,
            remediation: l.get(&REMEDIATION)?,
            rejected_window: l.get(&REJECTED_WINDOW)?,
            behind_after: l.get(&BEHIND_AFTER)?,
            status_page: l.get(&STATUS_PAGE)?,
            tls,
            body_read_timeout: l.get(&BODY_READ_TIMEOUT)?,
            min_upload_rate: l.get(&MIN_UPLOAD_RATE)?,
            upload_expiry: l.get(&UPLOAD_EXPIRY)?,
            max_open_uploads_per_device: l.get(&MAX_OPEN_UPLOADS_PER_DEVICE)?,
            max_open_uploads: l.get(&MAX_OPEN_UPLOADS)?,
            shutdown_grace: l.get(&SHUTDOWN_GRACE)?,
            log_format: l.get(&LOG_FORMAT)?,
        })
    }

    /// `storage_url` with the keys of its backend: a local directory
    /// (default `<data_dir>/objects`) or an S3 bucket (SPEC §7).
    fn storage(&self, data_dir: &Path) -> Result<Storage, ConfigError> {
        let l = &self.0;
        let s3_keys = [
            S3_ENDPOINT.name,
            S3_REGION.name,
            S3_PART_SIZE.name,
            S3_BUFFER_LIMIT.name,
        ];
        let (bucket, prefix) = match l.opt(&STORAGE_URL)? {
            Some(StorageUrl::S3 { bucket, prefix }) => (bucket, prefix),
            url => {
                if let Some(key) = s3_keys.into_iter().find(|k| l.raw(k).is_some()) {
                    return Err(l.invalid(key, "only applies when storage_url is an s3:// URL"));
                }
                return Ok(Storage::Local(match url {
                    Some(StorageUrl::Local(p)) => p,
                    _ => data_dir.join("objects"),
                }));
            }
        };
        let part_size = l.get(&S3_PART_SIZE)?;
        Ok(Storage::S3(S3Storage {
            bucket,
            prefix,
            endpoint: l.opt(&S3_ENDPOINT)?,
            region: l.opt(&S3_REGION)?,
            part_size,
            buffer_limit: l.get(&S3_BUFFER_LIMIT)?.max(part_size),
        }))
    }

    /// `missing` is unset while `present`, which needs it, is set: an
    /// error about `missing`, from where `present` was set.
    fn missing_pair<T>(&self, missing: &Key<T>, present: &Key<T>) -> ConfigError {
        ConfigError::Invalid {
            key: missing.name,
            origin: self
                .0
                .raw(present.name)
                .map_or(Source::Default, |(_, s)| s.clone()),
            message: format!(
                "`{}` is set, so `{}` must be set too",
                present.name, missing.name
            ),
        }
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

/// `storage_url` as written; [`Storage`] once the S3 keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
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
    /// How long an incomplete tus upload is kept (`upload_expiry`).
    pub upload_expiry: Duration,
    /// Incomplete tus uploads per device (`max_open_uploads_per_device`).
    pub max_open_uploads_per_device: usize,
    /// Incomplete tus uploads in all (`max_open_uploads`).
    pub max_open_uploads: usize,
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
    fn the_example_files_use_declared_keys_with_valid_values() {
        let examples = [
            (
                "config/receiver.toml",
                include_str!("../../config/receiver.toml"),
            ),
            (
                "config/receiver-scaleout.toml",
                include_str!("../../config/receiver-scaleout.toml"),
            ),
        ];
        for (name, text) in examples {
            let problems = ferry_settings::check_example(text, KEYS);
            assert!(problems.is_empty(), "{name}: {problems:#?}");
            // And what it sets is a whole valid configuration.
            resolve(text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // The main example documents every key; the scale-out one only
        // what that mode sets.
        let missing = ferry_settings::keys_not_shown(examples[0].1, KEYS);
        assert!(missing.is_empty(), "config/receiver.toml lacks {missing:?}");
        // And every declared default is a valid value of its key.
        for k in KEYS {
            if let Some(d) = k.default() {
                k.check(d)
                    .unwrap_or_else(|e| panic!("default of {}: {e}", k.name()));
            }
        }
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
