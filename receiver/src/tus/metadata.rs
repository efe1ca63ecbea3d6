//! What a tus creation claims: `Upload-Metadata` (`key base64value` pairs,
//! comma-separated, as tus 1.0 defines it) with `episode_id`, `commit` and
//! `sha256`, and `Upload-Length`, as the [`Claim`] the PUT's checks decide.

use std::collections::HashMap;

use axum::http::HeaderMap;
use base64::Engine;
use ferry_proto::headers::tus;
use ferry_proto::{BadRequest, Commit, EpisodeId, ParseIdError, Sha256};

use crate::http::upload::Claim;
use crate::http::AppError;

/// The pairs of an `Upload-Metadata` value, decoded; an error names what
/// is wrong. Keys without a value have an empty one.
pub fn parse(value: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || key.contains(' ') {
            return Err(format!("{pair:?} is not `key base64value`"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("the value of {key} is not base64: {e}"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| format!("the value of {key} is not UTF-8"))?;
        if out.insert(key.to_owned(), text).is_some() {
            return Err(format!("{key} appears twice"));
        }
    }
    Ok(out)
}

fn malformed(detail: String) -> AppError {
    AppError::bad_request(BadRequest::MalformedMetadata, detail)
}

/// One metadata value parsed by `parse`: 400 `missing` when it is absent,
/// 400 `malformed` when it does not parse, and the metadata's own error
/// when the header did not parse at all.
fn field<T>(
    meta: &Result<HashMap<String, String>, String>,
    key: &str,
    missing: BadRequest,
    malformed_as: BadRequest,
    parse: fn(&str) -> Result<T, ParseIdError>,
) -> Result<T, AppError> {
    let meta = meta.as_ref().map_err(|e| malformed(e.clone()))?;
    let value = meta
        .get(key)
        .ok_or_else(|| AppError::bad_request(missing, format!("Upload-Metadata has no {key}")))?;
    parse(value).map_err(|e| AppError::bad_request(malformed_as, format!("{key}: {e}")))
}

/// The claim of a creation request.
pub(crate) fn claim(h: &HeaderMap) -> Claim {
    let meta = match crate::http::upload::header_str(h, tus::UPLOAD_METADATA) {
        None => Ok(HashMap::new()),
        Some(Ok(v)) => parse(v),
        Some(Err(())) => Err("Upload-Metadata is sent twice, or is not ASCII".to_owned()),
    };
    let length = if h.contains_key(tus::UPLOAD_DEFER_LENGTH) {
        Err(AppError::bad_request(
            BadRequest::MissingLength,
            "Upload-Defer-Length is not supported: send Upload-Length",
        ))
    } else {
        crate::http::upload::length_header(
            h,
            tus::UPLOAD_LENGTH,
            "Upload-Length",
            "an Upload-Length header is required",
        )
    };
    Claim {
        id: field(
            &meta,
            tus::META_EPISODE_ID,
            BadRequest::BadEpisodeId,
            BadRequest::BadEpisodeId,
            EpisodeId::parse,
        ),
        commit: field(
            &meta,
            tus::META_COMMIT,
            BadRequest::MissingCommit,
            BadRequest::MalformedCommit,
            Commit::parse,
        ),
        sha256: field(
            &meta,
            tus::META_SHA256,
            BadRequest::MissingDigest,
            BadRequest::MalformedDigest,
            Sha256::parse,
        ),
        length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_decode_and_malformed_ones_say_why() {
        let m = parse("episode_id ZXAtMQ==, commit YWJj,flag").unwrap();
        assert_eq!(m["episode_id"], "ep-1");
        assert_eq!(m["commit"], "abc");
        assert_eq!(m["flag"], "");
        assert!(parse("").unwrap().is_empty());
        for bad in ["episode_id !!!", "a YQ==,a YQ==", "k /w=="] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
