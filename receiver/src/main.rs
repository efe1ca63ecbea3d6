//! The `ferry-receiver` command line: parse, resolve the configuration,
//! call the library, map the result to an exit code (0 ok, 1 failed, 2 bad
//! usage or configuration; clap's own usage errors exit 2).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry_receiver::cli::{self, Admin, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use ferry_receiver::config::{Config, LogFormat, RawConfig};
use ferry_receiver::healthcheck::{self, ProbeError, Target};
use ferry_receiver::ServeError;

#[derive(Debug, Parser)]
#[command(name = "ferry-receiver", version, about = "The ferry central service")]
struct Cli {
    /// TOML configuration file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FERRY_RECEIVER_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Data directory (index and objects by default).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver.
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:8420 (port 0: any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// The commit allow-list.
    #[command(subcommand)]
    Commits(CommitsCmd),
    /// Devices and their tokens.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Stored episodes.
    #[command(subcommand)]
    Episodes(EpisodesCmd),
    /// GET /healthz of a running receiver: exit 0 on 200, 1 otherwise (for
    /// a container HEALTHCHECK; needs no shell tools).
    Healthcheck {
        /// The receiver's listen address (default: `listen` from the
        /// configuration; 0.0.0.0 is probed on 127.0.0.1).
        #[arg(long, value_name = "ADDR", conflicts_with = "url")]
        listen: Option<String>,
        /// The receiver's base URL instead (http:// only).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CommitsCmd {
    /// Allow a commit to ship.
    Allow {
        commit: String,
        /// Make it the head commit that remediations point to.
        #[arg(long)]
        head: bool,
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Remove a commit from the allow-list.
    Revoke { commit: String },
    /// List allowed commits.
    List(JsonFlag),
    /// Commits answered 412 within `rejected_window`, with the devices
    /// running them and the command that allows each.
    Rejected(JsonFlag),
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Register a device; prints its token, alone, on stdout.
    Add { name: String },
    /// List devices.
    List(JsonFlag),
    /// Revoke a device's token.
    Revoke { name: String },
    /// Rename a device; it keeps its token and its episodes (a re-imaged
    /// device that ships again under its old token is still recognised).
    Rename { old: String, new: String },
}

#[derive(Debug, Subcommand)]
enum EpisodesCmd {
    /// List stored episodes, newest first, as DEVICE/ID.
    List {
        /// Only this device's episodes.
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Re-hash stored objects (all, or the given episodes: DEVICE/ID, or an
    /// ID that one device alone stored); exit 1 on any problem.
    Verify {
        #[arg(value_name = "DEVICE/ID")]
        refs: Vec<String>,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_RECEIVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn resolve(cli: &Cli, listen: Option<&str>) -> Result<Config, String> {
    let mut raw = RawConfig::default();
    if let Some(path) = &cli.config {
        raw.merge_file(path).map_err(|e| e.to_string())?;
    }
    raw.merge_env(std::env::vars());
    if let Some(d) = &cli.data_dir {
        raw.set_flag("data_dir", d.to_string_lossy());
    }
    if let Some(l) = listen {
        raw.set_flag("listen", l);
    }
    raw.resolve().map_err(|e| e.to_string())
}

/// Upload bodies arrive in hyper's read buffers of a few hundred KiB,
/// which are freed on the writer and hashing threads once written and
/// hashed. glibc's malloc gives such memory back to the kernel at once (its
/// trim threshold starts at 128 KiB), so the next buffer faults in and
/// zeroes fresh pages. Keeping up to 16 MiB freed per arena, and serving
/// blocks below 4 MiB from the arenas, removes most of those page faults
/// and the CPU they cost (docs/PERFORMANCE.md, `mallopt`). glibc only;
/// other C libraries keep their defaults.
fn keep_freed_body_memory() {
    ferry_durable::process::keep_freed_memory(4 << 20, 16 << 20);
}

fn healthcheck(config: &Config, url: Option<&str>) -> ExitCode {
    let target = match url {
        Some(u) => Target::from_url(u),
        None if config.tls.is_some() => Err(ProbeError::Usage(
            "the receiver serves TLS; healthcheck speaks plain HTTP only".into(),
        )),
        None => Ok(Target::from_listen(config.listen)),
    };
    match target.and_then(|t| healthcheck::probe(&t, healthcheck::TIMEOUT)) {
        Ok(()) => ExitCode::from(EXIT_OK as u8),
        Err(e @ ProbeError::Usage(_)) => {
            eprintln!("ferry-receiver: healthcheck: {e}");
            ExitCode::from(EXIT_USAGE as u8)
        }
        Err(e @ ProbeError::Unhealthy(_)) => {
            eprintln!("ferry-receiver: unhealthy: {e}");
            ExitCode::from(EXIT_FAILED as u8)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } | Command::Healthcheck { listen, .. } => listen.as_deref(),
        _ => None,
    };
    let config = match resolve(&cli, listen) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-receiver: configuration error: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    if let Command::Healthcheck { url, .. } = &cli.command {
        return healthcheck(&config, url.as_deref());
    }
    if matches!(cli.command, Command::Serve { .. }) {
        keep_freed_body_memory();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-receiver: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED as u8);
        }
    };
    let admin = match cli.command {
        Command::Serve { .. } => {
            init_logging(config.log_format, "info");
            let code = match runtime.block_on(ferry_receiver::run_serve(config)) {
                Ok(()) => EXIT_OK,
                Err(ServeError::Config(e)) => {
                    tracing::error!("configuration error: {e}");
                    eprintln!("ferry-receiver: configuration error: {e}");
                    EXIT_USAGE
                }
                Err(ServeError::Failed(e)) => {
                    tracing::error!("{e}");
                    eprintln!("ferry-receiver: {e}");
                    EXIT_FAILED
                }
            };
            return ExitCode::from(code as u8);
        }
        Command::Commits(CommitsCmd::Allow { commit, head, note }) => {
            Admin::CommitsAllow { commit, head, note }
        }
        Command::Commits(CommitsCmd::Revoke { commit }) => Admin::CommitsRevoke { commit },
        Command::Commits(CommitsCmd::List(j)) => Admin::CommitsList { json: j.json },
        Command::Commits(CommitsCmd::Rejected(j)) => Admin::CommitsRejected { json: j.json },
        Command::Devices(DevicesCmd::Add { name }) => Admin::DevicesAdd { name },
        Command::Devices(DevicesCmd::List(j)) => Admin::DevicesList { json: j.json },
        Command::Devices(DevicesCmd::Revoke { name }) => Admin::DevicesRevoke { name },
        Command::Devices(DevicesCmd::Rename { old, new }) => Admin::DevicesRename { old, new },
        Command::Episodes(EpisodesCmd::List { device, json }) => Admin::EpisodesList {
            device,
            json: json.json,
        },
        Command::Episodes(EpisodesCmd::Verify { refs }) => Admin::EpisodesVerify { refs },
        Command::Healthcheck { .. } => unreachable!("answered before the runtime starts"),
    };
    init_logging(config.log_format, "warn");
    let code = runtime.block_on(cli::run(&config, admin));
    ExitCode::from(code as u8)
}
