//! Agent end-to-end tests: the real `ferry-agent` against the real
//! `ferry-receiver` (or, for answers our receiver never gives, a raw
//! `TcpListener` in the test that answers like a misbehaving one), with real
//! faults: strace injection, kill -9, SIGTERM mid-upload, a real
//! `NOTIFY_SOCKET`.
//!
//! - `answers`: every row of SPEC §3.
//! - `incidents`: the five incidents of SPEC §4, named after them.
//! - `cli`: pack, status, doctor, quarantine, config errors.
//! - `systemd`: READY/STATUS/STOPPING/WATCHDOG on a real socket.
//! - `takeover`: a spool written by the older shipper.
//! - `tls`: a receiver behind a private CA (`ca_file`).
//! - `resumable`: large episodes with tus (SPEC §8), resumed after a
//!   `kill -9` of the receiver.

mod answers;
mod cli;
mod incidents;
mod resumable;
mod systemd;
mod takeover;
mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::{make_episode, noise, signal, wait_exit, Spool, COMMIT_A};

/// A small episode with a nested data file, committed by `commit`.
pub fn episode(spool: &Spool, id: &str, commit: Option<&str>, seed: u64) -> PathBuf {
    make_episode(
        spool.path(),
        id,
        commit,
        &[
            ("data/noise.bin", &noise(seed, 8192)),
            ("notes.txt", format!("episode {id}\n").as_bytes()),
        ],
    )
}

