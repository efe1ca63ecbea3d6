//! The tus routes through the real router on a real SQLite index and
//! object store in a temporary directory (the fixture of `http::tests`):
//! the header-decided answers of a creation, the upload's owner, and a
//! small upload from creation to the stored episode. Crashes, expiry and
//! standard clients are tested end to end in `tests/e2e/receiver/tus.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;
use ferry_proto::headers::{self, tus};
use ferry_proto::{BadRequest, Sha256};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::Digest;
use tower::ServiceExt;

use crate::http::router;
use crate::http::tests::{
    bad_request, status_of, unread_body, Fixture, ALLOWED, DIGEST, LIMIT, OTHER_DIGEST, UNKNOWN,
};
use crate::store::unix_now;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `Upload-Metadata` for `id`, `commit`, `sha`.
fn metadata(id: &str, commit: &str, sha: &str) -> String {
    format!(
        "episode_id {},commit {},sha256 {}",
        b64(id),
        b64(commit),
        b64(sha)
    )
}

/// A request with `Tus-Resumable: 1.0.0`, the token and `headers`.
fn req(
    method: Method,
    uri: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Body,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(tus::RESUMABLE, tus::PROTOCOL_VERSION);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(body).unwrap()
}

/// A creation of `dev-a`'s `id` with `commit`, `sha`, `length` (its body
/// is never read).
fn create(token: Option<&str>, meta: String, length: &str) -> Request<Body> {
    req(
        Method::POST,
        "/v1/uploads",
        token,
        &[
            (tus::UPLOAD_METADATA, meta),
            (tus::UPLOAD_LENGTH, length.into()),
        ],
        unread_body(),
    )
}

async fn send(f: &Fixture, r: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = router(f.state.clone()).oneshot(r).await.unwrap();
    let (parts, body) = resp.into_parts();
    assert_eq!(
        parts.headers.get(tus::RESUMABLE).map(|v| v.as_bytes()),
        Some(tus::PROTOCOL_VERSION.as_bytes()),
        "every tus answer carries Tus-Resumable"
    );
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn discovery_and_another_version() {
    let f = Fixture::new().await;
    let r = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/uploads")
        .body(Body::empty())
        .unwrap();
    let (code, h, _) = send(&f, r).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, tus::VERSION), "1.0.0");
    assert_eq!(
        header(&h, tus::EXTENSION),
        "creation,termination,expiration,checksum"
    );
    assert_eq!(header(&h, tus::MAX_SIZE), LIMIT.to_string());
    assert_eq!(header(&h, tus::CHECKSUM_ALGORITHM), "sha256");
    let mut r = create(Some(&f.token_a), metadata("ep-1", ALLOWED, DIGEST), "100");
    r.headers_mut()
        .insert(tus::RESUMABLE, "0.2.2".parse().unwrap());
    let (code, h, body) = send(&f, r).await;
    assert_eq!(code, StatusCode::PRECONDITION_FAILED);
    assert_eq!(status_of(&body), "unsupported-version");
    assert_eq!(header(&h, tus::VERSION), "1.0.0");
    // A method the route does not take answers SPEC §2's JSON too.
    for (m, uri) in [
        (Method::POST, "/v1/uploads/abc"),
        (Method::GET, "/v1/uploads"),
    ] {
        let r = req(m, uri, Some(&f.token_a), &[], Body::empty());
        let resp = router(f.state.clone()).oneshot(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status_of(&body), "method-not-allowed", "{uri}");
    }
}

