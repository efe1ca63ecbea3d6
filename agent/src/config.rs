//! Configuration: the raw layers (TOML file, `FERRY_AGENT_*` environment,
//! command-line flags; flags > env > file) merged into one [`RawConfig`],
//! then resolved with defaults and validated into the [`Config`] the
//! program passes around. Nothing else reads the environment for settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, naming the key (exit code 2).
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
        origin: String,
        message: String,
    },
    #[error("config key `{key}` is required (set it in the config file, as FERRY_AGENT_{env}, or by flag)")]
    Missing { key: &'static str, env: String },
}

/// Every key, as written in the TOML file. All optional: defaults are
/// applied by [`RawConfig::resolve`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub spool: Option<String>,
    pub receiver: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub zstd_level: Option<toml::Value>,
    pub scan_interval: Option<String>,
    pub ship_concurrency: Option<toml::Value>,
    pub request_timeout: Option<String>,
    pub backoff_max: Option<String>,
    pub recheck_interval: Option<String>,
    pub shipped_keep: Option<String>,
    pub quarantine_keep: Option<String>,
    pub sweep_batch: Option<toml::Value>,
    pub bandwidth_limit: Option<toml::Value>,
    pub resumable_threshold: Option<toml::Value>,
    pub log_format: Option<String>,
    pub shutdown_grace: Option<String>,
    pub metrics_textfile: Option<String>,
}

/// The keys, for the environment layer and for messages.
pub const KEYS: &[&str] = &[
    "spool",
    "receiver",
    "token_file",
    "ca_file",
    "zstd_level",
    "scan_interval",
    "ship_concurrency",
    "request_timeout",
    "backoff_max",
    "recheck_interval",
    "shipped_keep",
    "quarantine_keep",
    "sweep_batch",
    "bandwidth_limit",
    "resumable_threshold",
    "log_format",
    "shutdown_grace",
    "metrics_textfile",
];

/// Values given on the command line (the flags of SPEC §5).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub spool: Option<String>,
    pub receiver: Option<String>,
    pub token_file: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub spool: PathBuf,
    /// Base URL without a trailing slash.
    pub receiver: String,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub zstd_level: i32,
    pub scan_interval: Duration,
    pub ship_concurrency: usize,
    /// An idle timeout: no byte moved (and no answer) for this long.
    pub request_timeout: Duration,
    pub backoff_max: Duration,
    pub recheck_interval: Duration,
    pub shipped_keep: Duration,
    pub quarantine_keep: Duration,
    pub sweep_batch: usize,
    /// Bytes per second; `None` is unlimited.
    pub bandwidth_limit: Option<u64>,
    /// Tarballs of at least this many bytes ship with tus (SPEC §8).
    pub resumable_threshold: u64,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Where to write the metrics for node_exporter's textfile collector.
    pub metrics_textfile: Option<PathBuf>,
}

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ferry/agent.toml";