/// `episode` with `COMMIT_A`.
pub fn small(spool: &Spool, id: &str, seed: u64) -> PathBuf {
    episode(spool, id, Some(COMMIT_A), seed)
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A JSON file of the spool.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

pub fn reason(spool: &Spool, id: &str) -> serde_json::Value {
    read_json(
        &spool
            .path()
            .join("quarantine")
            .join(id)
            .join("quarantine_reason.json"),
    )
}

/// Names in `outbox/`.
pub fn outbox(spool: &Spool) -> Vec<String> {
    spool.ids_in("outbox")
}

// ---------------------------------------------------------------------------
// A running `ferry-agent run`, its stderr in a file.

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `ferry-agent run` on `spool` with extra environment.
    pub fn start(spool: &Spool, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_cmd(spool.agent("run"), env)
    }

    /// Starts `cmd` in a process group of its own, so that dropping the
    /// daemon also ends an agent started under a wrapper such as strace
    /// (killing strace alone leaves its tracee running).
    pub fn start_cmd(mut cmd: std::process::Command, env: &[(&str, &str)]) -> Daemon {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .process_group(0)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start ferry-agent run");
        Daemon {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `what` (panics after the deadline, with
    /// the log).
    pub fn wait_log(&mut self, what: &str) {
        let start = Instant::now();
        loop {
            if self.log().contains(what) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "agent exited ({st}) before logging {what:?}:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > ferry_tests::DEADLINE {
                panic!(
                    "timed out waiting for {what:?} in the agent log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigterm(&mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        wait_exit(&mut self.child, within)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        ferry_tests::signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP server that answers as scripted: for answers the real receiver
// never gives (a digest mismatch, a 503 with Retry-After, a receiver that
// stops reading).

/// One request the fake server saw.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// When the request head had arrived.
    pub started: Instant,
    /// When the body had been read (or, for `Hang`, the head).
    pub at: Instant,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake server does with the n-th PUT (0-based).
pub enum Script {
    /// Read the whole body, then answer.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the head and stop reading: the upload stalls.
    Hang,
    /// Read the whole body, then answer as the receiver does when it
    /// stored it: 201 `stored` naming the request's episode id and its
    /// `X-Ferry-Sha256`.
    Stored,
}

pub fn answer(status: u16, body: serde_json::Value) -> Script {
    Script::Answer {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

pub struct Fake {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

impl Fake {
    pub fn puts(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.method == "PUT")
            .cloned()
            .collect()
    }
}

/// Start a fake receiver. GETs answer 200 `{"status":"ok"}`; the n-th PUT
/// is answered by `script(n)`.
pub fn fake(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let script = Arc::new(script);
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (h, script) = (h.clone(), script.clone());
            std::thread::spawn(move || serve(stream, &h, &*script));
        }
    });
    Fake { url, hits }
}

fn serve(
    stream: TcpStream,
    hits: &Mutex<Vec<Hit>>,
    script: &(dyn Fn(usize) -> Script + Send + Sync),
) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let n = {
        let hs = hits.lock().unwrap();
        hs.iter().filter(|h| h.method == "PUT").count()
    };
    let action = if method == "PUT" {
        script(n)
    } else {
        answer(200, serde_json::json!({"status": "ok", "allowed": false}))
    };
    // What to answer once the body is read; `None`: stop reading instead.
    let reply_with = match action {
        Script::Hang => None,
        Script::Answer {
            status,
            headers,
            body,
        } => Some((status, headers, body)),
        Script::Stored => {
            let sha = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-ferry-sha256"))
                .map(|(_, v)| v.as_str());
            let body = serde_json::json!({
                "status": "stored",
                "episode_id": path.rsplit('/').next(),
                "sha256": sha,
                "size": len,
            });
            Some((201, Vec::new(), body.to_string()))
        }
    };
    let mut hit = Hit {
        method,
        path,
        headers,
        body_len: 0,
        started: Instant::now(),
        at: Instant::now(),
    };
    match reply_with {
        None => {
            hits.lock().unwrap().push(hit);
            // Hold the connection open without reading, until the client
            // gives up.
            let mut buf = [0u8; 1];
            std::thread::sleep(Duration::from_secs(600));
            let _ = r.read(&mut buf);
        }
        Some((status, headers, body)) => {
            let mut left = len;
            let mut buf = vec![0u8; 64 << 10];
            while left > 0 {
                match r.read(&mut buf[..left.min(64 << 10)]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => left -= k,
                }
            }
            hit.body_len = len - left;
            hit.at = Instant::now();
            hits.lock().unwrap().push(hit);
            // JSON unless the script says otherwise (a proxy's HTML page).
            let mut extra = String::new();
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                extra.push_str("Content-Type: application/json\r\n");
            }
            for (k, v) in headers {
                extra.push_str(&format!("{k}: {v}\r\n"));
            }
            let _ = write!(
                w,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
            let _ = w.flush();
        }
    }
}

// ---------------------------------------------------------------------------
// strace

/// `strace -f -qq -o LOG ARGS... <drain of spool>` and its log (assert the
/// fault landed with [`ferry_tests::Strace::assert_hit`]), or `None` (after
/// a loud SKIPPED line) when strace is missing.
pub fn strace_drain(
    test: &str,
    spool: &Spool,
    timeout: &str,
    args: &[&str],
) -> Option<(std::process::Command, ferry_tests::Strace)> {
    if ferry_tests::lacks("strace", test) {
        return None;
    }
    let trace = ferry_tests::Strace::new();
    let mut c = trace.command(args);
    c.args(spool.drain_cmd_args(timeout))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_AGENT_") {
            c.env_remove(k);
        }
    }
    Some((c, trace))
}

// ---------------------------------------------------------------------------
// A real NOTIFY_SOCKET.

/// A unix datagram socket standing in for systemd's; collects every
/// datagram with the time it arrived.
pub struct NotifySocket {
    pub path: PathBuf,
    pub got: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let got: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                g.lock().unwrap().push((Instant::now(), msg));
            }
        });
        NotifySocket {
            path,
            got,
            _dir: dir,
        }
    }

    /// Environment for the child: this socket and a watchdog interval.
    pub fn env(&self, watchdog: Option<Duration>) -> Vec<(String, String)> {
        let mut v = vec![("NOTIFY_SOCKET".to_string(), self.path.display().to_string())];
        if let Some(w) = watchdog {
            v.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        v
    }

    /// Messages containing `what`, with their arrival times.
    pub fn matching(&self, what: &str) -> Vec<(Instant, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l.starts_with(what)))
            .cloned()
            .collect()
    }

    pub fn first(&self, what: &str) -> Option<Instant> {
        self.matching(what).first().map(|(t, _)| *t)
    }
}

/// Start `ferry-agent run` on `spool` with the notify socket's environment.
pub fn daemon_with_notify(
    spool: &Spool,
    ns: &NotifySocket,
    watchdog: Option<Duration>,
    env: &[(&str, &str)],
) -> Daemon {
    let mut cmd = spool.agent("run");
    for (k, v) in ns.env(watchdog) {
        cmd.env(k, v);
    }
    Daemon::start_cmd(cmd, env)
}
