//! The upload: `PUT /v1/episodes/{id}` with the headers of SPEC §2, the
//! body streamed from the outbox file with progress accounting, an optional
//! shared bandwidth limit, and a stall (idle) timeout rather than a total
//! one, so a 2 GB upload on a slow link lives as long as bytes move.
//! Also the small GETs the agent makes (`/healthz`, `/v1/whoami`,
//! `/v1/commits/{commit}`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::{headers, Commit, EpisodeId, Reply, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::notify::Progress;

/// Largest answer body read; answers are small JSON documents.
const MAX_ANSWER: usize = 64 << 10;

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub reply: Option<Reply>,
    pub retry_after: Option<Duration>,
    /// The body as text (for reason files and logs), truncated.
    pub body: String,
    /// tus (SPEC §8): `Location` of a creation, `Upload-Offset` of a HEAD
    /// or PATCH.
    pub location: Option<String>,
    pub upload_offset: Option<u64>,
    /// The answer carried `Tus-Resumable`: a tus route answered it.
    pub tus: bool,
}

/// What became of one upload attempt.
#[derive(Debug)]
pub enum UploadResult {
    Answered(Answer),
    /// No usable answer: connect/TLS/reset/stall.
    Network(String),
    /// Reading the tarball failed.
    TarballRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Shutdown.
    Aborted,
}

