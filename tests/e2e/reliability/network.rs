//! A bad network, for real: the agent and the receiver in their own network
//! namespaces joined by a veth pair, with a `tc` rate limit, random drops
//! and TCP resets from iptables, and a receiver that vanishes mid-upload.
//! Traffic stays between the two namespaces this test creates.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{have, signal, skip, wait_exit, Receiver, Spool, COMMIT_A};

use super::{assert_delivered, small_episode};

/// Two namespaces and a veth pair, removed when dropped.
struct Net {
    rx_ns: String,
    ag_ns: String,
}

const RX_IP: &str = "10.213.77.1";
const AG_IP: &str = "10.213.77.2";

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Net {
    fn new() -> Result<Net, String> {
        // Unique per test too: two tests of one process run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() % 100_000) * 10 + n % 10;
        let net = Net {
            rx_ns: format!("ferry-rx-{tag}"),
            ag_ns: format!("ferry-ag-{tag}"),
        };
        let (vr, va) = (format!("fr{tag}"), format!("fa{tag}"));
        run(&["ip", "netns", "add", &net.rx_ns])?;
        run(&["ip", "netns", "add", &net.ag_ns])?;
        run(&[
            "ip", "link", "add", &vr, "type", "veth", "peer", "name", &va,
        ])?;
        run(&["ip", "link", "set", &vr, "netns", &net.rx_ns])?;
        run(&["ip", "link", "set", &va, "netns", &net.ag_ns])?;
        for (ns, dev, ip) in [(&net.rx_ns, &vr, RX_IP), (&net.ag_ns, &va, AG_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // A metered link: 20 Mbit/s from the device.
        run(&[
            "ip", "netns", "exec", &net.ag_ns, "tc", "qdisc", "add", "dev", &va, "root", "tbf",
            "rate", "20mbit", "burst", "64kb", "latency", "200ms",
        ])?;
        Ok(net)
    }

    fn exec(&self, ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }

    fn iptables(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["ip", "netns", "exec", &self.rx_ns, "iptables"];
        a.extend_from_slice(args);
        run(&a)
    }
}

impl Net {
    /// Insert, first in INPUT, a rule that sends this fraction of the
    /// receiver's TCP packets to `target`.
    fn random_rule(&self, probability: &str, target: &[&str]) -> Result<(), String> {
        let mut args = vec![
            "-I",
            "INPUT",
            "1",
            "-p",
            "tcp",
            "--dport",
            "8420",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
        ];
        args.extend_from_slice(target);
        self.iptables(&args)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.rx_ns]);
        let _ = run(&["ip", "netns", "del", &self.ag_ns]);
    }
}

fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("socket:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The agent's process inside `ip netns exec`: its pid is the child's once
/// `ip` has exec'd it.
fn start_agent(net: &Net, spool: &Spool, url: &str) -> Child {
    agent_cmd(net, spool, url)
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry-agent in its namespace")
}

/// `ferry-agent run` in the device's namespace, not yet started.
fn agent_cmd(net: &Net, spool: &Spool, url: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ag_ns])
        .arg(ferry_tests::bin("ferry-agent"))
        .arg("run")
        .arg("--spool")
        .arg(spool.path())
        .args(["--receiver", url, "--token-file"])
        .arg(&spool.token_file)
        .env("FERRY_AGENT_SCAN_INTERVAL", "200ms")
        .env("FERRY_AGENT_BACKOFF_MAX", "2s")
        .env("FERRY_AGENT_REQUEST_TIMEOUT", "5s")
        .env("FERRY_AGENT_SHIP_CONCURRENCY", "2")
        .stdout(Stdio::null());
    cmd
}

/// The two namespaces, or `None` (skipped, loudly) where they cannot be
/// made.
fn net_for(test: &str) -> Option<Net> {
    for tool in ["ip", "tc", "iptables"] {
        if !have(tool) {
            skip(
                test,
                &format!("{tool} is not installed (apt-get install iproute2 iptables)"),
            );
            return None;
        }
    }
    match Net::new() {
        Ok(n) => Some(n),
        Err(e) => {
            skip(test, &format!("cannot build network namespaces here: {e}"));
            None
        }
    }
}

