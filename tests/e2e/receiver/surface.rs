//! Everything besides the PUT: HEAD, the commit check, whoami, health,
//! readiness, metrics, the status page, the admin API and unknown routes.

use ferry_tests::{metric, sample_archive, sha256_hex, Receiver, COMMIT_A, COMMIT_B};

use super::expect;

#[test]
fn head_answers_200_with_the_digest_or_404() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("h-1", 1);
    expect(&rx.put(&token, "h-1", COMMIT_A, &body), 201, "stored");
    let auth = format!("Bearer {token}");
    let head = |id: &str, auth: &str| super::head_request(&rx, id, auth);
    let r = head("h-1", &auth);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ferry-sha256"), Some(sha256_hex(&body).as_str()));
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(head("h-2", &auth).status, 404);
    assert_eq!(head("h-1", "Bearer nope").status, 401);
}

#[test]
fn commit_check_and_whoami() {
    let rx = Receiver::start();
    let token = rx.ready_device("robot");
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];
    let r = rx.request("GET", &format!("/v1/commits/{COMMIT_A}"), &h, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["allowed"], true);
    assert_eq!(j["head_commit"], COMMIT_A);
    assert_eq!(j["remediation"], "");
    let j = rx
        .request("GET", &format!("/v1/commits/{COMMIT_B}"), &h, b"")
        .json();
    assert_eq!(j["allowed"], false);
    assert!(j["remediation"].as_str().unwrap().contains(COMMIT_B), "{j}");
    let r = rx.request("GET", "/v1/commits/XYZ", &h, b"");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "malformed-commit");
    assert_eq!(
        rx.request("GET", &format!("/v1/commits/{COMMIT_A}"), &[], b"")
            .status,
        401
    );

    let r = rx.request("GET", "/v1/whoami", &h, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["device"], "robot");
    assert_eq!(r.json()["protocol"], "1");
    assert_eq!(rx.request("GET", "/v1/whoami", &[], b"").status, 401);
    // last_seen_at is recorded.
    let list: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    ferry_tests::wait_for("last_seen_at recorded", || {
        let list: serde_json::Value =
            serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
        list[0]["last_seen_at"].is_string().then_some(())
    });
    let _ = list;
}

