//! The S3 client: credentials and defaults the standard AWS way, the
//! configuration's endpoint and region over them, and timeouts and retries
//! short enough that an outage answers 503 within seconds.
//!
//! object_store's defaults retry a failed request for up to 3 minutes (10
//! retries); an upload would wait that long before its 503, holding its
//! buffers. Here a request is tried at most 3 times within 10 s: a store
//! that refuses connections fails a request in well under a second, one
//! that does not answer at all in about 3 × [`CONNECT_TIMEOUT`].

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::config::S3Storage;

/// Time to open a connection to the store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time for one whole request, at least: a part upload of `part_size`
/// bytes gets 1 s per MiB if that is more.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Time a download may go without a byte from the store.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Retries of one request: at most this many, within [`RETRY_TIMEOUT`].
pub const MAX_RETRIES: usize = 2;
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The builder the receiver starts from: everything `AWS_*` in the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`,
/// the ECS/EKS container variables, `AWS_ENDPOINT_URL`, `AWS_REGION`),
/// else the instance role. object_store reads no `~/.aws` files: a named
/// profile is not supported.
pub fn builder_from_env() -> AmazonS3Builder {
    AmazonS3Builder::from_env()
}

/// The writing client, the reading client, and the endpoint for messages.
pub fn build(
    builder: AmazonS3Builder,
    cfg: &S3Storage,
) -> object_store::Result<(AmazonS3, AmazonS3, String)> {
    let mut b = builder.with_bucket_name(&cfg.bucket);
    // The configuration wins over the environment.
    if let Some(endpoint) = &cfg.endpoint {
        b = b.with_endpoint(endpoint);
    }
    if let Some(region) = &cfg.region {
        b = b.with_region(region);
    }
    let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if endpoint.is_some() {
        // A self-hosted store is addressed by path (`endpoint/bucket/key`):
        // its bucket is not a DNS name.
        b = b.with_virtual_hosted_style_request(false);
    }
    // SPEC §7: an http:// endpoint works without another flag.
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    let request_timeout = REQUEST_TIMEOUT.max(Duration::from_secs(cfg.part_size >> 20));
    let options = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    };
    let b = b
        .with_retry(retry)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_http_connector(super::errors::Connector);
    let writer = b
        .clone()
        .with_client_options(options.clone().with_timeout(request_timeout))
        .build()?;
    let reader = b
        .with_client_options(
            options
                .with_timeout_disabled()
                .with_read_timeout(READ_IDLE_TIMEOUT),
        )
        .build()?;
    Ok((writer, reader, endpoint.unwrap_or_else(|| "AWS".to_owned())))
}
