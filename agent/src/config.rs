//! Configuration: every key declared once ([`KEYS`], with its type,
//! default and meaning), layered by `ferry-settings` (file <
//! `FERRY_AGENT_<KEY>` environment < flags) and resolved into the
//! [`Config`] the program passes around. Nothing else reads the
//! environment for settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ferry_settings::{keys, parse, Layers};

pub use ferry_settings::{ConfigError, LogFormat};

/// Prefix of the environment variables: `FERRY_AGENT_<KEY>` (upper case).
pub const ENV_PREFIX: &str = "FERRY_AGENT_";

/// Where the configuration file is looked for when neither `--config` nor
/// `FERRY_AGENT_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/ferry/agent.toml";

keys! {
    /// The spool directory (SPEC §1). Flag `--spool`.
    pub SPOOL: PathBuf = "spool" default "/var/lib/ferry/spool" => parse::path;
    /// Base URL of the receiver, http:// or https://; kept without a
    /// trailing slash. Flag `--receiver`.
    pub RECEIVER: String = "receiver" default "http://127.0.0.1:8420" => receiver_url;
    /// File holding the device token, re-read before every upload. Flag
    /// `--token-file`.
    pub TOKEN_FILE: PathBuf = "token_file" default "/etc/ferry/agent.token" => parse::path;
    /// PEM file of a private CA for https:// receivers; empty or unset:
    /// the system roots only.
    pub CA_FILE: Option<PathBuf> = "ca_file" => parse::optional_path;
    /// zstd level, 1..=22; part of the archive's bytes.
    pub ZSTD_LEVEL: i32 = "zstd_level" default "3" => |s| parse::int_in(s, 1, 22).map(|n| n as i32);
    /// How often to look for newly finished episodes when idle.
    pub SCAN_INTERVAL: Duration = "scan_interval" default "5s" => parse::nonzero_duration;
    /// Uploads in flight at once, 1..=64.
    pub SHIP_CONCURRENCY: usize = "ship_concurrency" default "2" => |s| parse::int_in(s, 1, 64).map(|n| n as usize);
    /// Stall timeout of an upload: no byte moved and no answer for this
    /// long. Not a limit on the total time.
    pub REQUEST_TIMEOUT: Duration = "request_timeout" default "60s" => parse::nonzero_duration;
    /// Cap of the exponential backoff after transient failures.
    pub BACKOFF_MAX: Duration = "backoff_max" default "5m" => parse::duration;
    /// How often episodes quarantined for a rejected commit are re-checked.
    pub RECHECK_INTERVAL: Duration = "recheck_interval" default "10m" => parse::duration;
    /// How long retired episodes stay in `shipped/`.
    pub SHIPPED_KEEP: Duration = "shipped_keep" default "7d" => parse::duration;
    /// How long quarantined episodes stay in `quarantine/`.
    pub QUARANTINE_KEEP: Duration = "quarantine_keep" default "30d" => parse::duration;
    /// Entries handled per batch by the background sweeps.
    pub SWEEP_BATCH: usize = "sweep_batch" default "500" => |s| parse::int_in(s, 1, 1_000_000).map(|n| n as usize);
    /// Upload bytes per second, shared by all uploads; `None` (unset,
    /// empty, `0` or `unlimited`) is unlimited.
    pub BANDWIDTH_LIMIT: Option<u64> = "bandwidth_limit" default "unlimited" => bandwidth_limit;
    /// Log format on stderr.
    pub LOG_FORMAT: LogFormat = "log_format" default "human" => parse::log_format;
    /// On SIGTERM, how long in-flight uploads get before they are aborted.
    pub SHUTDOWN_GRACE: Duration = "shutdown_grace" default "10s" => parse::duration;
    /// The `*.prom` file for node_exporter's textfile collector; unset or
    /// empty: not written.
    pub METRICS_TEXTFILE: Option<PathBuf> = "metrics_textfile" => metrics_textfile;
}

/// Values given on the command line (the flags of SPEC §5).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub spool: Option<String>,
    pub receiver: Option<String>,
    pub token_file: Option<String>,
}

/// The resolved configuration (see [`KEYS`] for what each field means).
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
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// Where to write the metrics for node_exporter's textfile collector.
    pub metrics_textfile: Option<PathBuf>,
}

/// The configuration file to read: `--config`, else `FERRY_AGENT_CONFIG`,
/// else [`DEFAULT_CONFIG_FILE`] if it exists, else none.
pub fn config_file(flags: &Flags, env: &BTreeMap<String, String>) -> Option<PathBuf> {
    match (&flags.config, env.get("FERRY_AGENT_CONFIG")) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(PathBuf::from(p)),
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    }
}

