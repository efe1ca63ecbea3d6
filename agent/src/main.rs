//! ferry-agent: parse the command line, resolve the configuration, call the
//! library, map the result to an exit code (0 ok, 1 failed, 2 usage or
//! configuration).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;

use clap::Parser;
use ferry_agent::cli::{self, Cli, CliError, Cmd};
use ferry_agent::config::{Config, LogFormat};
use ferry_agent::notify::{self, Notifier};
use ferry_agent::pack::{self, PackOptions};
use ferry_agent::run::{self, Agent, Mode, Shutdown, StartError};
use ferry_agent::spool::Spool;
use tokio_util::sync::CancellationToken;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

fn main() -> ExitCode {
    // A SIGTERM/SIGINT before the async handlers are installed (an
    // orchestrator stopping us during start-up) then shuts the daemon down
    // cleanly instead of killing it by the default action.
    ferry_durable::process::catch_early_signals();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = cli.common.flags();
    let cfg = match Config::load(&flags, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-agent: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
    let origin = match ferry_agent::config::config_file(&flags, &env) {
        Some(p) => format!("file {}", p.display()),
        None => "defaults, environment and flags (no file)".to_string(),
    };
    if !matches!(cli.cmd, Cmd::Run | Cmd::Drain { .. }) {
        // One-shot commands stop on a signal the ordinary way.
        ferry_durable::process::default_signals();
        if ferry_durable::process::early_signal_seen() {
            return ExitCode::FAILURE;
        }
    }
    match cli.cmd {
        Cmd::Pack { dir, output } => pack_cmd(&cfg, &dir, &output),
        Cmd::Status { json } => {
            match ferry_agent::status::print(&Spool::new(cfg.spool.clone()), json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Cmd::Quarantine { cmd } => {
            match cli::quarantine_cmd(&Spool::new(cfg.spool.clone()), &cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(CliError::Usage(m)) => {
                    eprintln!("ferry-agent: {m}");
                    ExitCode::from(2)
                }
                Err(CliError::Failed(m)) => {
                    eprintln!("ferry-agent: {m}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Doctor { json } => on_runtime(async {
            match ferry_agent::doctor::print(&cfg, &origin, json).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(e),
            }
        }),
        Cmd::Run => on_runtime(daemon(cfg, Mode::Run)),
        Cmd::Drain { timeout } => on_runtime(daemon(cfg, Mode::Drain { timeout })),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry-agent: {e}");
    ExitCode::FAILURE
}

/// Run `f` on a fresh runtime. Blocking work still running at the end (a
/// read stuck in the kernel) gets a moment, then is left behind: exiting
/// must not wait on a hung disk.
fn on_runtime(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-agent")
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(f);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn pack_cmd(cfg: &Config, dir: &std::path::Path, output: &std::path::Path) -> ExitCode {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
        eprintln!(
            "ferry-agent: {}: cannot take an episode id from this path",
            dir.display()
        );
        return ExitCode::from(2);
    };
    if let Err(e) = ferry_proto::EpisodeId::parse(&name) {
        eprintln!("ferry-agent: directory name {name:?} is not an episode id: {e}");
        return ExitCode::from(2);
    }
    let progress = AtomicU64::new(0);
    match pack::pack_dir(
        &dir,
        &name,
        output,
        PackOptions::new(cfg.zstd_level),
        &progress,
        &CancellationToken::new(),
    ) {
        Ok(p) => {
            println!("{}", p.sha256);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.describe()),
    }
}

/// Signals in one place: the first SIGTERM/SIGINT stops new work and
/// aborts in-flight uploads after `shutdown_grace`; a second aborts at once.
fn handle_signals(shutdown: Shutdown, grace: std::time::Duration, notifier: Notifier) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut first = true;
        let mut early = ferry_durable::process::early_signal_seen();
        loop {
            let name = if std::mem::take(&mut early) {
                "a signal during start-up"
            } else {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            };
            if first {
                first = false;
                notifier.stopping();
                tracing::info!(
                    "{name}: shutting down; in-flight uploads get {} before they are aborted",
                    humantime::format_duration(grace)
                );
                shutdown.begin(grace);
            } else {
                tracing::info!("{name} again: aborting in-flight work now");
                shutdown.abort.cancel();
            }
        }
    });
}

async fn daemon(cfg: Config, mode: Mode) -> ExitCode {
    let notifier = Notifier;
    let watchdog = notify::watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let shutdown = Shutdown::new();
    handle_signals(shutdown.clone(), cfg.shutdown_grace, notifier);
    let (agent, _lock) = match Agent::start(cfg, notifier).await {
        Ok(a) => a,
        Err(e @ StartError::Client(_)) => {
            eprintln!("ferry-agent: configuration error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => return fail(e),
    };
    run::spawn_watchdog(watchdog, agent.progress(), notifier, shutdown.abort.clone());
    let finished = agent.run(mode, shutdown.clone()).await;
    match mode {
        Mode::Run => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Mode::Drain { .. } if finished.pending == 0 && finished.conflicts == 0 => {
            tracing::info!("drained: nothing left pending");
            ExitCode::SUCCESS
        }
        // SPEC §5: 1, the operation failed. Episodes parked in conflict/ are
        // not pending, but they were not delivered either.
        Mode::Drain { .. } => {
            if finished.pending > 0 {
                eprintln!(
                    "ferry-agent: {} episode(s) still pending{}",
                    finished.pending,
                    if finished.timed_out {
                        " at the timeout"
                    } else {
                        ""
                    }
                );
            }
            if finished.conflicts > 0 {
                eprintln!(
                    "ferry-agent: {} episode(s) parked in conflict/ by this drain: the receiver \
                     holds other bytes under their ids; see `ferry-agent doctor`",
                    finished.conflicts
                );
            }
            ExitCode::FAILURE
        }
    }
}