#[tokio::test]
async fn creation_decides_every_header_row_of_spec_2_before_any_byte() {
    let f = Fixture::new().await;
    f.store_episode_of_a("stored-1").await;
    let good = || metadata("ep-1", ALLOWED, DIGEST);
    let cases: Vec<(Option<&str>, String, &str, StatusCode, &str)> = vec![
        (
            None,
            good(),
            "100",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Some("nope"),
            good(),
            "100",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Some(&f.token_gone),
            good(),
            "100",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // Authentication first: malformed metadata without a token is 401.
        (
            None,
            "episode_id !!".into(),
            "100",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Some(&f.token_a),
            good(),
            "2000",
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
        ),
        (
            Some(&f.token_a),
            metadata("ep-1", UNKNOWN, DIGEST),
            "100",
            StatusCode::PRECONDITION_FAILED,
            "commit-rejected",
        ),
        (
            Some(&f.token_a),
            metadata("stored-1", ALLOWED, DIGEST),
            "100",
            StatusCode::OK,
            "already-present",
        ),
        (
            Some(&f.token_a),
            metadata("stored-1", ALLOWED, OTHER_DIGEST),
            "100",
            StatusCode::CONFLICT,
            "conflict",
        ),
    ];
    for (token, meta, length, code, status) in cases {
        let (got, _, body) = send(&f, create(token, meta.clone(), length)).await;
        assert_eq!((got, status_of(&body)), (code, status), "{meta} {body}");
    }
    let bad: Vec<(String, &str, BadRequest)> = vec![
        ("episode_id !!".into(), "100", BadRequest::MalformedMetadata),
        (
            format!("commit {},sha256 {}", b64(ALLOWED), b64(DIGEST)),
            "100",
            BadRequest::BadEpisodeId,
        ),
        (
            metadata("a/b", ALLOWED, DIGEST),
            "100",
            BadRequest::BadEpisodeId,
        ),
        (
            format!("episode_id {},sha256 {}", b64("ep-1"), b64(DIGEST)),
            "100",
            BadRequest::MissingCommit,
        ),
        (
            metadata("ep-1", "xyz", DIGEST),
            "100",
            BadRequest::MalformedCommit,
        ),
        (
            format!("episode_id {},commit {}", b64("ep-1"), b64(ALLOWED)),
            "100",
            BadRequest::MissingDigest,
        ),
        (
            metadata("ep-1", ALLOWED, "AB"),
            "100",
            BadRequest::MalformedDigest,
        ),
        (
            metadata("ep-1", ALLOWED, DIGEST),
            "ten",
            BadRequest::MissingLength,
        ),
        (
            metadata("ep-1", ALLOWED, DIGEST),
            "0",
            BadRequest::MalformedBody,
        ),
    ];
    for (meta, length, kind) in bad {
        let (got, _, body) = send(&f, create(Some(&f.token_a), meta.clone(), length)).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{meta}: {body}");
        assert_eq!(bad_request(&body), kind, "{meta}");
    }
    // No Upload-Length at all.
    let mut r = create(Some(&f.token_a), good(), "1");
    r.headers_mut().remove(tus::UPLOAD_LENGTH);
    let (_, _, body) = send(&f, r).await;
    assert_eq!(bad_request(&body), BadRequest::MissingLength);
    // Two of it: not the first one.
    let mut r = create(Some(&f.token_a), good(), "10");
    r.headers_mut().append(
        tus::UPLOAD_LENGTH,
        axum::http::HeaderValue::from_static("2000"),
    );
    let (got, _, body) = send(&f, r).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(bad_request(&body), BadRequest::MissingLength);
}

/// A small body with the zstd magic, and its sha256.
fn body_of(n: usize) -> (Vec<u8>, String) {
    let mut b = vec![0x28, 0xb5, 0x2f, 0xfd];
    b.extend((0..n - 4).map(|i| (i * 7 % 251) as u8));
    let sha = hex::encode(sha2::Sha256::digest(&b));
    (b, sha)
}

fn patch(
    url: &str,
    token: &str,
    offset: u64,
    bytes: &[u8],
    checksum: Option<String>,
) -> Request<Body> {
    let mut h = vec![
        ("content-type", tus::PATCH_CONTENT_TYPE.to_owned()),
        (tus::UPLOAD_OFFSET, offset.to_string()),
    ];
    if let Some(c) = checksum {
        h.push((tus::UPLOAD_CHECKSUM, c));
    }
    req(
        Method::PATCH,
        url,
        Some(token),
        &h,
        Body::from(bytes.to_vec()),
    )
}

fn sha256_b64(bytes: &[u8]) -> String {
    format!(
        "sha256 {}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
    )
}

#[tokio::test]
async fn an_upload_is_its_devices_alone_and_completes_into_the_store() {
    let f = Fixture::new().await;
    let (body, sha) = body_of(600);
    let (code, h, _) = send(
        &f,
        create(Some(&f.token_a), metadata("ep-9", ALLOWED, &sha), "600"),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let url = header(&h, "location").to_owned();
    let id = url.strip_prefix("/v1/uploads/").unwrap();
    assert!(crate::store::uploads::valid_id(id), "{url}");
    assert!(httpdate::parse_http_date(header(&h, tus::UPLOAD_EXPIRES)).is_ok());

    // Another device: every route as if the upload did not exist.
    for m in [Method::HEAD, Method::DELETE] {
        let (code, _, _) = send(&f, req(m, &url, Some(&f.token_b), &[], Body::empty())).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
    let (code, _, _) = send(&f, patch(&url, &f.token_b, 0, &body[..10], None)).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, h, _) = send(&f, patch(&url, &f.token_a, 0, &body[..200], None)).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, tus::UPLOAD_OFFSET), "200");
    // The wrong offset: 409 with where the upload is.
    let (code, _, j) = send(&f, patch(&url, &f.token_a, 100, &body[100..], None)).await;
    assert_eq!(
        (code, status_of(&j)),
        (StatusCode::CONFLICT, "offset-mismatch")
    );
    assert_eq!(j["offset"], 200);
    // A checksum that does not match: 460, nothing kept.
    let wrong = sha256_b64(b"something else");
    let (code, _, j) = send(
        &f,
        patch(&url, &f.token_a, 200, &body[200..400], Some(wrong)),
    )
    .await;
    assert_eq!(code.as_u16(), 460, "{j}");
    let (code, h, _) = send(
        &f,
        req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(header(&h, tus::UPLOAD_OFFSET), "200");
    assert_eq!(header(&h, tus::UPLOAD_LENGTH), "600");
    // The right checksum, then the rest: stored as a PUT would store it.
    let good = sha256_b64(&body[200..400]);
    let (code, h, _) = send(
        &f,
        patch(&url, &f.token_a, 200, &body[200..400], Some(good)),
    )
    .await;
    assert_eq!(
        (code, header(&h, tus::UPLOAD_OFFSET)),
        (StatusCode::NO_CONTENT, "400")
    );
    let (code, h, j) = send(&f, patch(&url, &f.token_a, 400, &body[400..], None)).await;
    assert_eq!(
        (code, status_of(&j)),
        (StatusCode::CREATED, "stored"),
        "{j}"
    );
    assert_eq!(header(&h, headers::STATUS), "stored");
    assert_eq!(j["sha256"], sha.as_str());
    let info = f
        .state
        .index
        .episode("dev-a", "ep-9")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.sha256.as_str(), sha);
    let stored = f
        .state
        .objects
        .stat(&Sha256::parse(&sha).unwrap())
        .await
        .unwrap();
    assert_eq!(stored, Some(600));
    // The upload is gone once stored.
    let (code, _, _) = send(
        &f,
        req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

/// A PATCH past `Upload-Length` is refused, and what fits of it is kept,
/// the chunk that crosses the length included (here the whole body is one
/// chunk).
#[tokio::test]
async fn a_patch_past_the_length_keeps_what_fits() {
    let f = Fixture::new().await;
    let (body, sha) = body_of(300);
    let (_, h, _) = send(
        &f,
        create(Some(&f.token_a), metadata("ep-3", ALLOWED, &sha), "300"),
    )
    .await;
    let url = header(&h, "location").to_owned();
    let mut longer = body.clone();
    longer.extend_from_slice(&[7; 20]);
    let (code, _, _) = send(&f, patch(&url, &f.token_a, 0, &longer, None)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, h, _) = send(
        &f,
        req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(header(&h, tus::UPLOAD_OFFSET), "300");
}

#[tokio::test]
async fn a_lying_digest_is_refused_at_completion_and_termination_removes_an_upload() {
    let f = Fixture::new().await;
    let (body, _) = body_of(300);
    let new = |f: &Fixture| create(Some(&f.token_a), metadata("ep-2", ALLOWED, DIGEST), "300");
    let (_, h, _) = send(&f, new(&f)).await;
    let url = header(&h, "location").to_owned();
    let (code, _, j) = send(&f, patch(&url, &f.token_a, 0, &body, None)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(bad_request(&j), BadRequest::DigestMismatch);
    assert!(f
        .state
        .index
        .episode("dev-a", "ep-2")
        .await
        .unwrap()
        .is_none());
    let (code, _, _) = send(
        &f,
        req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a refused upload is discarded");

    let (_, h, _) = send(&f, new(&f)).await;
    let url = header(&h, "location").to_owned();
    let id = url.rsplit('/').next().unwrap();
    assert!(f.state.uploads.bin(id).exists());
    let (code, _, _) = send(
        &f,
        req(Method::DELETE, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(!f.state.uploads.bin(id).exists() && !f.state.uploads.json(id).exists());
}

#[tokio::test]
async fn an_expired_upload_is_gone_until_it_is_reclaimed() {
    let f = Fixture::new().await;
    let (body, sha) = body_of(100);
    let r = create(Some(&f.token_a), metadata("ep-3", ALLOWED, &sha), "100");
    let (_, h, _) = send(&f, r).await;
    let url = header(&h, "location").to_owned();
    let id = url.rsplit('/').next().unwrap().to_owned();
    let mut meta = f.state.uploads.load(&id).await.unwrap().unwrap();
    meta.expires = unix_now() - 1;
    f.state.uploads.write_meta(&id, &meta).unwrap();
    let head = req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty());
    let (code, _, _) = send(&f, head).await;
    assert_eq!(code, StatusCode::GONE);
    let (code, _, j) = send(&f, patch(&url, &f.token_a, 0, &body, None)).await;
    assert_eq!((code, status_of(&j)), (StatusCode::GONE, "gone"));
    // The reclaimer takes it, bytes and record.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let n = crate::store::uploads::reclaim::pass(&f.state.uploads, Duration::ZERO, &shutdown).await;
    assert_eq!(n, 1);
    assert!(!f.state.uploads.bin(&id).exists() && !f.state.uploads.json(&id).exists());
    let head = req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty());
    assert_eq!(send(&f, head).await.0, StatusCode::NOT_FOUND);
}

/// Upload-Metadata, Upload-Offset, Upload-Checksum and Content-Type sent
/// twice are refused (400), never read as their first copy.
#[tokio::test]
async fn a_tus_header_sent_twice_is_refused() {
    let f = Fixture::new().await;
    let (body, sha) = body_of(300);
    let meta = metadata("ep-twice", ALLOWED, &sha);
    let twice = req(
        Method::POST,
        "/v1/uploads",
        Some(&f.token_a),
        &[
            (tus::UPLOAD_METADATA, meta.clone()),
            (tus::UPLOAD_METADATA, metadata("ep-other", ALLOWED, &sha)),
            (tus::UPLOAD_LENGTH, "300".into()),
        ],
        unread_body(),
    );
    let (code, _, _) = send(&f, twice).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, h, _) = send(&f, create(Some(&f.token_a), meta, "300")).await;
    assert_eq!(code, StatusCode::CREATED);
    let url = header(&h, "location").to_owned();
    let ctype = ("content-type", tus::PATCH_CONTENT_TYPE.to_owned());
    let offset = (tus::UPLOAD_OFFSET, "0".to_owned());
    for dup in [
        (tus::UPLOAD_OFFSET, "100".to_owned()),
        (tus::UPLOAD_CHECKSUM, sha256_b64(&body)),
        ctype.clone(),
    ] {
        let mut hs = vec![ctype.clone(), offset.clone(), dup.clone()];
        if dup.0 == tus::UPLOAD_CHECKSUM {
            hs.push(dup.clone());
        }
        let r = req(
            Method::PATCH,
            &url,
            Some(&f.token_a),
            &hs,
            Body::from(body.clone()),
        );
        let (code, _, _) = send(&f, r).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{}", dup.0);
    }
    let (code, h, _) = send(
        &f,
        req(Method::HEAD, &url, Some(&f.token_a), &[], Body::empty()),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(header(&h, tus::UPLOAD_OFFSET), "0");
}
