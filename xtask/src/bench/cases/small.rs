//! Case 4: small episodes, 64 concurrent devices, against nginx and the durable floor.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{ferry_put, hammer, tiny_archive, Bench};
use crate::bench::corpus::Corpus;
use crate::bench::nginx::Nginx;
use crate::bench::{percentile, Env, Opts, Report, Stats};

/// One side's result in one round: name, episodes/s, p50, p99.
type Row = (String, f64, Duration, Duration);

pub(super) fn small(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    // FERRY_BENCH_DEVICES: another number of concurrent devices, for
    // experiments (the targets are stated at 64).
    let clients = std::env::var("FERRY_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(64);
    let per_client = corpus.small_count / clients;
    let n = clients * per_client;
    report.section(
        &format!("small episodes: {n} × 10 KiB, {clients} concurrent devices"),
        "ferry: PUT /v1/episodes/{id} (auth, allow-list, sha256, fsync, index commit before 201) · \
         baseline: PUT into nginx WebDAV (no fsync). Keep-alive connections, one per device.",
    );
    let rounds = opts.reps.clamp(1, 2);
    let mut rows: Vec<Row> = Vec::new();
    let mut commit_notes = Vec::new();
    for round in 0..rounds {
        if let Some(stats) = small_round(env, round, clients, per_client, &mut rows)? {
            commit_notes.push(format!("ferry round {round}: {stats}"));
        }
    }
    small_report(report, &rows);
    for note in commit_notes {
        report.note(&note);
    }
    Ok(())
}

/// One round: ferry, nginx and the durable floor, one after the other, each
/// a row in `rows`. Returns ferry's commit-stage statistics, if it gave any.
fn small_round(
    env: &Env,
    round: usize,
    clients: usize,
    per_client: usize,
    rows: &mut Vec<Row>,
) -> Result<Option<String>> {
    let n = clients * per_client;
    // Fresh ids every round so that every ferry PUT is a first store.
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..n)
            .map(|i| {
                let id = format!("small-{round}-{i}");
                let body = tiny_archive(&id, (round * n + i) as u64);
                (id, body)
            })
            .collect(),
    );
    let mut rx = Bench::start(
        env,
        "small",
        &[("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "256")],
    )?;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..clients)
            .map(|c| rx.device(env, &format!("small-dev-{c}")))
            .collect::<Result<_>>()?,
    );
    let (wall, lat) = hammer(
        rx.port,
        clients,
        per_client,
        bodies.clone(),
        ferry_put(tokens.clone()),
        &[201],
    )?;
    let commit = commit_stats(rx.port);
    rows.push(row("ferry-receiver", n, wall, lat));
    rx.stop();

    let ng = Nginx::start(&env.work)?;
    let (wall, lat) = hammer(
        ng.port,
        clients,
        per_client,
        bodies,
        Arc::new(|_c, _i, id, _body| (format!("/dav/{id}.tar.zst"), String::new())),
        &[201, 204],
    )?;
    rows.push(row("nginx", n, wall, lat));
    drop(ng);

    // The floor under any durable receiver: the same number of files
    // by the same number of writers, each written, fsynced, renamed
    // into a directory and the directory fsynced — no HTTP, no hash,
    // no index.
    let (wall, lat) = durable_floor(&env.work.join("floor"), clients, per_client)?;
    rows.push(row("durable floor", n, wall, lat));
    Ok(commit)
}

/// The row of `side` for `n` episodes stored in `wall`, with latencies `lat`.
fn row(side: &str, n: usize, wall: Duration, mut lat: Vec<Duration>) -> Row {
    lat.sort();
    (
        side.into(),
        n as f64 / wall.as_secs_f64(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
    )
}

/// Each side's median rate over the rounds and its worst p50 and p99, and
/// ferry's ratios to nginx and to the floor.
fn small_report(report: &mut Report, rows: &[Row]) {
    let mut medians = Vec::new();
    for side in ["ferry-receiver", "nginx", "durable floor"] {
        let r: Vec<&Row> = rows.iter().filter(|r| r.0 == side).collect();
        let rates: Vec<f64> = r.iter().map(|r| r.1).collect();
        let st = Stats::of(&rates);
        let p50 = r.iter().map(|r| r.2).max().unwrap();
        let p99 = r.iter().map(|r| r.3).max().unwrap();
        report.row(
            side,
            &format!("{:.0} episodes/s", st.median),
            &format!(
                "{:.0}–{:.0}; p50 {:.1} ms, p99 {:.1} ms",
                st.min,
                st.max,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            ),
            "",
        );
        medians.push((st.median, p99));
    }
    report.ratio(
        "small episodes/s vs nginx",
        medians[0].0 / medians[1].0,
        1.0,
    );
    report.ratio(
        "small episodes/s vs the durable floor (write + fsync + rename + fsync dir, 64 threads)",
        medians[0].0 / medians[2].0,
        0.5,
    );
    let p99 = medians[0].1.as_secs_f64() * 1e3;
    report.note(&format!(
        "ferry p99 {p99:.1} ms ({} the target < 50 ms; the worst round's)",
        if p99 < 50.0 { "meets" } else { "MISSES" }
    ));
}

/// The receiver's commit-stage histograms (GET /metrics): mean batch size
/// and mean time per batch to make it durable and to index it.
fn commit_stats(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let mean = |name: &str| -> Option<f64> {
        Some(value(&format!("{name}_sum"))? / value(&format!("{name}_count"))?.max(1.0))
    };
    Some(format!(
        "{:.0} batches of {:.1} uploads on average; per batch {:.1} ms durable, {:.1} ms index",
        value("ferry_commit_batch_size_count")?,
        mean("ferry_commit_batch_size")?,
        mean("ferry_commit_durable_seconds")? * 1e3,
        mean("ferry_commit_index_seconds")? * 1e3,
    ))
}

/// `clients` threads each make `per_client` durable 10 KiB files:
/// write a temp file, fsync, rename into one of 256 directories, fsync the
/// directory.
fn durable_floor(
    dir: &Path,
    clients: usize,
    per_client: usize,
) -> Result<(Duration, Vec<Duration>)> {
    crate::bench::clear_dir(dir);
    for d in 0..256 {
        std::fs::create_dir_all(dir.join(format!("{d:02x}")))?;
    }
    std::fs::create_dir_all(dir.join("tmp"))?;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (barrier, dir) = (barrier.clone(), dir.to_path_buf());
        handles.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let data = vec![c as u8; 10 * 1024];
            let mut lat = Vec::with_capacity(per_client);
            barrier.wait();
            for i in 0..per_client {
                let t = Instant::now();
                let tmp = dir.join("tmp").join(format!("{c}-{i}"));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                let sub = dir.join(format!("{:02x}", (c * 7919 + i) % 256));
                std::fs::rename(&tmp, sub.join(format!("{c}-{i}")))?;
                std::fs::File::open(&sub)?.sync_all()?;
                lat.push(t.elapsed());
            }
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??);
    }
    let wall = start.elapsed();
    // Left for the next run's `clear_dir`, which waits out the deletions.
    Ok((wall, all))
}
