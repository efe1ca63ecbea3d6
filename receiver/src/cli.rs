//! The admin commands: `commits`, `devices`, `episodes`. They open the same
//! index as `serve` (SQLite in WAL mode allows that while it runs) and need
//! no running server; `serve` caches nothing, so a change is in force for
//! the next request.

use std::io::Write;
use std::sync::Arc;

use ferry_proto::admin::{AllowCommit, VerifyFinding, VerifyState};

use crate::config::Config;
use crate::ops::{self, OpError};
use crate::store::{self, Index};

/// Exit codes (SPEC §5).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// One admin command, as parsed by `main`.
#[derive(Debug, Clone)]
pub enum Admin {
    CommitsAllow {
        commit: String,
        head: bool,
        note: Option<String>,
    },
    CommitsRevoke {
        commit: String,
    },
    CommitsList {
        json: bool,
    },
    CommitsRejected {
        json: bool,
    },
    DevicesAdd {
        name: String,
    },
    DevicesList {
        json: bool,
    },
    DevicesRevoke {
        name: String,
    },
    DevicesRename {
        old: String,
        new: String,
    },
    EpisodesList {
        device: Option<String>,
        json: bool,
    },
    /// `DEVICE/ID` (or an id one device alone stored) each; all episodes
    /// when empty.
    EpisodesVerify {
        refs: Vec<String>,
    },
}

fn fail(e: OpError) -> i32 {
    eprintln!("error: {e}");
    match e {
        OpError::Invalid(_) => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> i32 {
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer_pretty(&mut out, v).map(|()| writeln!(out)) {
        Ok(_) => EXIT_OK,
        Err(e) => {
            eprintln!("error: writing JSON: {e}");
            EXIT_FAILED
        }
    }
}

/// Runs one admin command and returns the exit code.
pub async fn run(config: &Config, cmd: Admin) -> i32 {
    let index = match store::open(config).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot open the index: {e}");
            return EXIT_FAILED;
        }
    };
    match execute(config, &index, cmd).await {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

async fn execute(config: &Config, index: &Arc<dyn Index>, cmd: Admin) -> Result<i32, OpError> {
    match cmd {
        Admin::CommitsAllow { commit, head, note } => {
            let c = ops::allow_commit(index, &AllowCommit { commit, head, note }).await?;
            eprintln!(
                "allowed {}{}",
                c.commit,
                if c.head { " (head)" } else { "" }
            );
        }
        Admin::CommitsRevoke { commit } => {
            ops::revoke_commit(index, &commit).await?;
            eprintln!("revoked {}", commit.trim().to_ascii_lowercase());
        }
        Admin::CommitsList { json } => return commits_list(index, json).await,
        Admin::CommitsRejected { json } => return commits_rejected(config, index, json).await,
        Admin::DevicesAdd { name } => {
            let d = ops::add_device(index, &name).await?;
            // The token alone on stdout, so that scripts can capture it.
            println!("{}", d.token);
            eprintln!(
                "added device {}; the token above is shown only once",
                d.name
            );
        }
        Admin::DevicesList { json } => return devices_list(index, json).await,
        Admin::DevicesRevoke { name } => {
            ops::revoke_device(index, &name).await?;
            eprintln!("revoked device {name}");
        }
        Admin::DevicesRename { old, new } => {
            ops::rename_device(index, &old, &new).await?;
            eprintln!("renamed device {old} to {new}; it keeps its token and its episodes");
        }
        Admin::EpisodesList { device, json } => {
            return episodes_list(index, device.as_deref(), json).await
        }
        Admin::EpisodesVerify { refs } => {
            let objects = crate::store::objects::open(config)?;
            let findings = ops::verify(index, &*objects, &refs).await?;
            return Ok(report(&findings));
        }
    }
    Ok(EXIT_OK)
}

/// `commits list`: the allow-list, the head marked.
async fn commits_list(index: &Arc<dyn Index>, json: bool) -> Result<i32, OpError> {
    let list: Vec<_> = index
        .list_commits()
        .await?
        .iter()
        .map(ops::commit_info)
        .collect();
    if json {
        return Ok(print_json(&list));
    }
    for c in list {
        println!(
            "{}  {:4}  {}  {}",
            c.commit,
            if c.head { "head" } else { "" },
            c.allowed_at,
            c.note.unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}

/// `commits rejected`: the commits devices were refused for, by device,
/// each with the command that allows it.
async fn commits_rejected(
    config: &Config,
    index: &Arc<dyn Index>,
    json: bool,
) -> Result<i32, OpError> {
    // This process tallies nothing: the list is what the running
    // receiver has flushed (every few seconds).
    let pending = crate::rejected::Rejections::default();
    let list = crate::rejected::list(&**index, &pending, config.rejected_window).await?;
    if json {
        return Ok(print_json(&list));
    }
    if list.is_empty() {
        eprintln!(
            "no commit was rejected in the last {}",
            humantime::format_duration(config.rejected_window)
        );
    }
    for c in list {
        println!(
            "{}  attempts={}  first_seen={}  last_seen={}",
            c.commit, c.attempts, c.first_seen, c.last_seen
        );
        for d in &c.devices {
            println!(
                "    {}  attempts={}  first_seen={}  last_seen={}",
                d.device, d.attempts, d.first_seen, d.last_seen
            );
        }
        println!("    allow: {}", c.allow_command);
    }
    Ok(EXIT_OK)
}

/// `devices list`: every device, active or revoked, with its last contact
/// and what it stored.
async fn devices_list(index: &Arc<dyn Index>, json: bool) -> Result<i32, OpError> {
    let list: Vec<_> = index
        .list_devices()
        .await?
        .iter()
        .map(ops::device_info)
        .collect();
    if json {
        return Ok(print_json(&list));
    }
    for d in list {
        println!(
            "{}  {}  last_seen={}  last_upload={}  episodes={}  bytes={}",
            d.name,
            if d.revoked { "revoked" } else { "active" },
            d.last_seen_at.as_deref().unwrap_or("never"),
            d.last_upload_at.as_deref().unwrap_or("never"),
            d.episodes,
            d.bytes
        );
    }
    Ok(EXIT_OK)
}

/// `episodes list`: the stored episodes, of one device or of all.
async fn episodes_list(
    index: &Arc<dyn Index>,
    device: Option<&str>,
    json: bool,
) -> Result<i32, OpError> {
    let list: Vec<_> = ops::list_episodes(index, device, None)
        .await?
        .iter()
        .map(ops::episode_info)
        .collect();
    if json {
        return Ok(print_json(&list));
    }
    for e in list {
        println!(
            "{}/{}  {}  {}  {}  {}",
            e.device, e.episode_id, e.sha256, e.size, e.commit, e.stored_at
        );
    }
    Ok(EXIT_OK)
}

/// Prints every finding that is not `ok` and a summary; 1 if any.
fn report(findings: &[VerifyFinding]) -> i32 {
    let mut bad = 0;
    for f in findings.iter().filter(|f| f.state != VerifyState::Ok) {
        bad += 1;
        println!(
            "{}/{}: {} (expected sha256 {}{}){}",
            f.device,
            f.episode_id,
            f.state.as_str().to_uppercase(),
            f.expected_sha256,
            f.actual_sha256
                .as_deref()
                .map(|a| format!(", found {a}"))
                .unwrap_or_default(),
            f.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    let counts: Vec<String> = VerifyState::ALL
        .iter()
        .map(|s| format!("{} {s}", findings.iter().filter(|f| f.state == *s).count()))
        .collect();
    println!(
        "verified {} episodes: {}",
        findings.len(),
        counts.join(", ")
    );
    if bad > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}
