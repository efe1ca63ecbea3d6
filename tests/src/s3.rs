//! A real S3 server for the scale-out tests: `moto_server` (PyPI
//! `moto[server]`) on a free port of 127.0.0.1, one bucket created, killed
//! when dropped; and what a test reads back from it over plain S3 HTTP
//! (list keys, fetch bytes, list open multipart uploads), never through the
//! receiver's own client.
//!
//! moto keeps its data in memory, so it must never be killed mid-test: an
//! outage is a [`crate::proxy::TcpProxy`] in front of it
//! ([`S3Server::with_outage_proxy`]).
//!
//! moto answers anonymous reads of objects with 403 (it applies bucket
//! ACLs to unsigned requests) but does not check signatures, so the harness
//! sends a well-formed SigV4 `Authorization` header with a dummy signature.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::proxy::TcpProxy;
use crate::{request, signal_group, Response};

/// The bucket every test uses (each test has its own server).
pub const BUCKET: &str = "ferry-test";

/// Credentials moto accepts (it accepts any).
pub const ACCESS_KEY: &str = "ferry-test-access";
pub const SECRET_KEY: &str = "ferry-test-secret";

/// A header moto takes as signed (it checks no signature).
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=ferry-test-access/20260101/us-east-1/s3/\
                    aws4_request, SignedHeaders=host, Signature=00";

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    pub key: String,
    pub size: u64,
}

/// An open (neither completed nor aborted) multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
}

