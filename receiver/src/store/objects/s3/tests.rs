//! The S3 store against a real S3 server, `moto_server`, started on a free
//! port per test (skipped loudly when it is not installed; a failure under
//! `FERRY_REQUIRE_ALL=1`), and against endpoints that are down or answer
//! 503.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferry_proto::Sha256;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::objects::{Chunk, Staged, Staging};

const BUCKET: &str = "ferry-test";
const MIB: usize = 1 << 20;

/// Says loudly that `test` is skipped; under `FERRY_REQUIRE_ALL=1` it
/// fails instead (as the harness's `ferry_tests::skip`, which this crate
/// cannot depend on).
fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("\n!!!!!!!! {line} !!!!!!!!\n");
    if let Ok(path) = std::env::var("FERRY_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    if std::env::var("FERRY_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{line}; FERRY_REQUIRE_ALL=1 allows no skip");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `moto_server` on PATH, else where pyenv puts it.
fn moto_bin() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("moto_server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([std::path::PathBuf::from("/root/.pyenv/shims/moto_server")])
        .find(|p| p.is_file())
}

/// A `moto_server` with one bucket; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start(test: &str) -> Option<Moto> {
        let Some(bin) = moto_bin() else {
            skip(test, "moto_server not installed");
            return None;
        };
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, body) = moto.http("PUT", &format!("/{BUCKET}"));
        assert_eq!(status, 200, "create bucket: {body}");
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP/1.1 request (moto checks no signatures): status and
    /// body.
    fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(self.port, method, path)
    }

    /// Multipart uploads open in the bucket (`GET /bucket?uploads`).
    fn open_uploads(&self) -> usize {
        let (status, body) = self.http("GET", &format!("/{BUCKET}?uploads"));
        assert_eq!(status, 200, "{body}");
        body.matches("<UploadId>").count()
    }

    /// Keys under `prefix` (`GET /bucket?list-type=2&prefix=`).
    fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.http("GET", &format!("/{BUCKET}?list-type=2&prefix={prefix}"));
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_owned())
            .collect()
    }

    /// Waits (up to 10 s) for the aborts that run in tasks of their own.
    async fn settled(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open_uploads() > 0 || !self.keys(&format!("{prefix}/staging/")).is_empty() {
            if Instant::now() > deadline {
                panic!(
                    "staging left: {} open uploads, markers {:?}",
                    self.open_uploads(),
                    self.keys(&format!("{prefix}/staging/"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn store_at(endpoint: String, prefix: &str, part_size: usize, buffer_limit: usize) -> S3Objects {
    let builder = AmazonS3Builder::new()
        .with_access_key_id("test")
        .with_secret_access_key("test");
    let cfg = S3Storage {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        part_size: part_size as u64,
        buffer_limit: buffer_limit as u64,
    };
    S3Objects::new(builder, &cfg).unwrap()
}

fn store(m: &Moto, prefix: &str) -> S3Objects {
    store_at(m.endpoint(), prefix, 5 * MIB, 64 * MIB)
}

fn sha(body: &[u8]) -> Sha256 {
    Sha256::from_bytes(&sha2::Sha256::digest(body).into())
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8 ^ seed).collect()
}

/// Stages `body` claiming `claimed`, in uneven chunks; `finish: false`
/// drops the sender instead of finishing.
async fn stage(
    s: &S3Objects,
    claimed: &Sha256,
    body: &[u8],
    finish: bool,
) -> Result<Option<Staged>, StoreError> {
    let Staging { tx, done } = s.begin(claimed, body.len() as u64);
    for c in body.chunks(65_521) {
        if tx
            .send(Chunk::Data(Bytes::copy_from_slice(c)))
            .await
            .is_err()
        {
            break;
        }
    }
    if finish {
        let _ = tx.send(Chunk::Finish).await;
    }
    drop(tx);
    done.await.unwrap()
}

async fn read_all(s: &S3Objects, sha: &Sha256) -> Vec<u8> {
    let mut stream = s.read(sha).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = stream.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn small_and_multipart_uploads_persist_under_their_digest_and_read_back() {
    let Some(m) = Moto::start("small_and_multipart_uploads_persist") else {
        return;
    };
    let s = store(&m, "prod");
    for (len, seed) in [(11, 1u8), (11 * MIB, 2), (10 * MIB, 3)] {
        let b = body(len, seed);
        let want = sha(&b);
        let staged = stage(&s, &want, &b, true).await.unwrap().unwrap();
        assert_eq!(
            (staged.sha256.clone(), staged.size),
            (want.clone(), len as u64)
        );
        // Not visible before persist, even while its parts are uploaded.
        assert_eq!(s.stat(&want).await.unwrap(), None);
        let r = s.persist(vec![staged]).await;
        assert!(r.iter().all(Result::is_ok), "{r:?}");
        assert_eq!(s.stat(&want).await.unwrap(), Some(len as u64));
        assert_eq!(sha(&read_all(&s, &want).await), want);
        assert_eq!(m.keys(&format!("prod/{want}")), [format!("prod/{want}")]);
    }
    // The same small body again: already there is success.
    let b = body(11, 1);
    let again = stage(&s, &sha(&b), &b, true).await.unwrap().unwrap();
    assert!(s.persist(vec![again]).await[0].is_ok());
    m.settled("prod").await;
    assert_eq!(
        s.locator(&sha(&b)),
        format!("s3://{BUCKET}/prod/{}", sha(&b))
    );
    assert_eq!(s.describe(), format!("s3://{BUCKET}/prod"));
    s.check().await.unwrap();
    assert_eq!(s.free_bytes().await.unwrap(), None);
    s.prepare().await.unwrap();
}

#[tokio::test]
async fn a_digest_mismatch_leaves_no_object_no_upload_and_no_marker() {
    let Some(m) = Moto::start("a_digest_mismatch_leaves_nothing") else {
        return;
    };
    let s = store(&m, "prod");
    let b = body(11 * MIB, 4);
    let claimed = sha(b"other bytes");
    // Persisted anyway (the commit stage never does): refused, aborted.
    let staged = stage(&s, &claimed, &b, true).await.unwrap().unwrap();
    assert_ne!(staged.sha256, claimed);
    let actual = staged.sha256.clone();
    assert_eq!(
        m.open_uploads(),
        1,
        "the parts went up under the claimed key"
    );
    let r = s.persist(vec![staged]).await;
    assert!(r[0].is_err(), "{r:?}");
    // Dropped, as the HTTP layer does on a mismatch: aborted by a task.
    let staged = stage(&s, &claimed, &b, true).await.unwrap().unwrap();
    drop(staged);
    m.settled("prod").await;
    assert_eq!(s.stat(&claimed).await.unwrap(), None);
    assert_eq!(s.stat(&actual).await.unwrap(), None);
    assert!(m.keys("prod/").is_empty(), "{:?}", m.keys("prod/"));
}

#[tokio::test]
async fn an_abandoned_staging_leaves_nothing() {
    let Some(m) = Moto::start("an_abandoned_staging_leaves_nothing") else {
        return;
    };
    let s = store(&m, "prod");
    let b = body(7 * MIB, 5);
    // The sender dropped without Finish, after a part went up.
    assert!(stage(&s, &sha(&b), &b, false).await.unwrap().is_none());
    m.settled("prod").await;
    // And before any part did.
    assert!(stage(&s, &sha(&b), &b[..1000], false)
        .await
        .unwrap()
        .is_none());
    m.settled("prod").await;
    assert!(m.keys("prod/").is_empty(), "{:?}", m.keys("prod/"));
}

#[tokio::test]
async fn list_pages_only_objects_in_key_order_and_delete_takes_missing_ones() {
    let Some(m) = Moto::start("list_and_delete") else {
        return;
    };
    for prefix in ["", "a/b"] {
        let s = store(&m, prefix);
        let mut shas = Vec::new();
        for i in 0..3u8 {
            let b = body(100, i);
            shas.push(sha(&b));
            let staged = stage(&s, &sha(&b), &b, true).await.unwrap().unwrap();
            assert!(s.persist(vec![staged]).await[0].is_ok());
        }
        shas.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        // Staging and foreign keys are no objects.
        let under = |k: &str| match prefix {
            "" => k.to_owned(),
            p => format!("{p}/{k}"),
        };
        for k in ["staging/mp-0123", "not-a-digest", &format!("x/{}", shas[0])] {
            let key = Path::from(under(k));
            s.inner
                .s3
                .put(&key, PutPayload::from_static(b"{}"))
                .await
                .unwrap();
        }
        let all = s.list(None, 10).await.unwrap();
        let listed: Vec<Sha256> = all.iter().map(|l| l.sha256.clone()).collect();
        assert_eq!(listed, shas);
        assert!(all.iter().all(|l| l.modified <= SystemTime::now()));
        let page = s.list(Some(&shas[0]), 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].sha256, shas[1]);
        let missing = sha(b"never stored");
        s.delete(&[shas[0].clone(), missing]).await.unwrap();
        let left: Vec<Sha256> = s
            .list(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.sha256)
            .collect();
        assert_eq!(left, shas[1..]);
        assert_eq!(s.stat(&shas[0]).await.unwrap(), None);
        assert!(matches!(
            s.read(&shas[0])
                .await
                .map(|_| ())
                .unwrap_err()
                .source
                .kind(),
            io::ErrorKind::NotFound
        ));
    }
}

#[tokio::test]
async fn the_sweep_aborts_an_abandoned_multipart_upload_once_it_is_idle() {
    let Some(m) = Moto::start("the_sweep_aborts_an_abandoned_multipart_upload") else {
        return;
    };
    // As a crash leaves it: an open upload with a part, and its marker.
    let s = store(&m, "prod");
    let key = s.inner.object_key(&sha(b"crashed"));
    let id = s.inner.s3.create_multipart(&key).await.unwrap();
    let part = PutPayload::from(vec![7u8; 5 * MIB]);
    s.inner.s3.put_part(&key, &id, 0, part).await.unwrap();
    let marker = sweep::marker_key(&s.inner);
    let content = serde_json::json!({"key": key.to_string(), "upload_id": id});
    let content = PutPayload::from(content.to_string());
    s.inner.s3.put(&marker, content).await.unwrap();
    // A probe left by a crash, and something not ours.
    let probe = s.inner.key("staging/readyz-0123");
    s.inner
        .s3
        .put(&probe, PutPayload::from_static(b"ok"))
        .await
        .unwrap();
    let foreign = s.inner.key("staging/someone-else");
    s.inner
        .s3
        .put(&foreign, PutPayload::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(m.open_uploads(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The store's floor keeps a young marker from any sweep: it may be a
    // live upload of another replica.
    let swept = s
        .sweep_staging(SystemTime::now(), CancellationToken::new())
        .await;
    assert_eq!(swept, Swept::default());
    assert_eq!(m.open_uploads(), 1);

    let s = store(&m, "prod").with_limits(BUFFER_WAIT, Duration::ZERO);
    let swept = s
        .sweep_staging(SystemTime::now(), CancellationToken::new())
        .await;
    assert_eq!(
        swept,
        Swept {
            removed: 2,
            failed: 0
        }
    );
    assert_eq!(m.open_uploads(), 0);
    assert_eq!(m.keys("prod/staging/"), [foreign.to_string()]);
    assert_eq!(s.stat(&sha(b"crashed")).await.unwrap(), None);
}

#[tokio::test]
async fn buffers_past_the_limit_fail_the_staging_as_unreachable() {
    let Some(m) = Moto::start("buffers_past_the_limit") else {
        return;
    };
    let s = store_at(m.endpoint(), "prod", 5 * MIB, 5 * MIB)
        .with_limits(Duration::from_millis(500), Duration::ZERO);
    // One small body holds the whole limit until it is persisted.
    let a = body(5 * MIB - 1, 6);
    let held = stage(&s, &sha(&a), &a, true).await.unwrap().unwrap();
    let b = body(1000, 7);
    let e = stage(&s, &sha(&b), &b, true).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(s.persist(vec![held]).await[0].is_ok());
    // Persisted: its buffer is free again.
    let staged = stage(&s, &sha(&b), &b, true).await.unwrap().unwrap();
    assert!(s.persist(vec![staged]).await[0].is_ok());
}

/// Answers every request on a new port with `status` (a store that is up
/// but cannot serve).
fn answering(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[tokio::test]
async fn a_store_down_or_unserving_is_unreachable_within_seconds() {
    let closed = free_port();
    let slow_down = answering("503 Slow Down");
    for port in [closed, slow_down] {
        let s = store_at(format!("http://127.0.0.1:{port}"), "p", 5 * MIB, 64 * MIB);
        let started = Instant::now();
        let what = sha(b"x");
        let e = s.stat(&what).await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(
            e.to_string().contains(&format!("s3://{BUCKET}/p/{what}")),
            "{e}"
        );
        let e = s.check().await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        let e = s.list(None, 10).await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        let staged = stage(&s, &what, b"x", true).await.unwrap().unwrap();
        let e = s.persist(vec![staged]).await.remove(0).unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        // A multipart upload cannot even be created.
        let big = body(6 * MIB, 8);
        let e = stage(&s, &sha(&big), &big, true).await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        let e = s.prepare().await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn the_start_names_a_missing_bucket_and_the_endpoint() {
    let Some(m) = Moto::start("the_start_names_a_missing_bucket") else {
        return;
    };
    let cfg = S3Storage {
        bucket: "no-such-bucket".into(),
        prefix: "prod".into(),
        endpoint: Some(m.endpoint()),
        region: None,
        part_size: 5 * MIB as u64,
        buffer_limit: 64 * MIB as u64,
    };
    let builder = AmazonS3Builder::new()
        .with_access_key_id("test")
        .with_secret_access_key("test");
    let e = S3Objects::new(builder, &cfg)
        .unwrap()
        .prepare()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("s3://no-such-bucket/prod"), "{text}");
    assert!(text.contains(&m.endpoint()), "{text}");
    assert!(!e.is_unreachable(), "a missing bucket is no outage: {text}");
}

/// A resumable upload's incomplete parts: each write gets a name of its
/// own (a late write of a PATCH that lost its lease lands beside the one
/// the row names, never on it), and the sweep deletes those no row names.
#[tokio::test]
async fn incomplete_parts_get_a_name_per_write_and_the_sweep_takes_unnamed_ones() {
    use crate::store::objects::PartStore;
    use crate::store::uploads::shared::sweep_tails;
    let Some(m) = Moto::start("incomplete_parts_get_a_name_per_write") else {
        return;
    };
    let s = store(&m, "tails");
    let upload = "0123456789abcdef0123456789abcdef";
    let a = s
        .put_tail(upload, vec![Bytes::from_static(b"first")])
        .await
        .unwrap();
    let b = s
        .put_tail(upload, vec![Bytes::from_static(b"second")])
        .await
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(&s.get_tail(&a).await.unwrap()[..], b"first");
    assert_eq!(&s.get_tail(&b).await.unwrap()[..], b"second");
    let mut listed: Vec<(String, String)> = s
        .list_tails()
        .await
        .unwrap()
        .into_iter()
        .map(|(u, n, _)| (u, n))
        .collect();
    listed.sort();
    let mut want = vec![
        (upload.to_owned(), a.clone()),
        (upload.to_owned(), b.clone()),
    ];
    want.sort();
    assert_eq!(listed, want);

    // The upload's row names `b`: `a` goes, but only once old enough.
    let dir = tempfile::tempdir().unwrap();
    let index: std::sync::Arc<dyn crate::store::Index> = std::sync::Arc::new(
        crate::store::index::sqlite::SqliteIndex::open(&dir.path().join("index.db"))
            .await
            .unwrap(),
    );
    index.add_device("dev", &[7; 32], 1).await.unwrap();
    let row = crate::store::SharedUpload {
        id: upload.into(),
        device: "dev".into(),
        episode_id: ferry_proto::EpisodeId::parse("ep-1").unwrap(),
        commit: ferry_proto::Commit::parse(&"a".repeat(40)).unwrap(),
        sha256: sha(b"whole"),
        length: 100,
        created: 1,
        multipart: "mp".into(),
        progress: crate::store::Progress {
            received: 6,
            expires: i64::MAX,
            parts: Vec::new(),
            hash: Vec::new(),
            tail_key: b.clone(),
            tail: 6,
            interrupted: false,
        },
    };
    index.create_upload(&row).await.unwrap();
    let stop = CancellationToken::new();
    let young = sweep_tails(&index, &s, Duration::from_secs(3600), &stop).await;
    assert_eq!(young.unwrap(), 0);
    assert_eq!(m.keys("tails/uploads/").len(), 2);
    let swept = sweep_tails(&index, &s, Duration::ZERO, &stop).await;
    assert_eq!(swept.unwrap(), 1);
    assert_eq!(&s.get_tail(&b).await.unwrap()[..], b"second");
    assert!(s.get_tail(&a).await.is_err(), "the unnamed one is gone");
    // Deleting one already gone is no error.
    s.delete_tail(&a).await.unwrap();
}
