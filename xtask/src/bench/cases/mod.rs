//! The bench cases of issue 5, each ferry against its baseline, alternately:
//! one file per case, and here what they share (the bench's receiver, the
//! agent's command line, the many-PUT client).

mod flaky;
mod ingest;
mod pack;
mod scale;
mod ship;
mod small;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::corpus::{Corpus, Rng};
use super::nginx;
use super::{stop_child, warm, Env, Opts, Report};

/// The commit every bench episode carries (allowed as head on every
/// receiver the bench starts).
pub const COMMIT: &str = "be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4";

pub fn all(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    warm(&corpus.large)?;
    if opts.wants("pack") {
        pack::pack(env, opts, corpus, report)?;
    }
    let have_nginx = nginx::available();
    if !have_nginx {
        report.note("**nginx is not installed** (apt-get install nginx-light): the cases against nginx are SKIPPED.");
    }
    if opts.wants("ship") && have_nginx {
        ship::ship(env, opts, corpus, report)?;
    }
    if opts.wants("ingest") && have_nginx {
        ingest::ingest(env, opts, corpus, report)?;
    }
    if opts.wants("small") && have_nginx {
        small::small(env, opts, corpus, report)?;
    }
    if opts.wants("scale") {
        scale::scale(env, opts, report)?;
    }
    if opts.wants("console") {
        super::console::status_page(env, opts, report)?;
    }
    if opts.wants("scaleout") {
        super::scaleout::ingest(env, opts, corpus, report)?;
    }
    if opts.wants("flaky") {
        flaky::flaky(env, opts, report)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A receiver for the bench

/// A release `ferry-receiver serve` on a fresh data dir, with one device
/// per token asked for and `COMMIT` allowed.
pub struct Bench {
    child: Child,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Given to `serve` and to every admin command (a shared database).
    env: Vec<(String, String)>,
    /// Where `serve` runs: its command is put after this one (`ip netns
    /// exec NS`), and the address it listens on.
    wrap: Vec<String>,
    listen: String,
}

impl Bench {
    pub(super) fn start(env: &Env, name: &str, extra_env: &[(&str, &str)]) -> Result<Bench> {
        Bench::start_in(env, name, extra_env, &[], "127.0.0.1:0")
    }

    /// `start`, with `serve` run under `wrap` and listening on `listen`.
    pub(super) fn start_in(
        env: &Env,
        name: &str,
        extra_env: &[(&str, &str)],
        wrap: &[&str],
        listen: &str,
    ) -> Result<Bench> {
        let data_dir = env.work.join(format!("receiver-{name}"));
        super::clear_dir(&data_dir);
        std::fs::create_dir_all(&data_dir)?;
        let mut b = Bench {
            child: Command::new("true").spawn()?,
            url: String::new(),
            port: 0,
            data_dir,
            env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrap: wrap.iter().map(|w| w.to_string()).collect(),
            listen: listen.into(),
        };
        b.cli(env, &["commits", "allow", COMMIT, "--head"])?;
        b.spawn(env, extra_env)?;
        Ok(b)
    }

    /// Start `serve` and return the time until it printed `listening on`.
    pub(super) fn spawn(&mut self, env: &Env, extra_env: &[(&str, &str)]) -> Result<Duration> {
        let started = Instant::now();
        let mut child = wrapped(&self.wrap, &env.receiver)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.listen)
            .env("FERRY_RECEIVER_LOG_FORMAT", "json")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start ferry-receiver")?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("listening on ") {
                        break u.trim().to_string();
                    }
                }
                _ => bail!("ferry-receiver exited before listening"),
            }
        };
        let ready = started.elapsed();
        std::thread::spawn(move || for _ in lines {});
        self.port = url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()?;
        self.url = url;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = child;
        Ok(ready)
    }

    pub(super) fn stop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(20));
    }

    pub(super) fn cli(&self, env: &Env, args: &[&str]) -> Result<String> {
        let out = Command::new(&env.receiver)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            bail!(
                "ferry-receiver {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    pub(super) fn device(&self, env: &Env, name: &str) -> Result<String> {
        self.cli(env, &["devices", "add", name])
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh agent spool whose `episodes/<id>` is a hard-linked copy of `src`.
fn spool_with(env: &Env, name: &str, src: &Path, id: &str, token: &str) -> Result<PathBuf> {
    let spool = env.work.join(format!("spool-{name}"));
    let _ = std::fs::remove_dir_all(&spool);
    std::fs::create_dir_all(spool.join("episodes"))?;
    let st = Command::new("cp")
        .arg("-al")
        .arg(src)
        .arg(spool.join("episodes").join(id))
        .status()?;
    if !st.success() {
        bail!("cp -al failed");
    }
    std::fs::write(spool.join("device.token"), format!("{token}\n"))?;
    Ok(spool)
}

/// `program`, or `wrap` with `program` as its last argument (a command
/// such as `ip netns exec NS` execs it: the child's pid stays the
/// program's).
fn wrapped(wrap: &[String], program: &Path) -> Command {
    match wrap.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

fn agent_cmd(env: &Env, sub: &str, spool: &Path, url: &str) -> Command {
    agent_cmd_in(env, &[], sub, spool, url)
}

/// `agent_cmd` under `wrap` (see [`wrapped`]).
fn agent_cmd_in(env: &Env, wrap: &[String], sub: &str, spool: &Path, url: &str) -> Command {
    let mut c = wrapped(wrap, &env.agent);
    c.arg(sub)
        .arg("--spool")
        .arg(spool)
        .arg("--receiver")
        .arg(url)
        .arg("--token-file")
        .arg(spool.join("device.token"))
        .env("FERRY_AGENT_LOG_FORMAT", "json")
        .stderr(Stdio::null());
    c
}

// ---------------------------------------------------------------------------
// Many PUTs at once (the small, scale and scale-out cases)

/// A tiny, valid episode archive (`<id>/data.bin`, 10 KiB of noise) made
/// in-process: the client must not be the bottleneck.
pub(super) fn tiny_archive(id: &str, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; 10 * 1024];
    Rng::new(seed).fill(&mut data);
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    tar.append_data(&mut h, format!("{id}/data.bin"), &data[..])
        .unwrap();
    let raw = tar.into_inner().unwrap();
    zstd::encode_all(&raw[..], 3).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One keep-alive HTTP/1.1 connection doing PUTs (a new one after a
/// server that answered `Connection: close`, as moto does).
struct Conn {
    stream: BufReader<TcpStream>,
    port: u16,
    closed: bool,
}

impl Conn {
    fn open(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            stream: BufReader::new(s),
            port,
            closed: false,
        })
    }

    fn put(&mut self, path: &str, headers: &str, body: &[u8]) -> Result<u16> {
        if self.closed {
            *self = Conn::open(self.port)?;
        }
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n{headers}\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
                if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    self.closed = true;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Path and extra headers of the PUT for (client, request index, id, body).
type Target = dyn Fn(usize, usize, &str, &[u8]) -> (String, String) + Send + Sync;

/// `clients` threads, each with its own connection, PUT `per_client`
/// bodies. `target(client, i)` gives the path and headers. Returns the
/// wall time and every latency.
pub(super) fn hammer(
    port: u16,
    clients: usize,
    per_client: usize,
    bodies: Arc<Vec<(String, Vec<u8>)>>,
    target: Arc<Target>,
    ok: &'static [u16],
) -> Result<(Duration, Vec<Duration>)> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let barrier = barrier.clone();
        let bodies = bodies.clone();
        let target = target.clone();
        handles.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let mut conn = Conn::open(port)?;
            let mut lat = Vec::with_capacity(per_client);
            barrier.wait();
            for i in 0..per_client {
                let (id, body) = &bodies[c * per_client + i];
                let (path, headers) = target(c, i, id, body);
                let t = Instant::now();
                let status = conn.put(&path, &headers, body)?;
                lat.push(t.elapsed());
                if !ok.contains(&status) {
                    bail!("PUT {path} answered {status}");
                }
            }
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    Ok((start.elapsed(), all))
}

/// A ferry PUT of each body, client `c` with `tokens[c]`.
pub(super) fn ferry_put(tokens: Arc<Vec<String>>) -> Arc<Target> {
    Arc::new(move |c, _i, id, body| {
        let mut h = Sha256::new();
        h.update(body);
        (
            format!("/v1/episodes/{id}"),
            format!(
                "Authorization: Bearer {}\r\nX-Ferry-Commit: {COMMIT}\r\nX-Ferry-Sha256: {}\r\n",
                tokens[c],
                hex(&h.finalize())
            ),
        )
    })
}

/// Runs `sql` on the index `db` with the sqlite3 tool.
pub(super) fn sqlite3(db: &Path, sql: &str) -> Result<()> {
    let st = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .status()
        .context("sqlite3")?;
    if !st.success() {
        bail!("filling the index failed");
    }
    Ok(())
}

/// `sync`, so that a measurement does not start with another's dirty pages.
fn sync_all() {
    let _ = Command::new("sync").status();
}
