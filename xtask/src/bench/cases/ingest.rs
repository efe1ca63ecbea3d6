//! Case 3: ingest of one large episode, and the receiver's memory with 64 uploads in flight.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use super::{hex, sync_all, Bench, COMMIT};
use crate::bench::corpus::Corpus;
use crate::bench::nginx::Nginx;
use crate::bench::{measure, vm_hwm_kib, wait4, Env, Opts, Report};

pub(super) fn ingest(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    let tarball = env.work.join("pack").join("ingest.tar.zst");
    std::fs::create_dir_all(tarball.parent().unwrap())?;
    let out = Command::new(&env.agent)
        .arg("pack")
        .arg(&corpus.large)
        .arg("-o")
        .arg(&tarball)
        .output()?;
    if !out.status.success() {
        bail!("ferry-agent pack: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sha = String::from_utf8(out.stdout)?.trim().to_string();
    let size = std::fs::metadata(&tarball)?.len();
    report.section(
        &format!("ingest of one large episode ({:.0} MB tar.zst)", size as f64 / 1e6),
        "ferry: `curl -T` into `ferry-receiver` (sha256 verified, fsync, rename, index commit before 201) · \
         baseline: `curl -T` into nginx, then `sync`",
    );
    let mut rx = Bench::start(
        env,
        "ingest",
        &[("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "128")],
    )?;
    let token = rx.device(env, "bench-ingest")?;
    let ng = Nginx::start(&env.work)?;
    let (mut ferry, mut base) = (Vec::new(), Vec::new());
    // Every rep uploads the same bytes under a new id. Remove the object the
    // previous rep stored (outside the timing), so that each rep stores a new
    // object as every episode in the field does, instead of replacing an
    // identical 145 MB file (whose unlink alone costs ~80 ms on ext4).
    let object = rx.data_dir.join("objects").join(&sha[0..2]).join(&sha);
    for rep in 0..opts.reps {
        let _ = std::fs::remove_file(&object);
        sync_all();
        ferry.push(measure(
            Command::new("curl")
                .args(["-sS", "-f", "-o", "/dev/null", "-T"])
                .arg(&tarball)
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg("-H")
                .arg(format!("X-Ferry-Commit: {COMMIT}"))
                .arg("-H")
                .arg(format!("X-Ferry-Sha256: {sha}"))
                .arg(format!("{}/v1/episodes/ingest-{rep}", rx.url)),
        )?);
        base.push(measure(
            Command::new("sh")
                .arg("-c")
                .arg("curl -sS -f -T \"$1\" \"$2\" && sync")
                .arg("sh")
                .arg(&tarball)
                .arg(ng.url(&format!("ingest-{rep}.tar.zst"))),
        )?);
    }
    let f = report.rate_row("curl → ferry-receiver (durable, verified)", size, &ferry);
    let b = report.rate_row("curl → nginx, then sync", size, &base);
    report.ratio("large ingest vs nginx PUT + sync", f / b, 1.0);
    // The limit: sha256 is sequential, so one stream is verified no faster
    // than one core hashes.
    let hash = sha256_rate(&tarball)?;
    report.note(&format!(
        "limit: sha256 of this file on one core (sha2 with SHA-NI): {hash:.0} MB/s — \
         a verified stream cannot be stored faster; ferry reaches {:.0} % of it",
        f / hash * 100.0
    ));

    inflight_memory(env, &rx, &token, report)?;
    rx.stop();
    Ok(())
}

/// Receiver memory with 64 uploads in flight: 64 slow curls at once.
fn inflight_memory(env: &Env, rx: &Bench, token: &str, report: &mut Report) -> Result<()> {
    let inflight = 64;
    let chunk = env.work.join("pack").join("inflight.bin");
    std::fs::write(&chunk, vec![7u8; 8 << 20])?;
    let chunk_sha = {
        let mut h = Sha256::new();
        h.update(std::fs::read(&chunk)?);
        hex(&h.finalize())
    };
    let mut kids = Vec::new();
    for i in 0..inflight {
        kids.push(
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--limit-rate", "2M", "-T"])
                .arg(&chunk)
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg("-H")
                .arg(format!("X-Ferry-Commit: {COMMIT}"))
                .arg("-H")
                .arg(format!("X-Ferry-Sha256: {chunk_sha}"))
                .arg(format!("{}/v1/episodes/inflight-{i}", rx.url))
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    for k in &mut kids {
        let _ = wait4(k.id());
    }
    let hwm = vm_hwm_kib(rx.pid()).unwrap_or(0);
    let verdict = if hwm <= 256 * 1024 { "meets" } else { "MISSES" };
    report.note(&format!(
        "ferry-receiver peak RSS after {inflight} concurrent 8 MiB uploads: {:.1} MiB ({verdict} the target ≤ 256 MiB)",
        hwm as f64 / 1024.0
    ));
    Ok(())
}

/// MB/s of sha256 over a file already in the page cache, one core.
fn sha256_rate(path: &Path) -> Result<f64> {
    let data = std::fs::read(path)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut h = Sha256::new();
        h.update(&data);
        std::hint::black_box(h.finalize());
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(data.len() as f64 / 1e6 / best)
}
