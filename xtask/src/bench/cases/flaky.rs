//! Case "flaky" (issue 15, SPEC §8): one 200 MB episode of incompressible
//! bytes over a rate-limited link that is cut every `CUT_EVERY` bytes,
//! shipped by the agent with tus (resumes from the receiver's offset) and by
//! the same agent with plain PUT (restarts from byte 0): time to ship and
//! the bytes the receiver had to take.
//!
//! The agent and the receiver run in network namespaces of their own,
//! joined by a veth pair with a `tc tbf` rate limit; a controller thread
//! reads the bytes crossing the link and drops every packet of the upload
//! (iptables, both ways) for `CUT_FOR` each time `CUT_EVERY` more have
//! crossed. Only the first `CUTS` cuts of a run happen, or the PUT, which
//! must get a whole episode through between two cuts, would never finish.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{agent_cmd_in, spool_with, sync_all, Bench, COMMIT};
use crate::bench::corpus::Rng;
use crate::bench::{have, measure, Env, Opts, Report, Sample, Stats};

const RX_IP: &str = "10.213.78.1";
const AG_IP: &str = "10.213.78.2";
/// The episode: `FILES` files of noise, so that its tar.zst is as large.
const FILES: u64 = 8;
const FILE_BYTES: u64 = 25_000_000;
/// 250 Mbit/s: one clean pass of the episode takes about 6.5 s.
const RATE: &str = "250mbit";
const CUT_EVERY: u64 = 40_000_000;
const CUTS: usize = 3;
const CUT_FOR: Duration = Duration::from_secs(4);
/// Both sides notice a cut within seconds: the agent's stall timeout and
/// backoff cap, the receiver's body read timeout.
const AGENT_ENV: [(&str, &str); 3] = [
    ("FERRY_AGENT_REQUEST_TIMEOUT", "3s"),
    ("FERRY_AGENT_BACKOFF_MAX", "2s"),
    ("FERRY_AGENT_SCAN_INTERVAL", "200ms"),
];
const RECEIVER_ENV: [(&str, &str); 1] = [("FERRY_RECEIVER_BODY_READ_TIMEOUT", "3s")];

/// Run a command to success, or fail with its stderr.
fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces joined by a veth pair, removed (with the pair) when
/// dropped.
struct Link {
    rx_ns: String,
    ag_ns: String,
    rx_dev: String,
}

impl Link {
    fn new() -> Result<Link> {
        let tag = std::process::id() % 1_000_000;
        let link = Link {
            rx_ns: format!("ferry-bench-rx-{tag}"),
            ag_ns: format!("ferry-bench-ag-{tag}"),
            rx_dev: format!("fbr{tag}"),
        };
        let ag_dev = format!("fba{tag}");
        run(&["ip", "netns", "add", &link.rx_ns])?;
        run(&["ip", "netns", "add", &link.ag_ns])?;
        // Each end is made in its namespace, and each namespace is set up
        // by one `ip -batch`.
        run(&[
            "ip",
            "link",
            "add",
            &link.rx_dev,
            "netns",
            &link.rx_ns,
            "type",
            "veth",
            "peer",
            "name",
            &ag_dev,
            "netns",
            &link.ag_ns,
        ])?;
        for (ns, dev, ip) in [
            (&link.rx_ns, &link.rx_dev, RX_IP),
            (&link.ag_ns, &ag_dev, AG_IP),
        ] {
            let script = format!("addr add {ip}/30 dev {dev}\nlink set {dev} up\nlink set lo up\n");
            let path = std::env::temp_dir().join(format!("{ns}.ip"));
            std::fs::write(&path, script)?;
            let ran = run(&["ip", "-n", ns, "-batch", &path.to_string_lossy()]);
            let _ = std::fs::remove_file(&path);
            ran?;
        }
        // The upload's direction is the one limited: the device's uplink.
        run(&[
            "ip",
            "netns",
            "exec",
            &link.ag_ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            &ag_dev,
            "root",
            "tbf",
            "rate",
            RATE,
            "burst",
            "256kb",
            "latency",
            "50ms",
        ])?;
        Ok(link)
    }

    fn wrap(ns: &str) -> Vec<String> {
        ["ip", "netns", "exec", ns].map(String::from).to_vec()
    }

