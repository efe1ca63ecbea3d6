//! The rows of SPEC §2 that the headers decide, through the real router
//! (`router(state)` + `tower::ServiceExt::oneshot`) on a real SQLite index
//! and object store in a temporary directory: no socket, no binary, nothing
//! of ours mocked. Every PUT here carries a body that fails when it is
//! read, so an answer that came from the body instead of the headers shows
//! up as a different answer. What needs a body or a fault (digest mismatch,
//! stalls, full disks, crashes) is tested end to end in `tests/e2e`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use ferry_proto::{headers, BadRequest, Reply, Sha256};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, AppState, SharedState};
use crate::config::RawConfig;
use crate::ops;
use crate::store::{unix_now, NewEpisode};

pub(crate) const ALLOWED: &str = "1111111111111111111111111111111111111111";
pub(crate) const HEAD: &str = "2222222222222222222222222222222222222222";
pub(crate) const UNKNOWN: &str = "3333333333333333333333333333333333333333";
pub(crate) const DIGEST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(crate) const OTHER_DIGEST: &str =
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// `max_episode_size` of the receiver under test.
pub(crate) const LIMIT: u64 = 1024;

/// A receiver state on a fresh data directory, with an allow-list of two
/// commits (`HEAD` the head) and three devices: `dev-a`, `dev-b` and the
/// revoked `dev-gone`.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: SharedState,
    pub(crate) token_a: String,
    pub(crate) token_b: String,
    pub(crate) token_gone: String,
}

impl Fixture {
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = RawConfig::default();
        raw.set_flag("data_dir", dir.path().to_str().unwrap());
        raw.set_flag("max_episode_size", LIMIT.to_string());
        let config = raw.resolve().unwrap();
        let objects = crate::store::objects::open(&config).unwrap();
        objects.prepare().await.unwrap();
        let index = crate::store::open(&config).await.unwrap();
        let state = Arc::new(AppState::new(Arc::new(config), index, objects, None));
        let index = &state.index;
        for (commit, head) in [(ALLOWED, false), (HEAD, true)] {
            let req = ferry_proto::admin::AllowCommit {
                commit: commit.into(),
                head,
                note: None,
            };
            ops::allow_commit(index, &req).await.unwrap();
        }
        let token_a = ops::add_device(index, "dev-a").await.unwrap().token;
        let token_b = ops::add_device(index, "dev-b").await.unwrap().token;
        let token_gone = ops::add_device(index, "dev-gone").await.unwrap().token;
        ops::revoke_device(index, "dev-gone").await.unwrap();
        Self {
            dir,
            state,
            token_a,
            token_b,
            token_gone,
        }
    }

    /// Stores `dev-a`'s episode `id` with `DIGEST`: its index row and its
    /// object, as a finished upload leaves them.
    pub(crate) async fn store_episode_of_a(&self, id: &str) {
        let sha = Sha256::parse(DIGEST).unwrap();
        let objects = self.dir.path().join("objects");
        let store = crate::store::objects::LocalObjects::new(objects, self.dir.path().join("tmp"));
        std::fs::write(store.path_of(&sha), b"stored bytes").unwrap();
        let row = NewEpisode {
            episode_id: ferry_proto::EpisodeId::parse(id).unwrap(),
            sha256: sha.clone(),
            size: 12,
            commit: ferry_proto::Commit::parse(ALLOWED).unwrap(),
            device: "dev-a".into(),
            stored_at: unix_now(),
        };
        let inserted = self.state.index.insert_episodes(&[row]).await.unwrap();
        assert_eq!(inserted, vec![crate::store::Inserted::Created]);
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp: Response = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let protocol = resp.headers().get(headers::PROTOCOL).cloned();
        assert_eq!(
            protocol.as_ref().and_then(|v| v.to_str().ok()),
            Some(headers::PROTOCOL_VERSION),
            "every answer carries {}",
            headers::PROTOCOL
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }
}

/// A request body that fails when it is read: an answer decided from the
/// headers never reads it.
pub(crate) fn unread_body() -> Body {
    Body::from_stream(futures_util::stream::iter([Err::<Bytes, _>(
        std::io::Error::other("the body was read"),
    )]))
}

/// A PUT of `id` with every header valid (token `token`, commit `ALLOWED`,
/// digest `DIGEST`, 100 bytes), less those named in `without`, with those
/// in `set` replaced.
fn put(id: &str, token: Option<&str>, set: &[(&str, &str)], without: &[&str]) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/episodes/{id}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let defaults = [
        (headers::COMMIT, ALLOWED),
        (headers::SHA256, DIGEST),
        ("content-length", "100"),
    ];
    for (name, value) in defaults {
        if without.contains(&name) {
            continue;
        }
        let value = set
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(value, |(_, v)| *v);
        b = b.header(name, value);
    }
    b.body(unread_body()).unwrap()
}

