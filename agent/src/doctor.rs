//! `ferry-agent doctor`: one row per check, each failing row naming the
//! command that fixes it; `--json` for scripts; exit 1 if any check fails.

use std::collections::BTreeSet;

use ferry_proto::reply::{CommitCheck, WhoAmI};
use ferry_proto::Commit;
use serde::Serialize;

use crate::config::Config;
use crate::notify::Progress;
use crate::ship::Shipper;
use crate::spool::{self, Spool};
use crate::state::AgentState;
use crate::{fsio, scan, status};

/// Free space below which the spool check fails.
const MIN_FREE: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn row(name: &str, status: Level, detail: String, fix: Option<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail,
        fix,
    }
}

/// Run every check. Returns the checks and the spool counts.
pub async fn checks(
    cfg: &Config,
    config_origin: &str,
) -> (Vec<Check>, Option<status::Counts>, AgentState) {
    let mut out = vec![row("config", Level::Ok, config_origin.to_string(), None)];
    let spool = Spool::new(cfg.spool.clone());
    check_spool_writable(&spool, &mut out).await;
    check_free_space(cfg, &spool, &mut out);
    let shipper = check_tls(cfg, &mut out);
    if let Some(sh) = &shipper {
        check_receiver(cfg, sh, &mut out).await;
        check_token(cfg, sh, &mut out).await;
    }
    let mut counts_out = None;
    match gather(&spool).await {
        Ok((counts, commits, no_commit)) => {
            if let Some(sh) = &shipper {
                check_commits(sh, &commits, &mut out).await;
            }
            check_pending(&spool, &counts, &no_commit, &mut out);
            counts_out = Some(counts);
        }
        Err(e) => out.push(row(
            "spool readable",
            Level::Fail,
            e.to_string(),
            Some("check the spool disk (dmesg, fsck)".into()),
        )),
    }
    let state = AgentState::load(&spool.state_file());
    check_last(&state, &mut out);
    (out, counts_out, state)
}

/// The spool can be written: a probe file created and removed.
async fn check_spool_writable(spool: &Spool, out: &mut Vec<Check>) {
    let sp = spool.clone();
    let prepared = tokio::task::spawn_blocking(move || sp.probe_writable())
        .await
        .expect("no panic");
    match prepared {
        Ok(()) => out.push(row(
            "spool writable",
            Level::Ok,
            spool.root().display().to_string(),
            None,
        )),
        Err(e) => out.push(row(
            "spool writable",
            Level::Fail,
            fsio::describe(spool.root(), &e),
            Some(format!(
                "install -d -m 0750 -o <agent user> {} (or set `spool` in the config)",
                spool.root().display()
            )),
        )),
    }
}

/// Free space on the spool's filesystem, failing below `MIN_FREE`.
fn check_free_space(cfg: &Config, spool: &Spool, out: &mut Vec<Check>) {
    match fsio::disk_space(spool.root()) {
        Ok((free, total)) => {
            let detail = format!(
                "{} free of {}",
                bytesize::ByteSize(free).to_string_as(true),
                bytesize::ByteSize(total).to_string_as(true)
            );
            if free < MIN_FREE {
                out.push(row(
                    "free space",
                    Level::Fail,
                    detail,
                    Some(format!(
                        "free space on the spool's filesystem; shipped episodes are kept for shipped_keep={} under {}",
                        humantime::format_duration(cfg.shipped_keep),
                        spool.dir(spool::SHIPPED).display()
                    )),
                ));
            } else {
                out.push(row("free space", Level::Ok, detail, None));
            }
        }
        Err(e) => out.push(row(
            "free space",
            Level::Warn,
            format!("statvfs failed: {e}"),
            None,
        )),
    }
}

/// The HTTP client can be built (the CA file loads); `None` if it cannot,
/// and the checks that talk to the receiver are left out.
fn check_tls(cfg: &Config, out: &mut Vec<Check>) -> Option<Shipper> {
    match Shipper::new(cfg, Progress::new()) {
        Ok(s) => Some(s),
        Err(e) => {
            out.push(row(
                "tls",
                Level::Fail,
                e.to_string(),
                Some("point `ca_file` at a readable PEM file with the CA certificate".into()),
            ));
            None
        }
    }
}