/// A token bucket shared by all uploads (bytes per second, one second of
/// burst).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            rate: bytes_per_sec as f64,
            state: tokio::sync::Mutex::new((bytes_per_sec as f64, Instant::now())),
        }
    }

    /// Chunk size that keeps the flow smooth at this rate.
    pub fn chunk(&self) -> usize {
        ((self.rate / 8.0) as usize).clamp(1024, 64 << 10)
    }

    /// Take `n` bytes from the bucket, sleeping until they are available.
    /// Tokens go negative to reserve, so concurrent callers queue fairly.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *st;
            let refill = now.duration_since(last).as_secs_f64() * self.rate;
            let tokens = (tokens + refill).min(self.rate) - n as f64;
            *st = (tokens, now);
            if tokens < 0.0 {
                Duration::from_secs_f64(-tokens / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The HTTP side of the agent.
#[derive(Debug, Clone)]
pub struct Shipper {
    client: reqwest::Client,
    base: String,
    token_file: PathBuf,
    request_timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    progress: Arc<Progress>,
}

/// Building the client failed (the CA file).
#[derive(Debug, thiserror::Error)]
#[error("ca_file {path}: {message}")]
pub struct ClientError {
    pub path: String,
    pub message: String,
}

impl Shipper {
    pub fn new(cfg: &Config, progress: Arc<Progress>) -> Result<Shipper, ClientError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(30)))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(ca) = &cfg.ca_file {
            let err = |message: String| ClientError {
                path: ca.display().to_string(),
                message,
            };
            let pem = std::fs::read(ca).map_err(|e| err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in the file".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| ClientError {
            path: String::new(),
            message: e.to_string(),
        })?;
        Ok(Shipper {
            client,
            base: cfg.receiver.clone(),
            token_file: cfg.token_file.clone(),
            request_timeout: cfg.request_timeout,
            limiter: cfg.bandwidth_limit.map(|r| Arc::new(RateLimiter::new(r))),
            progress,
        })
    }

    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The device token, re-read every time so that fixing the file needs
    /// no restart.
    pub async fn token(&self) -> Result<String, String> {
        match tokio::fs::read_to_string(&self.token_file).await {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            Ok(_) => Err(format!("token_file {} is empty", self.token_file.display())),
            Err(e) => Err(format!(
                "cannot read token_file {}: {e}",
                self.token_file.display()
            )),
        }
    }

    fn authed(
        &self,
        rb: reqwest::RequestBuilder,
        token: &Result<String, String>,
    ) -> reqwest::RequestBuilder {
        match token {
            Ok(t) => rb.bearer_auth(t),
            // Without a token the receiver answers 401, which the table
            // turns into a device backoff; the caller logs why.
            Err(_) => rb,
        }
    }

    /// `GET {receiver}{path}`: status and body, or the network error.
    pub async fn get(&self, path: &str, with_token: bool) -> Result<Answer, String> {
        let mut rb = self.client.get(format!("{}{path}", self.base));
        if with_token {
            let token = self.token().await;
            rb = self.authed(rb, &token);
        }
        let fut = async {
            let resp = rb.send().await.map_err(|e| error_chain(&e))?;
            read_answer(resp, None).await.map_err(|e| error_chain(&e))
        };
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.request_timeout)
            )),
        }
    }

    /// Upload one tarball, read from `file` (the descriptor that made or
    /// checked it; `tarball` names it in messages): never reopened by
    /// name, so what is sent is what was hashed. Cancellation aborts it at
    /// once (the caller keeps the tarball); a stall of `request_timeout`
    /// is a network error.
    pub async fn put_episode(
        &self,
        id: &EpisodeId,
        commit: &Commit,
        sha256: &Sha256,
        (file, tarball): (std::fs::File, &Path),
        cancel: &CancellationToken,
    ) -> (UploadResult, Option<String>) {
        let token = self.token().await;
        let token_problem = token.as_ref().err().cloned();
        let opened = async {
            let mut f = tokio::fs::File::from_std(file);
            f.seek(std::io::SeekFrom::Start(0)).await?;
            let len = f.metadata().await?.len();
            Ok::<_, std::io::Error>((f, len))
        };
        let (file, size) = match opened.await {
            Ok(x) => x,
            Err(source) => {
                let path = tarball.to_owned();
                return (UploadResult::TarballRead { path, source }, token_problem);
            }
        };
        let (body, watch) = self.stream_from(file, size);
        let rb = self
            .request(reqwest::Method::PUT, &ferry_proto::episode_path(id), &token)
            .header(headers::COMMIT, commit.as_str())
            .header(headers::SHA256, sha256.as_str())
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/zstd")
            .body(body);
        let result = self.send_streamed(rb, watch, tarball, cancel).await;
        (result, token_problem)
    }

    /// A request body streamed from `file` (at its current position),
    /// `size` bytes, through the bandwidth limit, counted as progress;
    /// and what [`Shipper::send_streamed`] watches of it.
    pub(crate) fn stream_from(&self, file: tokio::fs::File, size: u64) -> (reqwest::Body, Watch) {
        let watch = Watch {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            read_error: Arc::default(),
        };
        let body = BodyState {
            file,
            remaining: size,
            read: self.limiter.as_ref().map_or(UNLIMITED_READ, |l| l.chunk()),
            pending: Bytes::new(),
            limiter: self.limiter.clone(),
            progress: self.progress.clone(),
            last: watch.last.clone(),
            start: watch.start,
            read_error: watch.read_error.clone(),
        };
        let stream = futures_util::stream::unfold(body, |mut st| async move {
            st.next_chunk().await.map(|r| (r, st))
        });
        (reqwest::Body::wrap_stream(stream), watch)
    }

    /// Sends a request whose body streams from the tarball: cancellation
    /// aborts it at once, a stall of `request_timeout` is a network error,
    /// a failed read of the tarball is that.
    pub(crate) async fn send_streamed(
        &self,
        rb: reqwest::RequestBuilder,
        watch: Watch,
        tarball: &Path,
        cancel: &CancellationToken,
    ) -> UploadResult {
        let Watch {
            start,
            last,
            read_error,
        } = watch;
        let send = async {
            let resp = rb.send().await?;
            read_answer(resp, Some((&last, start))).await
        };
        let stall = stall_watch(&last, start, self.request_timeout);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => UploadResult::Aborted,
            _ = stall => UploadResult::Network(format!(
                "stalled: nothing moved for {}",
                humantime::format_duration(self.request_timeout)
            )),
            r = send => match r {
                Ok(a) => UploadResult::Answered(a),
                Err(e) => match read_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    Some(source) => UploadResult::TarballRead { path: tarball.to_owned(), source },
                    None => UploadResult::Network(error_chain(&e)),
                },
            },
        }
    }

    /// A request to the receiver (`{base}{path}`), authenticated.
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &Result<String, String>,
    ) -> reqwest::RequestBuilder {
        self.authed(
            self.client.request(method, format!("{}{path}", self.base)),
            token,
        )
    }

    /// Sends a request without a streamed body; the answer within
    /// `request_timeout`, or the network error.
    pub(crate) async fn send_small(
        &self,
        rb: reqwest::RequestBuilder,
        cancel: &CancellationToken,
    ) -> UploadResult {
        let fut = async {
            let resp = rb.send().await.map_err(|e| error_chain(&e))?;
            read_answer(resp, None).await.map_err(|e| error_chain(&e))
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => UploadResult::Aborted,
            r = tokio::time::timeout(self.request_timeout, fut) => match r {
                Ok(Ok(a)) => UploadResult::Answered(a),
                Ok(Err(e)) => UploadResult::Network(e),
                Err(_) => UploadResult::Network(format!(
                    "no answer within {}",
                    humantime::format_duration(self.request_timeout)
                )),
            },
        }
    }
}

/// What a streamed upload is watched by: when it started, when a byte last
/// moved, and the tarball's read error if one ended it.
pub(crate) struct Watch {
    start: Instant,
    last: Arc<AtomicU64>,
    read_error: Arc<Mutex<Option<std::io::Error>>>,
}

/// Bytes read from the tarball at a time when no rate limit applies: 1 MiB,
/// so that a 145 MB tarball is ~140 reads on the blocking pool instead of
/// ~2,200 (64 KiB); A/B in docs/PERFORMANCE.md.
const UNLIMITED_READ: usize = 1 << 20;