impl Config {
    /// Load file + environment + flags and resolve. `env` is passed in (the
    /// process environment in `main`, a map in tests).
    pub fn load(flags: &Flags, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut layers = Layers::new(ENV_PREFIX, KEYS);
        if let Some(path) = config_file(flags, env) {
            layers.merge_file(&path)?;
        }
        layers.merge_env(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (key, value) in [
            (SPOOL.name, &flags.spool),
            (RECEIVER.name, &flags.receiver),
            (TOKEN_FILE.name, &flags.token_file),
        ] {
            if let Some(v) = value {
                layers.set_flag(key, v.clone());
            }
        }
        Config::resolve(&layers)
    }

    /// Every key's value from `layers`.
    pub fn resolve(layers: &Layers) -> Result<Config, ConfigError> {
        Ok(Config {
            spool: layers.get(&SPOOL)?,
            receiver: layers.get(&RECEIVER)?,
            token_file: layers.get(&TOKEN_FILE)?,
            ca_file: layers.opt(&CA_FILE)?.flatten(),
            zstd_level: layers.get(&ZSTD_LEVEL)?,
            scan_interval: layers.get(&SCAN_INTERVAL)?,
            ship_concurrency: layers.get(&SHIP_CONCURRENCY)?,
            request_timeout: layers.get(&REQUEST_TIMEOUT)?,
            backoff_max: layers.get(&BACKOFF_MAX)?,
            recheck_interval: layers.get(&RECHECK_INTERVAL)?,
            shipped_keep: layers.get(&SHIPPED_KEEP)?,
            quarantine_keep: layers.get(&QUARANTINE_KEEP)?,
            sweep_batch: layers.get(&SWEEP_BATCH)?,
            bandwidth_limit: layers.get(&BANDWIDTH_LIMIT)?,
            log_format: layers.get(&LOG_FORMAT)?,
            shutdown_grace: layers.get(&SHUTDOWN_GRACE)?,
            metrics_textfile: layers.opt(&METRICS_TEXTFILE)?.flatten(),
        })
    }
}

fn receiver_url(s: &str) -> Result<String, String> {
    let url = s.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{s:?}: expected an http:// or https:// URL"));
    }
    match reqwest::Url::parse(url) {
        Ok(_) => Ok(url.to_owned()),
        Err(e) => Err(format!("{s:?} is not a valid URL: {e}")),
    }
}

fn bandwidth_limit(s: &str) -> Result<Option<u64>, String> {
    match s {
        "" | "0" | "unlimited" => Ok(None),
        _ => parse::rate(s).map(Some),
    }
}

/// node_exporter's textfile collector reads only `*.prom` files: any other
/// name would be written and never collected.
fn metrics_textfile(s: &str) -> Result<Option<PathBuf>, String> {
    match parse::optional_path(s)? {
        Some(p) if !s.ends_with(".prom") => Err(format!(
            "{p:?}: must end in .prom (node_exporter's textfile collector reads only *.prom files)"
        )),
        p => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
    fn the_example_file_shows_every_key_commented_with_a_valid_value() {
        let text = include_str!("../../config/agent.toml");
        let problems = ferry_settings::check_example(text, KEYS);
        assert!(problems.is_empty(), "config/agent.toml: {problems:#?}");
        let missing = ferry_settings::keys_not_shown(text, KEYS);
        assert!(missing.is_empty(), "config/agent.toml lacks {missing:?}");
        // And every declared default is a valid value of its key.
        for k in KEYS {
            if let Some(d) = k.default() {
                k.check(d)
                    .unwrap_or_else(|e| panic!("default of {}: {e}", k.name()));
            }
        }
        let mut layers = Layers::new(ENV_PREFIX, KEYS);
        layers
            .merge_toml(text, Path::new("config/agent.toml"))
            .unwrap();
        for k in KEYS {
            assert!(
                layers.raw(k.name()).is_none(),
                "{}: the example keeps every key commented",
                k.name()
            );
        }
    }

    #[test]
    fn rates_and_their_absence_parse() {
        assert_eq!(bandwidth_limit("1MiB").unwrap(), Some(1 << 20));
        assert_eq!(bandwidth_limit("512KiB/s").unwrap(), Some(512 << 10));
        assert_eq!(bandwidth_limit("1000").unwrap(), Some(1000));
        assert_eq!(bandwidth_limit("unlimited").unwrap(), None);
        assert_eq!(bandwidth_limit("0").unwrap(), None);
        assert!(bandwidth_limit("fast").is_err());
    }

    #[test]
    fn receiver_urls_lose_the_trailing_slash_and_need_a_scheme() {
        assert_eq!(receiver_url("https://rx:8420/").unwrap(), "https://rx:8420");
        assert!(receiver_url("rx:8420").is_err());
        assert!(receiver_url("http://").is_err());
    }

    #[test]
    fn the_metrics_file_must_be_a_prom_file() {
        assert_eq!(metrics_textfile("").unwrap(), None);
        assert!(metrics_textfile("/var/x.txt").is_err());
        assert_eq!(
            metrics_textfile("/var/x.prom").unwrap(),
            Some(PathBuf::from("/var/x.prom"))
        );
    }
}