    /// Bytes the receiver's end of the link has taken in so far.
    fn rx_bytes(&self) -> Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/rx_bytes", self.rx_dev);
        let out = run(&["ip", "netns", "exec", &self.rx_ns, "cat", &path])?;
        Ok(out.trim().parse()?)
    }

    /// Drop (`-I`) or let through again (`-D`) every TCP packet of the
    /// receiver's `port`, both ways, as a link that went dark would.
    fn cut(&self, action: &str, port: u16) -> Result<()> {
        let port = port.to_string();
        for (chain, dir) in [("INPUT", "--dport"), ("OUTPUT", "--sport")] {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.rx_ns,
                "iptables",
                action,
                chain,
                "-p",
                "tcp",
                dir,
                &port,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Cut the link every `CUT_EVERY` bytes, `CUTS` times at most, until
    /// `done`; the number of cuts made.
    fn cutter(&self, port: u16, done: &AtomicBool) -> Result<usize> {
        let mut mark = self.rx_bytes()?;
        let mut cuts = 0;
        while !done.load(Ordering::Relaxed) {
            if cuts < CUTS && self.rx_bytes()? >= mark + CUT_EVERY {
                self.cut("-I", port)?;
                std::thread::sleep(CUT_FOR);
                self.cut("-D", port)?;
                cuts += 1;
                mark = self.rx_bytes()?;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cuts)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.rx_ns]);
        let _ = run(&["ip", "netns", "del", &self.ag_ns]);
    }
}

/// What keeps this case from running here, if anything.
fn missing() -> Option<String> {
    // The effective uid of this process owns its /proc entry.
    match std::fs::metadata("/proc/self") {
        Ok(m) if m.uid() == 0 => {}
        _ => return Some("not running as root (network namespaces need it)".into()),
    }
    ["ip", "tc", "iptables"]
        .into_iter()
        .find(|t| !have(t))
        .map(|t| format!("`{t}` is not installed (apt-get install iproute2 iptables)"))
}

/// The episode, made once: noise, with the bench's commit.
fn episode(work: &Path) -> Result<PathBuf> {
    let root = work.join("flaky-episode");
    let dir = root.join("ep-flaky");
    let marker = root.join(".complete");
    let params = format!("v1 {FILES} {FILE_BYTES}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(params.as_str()) {
        return Ok(dir);
    }
    println!("making the flaky case's episode in {} ...", dir.display());
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng::new(15);
    let mut buf = vec![0u8; FILE_BYTES as usize];
    for i in 0..FILES {
        rng.fill(&mut buf);
        std::fs::write(dir.join(format!("camera-{i:02}.raw")), &buf)?;
    }
    std::fs::write(
        dir.join("meta.json"),
        format!("{{\"code_version\": {{\"commit\": \"{COMMIT}\"}}}}\n"),
    )?;
    std::fs::write(dir.join("done.marker"), b"")?;
    std::fs::write(&marker, &params)?;
    Ok(dir)
}

/// The receiver's body-byte counters (both routes) and resumed PATCHes.
fn counters(link: &Link, url: &str) -> Result<(u64, u64)> {
    let mut ns = Link::wrap(&link.ag_ns);
    ns.extend(["curl", "-sS", "-f", &format!("{url}/metrics")].map(String::from));
    let text = run(&ns.iter().map(String::as_str).collect::<Vec<_>>())?;
    let value = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Ok((
        value("ferry_bytes_received_total{route=\"put\"}")
            + value("ferry_bytes_received_total{route=\"tus\"}"),
        value("ferry_uploads_resumed_total"),
    ))
}

/// One shipment of one side, measured.
struct Run {
    sample: Sample,
    received: u64,
    on_link: u64,
    cuts: usize,
    resumed: u64,
}

/// Ship `src` as `id` with `threshold` (None: the agent's default) while
/// the controller cuts the link.
fn ship_once(
    env: &Env,
    link: &Link,
    rx: &Bench,
    token: &str,
    (src, id): (&Path, &str),
    threshold: Option<&str>,
) -> Result<Run> {
    let spool = spool_with(env, "flaky", src, id, token)?;
    sync_all();
    let (received0, resumed0) = counters(link, &rx.url)?;
    let link0 = link.rx_bytes()?;
    let mut cmd = agent_cmd_in(env, &Link::wrap(&link.ag_ns), "drain", &spool, &rx.url);
    cmd.args(["--timeout", "10m"]).envs(AGENT_ENV);
    if let Some(t) = threshold {
        cmd.env("FERRY_AGENT_RESUMABLE_THRESHOLD", t);
    }
    let done = AtomicBool::new(false);
    let (sample, cuts) = std::thread::scope(|s| {
        let cutter = s.spawn(|| link.cutter(rx.port, &done));
        let sample = measure(&mut cmd);
        done.store(true, Ordering::Relaxed);
        let cuts = cutter.join().expect("the link's controller panicked");
        (sample, cuts)
    });
    let (sample, cuts) = (sample?, cuts?);
    if !spool.join("shipped").join(id).exists() {
        bail!("drain exited 0 but {id} is not in shipped/");
    }
    let on_link = link.rx_bytes()? - link0;
    let (received, resumed) = counters(link, &rx.url)?;
    Ok(Run {
        sample,
        received: received - received0,
        on_link,
        cuts,
        resumed: resumed - resumed0,
    })
}

