//! Header names of protocol v1. Lower case, as HTTP/1.1 and `http` compare
//! them case-insensitively and HTTP/2 requires it.

/// 40 lowercase hex characters: the code commit that produced the episode.
pub const COMMIT: &str = "x-ferry-commit";
/// 64 lowercase hex characters: sha256 of the request body (PUT) or of the
/// stored object (HEAD answer).
pub const SHA256: &str = "x-ferry-sha256";
/// Set by the receiver on every answer so that clients and logs can tell
/// which protocol version answered.
pub const PROTOCOL: &str = "x-ferry-protocol";
/// Value of [`PROTOCOL`].
pub const PROTOCOL_VERSION: &str = "1";

/// On the answer of the tus PATCH that completes an upload (SPEC §8): the
/// `status` of the §2 reply, `stored` or `already-present`.
pub const STATUS: &str = "x-ferry-status";

/// tus 1.0 (SPEC §8): the headers of the protocol, and what this receiver
/// speaks of it.
pub mod tus {
    pub const RESUMABLE: &str = "tus-resumable";
    pub const VERSION: &str = "tus-version";
    pub const EXTENSION: &str = "tus-extension";
    pub const MAX_SIZE: &str = "tus-max-size";
    pub const CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
    pub const UPLOAD_LENGTH: &str = "upload-length";
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    pub const UPLOAD_EXPIRES: &str = "upload-expires";
    pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
    pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
    /// The one version spoken, the value of `Tus-Resumable` and
    /// `Tus-Version`.
    pub const PROTOCOL_VERSION: &str = "1.0.0";
    pub const EXTENSIONS: &str = "creation,termination,expiration,checksum";
    pub const CHECKSUM_ALGORITHMS: &str = "sha256";
    /// The `Content-Type` of a PATCH.
    pub const PATCH_CONTENT_TYPE: &str = "application/offset+octet-stream";
    /// `Upload-Metadata` keys of a creation.
    pub const META_EPISODE_ID: &str = "episode_id";
    pub const META_COMMIT: &str = "commit";
    pub const META_SHA256: &str = "sha256";
}

/// The `Retry-After` of an answer, as delay-seconds (`1*DIGIT`, RFC 9110
/// §10.2.3), surrounding whitespace allowed. A value too large for `u64`
/// saturates rather than failing; anything else (an HTTP-date, a sign, a
/// fraction) is no hint. The value is the receiver's, so the caller caps
/// it before any arithmetic (the agent at `backoff_max`).
pub fn parse_retry_after(value: &[u8]) -> Option<std::time::Duration> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(std::time::Duration::from_secs(secs.unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_after_is_delay_seconds_and_saturates() {
        assert_eq!(parse_retry_after(b" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(b"0"), Some(Duration::ZERO));
        let max = Some(Duration::from_secs(u64::MAX));
        assert_eq!(parse_retry_after(b"18446744073709551615"), max);
        assert_eq!(parse_retry_after(b"99999999999999999999999999"), max);
        for bad in [
            &b""[..],
            b"-1",
            b"+3",
            b"1.5",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
            b"1 2",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }
}