/// The receiver answers 200 on /healthz.
async fn check_receiver(cfg: &Config, sh: &Shipper, out: &mut Vec<Check>) {
    match sh.get("/healthz", false).await {
        Ok(a) if a.status == 200 => out.push(row("receiver reachable", Level::Ok, cfg.receiver.clone(), None)),
        other => out.push(row(
            "receiver reachable",
            Level::Fail,
            match other {
                Ok(a) => format!("{}/healthz answered {}", cfg.receiver, a.status),
                Err(e) => format!("{}: {e}", cfg.receiver),
            },
            Some(format!(
                "check `receiver` (now {}) and that `ferry-receiver serve` runs there: curl {}/healthz",
                cfg.receiver, cfg.receiver
            )),
        )),
    }
}

/// The token can be read and the receiver knows it (GET /v1/whoami).
async fn check_token(cfg: &Config, sh: &Shipper, out: &mut Vec<Check>) {
    let token_fix = format!(
        "put the token printed by `ferry-receiver devices add NAME` into {} (token_file)",
        cfg.token_file.display()
    );
    match sh.token().await {
        Err(e) => out.push(row(
            "token accepted",
            Level::Fail,
            e,
            Some(token_fix.clone()),
        )),
        Ok(_) => match sh.get("/v1/whoami", true).await {
            Ok(a) if a.status == 200 => {
                let who = serde_json::from_str::<WhoAmI>(&a.body)
                    .map(|w| format!("device {}", w.device))
                    .unwrap_or_else(|_| "accepted".into());
                out.push(row("token accepted", Level::Ok, who, None));
            }
            Ok(a) if a.status == 401 || a.status == 403 => out.push(row(
                "token accepted",
                Level::Fail,
                format!(
                    "the receiver answered {} ({})",
                    a.status,
                    if a.status == 401 {
                        "unknown token"
                    } else {
                        "device revoked"
                    }
                ),
                Some(token_fix.clone()),
            )),
            Ok(a) => out.push(row(
                "token accepted",
                Level::Warn,
                format!("/v1/whoami answered {}", a.status),
                None,
            )),
            Err(e) => out.push(row(
                "token accepted",
                Level::Warn,
                format!("not checked: {e}"),
                None,
            )),
        },
    }
}

/// The spool's counts, and the commits of the pending episodes of the first
/// scan batch (ids whose meta.json names no valid commit apart).
async fn gather(spool: &Spool) -> std::io::Result<(status::Counts, BTreeSet<Commit>, Vec<String>)> {
    let sp = spool.clone();
    tokio::task::spawn_blocking(move || {
        let counts = status::counts(&sp)?;
        let r = scan::scan(&sp, scan::SCAN_BATCH, None)?;
        let mut commits = BTreeSet::new();
        let mut no_commit = Vec::new();
        for ready in &r.batch {
            match spool::read_commit(&sp.episode_dir(&ready.id)) {
                Ok(c) => {
                    commits.insert(c);
                }
                Err(_) => no_commit.push(ready.id.to_string()),
            }
        }
        Ok::<_, std::io::Error>((counts, commits, no_commit))
    })
    .await
    .expect("no panic")
}

/// Pending episodes without a commit, the pending counts, skipped entries,
/// quarantine and conflicts.
fn check_pending(
    spool: &Spool,
    counts: &status::Counts,
    no_commit: &[String],
    out: &mut Vec<Check>,
) {
    if !no_commit.is_empty() {
        out.push(row(
            "pending without commit",
            Level::Warn,
            format!(
                "{} episode(s) without a valid commit in meta.json: {}",
                no_commit.len(),
                no_commit.join(", ")
            ),
            Some(
                "they will be quarantined; fix meta.json and `ferry-agent quarantine retry ID`"
                    .into(),
            ),
        ));
    }
    out.push(row(
        "pending",
        Level::Ok,
        format!(
            "{} pending, {} being written, {} in outbox ({} partial)",
            counts.pending, counts.writing, counts.outbox, counts.partial
        ),
        None,
    ));
    if counts.invalid > 0 || counts.unreadable > 0 {
        out.push(row(
            "skipped entries",
            Level::Warn,
            format!("{} invalid names, {} unreadable entries in episodes/", counts.invalid, counts.unreadable),
            Some("rename invalid directories to [A-Za-z0-9][A-Za-z0-9._-]{0,127}; check the disk for unreadable ones (dmesg, fsck)".into()),
        ));
    }
    if counts.quarantined > 0 {
        let by: Vec<String> = counts
            .quarantine_by_reason
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        out.push(row(
            "quarantine",
            Level::Warn,
            format!("{} quarantined ({})", counts.quarantined, by.join(", ")),
            Some("`ferry-agent quarantine list`, then `ferry-agent quarantine retry ID` or `purge ID`".into()),
        ));
    } else {
        out.push(row("quarantine", Level::Ok, "empty".into(), None));
    }
    if counts.conflicts > 0 {
        out.push(row(
            "conflicts",
            Level::Warn,
            format!(
                "{} episode(s) whose id the receiver holds with other bytes, see {}/*/conflict.json",
                counts.conflicts,
                spool.dir(spool::CONFLICT).display()
            ),
            Some("compare with `ferry-receiver episodes list`; keep one copy and remove the directory from conflict/".into()),
        ));
    } else {
        out.push(row("conflicts", Level::Ok, "none".into(), None));
    }
}

