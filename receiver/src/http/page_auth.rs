//! Who may see the status page (`status_page`, SPEC §9): the admin token as
//! `Authorization: Bearer`, or as the password of HTTP Basic
//! authentication (any user name) so that a browser prompts for it;
//! anyone with `public`; nobody with `off` (404, as if there were no
//! page).

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{AppError, SharedState};
use crate::config::StatusPage;
use crate::tokens;

/// The challenge a browser answers with a login prompt.
pub const CHALLENGE: &str = "Basic realm=\"ferry\", charset=\"UTF-8\"";

/// The answer to send instead of the page, or `None` when the request may
/// see it.
pub fn refusal(state: &SharedState, h: &HeaderMap) -> Option<Response> {
    match state.config.status_page {
        StatusPage::Public => return None,
        StatusPage::Off => return Some(AppError::not_found("no such route").into_response()),
        StatusPage::Admin => {}
    }
    let Some(expected) = state.admin_token.as_deref() else {
        return Some(challenge(
            "the status page needs the admin token, and none is configured: set admin_token_file, or status_page = \"public\"",
        ));
    };
    match presented(h) {
        Some(p) if tokens::token_matches(&p, expected) => None,
        _ => Some(challenge(
            "the status page needs the admin token, as `Authorization: Bearer` or as the HTTP Basic password",
        )),
    }
}

fn challenge(detail: &str) -> Response {
    let mut resp = AppError::unauthenticated(detail).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    resp
}

/// The token presented: a bearer token, or a Basic password.
fn presented(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = tokens::bearer(v) {
        return Some(t.to_owned());
    }
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(rest.trim())?).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(password.to_owned())
}

/// Standard base64 (RFC 4648, padding optional); `None` on any other
/// character. Written out rather than a dependency for one header.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_what_browsers_send() {
        assert_eq!(base64_decode("YWRtaW46c2VjcmV0").unwrap(), b"admin:secret");
        assert_eq!(base64_decode("OmFi").unwrap(), b":ab");
        assert_eq!(base64_decode("OmE=").unwrap(), b":a");
        assert_eq!(base64_decode("Og==").unwrap(), b":");
        assert!(base64_decode("Og*=").is_none());
    }

    #[test]
    fn the_basic_password_is_the_token() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46c2VjcmV0"),
        );
        assert_eq!(presented(&h).as_deref(), Some("secret"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(presented(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(presented(&h), None);
    }
}
