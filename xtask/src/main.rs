//! `cargo xtask`: the project's chores, in Rust rather than a folder of shell
//! scripts.
//!
//! - `cargo xtask demo` — the main job: `ferry-receiver serve` on its
//!   embedded defaults, and `ferry-agent drain` shipping a sample spool to it.
//! - `cargo xtask test` — every test: unit tests and the end-to-end suite
//!   against the real binaries, then a loud list of what was skipped.
//! - `cargo xtask bench` — ferry against its baselines in the same run
//!   (see docs/PERFORMANCE.md).
//! - `cargo xtask fuzz [SECONDS]` — the libFuzzer target over the parsers
//!   (installs cargo-fuzz if missing; runs on the stable toolchain).
//! - `cargo xtask mutants [proto|agent|receiver]...` — mutation testing of
//!   the pure code (installs cargo-mutants if missing).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod bench;
mod mutants;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("mutants") => mutants::run(&args[1..]),
        // Internal to the bench: touches memory in a process of its own,
        // so the bench's children do not inherit its peak RSS.
        Some(bench::TOUCH_MEMORY) => bench::touch_memory(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <demo|test [cargo test args]|bench [--quick] [--reps N] [--only CASE]|fuzz [SECONDS]|mutants [proto|agent|receiver]...>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set, else
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => root().join("target"),
    }
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Run a command, failing with its name if it fails.
pub fn run_ok(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// `cargo-<sub>` from crates.io (`cargo install --locked`), unless
/// `cargo <sub> --version` already answers.
pub fn install_cargo_tool(sub: &str) -> Result<()> {
    let have = Command::new("cargo")
        .args([sub, "--version"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        run_ok(cargo().args(["install", &format!("cargo-{sub}"), "--locked"]))?;
    }
    Ok(())
}

/// Every tool some test runs. `.ci/run` installs them all (apt); under
/// `FERRY_REQUIRE_ALL=1` `cargo xtask test` refuses to start without one,
/// rather than fail minutes later in the test that needs it.
const TOOLS: &[&str] = &[
    "strace",
    "zstd",
    "tar",
    "diff",
    "cp",
    "curl",
    "openssl",
    "psql",
    "sqlite3",
    "mkfs.ext4",
    "debugfs",
    "mount",
    "umount",
    "truncate",
    "ip",
    "tc",
    "iptables",
    "prlimit",
    "promtool",
    "lintian",
    "dpkg-deb",
    "systemd-analyze",
    "cargo-deb",
    "chromium",
    // The standard tus clients (SPEC §8): tuspy (pip) and tus-js-client
    // (npm, tests/js), run by python3 and node.
    "python3",
    "node",
    // The scale-out suite (issue 14): the load balancer and the S3 server.
    // initdb is not here: Debian keeps it off PATH, in
    // /usr/lib/postgresql/*/bin, where the harness finds it.
    "nginx",
    "moto_server",
];

/// Whether this run forbids skips (`FERRY_REQUIRE_ALL=1`, set by `.ci/run`).
fn require_all() -> bool {
    std::env::var("FERRY_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// The tools of [`TOOLS`] with no executable in any directory of `path`.
fn missing_tools(path: &std::ffi::OsStr) -> Vec<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    TOOLS
        .iter()
        .copied()
        .filter(|tool| {
            !std::env::split_paths(path).any(|dir| {
                std::fs::metadata(dir.join(tool))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .collect()
}

/// The run's verdict: cargo's, and under strict mode also no skip at all
/// (each skip already failed its test there; this catches one that did not).
fn verdict(cargo_ok: bool, skipped: &str, strict: bool) -> bool {
    cargo_ok && (!strict || skipped.trim().is_empty())
}

/// Under strict mode, refuse to start a run that would fail for a tool
/// missing from `path`.
fn preflight(strict: bool, path: &std::ffi::OsStr) -> Result<()> {
    let missing = missing_tools(path);
    if strict && !missing.is_empty() {
        bail!(
            "FERRY_REQUIRE_ALL=1 and not on PATH: {} (.ci/run installs them with apt)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<ExitCode> {
    let strict = require_all();
    preflight(strict, &std::env::var_os("PATH").unwrap_or_default())?;
    let skip_log = target_dir().join("ferry-skipped.txt");
    let _ = std::fs::create_dir_all(target_dir());
    let _ = std::fs::remove_file(&skip_log);

    // The end-to-end tests run the binaries as processes, so build them
    // first: `cargo test` alone does not build another package's binaries.
    run_ok(cargo().args(["build", "--locked", "--workspace", "--bins"]))?;
    let st = cargo()
        .args(["test", "--locked", "--workspace"])
        .args(extra)
        .env("FERRY_SKIP_LOG", &skip_log)
        .status()
        .context("spawn cargo test")?;

    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    if skipped.trim().is_empty() {
        println!("\nferry: nothing was skipped.");
    } else {
        let n = skipped.lines().count();
        println!("\n################ ferry: {n} test part(s) SKIPPED ################");
        for line in skipped.lines() {
            println!("# {line}");
        }
        if strict {
            println!("# FERRY_REQUIRE_ALL=1: every skip is a failure");
        }
        println!("################################################################");
    }
    Ok(if verdict(st.success(), &skipped, strict) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Run the fuzz target for a bounded time. cargo-fuzz passes `-Z` flags,
/// which the stable compiler accepts with `RUSTC_BOOTSTRAP=1`; no nightly
/// toolchain can be fetched here.
fn fuzz(args: &[String]) -> Result<ExitCode> {
    let secs: u64 = match args.first() {
        Some(s) => s.parse().context("fuzz SECONDS")?,
        None => 60,
    };
    install_cargo_tool("fuzz")?;
    // New inputs go to a corpus under target/ (libFuzzer writes to its
    // first corpus directory); the seeds in fuzz/corpus/parse, which
    // fuzz/check's tests also run, stay as committed.
    let grown = target_dir().join("fuzz-corpus").join("parse");
    std::fs::create_dir_all(&grown).context("create the fuzz corpus dir")?;
    let st = Command::new("cargo")
        .current_dir(root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "parse"])
        .arg(&grown)
        .arg(root().join("fuzz").join("corpus").join("parse"))
        // A valid archive and header values for the walker and Retry-After.
        .arg(root().join("fuzz").join("seeds"))
        .args(["--", &format!("-max_total_time={secs}")])
        .status()
        .context("cargo fuzz run")?;
    Ok(if st.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn demo() -> Result<ExitCode> {
    run_ok(cargo().args([
        "build",
        "--locked",
        "--bins",
        "-p",
        "ferry-receiver",
        "-p",
        "ferry-agent",
    ]))?;
    let target = target_dir().join("debug");
    let receiver = target.join("ferry-receiver");
    let agent = target.join("ferry-agent");
    let work = target_dir().join("demo");
    let _ = std::fs::remove_dir_all(&work);
    let data_dir = work.join("ferry-data");
    let spool = work.join("spool");
    std::fs::create_dir_all(&data_dir)?;

    // The receiver with no configuration at all: embedded SQLite and
    // objects under ./ferry-data, listening on 127.0.0.1:8420. It runs in
    // target/demo so that the demo leaves the checkout clean.
    demo_setup(&receiver, &work, &spool)?;

    let (mut serve, url) = demo_serve(&receiver, &work)?;

    println!(
        "== ferry-agent drain --spool {} --receiver {url}",
        spool.display()
    );
    let started = Instant::now();
    let st = Command::new(&agent)
        .args(["drain", "--spool"])
        .arg(&spool)
        .args(["--receiver", &url, "--token-file"])
        .arg(work.join("device.token"))
        .args(["--timeout", "60s"])
        .status();
    let drained = matches!(st, Ok(s) if s.success());
    println!(
        "   drain {} in {:?}",
        if drained { "finished" } else { "FAILED" },
        started.elapsed()
    );

    println!("== ferry-receiver episodes list");
    let _ = Command::new(&receiver)
        .current_dir(&work)
        .args(["episodes", "list"])
        .status();
    println!("== ferry-agent status");
    let _ = Command::new(&agent)
        .args(["status", "--spool"])
        .arg(&spool)
        .status();

    demo_stop(&mut serve)?;
    Ok(if drained {
        println!(
            "demo: 3 episodes shipped; receiver data in {}",
            data_dir.display()
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Allow the demo's commit, add its device (token in `work/device.token`)
/// and write three finished episodes into `spool`.
fn demo_setup(receiver: &Path, work: &Path, spool: &Path) -> Result<()> {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    run_ok(
        Command::new(receiver)
            .current_dir(work)
            .args(["commits", "allow", commit, "--head", "--note", "demo"]),
    )?;
    let out = Command::new(receiver)
        .current_dir(work)
        .args(["devices", "add", "demo-device"])
        .output()?;
    if !out.status.success() {
        bail!(
            "devices add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    std::fs::create_dir_all(spool)?;
    std::fs::write(work.join("device.token"), format!("{token}\n"))?;

    for i in 1..=3 {
        let ep = spool.join("episodes").join(format!("demo-episode-{i}"));
        std::fs::create_dir_all(ep.join("camera"))?;
        std::fs::write(
            ep.join("meta.json"),
            format!("{{\"code_version\": {{\"commit\": \"{commit}\"}}, \"episode\": {i}}}\n"),
        )?;
        std::fs::write(ep.join("log.txt"), format!("episode {i}\n").repeat(1000))?;
        std::fs::write(
            ep.join("camera").join("frame-0001.raw"),
            vec![i as u8; 64 * 1024],
        )?;
        std::fs::write(ep.join("done.marker"), b"")?;
    }
    Ok(())
}

/// `ferry-receiver serve` in `work`, its output echoed until it listens.
/// Returns the child and the URL it listens on.
fn demo_serve(receiver: &Path, work: &Path) -> Result<(Child, String)> {
    println!(
        "== ferry-receiver serve (embedded defaults, in {})",
        work.display()
    );
    let mut serve = Command::new(receiver)
        .current_dir(work)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .context("start ferry-receiver serve")?;
    let stdout = serve.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(l)) => {
                println!("   {l}");
                if let Some(u) = l.strip_prefix("listening on ") {
                    break u.trim().to_string();
                }
            }
            _ => {
                let _ = serve.kill();
                bail!("ferry-receiver serve exited before listening (is port 8420 taken?)");
            }
        }
    };
    Ok((serve, url))
}

/// Stop the receiver with SIGTERM, the way systemd does; kill it after 15 s.
fn demo_stop(serve: &mut Child) -> Result<()> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while serve.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_fails_on_any_skip_and_lax_mode_only_on_failures() {
        assert!(verdict(true, "", true));
        assert!(verdict(true, "\n", true));
        assert!(!verdict(true, "SKIPPED t: strace is not installed\n", true));
        assert!(verdict(true, "SKIPPED t: strace is not installed\n", false));
        assert!(!verdict(false, "", false));
    }

    /// A PATH holding only `strace` lacks every other tool; one holding a
    /// non-executable `zstd` lacks it too.
    #[test]
    fn missing_tools_reads_the_path_it_is_given() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        for (name, mode) in [("strace", 0o755), ("zstd", 0o644)] {
            let p = d.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let missing = missing_tools(d.path().as_os_str());
        assert!(!missing.contains(&"strace"));
        assert!(missing.contains(&"zstd"));
        assert_eq!(missing.len(), TOOLS.len() - 1);
    }

    /// `cargo xtask test` under strict mode with a PATH stripped of the
    /// suite's tools refuses to run, naming them; without strict mode it
    /// runs (and the tests that need them say SKIPPED).
    #[test]
    fn strict_test_refuses_to_start_without_its_tools() {
        let d = tempfile::tempdir().unwrap();
        let err = preflight(true, d.path().as_os_str())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FERRY_REQUIRE_ALL=1 and not on PATH: strace, zstd"),
            "{err}"
        );
        assert!(preflight(false, d.path().as_os_str()).is_ok());
    }
}