impl Config {
    /// Load file + environment + flags and resolve. `env` is passed in (the
    /// process environment in `main`, a map in tests).
    pub fn load(flags: &Flags, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let (file, origin_file) = match &flags.config {
            Some(p) => (Some(read_file(p)?), p.display().to_string()),
            None => match env.get("FERRY_AGENT_CONFIG") {
                Some(p) => (Some(read_file(Path::new(p))?), p.clone()),
                None if Path::new(DEFAULT_CONFIG_FILE).exists() => (
                    Some(read_file(Path::new(DEFAULT_CONFIG_FILE))?),
                    DEFAULT_CONFIG_FILE.to_string(),
                ),
                None => (None, String::new()),
            },
        };
        let mut raw = file.unwrap_or_default();
        let mut origins: BTreeMap<&'static str, String> = BTreeMap::new();
        for k in KEYS {
            if raw.get(k).is_some() {
                origins.insert(k, format!("file {origin_file}"));
            }
        }
        for k in KEYS {
            let var = format!("FERRY_AGENT_{}", k.to_ascii_uppercase());
            if let Some(v) = env.get(&var) {
                raw.set(k, v.clone());
                origins.insert(k, format!("environment {var}"));
            }
        }
        for (k, v) in [
            ("spool", &flags.spool),
            ("receiver", &flags.receiver),
            ("token_file", &flags.token_file),
        ] {
            if let Some(v) = v {
                raw.set(k, v.clone());
                origins.insert(k, format!("flag --{}", k.replace('_', "-")));
            }
        }
        raw.resolve(&origins)
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl RawConfig {
    /// The value of a key as text, whatever its TOML type.
    fn get(&self, key: &str) -> Option<String> {
        fn v(x: &toml::Value) -> String {
            match x {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        match key {
            "spool" => self.spool.clone(),
            "receiver" => self.receiver.clone(),
            "token_file" => self.token_file.clone(),
            "ca_file" => self.ca_file.clone(),
            "zstd_level" => self.zstd_level.as_ref().map(v),
            "scan_interval" => self.scan_interval.clone(),
            "ship_concurrency" => self.ship_concurrency.as_ref().map(v),
            "request_timeout" => self.request_timeout.clone(),
            "backoff_max" => self.backoff_max.clone(),
            "recheck_interval" => self.recheck_interval.clone(),
            "shipped_keep" => self.shipped_keep.clone(),
            "quarantine_keep" => self.quarantine_keep.clone(),
            "sweep_batch" => self.sweep_batch.as_ref().map(v),
            "bandwidth_limit" => self.bandwidth_limit.as_ref().map(v),
            "resumable_threshold" => self.resumable_threshold.as_ref().map(v),
            "log_format" => self.log_format.clone(),
            "shutdown_grace" => self.shutdown_grace.clone(),
            "metrics_textfile" => self.metrics_textfile.clone(),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: String) {
        let s = Some(value.clone());
        let t = Some(toml::Value::String(value));
        match key {
            "spool" => self.spool = s,
            "receiver" => self.receiver = s,
            "token_file" => self.token_file = s,
            "ca_file" => self.ca_file = s,
            "zstd_level" => self.zstd_level = t,
            "scan_interval" => self.scan_interval = s,
            "ship_concurrency" => self.ship_concurrency = t,
            "request_timeout" => self.request_timeout = s,
            "backoff_max" => self.backoff_max = s,
            "recheck_interval" => self.recheck_interval = s,
            "shipped_keep" => self.shipped_keep = s,
            "quarantine_keep" => self.quarantine_keep = s,
            "sweep_batch" => self.sweep_batch = t,
            "bandwidth_limit" => self.bandwidth_limit = t,
            "resumable_threshold" => self.resumable_threshold = t,
            "log_format" => self.log_format = s,
            "shutdown_grace" => self.shutdown_grace = s,
            "metrics_textfile" => self.metrics_textfile = s,
            _ => {}
        }
    }

    /// Apply defaults and validate every key.
    pub fn resolve(&self, origins: &BTreeMap<&'static str, String>) -> Result<Config, ConfigError> {
        let r = Resolver { raw: self, origins };
        let receiver = r
            .text("receiver")
            .unwrap_or_else(|| "http://127.0.0.1:8420".into());
        let receiver = receiver.trim().trim_end_matches('/').to_string();
        if !(receiver.starts_with("http://") || receiver.starts_with("https://")) {
            return Err(r.invalid("receiver", "expected an http:// or https:// URL"));
        }
        if reqwest::Url::parse(&receiver).is_err() {
            return Err(r.invalid("receiver", "not a valid URL"));
        }
        let zstd_level = r.int("zstd_level", 3, 1, 22)? as i32;
        let ship_concurrency = r.int("ship_concurrency", 2, 1, 64)? as usize;
        let sweep_batch = r.int("sweep_batch", 500, 1, 1_000_000)? as usize;
        let bandwidth_limit = match r.text("bandwidth_limit") {
            None => None,
            Some(s) if matches!(s.trim(), "" | "0" | "unlimited") => None,
            Some(s) => Some(parse_rate(&s).map_err(|m| r.invalid("bandwidth_limit", &m))?),
        };
        let resumable_threshold = match r.text("resumable_threshold") {
            None => 16 << 20,
            Some(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|e| {
                    r.invalid(
                        "resumable_threshold",
                        &format!("expected a size like 16MiB: {e}"),
                    )
                })?
                .as_u64(),
        };
        let log_format = match r.text("log_format").as_deref().map(str::trim) {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(r.invalid("log_format", "expected `human` or `json`")),
        };
        let cfg = Config {
            spool: PathBuf::from(
                r.text("spool")
                    .unwrap_or_else(|| "/var/lib/ferry/spool".into()),
            ),
            receiver,
            token_file: PathBuf::from(
                r.text("token_file")
                    .unwrap_or_else(|| "/etc/ferry/agent.token".into()),
            ),
            ca_file: r
                .text("ca_file")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            zstd_level,
            scan_interval: r.duration("scan_interval", "5s")?,
            ship_concurrency,
            request_timeout: r.duration("request_timeout", "60s")?,
            backoff_max: r.duration("backoff_max", "5m")?,
            recheck_interval: r.duration("recheck_interval", "10m")?,
            shipped_keep: r.duration("shipped_keep", "7d")?,
            quarantine_keep: r.duration("quarantine_keep", "30d")?,
            sweep_batch,
            bandwidth_limit,
            resumable_threshold,
            log_format,
            shutdown_grace: r.duration("shutdown_grace", "10s")?,
            metrics_textfile: r.metrics_textfile()?,
        };
        if cfg.scan_interval.is_zero() {
            return Err(r.invalid("scan_interval", "must be greater than zero"));
        }
        if cfg.request_timeout.is_zero() {
            return Err(r.invalid("request_timeout", "must be greater than zero"));
        }
        Ok(cfg)
    }
}

struct Resolver<'a> {
    raw: &'a RawConfig,
    origins: &'a BTreeMap<&'static str, String>,
}

impl Resolver<'_> {
    fn text(&self, key: &str) -> Option<String> {
        self.raw.get(key)
    }

    /// node_exporter's textfile collector reads only `*.prom` files: any
    /// other name would be written and never collected.
    fn metrics_textfile(&self) -> Result<Option<PathBuf>, ConfigError> {
        match self
            .text("metrics_textfile")
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) if !s.ends_with(".prom") => Err(self.invalid(
                "metrics_textfile",
                "must end in .prom (node_exporter's textfile collector reads only *.prom files)",
            )),
            s => Ok(s.map(PathBuf::from)),
        }
    }

    fn invalid(&self, key: &'static str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            key,
            origin: self
                .origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "default".into()),
            message: format!("{message} (got {:?})", self.text(key).unwrap_or_default()),
        }
    }

    fn int(&self, key: &'static str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        let Some(s) = self.text(key) else {
            return Ok(default);
        };
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| self.invalid(key, "expected an integer"))?;
        if n < min || n > max {
            return Err(self.invalid(key, &format!("expected {min}..={max}")));
        }
        Ok(n)
    }

    fn duration(&self, key: &'static str, default: &str) -> Result<Duration, ConfigError> {
        let s = self.text(key).unwrap_or_else(|| default.to_string());
        humantime::parse_duration(s.trim())
            .map_err(|e| self.invalid(key, &format!("expected a duration like 5s, 10m, 7d: {e}")))
    }
}