/// The last success and the last error from the agent's state file.
fn check_last(state: &AgentState, out: &mut Vec<Check>) {
    out.push(row(
        "last success",
        Level::Ok,
        match (&state.last_success_at, &state.last_success_episode) {
            (Some(t), Some(e)) => format!("{t} ({e})"),
            (Some(t), None) => t.clone(),
            _ => "never".into(),
        },
        None,
    ));
    out.push(row(
        "last error",
        Level::Ok,
        match (&state.last_error_at, &state.last_error) {
            (Some(t), Some(e)) => format!("{t}: {e}"),
            _ => "none".into(),
        },
        None,
    ));
}

async fn check_commits(sh: &Shipper, commits: &BTreeSet<Commit>, out: &mut Vec<Check>) {
    if commits.is_empty() {
        out.push(row(
            "commits allowed",
            Level::Ok,
            "no pending episodes".into(),
            None,
        ));
        return;
    }
    let mut bad = Vec::new();
    let mut fixes = Vec::new();
    let mut unknown = Vec::new();
    for c in commits {
        match sh.get(&ferry_proto::commit_path(c), true).await {
            Ok(a) if a.status == 200 => match serde_json::from_str::<CommitCheck>(&a.body) {
                Ok(cc) if cc.allowed => {}
                Ok(cc) => {
                    bad.push(c.to_string());
                    let mut fix = format!("ferry-receiver commits allow {c}");
                    if !cc.remediation.is_empty() {
                        fix.push_str(&format!(" (or: {})", cc.remediation));
                    }
                    fixes.push(fix);
                }
                Err(_) => unknown.push(c.to_string()),
            },
            _ => unknown.push(c.to_string()),
        }
    }
    if !bad.is_empty() {
        out.push(row(
            "commits allowed",
            Level::Fail,
            format!("not on the receiver's allow-list: {}", bad.join(", ")),
            Some(fixes.join("; ")),
        ));
    } else if !unknown.is_empty() {
        out.push(row(
            "commits allowed",
            Level::Warn,
            format!("could not check: {}", unknown.join(", ")),
            None,
        ));
    } else {
        out.push(row(
            "commits allowed",
            Level::Ok,
            format!("{} commit(s) allowed", commits.len()),
            None,
        ));
    }
}

/// The `doctor` command; returns whether every check passed.
pub async fn print(cfg: &Config, config_origin: &str, json: bool) -> anyhow::Result<bool> {
    let (rows, counts, state) = checks(cfg, config_origin).await;
    let ok = rows.iter().all(|r| r.status != Level::Fail);
    if json {
        let v = serde_json::json!({
            "ok": ok,
            "checks": rows,
            "counts": counts,
            "last_success_at": state.last_success_at,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &rows {
            let tag = match r.status {
                Level::Ok => " ok ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("[{tag}] {:<22} {}", r.name, r.detail);
            if let Some(f) = &r.fix {
                if r.status != Level::Ok {
                    println!("       {:<22} fix: {f}", "");
                }
            }
        }
        println!(
            "{}",
            if ok {
                "all checks passed"
            } else {
                "some checks FAILED"
            }
        );
    }
    Ok(ok)
}
