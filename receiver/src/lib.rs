//! ferry-receiver: the central service that authenticates devices, enforces
//! the commit allow-list, verifies sha256 while streaming, stores every
//! episode once and gives operators a CLI, an admin API, metrics and a
//! status page.
//!
//! `main.rs` only parses flags; everything is here so that tests drive it.
//! See `ARCHITECTURE.md` for the map.
//!
//! No `unsafe` here: system calls that need it live in `ferry-durable`.

#![forbid(unsafe_code)]

pub mod admission;
pub mod cli;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod malformed;
pub mod metrics;
pub mod ops;
pub mod rate;
pub mod rejected;
pub mod server;
pub mod store;
pub mod sweep;
pub mod tokens;
pub mod tus;

use tokio_util::sync::CancellationToken;

pub use config::{Config, RawConfig};
pub use server::ServeError;

/// Cancels `token` on the first SIGTERM or SIGINT. The one place signals
/// are handled; shutdown is passed down as the token.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutdown requested");
        token.cancel();
    });
    Ok(())
}

/// `serve` with signal handling: runs until SIGTERM/SIGINT.
pub async fn run_serve(config: Config) -> Result<(), ServeError> {
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone())
        .map_err(|e| ServeError::Failed(format!("cannot install signal handlers: {e}")))?;
    server::serve(config, shutdown).await
}
