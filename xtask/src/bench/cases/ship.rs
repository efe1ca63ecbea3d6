//! Case 2: ship end to end, ferry-agent drain into ferry-receiver against tar | zstd | curl into nginx.

use std::process::Command;

use anyhow::{bail, Result};

use super::pack::{large_tar, zstd_alone_cmd};
use super::{agent_cmd, spool_with, sync_all, Bench};
use crate::bench::corpus::Corpus;
use crate::bench::nginx::Nginx;
use crate::bench::{measure, Env, Opts, Report};

pub(super) fn ship(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    report.section(
        &format!("ship end to end ({:.0} MB episode)", corpus.large_bytes as f64 / 1e6),
        "ferry: `ferry-agent drain` into `ferry-receiver` (pack, sha256, upload, verify, fsync, index), \
         with tus (the default above `resumable_threshold`) and with a plain PUT · \
         baseline: `tar -cf - ep | zstd -T0 -3 | curl -T - http://nginx/dav/...` (no digest, no fsync)",
    );
    let mut rx = Bench::start(env, "ship", &[])?;
    let token = rx.device(env, "bench-ship")?;
    let ng = Nginx::start(&env.work)?;
    let tar_file = large_tar(env, corpus)?;
    let bound_out = env.work.join("pack").join("bound.tar.zst");
    let (mut ferry, mut ferry_put, mut base, mut bound) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..opts.reps {
        let id = format!("ship-{rep}");
        let spool = spool_with(env, "ship", &corpus.large, &id, &token)?;
        // No side inherits another's dirty data (see the pack case).
        sync_all();
        ferry.push(measure(
            agent_cmd(env, "drain", &spool, &rx.url).args(["--timeout", "10m"]),
        )?);
        if !spool.join("shipped").join(&id).exists() {
            bail!("drain exited 0 but {id} is not in shipped/");
        }
        // The same episode over a plain PUT: the episode is above
        // `resumable_threshold`, so the default ships it with tus.
        let put_id = format!("ship-put-{rep}");
        let spool = spool_with(env, "ship-put", &corpus.large, &put_id, &token)?;
        sync_all();
        ferry_put.push(measure(
            agent_cmd(env, "drain", &spool, &rx.url)
                .args(["--timeout", "10m"])
                .env("FERRY_AGENT_RESUMABLE_THRESHOLD", "100GiB"),
        )?);
        if !spool.join("shipped").join(&put_id).exists() {
            bail!("drain exited 0 but {put_id} is not in shipped/");
        }
        sync_all();
        base.push(measure(
            Command::new("sh")
                .arg("-c")
                .arg("tar -C \"$1\" -cf - ep-large | zstd -T0 -3 -q | curl -sS -f -T - \"$2\"")
                .arg("sh")
                .arg(corpus.large.parent().unwrap())
                .arg(ng.url(&format!("ship-{rep}.tar.zst"))),
        )?);
        // The least any ship can take under this protocol: the pack at
        // zstd's own speed, and everything after it (upload, digest,
        // fsyncs, index) free. Until 2026-11-23 the bound also wrote and
        // fsynced the output with `dd conv=fsync`; ferry's flushes in steps
        // overlap most of that with the pack, so it was no bound any more.
        sync_all();
        bound.push(measure(&mut zstd_alone_cmd(&tar_file, &bound_out))?);
    }
    let f = report.rate_row(
        "ferry-agent drain → ferry-receiver",
        corpus.large_bytes,
        &ferry,
    );
    let p = report.rate_row(
        "ferry-agent drain → ferry-receiver, plain PUT",
        corpus.large_bytes,
        &ferry_put,
    );
    let b = report.rate_row("tar \\| zstd \\| curl → nginx", corpus.large_bytes, &base);
    let z = report.rate_row(
        "bound: `zstd -T0 -3` on the tar file, alone",
        corpus.large_bytes,
        &bound,
    );
    report.ratio("end to end vs shell-to-nginx", f / b, 1.5);
    report.note(&format!(
        "the default (tus: one PATCH, durable every 8 MiB) against the same agent with \
         `resumable_threshold` above the episode (one PUT): {:.2}×",
        f / p
    ));
    report.note(&format!(
        "limit: the protocol sends X-Ferry-Sha256 before the body, so an episode is packed \
         completely before its upload starts. A ship whose pack ran at zstd's own speed and \
         whose upload, digest, fsyncs and index cost nothing would reach {:.2}× the shell \
         pipeline in this run; ferry reaches {:.2}× of that bound.",
        z / b,
        f / z
    ));
    rx.stop();
    Ok(())
}