#[test]
fn lossy_metered_link_and_a_vanishing_receiver_lose_nothing() {
    let Some(net) = net_for("lossy_metered_link_and_a_vanishing_receiver_lose_nothing") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::prepare(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("netns");
    let listen = format!("{RX_IP}:8420");
    rx.try_spawn(&listen, &net.exec(&net.rx_ns))
        .expect("receiver in its namespace");
    let url = format!("http://{RX_IP}:8420");
    let spool = Spool::with_token(&url, &token);

    // Random loss and resets on the receiver's side, and a SYN counter.
    net.iptables(&[
        "-A", "INPUT", "-p", "tcp", "--dport", "8420", "--syn", "-j", "ACCEPT",
    ])
    .and_then(|_| net.random_rule("0.02", &["DROP"]))
    .and_then(|_| net.random_rule("0.002", &["REJECT", "--reject-with", "tcp-reset"]))
    .expect("iptables rules");

    let mut ids = Vec::new();
    for i in 0..30 {
        let id = format!("net-{i:03}");
        // Some larger episodes so that uploads are in flight when the
        // receiver vanishes (20 Mbit/s: ~0.5 s per MB).
        let big = ferry_tests::noise(i, if i % 5 == 0 { 1_500_000 } else { 20_000 });
        ferry_tests::make_episode(spool.path(), &id, Some(COMMIT_A), &[("data.bin", &big)]);
        ids.push(id);
    }
    small_episode(&spool, "net-extra", 1);
    ids.push("net-extra".into());

    let mut agent = start_agent(&net, &spool, &url);
    // The receiver vanishes mid-upload, observed: a body is arriving in
    // its temp directory (read from the file system, so no route into its
    // namespace is needed), and stays away for a while.
    ferry_tests::wait_for("an upload in flight over the lossy link", || {
        (rx.temp_bytes() > 0).then_some(())
    });
    rx.kill9();
    let syn_before = syn_count(&net);
    std::thread::sleep(Duration::from_secs(6));
    let syn_down = syn_count(&net).saturating_sub(syn_before);
    let (sockets, hwm) = (open_sockets(agent.id()), vm_hwm_kib(agent.id()));
    rx.try_spawn(&listen, &net.exec(&net.rx_ns))
        .expect("receiver back");

    let start = Instant::now();
    while spool.ids_in("shipped").len() < ids.len() && start.elapsed() < Duration::from_secs(240) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak_sockets = sockets.max(open_sockets(agent.id()));
    signal(agent.id(), libc::SIGTERM);
    let st = wait_exit(&mut agent, Duration::from_secs(60));
    assert!(st.success(), "agent exit: {st}");
    // Whatever is left (a tarball in the outbox after SIGTERM) drains.
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ag_ns])
        .args(spool.drain_cmd_args("120s"))
        .output()
        .unwrap();
    ferry_tests::assert_ok(&out, "drain in the namespace");
    rx.kill9();
    // The CLI reads the data dir directly; no network needed.
    assert_delivered(&rx, &spool, &ids);
    eprintln!(
        "network test: {} episodes; while the receiver was away for 6 s the agent opened {syn_down} connections; \
         peak sockets {peak_sockets}; agent peak RSS {} KiB",
        ids.len(),
        hwm.max(vm_hwm_kib(agent.id()))
    );
    // SYNs are sent to a closed port (RST) — backoff keeps it to a few.
    assert!(
        syn_down <= 20,
        "the agent hammered a vanished receiver: {syn_down} connections in 6 s"
    );
    assert!(peak_sockets <= 16, "open sockets grew: {peak_sockets}");
    assert!(hwm < 200 * 1024, "agent RSS {hwm} KiB");
}

/// Packets that matched the `--syn ACCEPT` rule so far.
fn syn_count(net: &Net) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &net.rx_ns, "iptables", "-L", "INPUT", "-v", "-x", "-n",
        ])
        .output()
        .expect("iptables -L");
    let text = String::from_utf8_lossy(&out.stdout);
    // A count that cannot be read fails the test: reading 0 would pass the
    // "did not hammer" bound whatever the agent did.
    text.lines()
        .find(|l| l.contains("ACCEPT") && l.contains("flags:0x17/0x02"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no SYN counter in iptables -L ({}):\n{text}", out.status))
}

/// The highest offset among the receiver's resumable uploads, read from
/// their records in the data directory (no route into its namespace).
fn upload_offset(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join("uploads"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter_map(|v| v["offset"].as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// SPEC §8: a link that goes silent in the middle of a large episode (every
/// packet to the receiver dropped for a while) costs the bytes the receiver
/// had not made durable, not the episode: the agent resumes the upload
/// from the receiver's offset once the link is back.
#[test]
fn a_network_cut_mid_upload_resumes_rather_than_restarts() {
    const NAME: &str = "a_network_cut_mid_upload_resumes_rather_than_restarts";
    let Some(net) = net_for(NAME) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::prepare(data.path(), &[("FERRY_RECEIVER_BODY_READ_TIMEOUT", "2s")]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("netcut");
    let listen = format!("{RX_IP}:8420");
    rx.try_spawn(&listen, &net.exec(&net.rx_ns))
        .expect("receiver in its namespace");
    let url = format!("http://{RX_IP}:8420");
    let spool = Spool::with_token(&url, &token);
    let big = ferry_tests::noise(77, 24 << 20);
    ferry_tests::make_episode(spool.path(), "cut-1", Some(COMMIT_A), &[("data.bin", &big)]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("agent.log");
    let mut agent = agent_cmd(&net, &spool, &url)
        .env("FERRY_AGENT_RESUMABLE_THRESHOLD", "1MiB")
        .env("FERRY_AGENT_REQUEST_TIMEOUT", "3s")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("ferry-agent in its namespace");
    // Past the receiver's first 8 MiB checkpoint (20 Mbit/s: ~3.5 s).
    let before = ferry_tests::wait_for("8 MiB durable at the receiver", || {
        let o = upload_offset(data.path());
        (o >= 8 << 20).then_some(o)
    });
    let drop_rule = ["-p", "tcp", "--dport", "8420", "-j", "DROP"];
    net.iptables(&[&["-I", "INPUT", "1"][..], &drop_rule[..]].concat())
        .expect("iptables DROP");
    std::thread::sleep(Duration::from_secs(6));
    net.iptables(&[&["-D", "INPUT"][..], &drop_rule[..]].concat())
        .expect("iptables DROP removed");
    let start = Instant::now();
    while spool.ids_in("shipped").is_empty() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(agent.id(), libc::SIGTERM);
    let st = wait_exit(&mut agent, Duration::from_secs(60));
    assert!(st.success(), "agent exit: {st}");
    rx.kill9();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_delivered(&rx, &spool, &["cut-1".to_string()]);
    let resumed: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("resuming the upload"))
        .filter_map(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!(
        "network cut: {before} bytes durable before the cut; the agent resumed at {resumed:?}"
    );
    assert!(
        resumed.iter().any(|o| *o >= before),
        "the agent did not resume from the receiver's offset ({before}):\n{log}"
    );
}
