//! `serve`: open storage, bind, announce readiness, accept connections on
//! hyper-util (header timeout, header size limits, keep-alive, optional
//! TLS), and shut down gracefully: on cancellation stop accepting, let
//! in-flight requests finish within `shutdown_grace`, then abort them
//! (their temporary files are removed as their tasks drop).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Admission, Ticket};
use crate::config::{Config, TlsFiles};
use crate::http::{self, AppState};
use crate::malformed::JsonErrors;
use crate::store::collect::Collector;

/// Longest wait for a request's headers (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = 64 << 10;
const MAX_HEADERS: usize = 64;
/// Read buffer of a connection; bounds the size of body chunks too.
const MAX_BUF: usize = 512 << 10;

/// Why `serve` failed: a configuration problem (exit 2) or an operational
/// one (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Failed(String),
}

fn read_admin_token(config: &Config) -> Result<Option<String>, ServeError> {
    let Some(path) = &config.admin_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ServeError::Config(format!(
            "config key `admin_token_file`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(ServeError::Config(format!(
            "config key `admin_token_file`: the token in {} is shorter than 16 characters",
            path.display()
        )));
    }
    Ok(Some(token.to_owned()))
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    let open = |key: &str, p: &std::path::Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| {
                ServeError::Config(format!(
                    "config key `{key}`: cannot read {}: {e}",
                    p.display()
                ))
            })
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut open("tls_cert", &files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ServeError::Config(format!(
                "config key `tls_cert`: {}: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Config(format!(
            "config key `tls_cert`: no certificate in {}",
            files.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut open("tls_key", &files.key)?)
        .map_err(|e| {
            ServeError::Config(format!(
                "config key `tls_key`: {}: {e}",
                files.key.display()
            ))
        })?
        .ok_or_else(|| {
            ServeError::Config(format!(
                "config key `tls_key`: no private key in {}",
                files.key.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Failed(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Config(format!("config keys `tls_cert`/`tls_key`: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Runs the receiver until `shutdown` is cancelled. Prints exactly one line
/// to stdout, `listening on http(s)://ADDR`, once it is bound and ready.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let started_at = SystemTime::now();
    let admin_token = read_admin_token(&config)?;
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;

    let objects = crate::store::objects::open(&config)
        .map_err(|e| ServeError::Failed(format!("object storage: {e}")))?;
    objects
        .prepare()
        .await
        .map_err(|e| ServeError::Failed(format!("object storage: {e}")))?;
    let index = crate::store::open(&config)
        .await
        .map_err(|e| ServeError::Failed(format!("index database: {e}")))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Failed(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Failed(format!("cannot read the bound address: {e}")))?;

    let config = Arc::new(config);
    let state = Arc::new(AppState::new(
        config.clone(),
        index,
        objects.clone(),
        admin_token,
    ));
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| admission::auto_max_connections(config.max_concurrent_uploads));
    tracing::info!(max_connections, "connection cap");
    let routers = Routers {
        general: http::router(state.clone()),
        priority: http::priority_router(state.clone()),
        admission: Admission::new(max_connections),
        metrics: state.metrics.clone(),
    };

    let scheme = if tls.is_some() { "https" } else { "http" };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, scheme, data_dir = %config.data_dir.display(), "ready");

    // Staging left by a crash of this replica's previous run; older staging
    // of other replicas is the collector's.
    let sweeper = tokio::spawn({
        let (objects, shutdown) = (objects.clone(), shutdown.clone());
        async move { objects.sweep_staging(started_at, shutdown).await }
    });

    let upkeep = tokio::spawn({
        let (objects, shutdown) = (objects.clone(), shutdown.clone());
        async move { objects.upkeep(shutdown).await }
    });

    let collector = tokio::spawn(
        Collector::new(state.index.clone(), objects.clone(), config.collect_grace).run(
            config.collect_interval,
            shutdown.clone(),
            state.metrics.objects_collected.clone(),
        ),
    );

    // Incomplete resumable uploads past `upload_expiry` (SPEC §8): on this
    // disk, or in the bucket and the index.
    let reclaimer = match state.parts.clone() {
        None => tokio::spawn(crate::store::uploads::reclaim::run(
            state.uploads.clone(),
            config.upload_expiry,
            state.metrics.uploads_expired.clone(),
            shutdown.clone(),
        )),
        Some(parts) => tokio::spawn(crate::store::uploads::shared::reclaim(
            state.index.clone(),
            parts,
            config.upload_expiry,
            state.metrics.uploads_expired.clone(),
            shutdown.clone(),
        )),
    };

    let flusher = state.rejections.spawn_flusher(
        state.index.clone(),
        config.rejected_window,
        shutdown.clone(),
    );

    accept_loop(listener, tls, routers, &config, shutdown).await;
    sweeper.abort();
    upkeep.abort();
    collector.abort();
    reclaimer.abort();
    // The last tallies, including 412s answered during the grace period.
    let _ = flusher.await;
    state
        .rejections
        .flush(&*state.index, config.rejected_window)
        .await;
    Ok(())
}

/// What the accept loop hands each connection.
struct Routers {
    general: axum::Router,
    priority: axum::Router,
    admission: Arc<Admission>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Longest wait for a request's headers on a priority-tier connection: it
/// exists for one quick operator request.
const PRIORITY_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn http1_builder(header_timeout: Duration, keep_alive: bool) -> Arc<http1::Builder> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(keep_alive);
    Arc::new(builder)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routers: Routers,
    config: &Config,
    shutdown: CancellationToken,
) {
    let general = http1_builder(HEADER_READ_TIMEOUT, true);
    let priority = http1_builder(PRIORITY_HEADER_READ_TIMEOUT, false);
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: keep serving the connections we
                        // have and try again shortly.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ticket = routers.admission.admit();
                let (router, builder, evicted) = match &ticket {
                    Ticket::General(_) => (&routers.general, &general, None),
                    Ticket::Priority(g) => {
                        routers.metrics.connections_shedding.inc();
                        (&routers.priority, &priority, Some(g.evicted.clone()))
                    }
                };
                let svc = TowerToHyperService::new(router.clone());
                let conn = serve_one(stream, peer, tls.clone(), builder.clone(), svc, graceful.watcher());
                let open = routers.metrics.connections_open.clone();
                let evictions = routers.metrics.connections_evicted.clone();
                conns.spawn(async move {
                    let _ticket = ticket;
                    open.inc();
                    match evicted {
                        None => conn.await,
                        Some(evicted) => tokio::select! {
                            () = conn => {}
                            () = evicted.cancelled() => {
                                evictions.inc();
                                tracing::debug!(%peer, "closed to make room in the priority tier");
                            }
                        },
                    }
                    open.dec();
                });
            }
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::info!(open, grace = ?config.shutdown_grace, "shutting down: no new connections; letting requests finish");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all requests finished"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!(
                still_open = conns.len(),
                "shutdown grace period over; aborting the requests still running (their uploads are discarded)"
            );
            conns.abort_all();
        }
    }
    while conns.join_next().await.is_some() {}
}

/// One connection, TLS handshake included, until it ends.
async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<http1::Builder>,
    svc: TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let result = match tls {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(JsonErrors::new(stream)), svc))
                .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(JsonErrors::new(s)), svc))
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
