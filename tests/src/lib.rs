//! Harness for the end-to-end tests: start the real binaries, speak raw
//! HTTP to them, build episodes and archives with the system's own `tar` and
//! `zstd`, and inject faults.
//!
//! Nothing here imports the code under test: the binaries are run as
//! processes, exactly as an operator or an outside test would run them.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod http;
pub mod inspect;
pub mod nginx;
pub mod oracle;
pub mod postgres;
pub mod proxy;
pub mod s3;
pub mod scaleout;
pub mod servers;
pub mod skip;
pub mod strace;
pub mod tus;
pub mod wait;

pub use http::{put_episode, read_response, read_response_head, request, request_head, Response};
pub use inspect::{files_in, metric, pack_sha, stored, stored_by_device, temp_files};
pub use oracle::assert_archive_is_episode;
pub use servers::{free_port, is_root, wait_accepting};
pub use skip::{gap_sensitive, have, heavy, lacks, require_all, skip};
pub use strace::Strace;
pub use wait::{exit_within, until, wait_exit, wait_for};

/// Two well-formed commits for tests.
pub const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// How long any "wait until" in the harness waits before failing. Generous:
/// CI is a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Path of a workspace binary (`ferry-agent`, `ferry-receiver`), built by
/// cargo next to this test executable (`target/<profile>/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Where the receiver keeps the object with this digest:
/// `<data_dir>/objects/<aa>/<sha256>` (content-addressed, 256 shards).
pub fn object_path(data_dir: &Path, sha: &str) -> PathBuf {
    data_dir.join("objects").join(&sha[..2]).join(sha)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Send a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is shared.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Send a signal to every process of the group led by `pid`.
pub fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid addresses a group we created.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// The journal mode of the SQLite database `db` as the `sqlite3` tool reads
/// it (another program than the receiver), or `None` after a loud skip of
/// `test`'s journal-mode check when `sqlite3` is missing.
pub fn journal_mode(db: &Path, test: &str) -> Option<String> {
    if lacks("sqlite3", &format!("{test} (journal mode check)")) {
        return None;
    }
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA journal_mode;")
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------------------
// The receiver

/// A running `ferry-receiver serve` on `127.0.0.1:<random port>`, killed when
/// dropped. Its data directory is a temp dir (kept alive by this value)
/// unless started with [`Receiver::start_in`].
pub struct Receiver {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    /// Extra environment passed to every `serve` and CLI invocation.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Receiver {
    /// Start on a fresh temp data dir with the embedded defaults.
    pub fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Receiver::start_in(dir.path(), &[]);
        r._dir = Some(dir);
        r
    }

    /// Start on `data_dir` with extra `FERRY_RECEIVER_*` environment.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Receiver {
        let mut r = Receiver::prepare(data_dir, env);
        r.spawn("127.0.0.1:0");
        r
    }

    /// Set up `data_dir` and the admin token without starting `serve`;
    /// [`Receiver::try_spawn`] starts it (possibly under a wrapper) and
    /// [`Receiver::cli`] works on the data dir meanwhile.
    pub fn prepare(data_dir: &Path, env: &[(&str, &str)]) -> Receiver {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let admin_token = "admin-secret-for-tests-0123456789".to_string();
        let token_file = data_dir.join("admin.token");
        std::fs::write(&token_file, format!("{admin_token}\n")).expect("admin token");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Objects no row references (lost races, refused rows) are
        // collected at once and often, unless a test says otherwise: the
        // tests see what an operator sees after the grace period, and the
        // collector runs beside every upload of the suite.
        let defaults = [
            (
                "FERRY_RECEIVER_ADMIN_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("FERRY_RECEIVER_COLLECT_GRACE", "0s".to_string()),
            ("FERRY_RECEIVER_COLLECT_INTERVAL", "100ms".to_string()),
        ];
        for (key, value) in defaults {
            if !env.iter().any(|(k, _)| k == key) {
                env.push((key.into(), value));
            }
        }
        Receiver {
            addr: "127.0.0.1:0".parse().unwrap(),
            url: String::new(),
            data_dir: data_dir.to_path_buf(),
            admin_token,
            env,
            child: None,
            _dir: None,
        }
    }

    /// Start `serve` on `listen` and wait for its `listening on` line.
    fn spawn(&mut self, listen: &str) {
        if let Err(e) = self.try_spawn(listen, &[]) {
            panic!("{e}");
        }
    }

    /// Start `serve` on `listen`, prefixed by `wrapper` (for example
    /// `strace -f -e inject=...`), and wait for its `listening on` line.
    /// Fails (rather than panics) if it exits first: a fault test may have
    /// killed it during start-up on purpose.
    pub fn try_spawn(&mut self, listen: &str, wrapper: &[String]) -> Result<(), String> {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("ferry-receiver"));
                c
            }
            None => Command::new(bin("ferry-receiver")),
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group, so that kill -9 reaches a wrapped
            // receiver too (a killed strace leaves its tracee running).
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn ferry-receiver: {e}"))?;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        let _ = tx.send(url.trim().to_string());
                        sent = true;
                    }
                }
                // Keep draining so the receiver never blocks on stdout.
            }
        });
        let url = match rx.recv_timeout(DEADLINE) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let st = child.wait();
                return Err(format!(
                    "ferry-receiver did not print `listening on` (exit: {st:?})"
                ));
            }
        };
        let hostport = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        self.addr = hostport.parse().expect("listening address");
        self.url = url.trim_end_matches('/').to_string();
        self.child = Some(child);
        Ok(())
    }

    /// Whether the serve process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9` of the whole process group, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), libc::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the exit (at most `within`).
    pub fn sigterm(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id(), libc::SIGTERM);
        wait_exit(&mut c, within)
    }

    /// Start again on the same data dir and the same port.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.to_string();
        // The old socket may linger briefly; retry the bind for a while.
        let start = Instant::now();
        loop {
            if self.try_spawn(&listen, &[]).is_ok() {
                return;
            }
            if start.elapsed() > DEADLINE {
                panic!("could not restart the receiver on {listen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Run a `ferry-receiver` admin command against this data dir.
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(bin("ferry-receiver"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run ferry-receiver")
    }

    /// Like [`Receiver::cli`], asserting success; returns stdout.
    pub fn cli_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ferry-receiver failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// `devices add NAME`; returns the token.
    pub fn add_device(&self, name: &str) -> String {
        let token = self.cli_ok(["devices", "add", name]).trim().to_string();
        assert!(!token.is_empty() && !token.contains(char::is_whitespace));
        token
    }

    /// `commits allow COMMIT [--head]`.
    pub fn allow(&self, commit: &str, head: bool) {
        let mut args = vec!["commits", "allow", commit];
        if head {
            args.push("--head");
        }
        self.cli_ok(args);
    }

    /// A device token plus `COMMIT_A` allowed as head: the usual setup.
    pub fn ready_device(&self, name: &str) -> String {
        self.allow(COMMIT_A, true);
        self.add_device(name)
    }

    /// Raw HTTP request to this receiver.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    /// `ferry_uploads_in_flight` from `/metrics`: uploads whose handler is
    /// running (0 when the receiver does not answer).
    pub fn uploads_in_flight(&self) -> u64 {
        metric(self, "ferry_uploads_in_flight ").map_or(0, |v| v as u64)
    }

    /// Bytes in `<data_dir>/tmp`: bodies of uploads not yet stored.
    pub fn temp_bytes(&self) -> u64 {
        let tmp = self.data_dir.join("tmp");
        temp_files(self)
            .iter()
            .filter_map(|name| std::fs::metadata(tmp.join(name)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Wait until an upload is provably in flight: its handler runs (the
    /// in-flight metric) and its temp file exists; so a kill after this
    /// lands mid-upload, not before or after one.
    pub fn wait_upload_in_flight(&self) {
        wait_for("an upload in flight at the receiver", || {
            (self.uploads_in_flight() > 0 && !temp_files(self).is_empty()).then_some(())
        });
    }

    /// PUT an episode with the usual headers.
    pub fn put(&self, token: &str, id: &str, commit: &str, body: &[u8]) -> Response {
        put_episode(self.addr, token, id, commit, &sha256_hex(body), body)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// Episodes and archives

/// Write an episode directory `<spool>/episodes/<id>/` with `meta.json`
/// naming `commit` (none if `None`), the given files, and `done.marker`
/// last (as a producer would). Returns the episode directory.
pub fn make_episode(
    spool: &Path,
    id: &str,
    commit: Option<&str>,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let dir = spool.join("episodes").join(id);
    std::fs::create_dir_all(&dir).expect("episode dir");
    let meta = match commit {
        Some(c) => serde_json::json!({"code_version": {"commit": c}, "producer": "ferry-tests"}),
        None => serde_json::json!({"producer": "ferry-tests"}),
    };
    std::fs::write(
        dir.join("meta.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
    for (name, data) in files {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }
    std::fs::write(dir.join("done.marker"), b"").unwrap();
    dir
}

/// Deterministic pseudo-random bytes (xorshift), for incompressible content.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `tar -C parent -cf - name | zstd -q -c`, made by the system tools, as an
/// outside client would make it.
pub fn tar_zst_with_tools(dir: &Path) -> Vec<u8> {
    let parent = dir.parent().expect("parent");
    let name = dir.file_name().expect("name");
    let out = Command::new("sh")
        .arg("-c")
        .arg("tar -C \"$1\" -cf - \"$2\" | zstd -q -c")
        .arg("sh")
        .arg(parent)
        .arg(name)
        .output()
        .expect("tar | zstd");
    assert!(
        out.status.success(),
        "tar | zstd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A small valid episode archive for `id` made by the system tools.
pub fn sample_archive(id: &str, seed: u64) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_episode(
        tmp.path(),
        id,
        Some(COMMIT_A),
        &[
            ("data.bin", &noise(seed, 4096)),
            (
                "notes.txt",
                format!("episode {id} seed {seed}\n").as_bytes(),
            ),
        ],
    );
    tar_zst_with_tools(&dir)
}

// ---------------------------------------------------------------------------
// The agent

/// A spool directory and the files the agent needs to talk to `receiver`:
/// a token file for a new device. Kept alive by the returned value.
pub struct Spool {
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    pub receiver_url: String,
}

impl Spool {
    /// A fresh spool registered as device `name` on `receiver`.
    pub fn new(receiver: &Receiver, name: &str) -> Spool {
        let token = receiver.add_device(name);
        Spool::with_token(&receiver.url, &token)
    }

    /// A fresh spool with an explicit receiver URL and token.
    pub fn with_token(receiver_url: &str, token: &str) -> Spool {
        let dir = tempfile::tempdir().expect("spool");
        let token_file = dir.path().join("device.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        for sub in ["episodes", "outbox", "shipped", "quarantine", "conflict"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Spool {
            dir,
            token_file,
            receiver_url: receiver_url.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ferry-agent run` shipping with tus from 1 MiB up, at most 8 MiB/s
    /// (so that a test can act in the middle of an upload), rescanning and
    /// retrying quickly, its log in `log`.
    pub fn resumable_agent(&self, log: &Path) -> std::process::Child {
        self.agent("run")
            .env("FERRY_AGENT_SCAN_INTERVAL", "200ms")
            .env("FERRY_AGENT_BACKOFF_MAX", "1s")
            .env("FERRY_AGENT_BANDWIDTH_LIMIT", "8MiB")
            .env("FERRY_AGENT_RESUMABLE_THRESHOLD", "1MiB")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("agent log"))
            .spawn()
            .expect("spawn ferry-agent run")
    }

    /// `ferry-agent <sub> --spool S --receiver URL --token-file F`, ready
    /// for more args; the environment is cleared of `FERRY_AGENT_*` and
    /// `NOTIFY_SOCKET` so the host cannot leak into a test.
    pub fn agent(&self, sub: &str) -> Command {
        let mut cmd = Command::new(bin("ferry-agent"));
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_AGENT_") || k == "NOTIFY_SOCKET" || k == "WATCHDOG_USEC" {
                cmd.env_remove(k);
            }
        }
        cmd.arg(sub)
            .arg("--spool")
            .arg(self.path())
            .arg("--receiver")
            .arg(&self.receiver_url)
            .arg("--token-file")
            .arg(&self.token_file)
            .stdin(Stdio::null());
        cmd
    }

    /// `ferry-agent drain --timeout T`, returning its output.
    pub fn drain(&self, timeout: &str) -> Output {
        self.agent("drain")
            .arg("--timeout")
            .arg(timeout)
            .output()
            .expect("run ferry-agent drain")
    }

    /// The program and arguments of `ferry-agent drain --timeout TIMEOUT`
    /// on this spool, to run under a wrapper such as strace.
    pub fn drain_cmd_args(&self, timeout: &str) -> Vec<std::ffi::OsString> {
        vec![
            bin("ferry-agent").into(),
            "drain".into(),
            "--spool".into(),
            self.path().into(),
            "--receiver".into(),
            self.receiver_url.clone().into(),
            "--token-file".into(),
            self.token_file.clone().into(),
            "--timeout".into(),
            timeout.into(),
        ]
    }

    /// Episode ids in one spool sub-directory (`episodes`, `shipped`, …).
    pub fn ids_in(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = match std::fs::read_dir(self.path().join(sub)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

/// Assert a process output succeeded, with its stdout and stderr on failure.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
