//! object_store's errors as the receiver's: a [`StoreError`] naming the
//! operation and the `s3://bucket/key`, over an `io::Error` whose kind
//! tells the HTTP layer what to answer. Decided by error types and HTTP
//! statuses only, never by message text:
//!
//! - not found → `NotFound` (a missing object: 404 for a download,
//!   "missing" for `episodes verify`);
//! - an object that exists where a create was asked → `AlreadyExists`;
//! - refused credentials → `PermissionDenied` (500: configuration);
//! - the store not reached, not answering in time, or answering 5xx, 429
//!   or 408 (after the client's few retries) → a kind for which
//!   [`StoreError::is_unreachable`] holds: 503 with `Retry-After`;
//! - anything else → `Other` (500).
//!
//! object_store hides the status of a failed request inside a type it does
//! not export, so the client is built with [`StatusAsError`] in front of
//! its HTTP connection: a response with a status that means "the store
//! cannot serve now" becomes a transport error carrying [`Unserved`], which
//! this module finds in the error's source chain.

use std::io;
use std::path::PathBuf;

use http::StatusCode;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

use super::super::StoreError;

/// A response the store gave instead of serving the request: a status of
/// 5xx, 429 (throttled) or 408, kept as a typed error.
#[derive(Debug, thiserror::Error)]
#[error("the store answered {status}")]
pub struct Unserved {
    pub status: StatusCode,
}

impl Unserved {
    /// Whether `status` means the store cannot serve the request now (to
    /// retry later), rather than a request it will never serve: 501 and
    /// 505 say the latter.
    fn transient(status: StatusCode) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || (status.is_server_error()
                && status != StatusCode::NOT_IMPLEMENTED
                && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
    }
}

/// An [`HttpConnector`]: object_store's own reqwest client behind
/// [`StatusAsError`].
#[derive(Debug, Default)]
pub struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(StatusAsError(inner)))
    }
}

/// Turns a response of a status for which [`Unserved::transient`] holds
/// (and 501) into an [`HttpError`] with [`Unserved`] as its source.
/// object_store retries an error of kind `Request` exactly as it retries
/// those statuses (whatever the method), so its retries are unchanged; a
/// 501 becomes kind `Unknown`, which it does not retry (a store that does
/// not implement a request will not on the next attempt either).
#[derive(Debug)]
struct StatusAsError(HttpClient);

#[async_trait::async_trait]
impl HttpService for StatusAsError {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let resp = self.0.execute(req).await?;
        let status = resp.status();
        if Unserved::transient(status) {
            return Err(HttpError::new(HttpErrorKind::Request, Unserved { status }));
        }
        if status == StatusCode::NOT_IMPLEMENTED {
            return Err(HttpError::new(HttpErrorKind::Unknown, Unserved { status }));
        }
        Ok(resp)
    }
}

/// The `io::Error` kind of a failure to reach or be served by the store,
/// or `None` when the chain holds neither an [`Unserved`] nor an
/// [`HttpError`].
fn transport_kind(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    use io::ErrorKind::*;
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut http = None;
    while let Some(e) = at {
        if let Some(u) = e.downcast_ref::<Unserved>() {
            return Some(match u.status {
                StatusCode::NOT_IMPLEMENTED => Unsupported,
                StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => TimedOut,
                _ => ConnectionRefused,
            });
        }
        if let Some(h) = e.downcast_ref::<HttpError>() {
            http.get_or_insert(h.kind());
        }
        at = e.source();
    }
    // Every transport failure is the store not reached: a connection
    // refused, cut, timed out, or a body cut short.
    http.map(|kind| match kind {
        HttpErrorKind::Connect => ConnectionRefused,
        HttpErrorKind::Timeout => TimedOut,
        HttpErrorKind::Decode => UnexpectedEof,
        HttpErrorKind::Request | HttpErrorKind::Interrupted => ConnectionReset,
        _ => NotConnected,
    })
}

/// The `io::Error` kind for an object_store error (see the module doc).
pub fn kind_of(e: &object_store::Error) -> io::ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::NotImplemented { .. } | E::NotSupported { .. } => io::ErrorKind::Unsupported,
        E::JoinError { .. } => io::ErrorKind::Other,
        other => transport_kind(other).unwrap_or(io::ErrorKind::Other),
    }
}

/// The receiver's error for `op` on `locator` (an `s3://` URL).
pub fn store_error(op: &'static str, locator: &str, e: object_store::Error) -> StoreError {
    StoreError {
        op,
        path: PathBuf::from(locator),
        source: io::Error::new(kind_of(&e), e),
    }
}

/// The receiver's error for `op` on `locator`, of `kind`, with `detail`.
pub fn plain_error(
    op: &'static str,
    locator: &str,
    kind: io::ErrorKind,
    detail: impl Into<String>,
) -> StoreError {
    StoreError {
        op,
        path: PathBuf::from(locator),
        source: io::Error::new(kind, detail.into()),
    }
}

/// The `io::Error` a failed read of an object's body becomes, mid-stream.
pub fn stream_error(locator: &str, e: object_store::Error) -> io::Error {
    io::Error::new(kind_of(&e), format!("read {locator}: {e}"))
}

/// A timeout of `op` on `locator` after `secs` seconds: unreachable.
pub fn timed_out(op: &'static str, locator: &str, secs: u64) -> StoreError {
    plain_error(
        op,
        locator,
        io::ErrorKind::TimedOut,
        format!("no answer from the store within {secs} s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(source),
        }
    }

    #[test]
    fn statuses_and_transport_failures_map_to_kinds_the_http_layer_answers() {
        let e = |status| generic(HttpError::new(HttpErrorKind::Request, Unserved { status }));
        for status in [503, 500, 502, 429] {
            let kind = kind_of(&e(StatusCode::from_u16(status).unwrap()));
            let se = StoreError::new("put", "s3://b/k".as_ref(), io::Error::from(kind));
            assert!(se.is_unreachable(), "{status} → {kind:?}");
        }
        assert_eq!(
            kind_of(&e(StatusCode::GATEWAY_TIMEOUT)),
            io::ErrorKind::TimedOut
        );
        assert_eq!(
            kind_of(&e(StatusCode::NOT_IMPLEMENTED)),
            io::ErrorKind::Unsupported
        );
        #[derive(Debug, thiserror::Error)]
        #[error("cut")]
        struct Cut;
        for (kind, want) in [
            (HttpErrorKind::Connect, io::ErrorKind::ConnectionRefused),
            (HttpErrorKind::Timeout, io::ErrorKind::TimedOut),
            (HttpErrorKind::Interrupted, io::ErrorKind::ConnectionReset),
            (HttpErrorKind::Unknown, io::ErrorKind::NotConnected),
        ] {
            assert_eq!(kind_of(&generic(HttpError::new(kind, Cut))), want);
        }
        assert_eq!(kind_of(&generic(Cut)), io::ErrorKind::Other);
        let nf = object_store::Error::NotFound {
            path: "k".into(),
            source: Box::new(Cut),
        };
        assert_eq!(kind_of(&nf), io::ErrorKind::NotFound);
        assert!(Unserved::transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!Unserved::transient(StatusCode::NOT_IMPLEMENTED));
        assert!(!Unserved::transient(StatusCode::NOT_FOUND));
    }
}