/// Bytes handed to the HTTP client at a time (slices of a read, not
/// copies). Progress, which the stall watch and the watchdog go by, moves
/// at each: hyper takes the next slice only once the last is on its way,
/// so on a slow link a mark every 64 KiB, not every 1 MiB, keeps "nothing
/// moved for `request_timeout`" meaning the link has stopped (at the
/// default 60 s: below ~1 KB/s, not ~17 KB/s).
const SEND_SLICE: usize = 64 << 10;

/// The state of a streamed request body.
struct BodyState {
    file: tokio::fs::File,
    remaining: u64,
    /// Bytes read at a time (the limiter's chunk under a rate limit).
    read: usize,
    /// Read and not yet handed over.
    pending: Bytes,
    limiter: Option<Arc<RateLimiter>>,
    progress: Arc<Progress>,
    last: Arc<AtomicU64>,
    start: Instant,
    read_error: Arc<Mutex<Option<std::io::Error>>>,
}

impl BodyState {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.pending.is_empty() {
            if self.remaining == 0 {
                return None;
            }
            let want = (self.remaining.min(self.read as u64)) as usize;
            if let Some(l) = &self.limiter {
                l.acquire(want).await;
            }
            let mut buf = vec![0u8; want];
            if let Err(e) = self.file.read_exact(&mut buf).await {
                let copy = ferry_durable::copy_error(&e);
                *self.read_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.remaining = 0;
                return Some(Err(copy));
            }
            self.remaining -= want as u64;
            self.pending = Bytes::from(buf);
        }
        let slice = self.pending.split_to(self.pending.len().min(SEND_SLICE));
        self.progress
            .counter
            .fetch_add(slice.len() as u64, Ordering::Relaxed);
        self.progress.add_sent(slice.len());
        touch(&self.last, self.start);
        Some(Ok(slice))
    }
}

fn touch(last: &AtomicU64, start: Instant) {
    last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// Resolves when nothing has moved for `timeout`.
async fn stall_watch(last: &AtomicU64, start: Instant, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let idle = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if idle >= timeout {
            return;
        }
    }
}

async fn read_answer(
    mut resp: reqwest::Response,
    progress: Option<(&AtomicU64, Instant)>,
) -> Result<Answer, reqwest::Error> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| headers::parse_retry_after(v.as_bytes()));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header(reqwest::header::LOCATION.as_str());
    let upload_offset = header(headers::tus::UPLOAD_OFFSET).and_then(|v| v.trim().parse().ok());
    let tus = header(headers::tus::RESUMABLE).is_some();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if let Some((last, start)) = progress {
            touch(last, start);
        }
        let room = MAX_ANSWER.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room == 0 {
            break;
        }
    }
    let reply: Option<Reply> = serde_json::from_slice(&body).ok();
    let retry_after = retry_after.or(match &reply {
        Some(Reply::Overloaded {
            retry_after_secs, ..
        }) => Some(Duration::from_secs(*retry_after_secs)),
        _ => None,
    });
    Ok(Answer {
        status,
        reply,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
        location,
        upload_offset,
        tus,
    })
}

/// An error with its sources, on one line (reqwest hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_limits_the_rate() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        // One second of burst, then 1000 bytes per second.
        for _ in 0..30 {
            l.acquire(100).await;
        }
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    /// A tarball is read 1 MiB at a time but handed over, and counted as
    /// progress, 64 KiB at a time: every byte once, in order.
    #[tokio::test]
    async fn the_body_is_read_in_large_pieces_and_sent_in_small_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar.zst");
        let data: Vec<u8> = (0..(2 * UNLIMITED_READ + 1000))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let progress = Progress::new();
        let mut body = BodyState {
            file: tokio::fs::File::open(&path).await.unwrap(),
            remaining: data.len() as u64,
            read: UNLIMITED_READ,
            pending: Bytes::new(),
            limiter: None,
            progress: progress.clone(),
            last: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            read_error: Arc::default(),
        };
        let mut sent = Vec::new();
        let mut slices = 0;
        while let Some(chunk) = body.next_chunk().await {
            let chunk = chunk.unwrap();
            assert!(!chunk.is_empty() && chunk.len() <= SEND_SLICE);
            sent.extend_from_slice(&chunk);
            slices += 1;
            assert_eq!(
                progress.counter.load(Ordering::Relaxed),
                sent.len() as u64,
                "progress moves with each slice"
            );
        }
        assert_eq!(sent, data);
        assert_eq!(slices, 2 * (UNLIMITED_READ / SEND_SLICE) + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stall_watch_fires_only_without_progress() {
        let last = AtomicU64::new(0);
        let start = Instant::now();
        let timeout = Duration::from_secs(4);
        let watch = stall_watch(&last, start, timeout);
        tokio::pin!(watch);
        for _ in 0..20 {
            tokio::select! {
                _ = &mut watch => panic!("fired while progressing"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => touch(&last, start),
            }
        }
        let t = Instant::now();
        watch.await;
        assert!(t.elapsed() <= timeout + Duration::from_secs(1));
    }
}