/// The rows of one side; the medians of (time, bytes received, link bytes).
fn rows(report: &mut Report, side: &str, runs: &[Run]) -> (f64, f64, f64) {
    let stats = |f: &dyn Fn(&Run) -> f64| Stats::of(&runs.iter().map(f).collect::<Vec<_>>());
    let time = stats(&|r| r.sample.wall.as_secs_f64());
    let rss = runs.iter().map(|r| r.sample.max_rss_kib).max().unwrap_or(0);
    report.row(
        &format!("{side}: time to ship"),
        &format!("{:.1} s", time.median),
        &format!("{:.1}–{:.1}", time.min, time.max),
        &format!("{:.1} MiB (agent)", rss as f64 / 1024.0),
    );
    let mut mb = |what: &str, st: Stats| {
        report.row(
            &format!("{side}: {what}"),
            &format!("{:.0} MB", st.median / 1e6),
            &format!("{:.0}–{:.0}", st.min / 1e6, st.max / 1e6),
            "",
        );
        st.median
    };
    let received = mb("body bytes received", stats(&|r| r.received as f64));
    let on_link = mb("bytes over the link", stats(&|r| r.on_link as f64));
    (time.median, received, on_link)
}

pub(super) fn flaky(env: &Env, opts: &Opts, report: &mut Report) -> Result<()> {
    if let Some(why) = missing() {
        report.note(&format!("**flaky-link case SKIPPED**: {why}."));
        return Ok(());
    }
    let link = match Link::new() {
        Ok(l) => l,
        Err(e) => {
            report.note(&format!(
                "**flaky-link case SKIPPED**: cannot build network namespaces here: {e:#}"
            ));
            return Ok(());
        }
    };
    let src = episode(&env.work)?;
    let reps = if opts.quick { 1 } else { opts.reps.clamp(1, 3) };
    report.section(
        &format!(
            "flaky link: a {:.0} MB episode of noise over {RATE}, cut for {}s every {} MB",
            (FILES * FILE_BYTES) as f64 / 1e6,
            CUT_FOR.as_secs(),
            CUT_EVERY / 1_000_000
        ),
        &format!(
            "agent and receiver in network namespaces joined by a veth pair (`tc tbf` {RATE} \
             on the device's side); every {} MB crossing the link, every packet of the upload \
             is dropped both ways (iptables) for {} s — **the first {CUTS} times of a run only**, \
             so that the plain PUT can finish. ferry (tus): `ferry-agent drain` with the default \
             `resumable_threshold` · plain PUT: the same agent with `resumable_threshold = 1GiB`. \
             Both: `request_timeout = 3s`, `backoff_max = 2s`; receiver `body_read_timeout = 3s`. \
             Time: start of `drain` to the episode in `shipped/` (pack included); bytes: the \
             receiver's `ferry_bytes_received_total` (put + tus) and the veth's rx bytes. \
             {reps} run(s) per side.",
            CUT_EVERY / 1_000_000,
            CUT_FOR.as_secs()
        ),
    );
    let mut rx = Bench::start_in(
        env,
        "flaky",
        &RECEIVER_ENV,
        &["ip", "netns", "exec", &link.rx_ns],
        &format!("{RX_IP}:0"),
    )?;
    let token = rx.device(env, "bench-flaky")?;
    let (mut tus, mut put) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Alternately first: neither side always runs on a fresher machine.
        for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
            let run = if side == 0 {
                ship_once(
                    env,
                    &link,
                    &rx,
                    &token,
                    (&src, &format!("flaky-tus-{rep}")),
                    None,
                )?
            } else {
                let id = format!("flaky-put-{rep}");
                ship_once(env, &link, &rx, &token, (&src, &id), Some("1GiB"))?
            };
            println!(
                "  {} run {rep}: {:.1} s, {} cuts, {} bytes received, {} resumed PATCHes",
                ["tus", "put"][side],
                run.sample.wall.as_secs_f64(),
                run.cuts,
                run.received,
                run.resumed
            );
            [&mut tus, &mut put][side].push(run);
        }
    }
    let (t_time, t_rx, t_link) = rows(report, "ferry (tus)", &tus);
    let (p_time, p_rx, p_link) = rows(report, "plain PUT", &put);
    let cuts = |runs: &[Run]| runs.iter().map(|r| r.cuts).min().unwrap_or(0);
    report.note(&format!(
        "**ferry (tus) / plain PUT: time {:.2}×, body bytes received {:.2}×, bytes over the \
         link {:.2}×** (below 1: ferry better). Cuts per run (fewest): tus {}, PUT {}; resumed \
         PATCHes per tus run: {:?}.",
        t_time / p_time,
        t_rx / p_rx,
        t_link / p_link,
        cuts(&tus),
        cuts(&put),
        tus.iter().map(|r| r.resumed).collect::<Vec<_>>()
    ));
    rx.stop();
    Ok(())
}
