//! Case 1: pack, ferry-agent against tar | zstd | tee | sha256sum and zstd alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use super::sync_all;
use crate::bench::corpus::Corpus;
use crate::bench::{measure, Env, Opts, Report};

pub(super) fn pack(env: &Env, opts: &Opts, corpus: &Corpus, report: &mut Report) -> Result<()> {
    let out_dir = env.work.join("pack");
    let tar_file = large_tar(env, corpus)?;

    for (level, dir, bytes, reps) in [
        (3, &corpus.large, corpus.large_bytes, opts.reps),
        (19, &corpus.medium, corpus.medium_bytes, opts.reps.min(3)),
    ] {
        let name = dir.file_name().unwrap().to_str().unwrap();
        report.section(
            &format!(
                "pack, zstd level {level} ({name}, {:.0} MB)",
                bytes as f64 / 1e6
            ),
            &format!(
                "ferry: `ferry-agent pack {name} -o OUT` (FERRY_AGENT_ZSTD_LEVEL={level}) · \
                 pipeline: `tar -cf - {name} | zstd -T0 -{level} | tee OUT | sha256sum`{}",
                if level == 3 {
                    " · zstd alone: `zstd -T0 -3` on the tar file"
                } else {
                    ""
                }
            ),
        );
        let out = out_dir.join(format!("{name}.tar.zst"));
        let (mut ferry, mut shell, mut zstd_alone) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            // The previous output is removed inside the timed command, as
            // `zstd -f` and `tee` truncate theirs, so every side writes into
            // pages freed a moment ago (ferry renames over its old output
            // only at the end). Where the VM's free page reporting cannot
            // be paused (`vm.rs`), pages freed seconds ago cost a host fault
            // each, about 0.2 s per 145 MB, and ferry alone paid it.
            // Every side starts with no dirty data of another's: the
            // baselines leave 145 MB each unsynced, which the kernel writes
            // back some 30 s later, and a disk flush of ferry's then
            // waited for it too (`sync` before each, outside the timing).
            sync_all();
            ferry.push(measure(
                Command::new("sh")
                    .arg("-c")
                    .arg("rm -f \"$2\" && exec \"$0\" pack \"$1\" -o \"$2\"")
                    .arg(&env.agent)
                    .arg(dir)
                    .arg(&out)
                    .env("FERRY_AGENT_ZSTD_LEVEL", level.to_string()),
            )?);
            sync_all();
            shell.push(measure(
                Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "tar -C \"$1\" -cf - \"$2\" | zstd -T0 -{level} -q | tee \"$3\" | sha256sum"
                    ))
                    .arg("sh")
                    .arg(dir.parent().unwrap())
                    .arg(name)
                    .arg(out_dir.join("shell.tar.zst")),
            )?);
            if level == 3 {
                sync_all();
                zstd_alone.push(measure(&mut zstd_alone_cmd(
                    &tar_file,
                    &out_dir.join("alone.tar.zst"),
                ))?);
            }
        }
        let f = report.rate_row("ferry-agent pack", bytes, &ferry);
        let s = report.rate_row("tar \\| zstd \\| tee \\| sha256sum", bytes, &shell);
        let ours = std::fs::metadata(&out)?.len();
        let theirs = std::fs::metadata(out_dir.join("shell.tar.zst"))?.len();
        if level == 3 {
            let z = report.rate_row("zstd -T0 -3 alone", bytes, &zstd_alone);
            report.ratio("pack vs pipeline, level 3", f / s, 1.5);
            report.ratio("pack vs zstd alone, level 3", f / z, 0.85);
        } else {
            report.ratio(&format!("pack vs pipeline, level {level}"), f / s, 3.0);
        }
        report.note(&format!(
            "output size: ferry {:.1} MB, pipeline {:.1} MB ({:+.1} %)",
            ours as f64 / 1e6,
            theirs as f64 / 1e6,
            (ours as f64 / theirs as f64 - 1.0) * 100.0
        ));
        let rss = ferry.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        let verdict = if rss <= 64 * 1024 { "meets" } else { "MISSES" };
        report.note(&format!(
            "ferry-agent pack peak RSS: {:.1} MiB ({verdict} the target ≤ 64 MiB)",
            rss as f64 / 1024.0
        ));
    }
    Ok(())
}

/// `zstd -T0 -3` alone, on a tar file: the compression bound.
pub(super) fn zstd_alone_cmd(tar_file: &Path, out: &Path) -> Command {
    let mut c = Command::new("zstd");
    c.args(["-T0", "-3", "-q", "-f"])
        .arg(tar_file)
        .arg("-o")
        .arg(out);
    c
}

/// The large episode as one tar file (the input of `zstd` alone).
pub(super) fn large_tar(env: &Env, corpus: &Corpus) -> Result<PathBuf> {
    let out_dir = env.work.join("pack");
    std::fs::create_dir_all(&out_dir)?;
    let tar_file = out_dir.join("ep-large.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(corpus.large.parent().unwrap())
        .arg("-cf")
        .arg(&tar_file)
        .arg("ep-large")
        .status()?;
    if !st.success() {
        bail!("tar failed");
    }
    Ok(tar_file)
}