pub(crate) fn status_of(body: &Value) -> &str {
    body["status"].as_str().unwrap_or("<no status>")
}

pub(crate) fn bad_request(body: &Value) -> BadRequest {
    match serde_json::from_value(body.clone()).unwrap() {
        Reply::BadRequest { error, .. } => error,
        other => panic!("not a bad-request answer: {other:?}"),
    }
}

#[tokio::test]
async fn no_token_or_an_unknown_one_is_401_and_a_revoked_device_403() {
    let f = Fixture::new().await;
    let (code, body) = f.send(put("ep-1", None, &[], &[])).await;
    assert_eq!(
        (code, status_of(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let (code, body) = f.send(put("ep-1", Some("not-a-token"), &[], &[])).await;
    assert_eq!(
        (code, status_of(&body)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let (code, body) = f.send(put("ep-1", Some(&f.token_gone), &[], &[])).await;
    assert_eq!(
        (code, status_of(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // Authentication is decided first: a bad id and no headers still 401.
    let (code, _) = f
        .send(put(
            "bad%20id",
            None,
            &[],
            &[headers::COMMIT, headers::SHA256],
        ))
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // HEAD and the device routes authenticate the same way.
    for uri in [
        "/v1/episodes/ep-1",
        "/v1/whoami",
        &format!("/v1/commits/{ALLOWED}"),
    ] {
        let method = if uri.starts_with("/v1/episodes") {
            Method::HEAD
        } else {
            Method::GET
        };
        let req = Request::builder().method(method.clone()).uri(uri);
        let (code, _) = f.send(req.body(Body::empty()).unwrap()).await;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} without a token"
        );
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("authorization", format!("Bearer {}", f.token_gone));
        let (code, _) = f.send(req.body(Body::empty()).unwrap()).await;
        assert_eq!(
            code,
            StatusCode::FORBIDDEN,
            "{method} {uri} of a revoked device"
        );
    }
}

#[tokio::test]
async fn each_header_error_is_400_with_its_kind() {
    let f = Fixture::new().await;
    let a = Some(f.token_a.as_str());
    let cases: Vec<(Request<Body>, BadRequest)> = vec![
        (put("bad%20id", a, &[], &[]), BadRequest::BadEpisodeId),
        (put("a%2Fb", a, &[], &[]), BadRequest::BadEpisodeId),
        (put("", a, &[], &[]), BadRequest::BadEpisodeId),
        (
            put("ep-1", a, &[], &[headers::COMMIT]),
            BadRequest::MissingCommit,
        ),
        (
            put("ep-1", a, &[(headers::COMMIT, "abc")], &[]),
            BadRequest::MalformedCommit,
        ),
        (
            put("ep-1", a, &[(headers::COMMIT, &"1".repeat(41))], &[]),
            BadRequest::MalformedCommit,
        ),
        (
            put("ep-1", a, &[], &[headers::SHA256]),
            BadRequest::MissingDigest,
        ),
        (
            put("ep-1", a, &[(headers::SHA256, "xyz")], &[]),
            BadRequest::MalformedDigest,
        ),
        (
            put("ep-1", a, &[], &["content-length"]),
            BadRequest::MissingLength,
        ),
        (
            put("ep-1", a, &[("content-length", "many")], &[]),
            BadRequest::MissingLength,
        ),
        (
            put("ep-1", a, &[("content-length", "0")], &[]),
            BadRequest::MalformedBody,
        ),
    ];
    for (req, want) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers());
        let (code, body) = f.send(req).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(bad_request(&body), want, "{what}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    // The id is checked before the commit, the commit before the digest.
    let (_, body) = f
        .send(put("bad%20id", a, &[], &[headers::COMMIT, headers::SHA256]))
        .await;
    assert_eq!(bad_request(&body), BadRequest::BadEpisodeId);
    let (_, body) = f
        .send(put("ep-1", a, &[], &[headers::COMMIT, headers::SHA256]))
        .await;
    assert_eq!(bad_request(&body), BadRequest::MissingCommit);
}

/// A protocol header sent twice is refused, never read as its first copy
/// (a proxy in front could read the other one).
#[tokio::test]
async fn a_protocol_header_sent_twice_is_refused() {
    let f = Fixture::new().await;
    let twice = |name: &str, value: &str| {
        let mut req = put("ep-1", Some(&f.token_a), &[], &[]);
        req.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        req
    };
    for (name, value, want) in [
        (headers::COMMIT, HEAD, BadRequest::MalformedCommit),
        (headers::SHA256, OTHER_DIGEST, BadRequest::MalformedDigest),
    ] {
        let (code, body) = f.send(twice(name, value)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(bad_request(&body), want, "{name}: {body}");
    }
    // Two tokens: neither is taken.
    let bearer_b = format!("Bearer {}", f.token_b);
    let (code, body) = f.send(twice("authorization", &bearer_b)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn over_max_episode_size_is_413_with_the_limit() {
    let f = Fixture::new().await;
    let over = (LIMIT + 1).to_string();
    let (code, body) = f
        .send(put(
            "ep-1",
            Some(&f.token_a),
            &[("content-length", &over)],
            &[],
        ))
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(status_of(&body), "too-large");
    assert_eq!(body["limit"], json!(LIMIT));
}

#[tokio::test]
async fn a_commit_off_the_allow_list_is_412_with_the_head_and_remediation() {
    let f = Fixture::new().await;
    let (code, body) = f
        .send(put(
            "ep-1",
            Some(&f.token_a),
            &[(headers::COMMIT, UNKNOWN)],
            &[],
        ))
        .await;
    assert_eq!(code, StatusCode::PRECONDITION_FAILED, "{body}");
    let remediation =
        crate::config::render_remediation(crate::config::DEFAULT_REMEDIATION, UNKNOWN, Some(HEAD));
    assert_eq!(
        body,
        json!({
            "status": "commit-rejected",
            "your_commit": UNKNOWN,
            "head_commit": HEAD,
            "remediation": remediation,
        })
    );
    // An allowed commit that is not the head passes this check: the next
    // header decision answers (here 413, still before the body).
    let (code, _) = f
        .send(put(
            "ep-1",
            Some(&f.token_a),
            &[("content-length", "5000")],
            &[],
        ))
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_stored_id_answers_200_or_409_from_the_index_before_the_body() {
    let f = Fixture::new().await;
    f.store_episode_of_a("ep-1").await;
    let a = Some(f.token_a.as_str());
    let (code, body) = f.send(put("ep-1", a, &[], &[])).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "already-present", "episode_id": "ep-1", "sha256": DIGEST, "size": 12})
    );
    let (code, body) = f
        .send(put("ep-1", a, &[(headers::SHA256, OTHER_DIGEST)], &[]))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body,
        json!({
            "status": "conflict",
            "episode_id": "ep-1",
            "existing_sha256": DIGEST,
            "sha256": OTHER_DIGEST,
        })
    );
    // HEAD of its own episode: 200 with the digest.
    let req = Request::head("/v1/episodes/ep-1")
        .header("authorization", format!("Bearer {}", f.token_a))
        .body(Body::empty())
        .unwrap();
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[headers::SHA256], DIGEST);
    assert_eq!(resp.headers()["content-length"], "12");
}

#[tokio::test]
async fn another_devices_id_answers_as_if_absent() {
    let f = Fixture::new().await;
    f.store_episode_of_a("ep-1").await;
    let head = |token: &str, id: &str| {
        Request::head(format!("/v1/episodes/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    // (A HEAD answer has no body to say more.)
    let (code, _) = f.send(head(&f.token_b, "ep-1")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = f.send(head(&f.token_a, "ep-2")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // dev-b's PUTs under the same id, of the same digest or another, are
    // neither 200 nor 409: they go past every header check to the body,
    // which fails here when read (400 malformed-body, "the body ended").
    for digest in [DIGEST, OTHER_DIGEST] {
        let (code, body) = f
            .send(put(
                "ep-1",
                Some(&f.token_b),
                &[(headers::SHA256, digest)],
                &[],
            ))
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(bad_request(&body), BadRequest::MalformedBody, "{body}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_other_methods_405() {
    let f = Fixture::new().await;
    for uri in [
        "/nope",
        "/v1/episodes",
        "/v1/episodes/a/b",
        "/v1/admin/nope",
    ] {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let (code, body) = f.send(req).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert_eq!(status_of(&body), "not-found", "{uri}");
    }
    let methods = [
        Method::DELETE,
        Method::POST,
        Method::GET,
        Method::from_bytes(b"FROB").unwrap(),
    ];
    for method in methods {
        let req = Request::builder()
            .method(method.clone())
            .uri("/v1/episodes/ep-1")
            .header("authorization", format!("Bearer {}", f.token_a))
            .body(Body::empty())
            .unwrap();
        let (code, body) = f.send(req).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{method}: {body}");
        assert_eq!(status_of(&body), "method-not-allowed", "{method}");
    }
}