/// A running `moto_server` with [`BUCKET`] created.
pub struct S3Server {
    /// Where moto itself listens.
    pub addr: SocketAddr,
    /// Where clients connect: moto, or the outage proxy in front of it.
    pub endpoint: SocketAddr,
    proxy: Option<TcpProxy>,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Start moto, or say loudly why `test` is skipped (moto_server
    /// missing, or it does not come up).
    pub fn start(test: &str) -> Option<S3Server> {
        if crate::lacks("moto_server", test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("moto dir");
        let log = dir.path().join("moto.log");
        let port = crate::free_port();
        let out = std::fs::File::create(&log).expect("moto log");
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // A werkzeug reloader would fork a second server we cannot see.
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        crate::wait_accepting(&mut child, addr, "moto_server", &log);
        let s3 = S3Server {
            addr,
            endpoint: addr,
            proxy: None,
            child,
            log,
            _dir: dir,
        };
        let r = s3.call("PUT", &format!("/{BUCKET}"), b"");
        assert_eq!(r.status, 200, "create bucket {BUCKET}: {}", r.text());
        Some(s3)
    }

    /// Like [`S3Server::start`], with a [`TcpProxy`] in front: clients use
    /// [`S3Server::endpoint`], and [`S3Server::outage`] cuts it.
    pub fn with_outage_proxy(test: &str) -> Option<S3Server> {
        let mut s3 = S3Server::start(test)?;
        let proxy = TcpProxy::start(s3.addr);
        s3.endpoint = proxy.addr;
        s3.proxy = Some(proxy);
        Some(s3)
    }

    /// The proxy in front of moto (panics without one).
    pub fn outage(&self) -> &TcpProxy {
        self.proxy
            .as_ref()
            .expect("S3Server::with_outage_proxy gives an outage switch")
    }

    /// `http://127.0.0.1:PORT`, what a client is configured with.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// The receiver's environment for this server: `storage_url`
    /// `s3://BUCKET/PREFIX`, endpoint, region and the AWS credentials.
    pub fn receiver_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            (
                "FERRY_RECEIVER_STORAGE_URL",
                format!("s3://{BUCKET}/{prefix}"),
            ),
            ("FERRY_RECEIVER_S3_ENDPOINT", self.endpoint_url()),
            ("FERRY_RECEIVER_S3_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A request straight to moto (never through the outage proxy: the
    /// test's view of the bucket must not depend on the outage it makes).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Response {
        request(
            self.addr,
            method,
            path,
            &[
                ("Authorization", AUTH),
                ("Content-Type", "application/octet-stream"),
            ],
            body,
        )
    }

    /// Every key under `prefix` with its size, following continuation
    /// tokens (pages of 1000).
    pub fn list(&self, prefix: &str) -> Vec<S3Object> {
        self.list_in_pages(prefix, 1000)
    }

    /// [`S3Server::list`] in pages of `page` keys (a small page shows that
    /// the continuation tokens are followed).
    pub fn list_in_pages(&self, prefix: &str, page: usize) -> Vec<S3Object> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "/{BUCKET}?list-type=2&max-keys={page}&prefix={}",
                url_encode(prefix)
            );
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", url_encode(t)));
            }
            let r = self.call("GET", &path, b"");
            assert_eq!(r.status, 200, "list {prefix}: {}", r.text());
            let xml = r.text();
            for c in elements(&xml, "Contents") {
                let key = unescape(element(c, "Key").expect("Key"));
                let size = element(c, "Size").and_then(|s| s.parse().ok());
                out.push(S3Object {
                    key,
                    size: size.unwrap_or_else(|| panic!("no Size in {c}")),
                });
            }
            if element(&xml, "IsTruncated") != Some("true") {
                return out;
            }
            token = Some(unescape(
                element(&xml, "NextContinuationToken").expect("NextContinuationToken"),
            ));
        }
    }

    /// The objects under `prefix/` that are episodes: every key except the
    /// staging area `prefix/staging/` (markers of uploads in progress).
    pub fn objects(&self, prefix: &str) -> Vec<S3Object> {
        let root = format!("{}/", prefix.trim_end_matches('/'));
        let staging = format!("{root}staging/");
        self.list(&root)
            .into_iter()
            .filter(|o| !o.key.starts_with(&staging))
            .collect()
    }

    /// An object's bytes, or `None` if there is no such key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.call("GET", &format!("/{BUCKET}/{}", url_encode_path(key)), b"");
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("GET {key}: {s} {}", r.text()),
        }
    }

    /// Put an object directly (an orphan the collector should find, say).
    pub fn put(&self, key: &str, body: &[u8]) {
        let r = self.call("PUT", &format!("/{BUCKET}/{}", url_encode_path(key)), body);
        assert_eq!(r.status, 200, "PUT {key}: {}", r.text());
    }

    /// Multipart uploads still open under `prefix`.
    pub fn open_multipart_uploads(&self, prefix: &str) -> Vec<MultipartUpload> {
        let r = self.call(
            "GET",
            &format!("/{BUCKET}?uploads&prefix={}", url_encode(prefix)),
            b"",
        );
        assert_eq!(r.status, 200, "list multipart uploads: {}", r.text());
        elements(&r.text(), "Upload")
            .map(|u| MultipartUpload {
                key: unescape(element(u, "Key").expect("Key")),
                upload_id: unescape(element(u, "UploadId").expect("UploadId")),
            })
            .collect()
    }

    /// moto's request log so far, one line per request
    /// (`"PUT /bucket/key?query HTTP/1.1" 200 -`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The request lines (`METHOD /path?query`) moto answered with a 2xx,
    /// in order. Panics if the log shows no request at all (the bucket
    /// creation must be there): a test relying on it would prove nothing.
    pub fn successful_requests(&self) -> Vec<String> {
        let log = self.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once('"')?;
                let (req, status) = rest.split_once('"')?;
                let code: u16 = status.split_whitespace().next()?.parse().ok()?;
                let req = req.strip_suffix(" HTTP/1.1").unwrap_or(req);
                (200..300).contains(&code).then(|| req.to_string())
            })
            .collect();
        assert!(
            lines.iter().any(|l| l == &format!("PUT /{BUCKET}")),
            "moto's log has no request lines (its format changed?):\n{log}"
        );
        lines
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sha256 an object's key names: its last path segment (keys are
/// `PREFIX/<sha256>` or sharded `PREFIX/<aa>/<sha256>`).
pub fn key_sha(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Every `<tag>…</tag>` body in `xml`, in order.
fn elements<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let body = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(body)
    })
}

/// The first `<tag>…</tag>` body in `xml`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    elements(xml, tag).next()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Percent-encoding of a query value (RFC 3986 unreserved kept).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encoding of a key in a path: as a query value, but `/` kept.
fn url_encode_path(key: &str) -> String {
    key.split('/').map(url_encode).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_xml_is_read_with_sizes_and_escapes() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated>\
                   <Contents><Key>p/ab/x&amp;y</Key><Size>5</Size></Contents>\
                   <Contents><Key>p/cd</Key><Size>0</Size></Contents></ListBucketResult>";
        let keys: Vec<_> = elements(xml, "Contents")
            .map(|c| (unescape(element(c, "Key").unwrap()), element(c, "Size")))
            .collect();
        assert_eq!(
            keys,
            [
                ("p/ab/x&y".to_string(), Some("5")),
                ("p/cd".to_string(), Some("0"))
            ]
        );
        assert_eq!(key_sha("p/ab/abcdef"), "abcdef");
        assert_eq!(key_sha("abcdef"), "abcdef");
        assert_eq!(url_encode("a/b c+"), "a%2Fb%20c%2B");
        assert_eq!(url_encode_path("a/b c"), "a/b%20c");
    }
}
