//! The status page (`GET /`, issue 16) at fleet scale: a receiver whose
//! SQLite index holds 1,000,000 episodes of 10,000 devices (and 200
//! rejected commit × device pairs) against an empty one, requests
//! alternating between the two.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::cases::{Bench, COMMIT};
use super::{percentile, Env, Opts, Report};

/// Requests per side.
const REQUESTS: usize = 40;

/// `devices` devices with `rows` episodes spread over them (inserted
/// through the index's trigger, which keeps each device's totals), and
/// 50 rejected commits of 4 devices each.
fn fill(data_dir: &Path, devices: u64, rows: u64) -> Result<()> {
    let sql = format!(
        "BEGIN; \
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < {devices} - 1) \
         INSERT INTO devices (name, token_hash, revoked, created_at) \
         SELECT printf('dev-%05d', i), randomblob(32), 0, 1700000000 FROM n; \
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < {rows} - 1) \
         INSERT INTO episodes (episode_id, sha256, size, commit_id, device, stored_at) \
         SELECT printf('ep-%09d', i), printf('%064x', i), 10240, '{COMMIT}', \
         printf('dev-%05d', i % {devices}), strftime('%s','now') - 3600 + (i % 3000) FROM n; \
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM n WHERE i < 199) \
         INSERT INTO rejected_commits SELECT printf('%040x', i / 4), printf('dev-%05d', i), 3, \
         strftime('%s','now') - 600, strftime('%s','now') FROM n; COMMIT;"
    );
    super::cases::sqlite3(&data_dir.join("index.sqlite"), &sql)
}

/// One `GET /` on a fresh connection, read to the end; its time.
fn get_page(port: u16) -> Result<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let took = started.elapsed();
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "GET / answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    Ok(took)
}

pub fn status_page(env: &Env, opts: &Opts, report: &mut Report) -> Result<()> {
    let (devices, rows) = if opts.quick {
        (1_000u64, 100_000u64)
    } else {
        (10_000, 1_000_000)
    };
    report.section(
        &format!("status page: GET / with {rows} episodes of {devices} devices vs empty"),
        &format!("{REQUESTS} requests per side, alternating, each on a fresh connection (status_page = \"public\")"),
    );
    if !super::have("sqlite3") {
        report.note("**sqlite3 is not installed**: the status page case is SKIPPED.");
        return Ok(());
    }
    let public = [("FERRY_RECEIVER_STATUS_PAGE", "public")];
    let mut sides = Vec::new();
    for (label, n) in [("empty", 0u64), ("full", rows)] {
        let mut rx = Bench::start(env, &format!("console-{label}"), &public)?;
        if n > 0 {
            rx.stop();
            fill(&rx.data_dir, devices, n)?;
            rx.spawn(env, &public)?;
        }
        get_page(rx.port)?;
        sides.push((label, n, rx, Vec::new()));
    }
    for _ in 0..REQUESTS {
        for (_, _, rx, lat) in &mut sides {
            lat.push(get_page(rx.port)?);
        }
    }
    let mut p50s = Vec::new();
    for (label, n, rx, lat) in &mut sides {
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let p50 = ms(percentile(lat, 50.0));
        report.row(
            &format!("{label} ({n} episodes)"),
            &format!("{p50:.1} ms"),
            &format!(
                "p90 {:.1} ms, max {:.1} ms",
                ms(percentile(lat, 90.0)),
                ms(lat[lat.len() - 1])
            ),
            "",
        );
        p50s.push(p50);
        rx.stop();
    }
    report.note(&format!(
        "status page full/empty, median: {:.1}×",
        p50s[1] / p50s[0]
    ));
    Ok(())
}