#[test]
fn health_readiness_metrics_and_status_page() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let r = rx.request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = rx.request("GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());

    let body = sample_archive("m-1", 1);
    expect(&rx.put(&token, "m-1", COMMIT_A, &body), 201, "stored");
    expect(
        &rx.put(&token, "m-2", COMMIT_B, &body),
        412,
        "commit-rejected",
    );
    let text = rx.request("GET", "/metrics", &[], b"").text();
    assert!(
        text.contains("ferry_http_requests_total{route=\"/v1/episodes/{id}\",method=\"PUT\",status=\"201\"} 1"),
        "{text}"
    );
    assert_eq!(metric(&rx, "ferry_episodes_stored_total"), Some(1.0));
    assert!(metric(&rx, "ferry_bytes_received_total").unwrap() >= body.len() as f64);
    assert!(
        text.contains(&format!(
            "ferry_commit_rejected_total{{commit=\"{COMMIT_B}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("ferry_upload_duration_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("ferry_uploads_in_flight 0"), "{text}");

    let admin = format!("Bearer {}", rx.admin_token);
    let r = rx.request("GET", "/", &[("Authorization", &admin)], b"");
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(
        page.contains("<html")
            && page.contains("m-1")
            && page.contains("dev")
            && page.contains(COMMIT_A),
        "{page}"
    );
}

#[test]
fn readyz_fails_when_storage_is_not_writable() {
    let rx = Receiver::start();
    // Replace the temp directory by a file: the storage cannot take writes.
    let tmp = rx.data_dir.join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let r = rx.request("GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["status"].is_string());
    // Liveness does not touch storage.
    assert_eq!(rx.request("GET", "/healthz", &[], b"").status, 200);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    // A probe's result is reused for a second (an unauthenticated caller
    // must not make the receiver sync a file per request).
    ferry_tests::wait_for("ready again", || {
        (rx.request("GET", "/readyz", &[], b"").status == 200).then_some(())
    });
}

#[test]
fn admin_api_requires_the_admin_token() {
    let rx = Receiver::start();
    let paths = [
        ("GET", "/v1/admin/commits"),
        ("POST", "/v1/admin/commits"),
        ("DELETE", &format!("/v1/admin/commits/{COMMIT_A}")),
        ("GET", "/v1/admin/devices"),
        ("POST", "/v1/admin/devices"),
        ("DELETE", "/v1/admin/devices/x"),
        ("GET", "/v1/admin/episodes"),
        ("GET", "/v1/admin/episodes/x"),
        ("GET", "/v1/admin/episodes/x/download"),
        ("POST", "/v1/admin/devices/x/rename"),
        ("GET", "/v1/admin/devices/x/episodes"),
        ("GET", "/v1/admin/devices/x/episodes/y"),
        ("GET", "/v1/admin/devices/x/episodes/y/download"),
    ];
    let device = rx.add_device("not-admin");
    for (m, p) in paths {
        for auth in [
            None,
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {device}")),
        ] {
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let r = rx.request(m, p, &h, b"{}");
            assert_eq!(r.status, 401, "{m} {p} {auth:?}: {}", r.text());
            assert_eq!(r.json()["status"], "unauthenticated");
        }
    }
}

#[test]
fn admin_api_is_disabled_without_a_token_file() {
    let data = tempfile::tempdir().unwrap();
    // An empty value unsets the harness's admin token file.
    let mut rx = Receiver::prepare(data.path(), &[]);
    rx.env
        .retain(|(k, _)| k != "FERRY_RECEIVER_ADMIN_TOKEN_FILE");
    rx.try_spawn("127.0.0.1:0", &[]).unwrap();
    let auth = format!("Bearer {}", rx.admin_token);
    let r = rx.request("GET", "/v1/admin/commits", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 401);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("disabled"),
        "{}",
        r.text()
    );
}

#[test]
fn admin_api_manages_commits_devices_and_episodes() {
    let rx = Receiver::start();
    let admin = format!("Bearer {}", rx.admin_token);
    let a = [
        ("Authorization", admin.as_str()),
        ("Content-Type", "application/json"),
    ];

    let r = rx.request(
        "POST",
        "/v1/admin/commits",
        &a,
        format!("{{\"commit\":\"{COMMIT_A}\",\"head\":true,\"note\":\"n\"}}").as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["head"], true);
    let r = rx.request("POST", "/v1/admin/commits", &a, b"{\"commit\":\"nope\"}");
    assert_eq!(r.status, 400);
    let r = rx.request("POST", "/v1/admin/commits", &a, b"not json");
    assert_eq!(r.status, 400);
    assert!(r.json()["status"].is_string());
    let list = rx.request("GET", "/v1/admin/commits", &a, b"").json();
    assert_eq!(list[0]["commit"], COMMIT_A);

    let r = rx.request("POST", "/v1/admin/devices", &a, b"{\"name\":\"cam-1\"}");
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(r.json()["name"], "cam-1");
    assert_eq!(
        rx.request("POST", "/v1/admin/devices", &a, b"{\"name\":\"cam-1\"}")
            .status,
        400
    );

    let body = sample_archive("adm-1", 1);
    expect(&rx.put(&token, "adm-1", COMMIT_A, &body), 201, "stored");
    let list = rx.request("GET", "/v1/admin/episodes", &a, b"").json();
    assert_eq!(list[0]["episode_id"], "adm-1");
    assert_eq!(list[0]["device"], "cam-1");
    // An episode is named by its device and id.
    let one = rx
        .request("GET", "/v1/admin/devices/cam-1/episodes/adm-1", &a, b"")
        .json();
    assert_eq!(one["sha256"], sha256_hex(&body).as_str());
    assert_eq!(one["commit"], COMMIT_A);
    assert_eq!(one["device"], "cam-1");
    for p in [
        "/v1/admin/devices/cam-1/episodes/nope",
        "/v1/admin/devices/cam-2/episodes/adm-1",
        "/v1/admin/devices/cam-2/episodes",
        "/v1/admin/episodes?device=cam-2",
    ] {
        assert_eq!(rx.request("GET", p, &a, b"").status, 404, "{p}");
    }
    // The id alone still names it while one device alone stored it.
    let r = rx.request("GET", "/v1/admin/episodes/adm-1", &a, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["device"], "cam-1");
    let r = rx.request("GET", "/v1/admin/episodes/adm-1/download", &a, b"");
    assert_eq!((r.status, r.body.as_slice()), (200, body.as_slice()));
    let r = rx.request("GET", "/v1/admin/episodes/nope", &a, b"");
    assert_eq!(r.status, 404);
    for p in [
        "/v1/admin/devices/cam-1/episodes",
        "/v1/admin/episodes?device=cam-1",
    ] {
        let list = rx.request("GET", p, &a, b"").json();
        assert_eq!(list.as_array().unwrap().len(), 1, "{p}: {list}");
        assert_eq!(list[0]["episode_id"], "adm-1", "{p}");
    }
    let dl = rx.request(
        "GET",
        "/v1/admin/devices/cam-1/episodes/adm-1/download",
        &a,
        b"",
    );
    assert_eq!(dl.status, 200);
    assert_eq!(dl.body, body);
    assert_eq!(
        dl.header("x-ferry-sha256"),
        Some(sha256_hex(&body).as_str())
    );
    let devices = rx.request("GET", "/v1/admin/devices", &a, b"").json();
    assert_eq!(devices[0]["episodes"], 1);
    assert_eq!(devices[0]["bytes"], body.len() as u64);

    // A rename keeps the token and the episodes.
    let r = rx.request(
        "POST",
        "/v1/admin/devices/cam-1/rename",
        &a,
        b"{\"name\":\"cam-9\"}",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (&r.json()["name"], &r.json()["episodes"]),
        (&"cam-9".into(), &1.into())
    );
    let auth = format!("Bearer {token}");
    let whoami = rx.request("GET", "/v1/whoami", &[("Authorization", &auth)], b"");
    assert_eq!(whoami.json()["device"], "cam-9");
    expect(
        &rx.put(&token, "adm-1", COMMIT_A, &body),
        200,
        "already-present",
    );
    let r = rx.request("GET", "/v1/admin/devices/cam-9/episodes/adm-1", &a, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    for (from, to, code) in [
        ("cam-1", "x", 404),
        ("cam-9", "cam-9", 400),
        ("cam-9", "a/b", 400),
    ] {
        let body = format!("{{\"name\":\"{to}\"}}");
        let p = format!("/v1/admin/devices/{from}/rename");
        assert_eq!(
            rx.request("POST", &p, &a, body.as_bytes()).status,
            code,
            "{from} → {to}"
        );
    }

    assert_eq!(
        rx.request("DELETE", "/v1/admin/devices/cam-9", &a, b"")
            .status,
        200
    );
    expect(&rx.put(&token, "adm-2", COMMIT_A, &body), 403, "forbidden");
    assert_eq!(
        rx.request("DELETE", "/v1/admin/devices/cam-1x", &a, b"")
            .status,
        404
    );
    assert_eq!(
        rx.request("DELETE", &format!("/v1/admin/commits/{COMMIT_A}"), &a, b"")
            .status,
        200
    );
    assert_eq!(
        rx.request("GET", "/v1/admin/commits", &a, b"").json(),
        serde_json::json!([])
    );
}

#[test]
fn unknown_routes_and_wrong_methods_answer_json() {
    let rx = Receiver::start();
    for (m, p, code) in [
        ("GET", "/nope", 404),
        ("GET", "/v1/episodes/x", 405),
        ("DELETE", "/v1/episodes/x", 405),
        ("POST", "/healthz", 405),
        ("GET", "/v2/episodes/x", 404),
    ] {
        let r = rx.request(m, p, &[], b"");
        assert_eq!(r.status, code, "{m} {p}: {}", r.text());
        assert!(r.json()["status"].is_string(), "{m} {p}");
        assert_eq!(r.header("x-ferry-protocol"), Some("1"));
    }
}
