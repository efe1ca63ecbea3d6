//! The scale-out harness itself, shown to work before anything is built on
//! it: moto serves a bucket and is read back page by page, an outage
//! refuses connections and ends with the data intact, nginx round-robins
//! and steps over a dead replica, a private PostgreSQL cluster survives
//! kill -9, and replicas started together share one migrated index.

use std::net::TcpStream;

use ferry_tests::postgres::{psql, PgCluster, TestDb};
use ferry_tests::s3::{key_sha, S3Object, S3Server, BUCKET};
use ferry_tests::scaleout::Replicas;
use ferry_tests::{nginx::Balancer, request, sha256_hex, Receiver};

#[test]
fn moto_serves_a_bucket_read_back_page_by_page_and_an_outage_keeps_its_data() {
    let test = "moto_serves_a_bucket_read_back_page_by_page_and_an_outage_keeps_its_data";
    let Some(s3) = S3Server::with_outage_proxy(test) else {
        return;
    };
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| ferry_tests::noise(i, 100 + i as usize))
        .collect();
    let mut keys = Vec::new();
    for b in &bodies {
        let sha = sha256_hex(b);
        let key = format!("p/{}/{sha}", &sha[..2]);
        s3.put(&key, b);
        keys.push(key);
    }
    s3.put("p/staging/marker", b"in progress");
    s3.put("other/x", b"not under the prefix");

    // Pages of two: the continuation tokens are followed to the end.
    let mut listed = s3.list_in_pages("p/", 2);
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut expected: Vec<S3Object> = keys
        .iter()
        .zip(&bodies)
        .map(|(k, b)| S3Object {
            key: k.clone(),
            size: b.len() as u64,
        })
        .collect();
    expected.push(S3Object {
        key: "p/staging/marker".into(),
        size: 11,
    });
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
    let objects = s3.objects("p");
    assert_eq!(objects.len(), 5, "staging/ is not an object: {objects:?}");
    for o in &objects {
        let bytes = s3.get(&o.key).expect("listed object");
        assert_eq!(sha256_hex(&bytes), key_sha(&o.key), "{}", o.key);
    }
    assert_eq!(s3.get("p/absent"), None);

    // An open multipart upload is listed until it is aborted.
    let r = s3.call("POST", &format!("/{BUCKET}/p/big?uploads"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let open = s3.open_multipart_uploads("p/");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].key, "p/big");
    let r = s3.call(
        "DELETE",
        &format!("/{BUCKET}/p/big?uploadId={}", open[0].upload_id),
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s3.open_multipart_uploads("p/"), []);

    // The outage: the endpoint refuses at once; afterwards the same
    // objects are served through it again.
    let through = |key: &str| {
        request(
            s3.endpoint,
            "GET",
            &format!("/{BUCKET}/{key}"),
            &[("Authorization", "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")],
            b"",
        )
    };
    assert_eq!(through(&keys[0]).body, bodies[0]);
    s3.outage().cut();
    let e = TcpStream::connect(s3.endpoint).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    s3.outage().restore();
    assert_eq!(through(&keys[1]).body, bodies[1]);
    assert_eq!(s3.objects("p").len(), 5);
    // The request log is readable (tests use it to see every write).
    let log = s3.successful_requests();
    assert!(
        log.iter()
            .any(|l| l == &format!("PUT /{BUCKET}/{}", keys[0])),
        "{log:?}"
    );
}

#[test]
fn nginx_round_robins_over_two_receivers_and_steps_over_a_dead_one() {
    let test = "nginx_round_robins_over_two_receivers_and_steps_over_a_dead_one";
    if ferry_tests::lacks("nginx", test) {
        return;
    }
    let mut a = Receiver::start();
    let b = Receiver::start();
    let Some(lb) = Balancer::start(test, &[a.addr, b.addr]) else {
        return;
    };
    for _ in 0..4 {
        let r = request(lb.addr, "GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let used: Vec<String> = lb.wait_logged(4).into_iter().map(|(u, _, _)| u).collect();
    let (a_s, b_s) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(used.len(), 4, "{used:?}");
    assert!(
        used.windows(2).all(|w| w[0] != w[1]),
        "not round robin: {used:?}"
    );
    assert!(used.contains(&a_s) && used.contains(&b_s), "{used:?}");

    // A body streams through (buffering off) to the replica and back.
    let token = a.ready_device("lb-dev");
    let body = ferry_tests::sample_archive("via-lb", 1);
    // Every request goes to `a` once `b` is down: the refused connection
    // is retried on the next upstream, so no request fails.
    drop(b);
    for i in 0..3 {
        let r = ferry_tests::put_episode(
            lb.addr,
            &token,
            &format!("via-lb-{i}"),
            ferry_tests::COMMIT_A,
            &sha256_hex(&body),
            &body,
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let tail: Vec<_> = lb.wait_logged(7).into_iter().skip(4).collect();
    assert!(
        tail.iter().all(|(_, _, s)| *s == 201),
        "nginx answered for a dead replica: {tail:?}"
    );
    assert!(
        tail.iter().all(|(u, _, _)| u.ends_with(&a_s)),
        "the last upstream of each request is the live one: {tail:?}"
    );
    // Both replicas down: nginx's own 502, which the agent retries.
    a.kill9();
    let r = request(lb.addr, "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 502, "{}", r.text());
}

#[test]
fn a_private_postgres_cluster_survives_kill9_and_restarts_with_its_data() {
    let test = "a_private_postgres_cluster_survives_kill9_and_restarts_with_its_data";
    let Some(mut pg) = PgCluster::start(test) else {
        return;
    };
    let sql = |q: &str| {
        let out = std::process::Command::new("psql")
            .args([&pg.url(), "-v", "ON_ERROR_STOP=1", "-qAtc", q])
            .output()
            .unwrap();
        ferry_tests::assert_ok(&out, q);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    sql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
    assert_eq!(sql("SELECT v FROM t"), "42");
    pg.kill_9();
    let e = TcpStream::connect(pg.addr()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!psql(&pg.server(), "SELECT 1"));
    pg.restart();
    let sql = |q: &str| {
        let out = std::process::Command::new("psql")
            .args([&pg.url(), "-qAtc", q])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(sql("SELECT v FROM t"), "42", "{}", pg.log_text());
}

/// Three replicas started at the same instant on one fresh database: the
/// migrations race, and every replica comes up on the one index (a device
/// added through one is known to all).
#[test]
fn replicas_started_together_share_one_migrated_index() {
    let test = "replicas_started_together_share_one_migrated_index";
    let Some(db) = TestDb::create(test) else {
        return;
    };
    let env = vec![("FERRY_RECEIVER_DATABASE_URL".to_string(), db.url())];
    let replicas = Replicas::start(3, &env, &[]);
    let token = replicas.get(1).ready_device("shared-dev");
    for rx in replicas.iter() {
        let r = rx.request(
            "GET",
            "/v1/whoami",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        );
        assert_eq!(r.status, 200, "{}: {}", rx.url, r.text());
        assert_eq!(r.json()["device"], "shared-dev", "{}", r.text());
    }
    drop(replicas);
    drop(db);
}