/// `1MiB`, `512KiB/s`, `1000000`: bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let n = t
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("expected a size per second like 1MiB: {e}"))?
        .as_u64();
    if n == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn defaults_apply_with_no_file() {
        let flags = Flags {
            config: None,
            spool: Some("/s".into()),
            ..Flags::default()
        };
        let c = Config::load(&flags, &env(&[])).unwrap();
        assert_eq!(c.zstd_level, 3);
        assert_eq!(c.scan_interval, Duration::from_secs(5));
        assert_eq!(c.ship_concurrency, 2);
        assert_eq!(c.request_timeout, Duration::from_secs(60));
        assert_eq!(c.backoff_max, Duration::from_secs(300));
        assert_eq!(c.recheck_interval, Duration::from_secs(600));
        assert_eq!(c.shipped_keep, Duration::from_secs(7 * 86400));
        assert_eq!(c.quarantine_keep, Duration::from_secs(30 * 86400));
        assert_eq!(c.sweep_batch, 500);
        assert_eq!(c.bandwidth_limit, None);
        assert_eq!(c.resumable_threshold, 16 << 20);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let (_d, p) = file(
            "spool = \"/file\"\nreceiver = \"http://file:1\"\nzstd_level = 5\nscan_interval = \"7s\"\n",
        );
        let e = env(&[
            ("FERRY_AGENT_RECEIVER", "http://env:2/"),
            ("FERRY_AGENT_SPOOL", "/env"),
            ("FERRY_AGENT_BANDWIDTH_LIMIT", "1MiB"),
        ]);
        let flags = Flags {
            config: Some(p),
            spool: Some("/flag".into()),
            ..Flags::default()
        };
        let c = Config::load(&flags, &e).unwrap();
        assert_eq!(c.spool, PathBuf::from("/flag"));
        assert_eq!(c.receiver, "http://env:2");
        assert_eq!(c.zstd_level, 5);
        assert_eq!(c.scan_interval, Duration::from_secs(7));
        assert_eq!(c.bandwidth_limit, Some(1024 * 1024));
    }

    #[test]
    fn errors_name_the_key() {
        let (_d, p) = file("zstd_level = 99\n");
        let flags = Flags {
            config: Some(p),
            ..Flags::default()
        };
        let e = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("zstd_level"), "{e}");
        let e = Config::load(
            &Flags::default(),
            &env(&[("FERRY_AGENT_SCAN_INTERVAL", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("scan_interval") && e.contains("FERRY_AGENT_SCAN_INTERVAL"),
            "{e}"
        );
        let (_d, p) = file("spoool = \"/x\"\n");
        let flags = Flags {
            config: Some(p),
            ..Flags::default()
        };
        let e = Config::load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("spoool"), "{e}");
    }

    #[test]
    fn the_example_file_parses_and_sets_every_key_commented() {
        let text = include_str!("../../config/agent.toml");
        let raw: RawConfig = toml::from_str(text).unwrap();
        assert!(raw.spool.is_none(), "the example keeps every key commented");
        for k in KEYS {
            assert!(
                text.contains(&format!("# {k} =")),
                "{k} missing from config/agent.toml"
            );
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_rate("512KiB/s").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("fast").is_err());
    }
}
