//! The command line (SPEC §5), parsed with clap derive, and the small
//! commands that need no daemon: `quarantine list|show|retry|purge`.
//! The common options are global, so they may come before or after a
//! subcommand's arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_proto::EpisodeId;

use crate::config::Flags;
use crate::quarantine;
use crate::spool::Spool;

#[derive(Debug, Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Packs finished episodes and ships them to ferry-receiver."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Configuration file (TOML). Default: $FERRY_AGENT_CONFIG, else
    /// /etc/ferry/agent.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Spool directory (key `spool`).
    #[arg(long, global = true, value_name = "DIR")]
    pub spool: Option<String>,
    /// Receiver base URL (key `receiver`).
    #[arg(long, global = true, value_name = "URL")]
    pub receiver: Option<String>,
    /// File holding the device token (key `token_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<String>,
}

impl Common {
    pub fn flags(&self) -> Flags {
        Flags {
            config: self.config.clone(),
            spool: self.spool.clone(),
            receiver: self.receiver.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The daemon: scan, pack and ship until SIGTERM.
    Run,
    /// Ship everything that is ready, then exit (0: nothing left pending and
    /// nothing parked in conflict/ by this drain; 1 otherwise).
    Drain {
        /// Give up after this long (exit 1 if episodes remain pending).
        #[arg(long, value_parser = parse_duration, value_name = "DUR")]
        timeout: Option<Duration>,
    },
    /// Pack a directory deterministically; prints the sha256.
    Pack {
        /// The episode directory (its name is the archive's root).
        dir: PathBuf,
        /// Output file.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Check configuration, spool, receiver, token and commits.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Counts from the spool.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Inspect and re-drive quarantined episodes.
    Quarantine {
        #[command(subcommand)]
        cmd: QuarantineCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCmd {
    /// List quarantined episodes with their reason.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one quarantined episode's reason and files.
    Show { id: String },
    /// Move episodes back to episodes/ to be shipped again.
    Retry {
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every quarantined episode.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete quarantined episodes for good.
    Purge {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// A usage problem (exit 2) or an operation failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

fn parse_ids(ids: &[String]) -> Result<Vec<EpisodeId>, CliError> {
    ids.iter()
        .map(|s| EpisodeId::parse(s).map_err(|e| CliError::Usage(format!("{s:?}: {e}"))))
        .collect()
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

pub fn quarantine_cmd(spool: &Spool, cmd: &QuarantineCmd) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Failed(e.to_string());
    match cmd {
        QuarantineCmd::List { json } => {
            let (ids, bad) = quarantine::list_ids(spool).map_err(io)?;
            let mut rows = Vec::new();
            for id in &ids {
                let r = quarantine::read_reason(spool, id).unwrap_or_else(|e| quarantine::Reason {
                    error: format!("cannot read reason: {e}"),
                    ..Default::default()
                });
                rows.push((id, r));
            }
            if *json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, r)| {
                        let mut v = r.to_json();
                        v["episode_id"] = serde_json::Value::String(id.to_string());
                        v["kind"] = serde_json::Value::from(r.kind_str());
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                if rows.is_empty() {
                    println!("quarantine is empty");
                }
                for (id, r) in &rows {
                    println!(
                        "{id}\t{}\t{}\t{}\t{}",
                        r.kind_str(),
                        r.status_code.map_or("-".to_string(), |c| c.to_string()),
                        r.quarantined_at_wall.as_deref().unwrap_or("-"),
                        one_line(&r.error, 120)
                    );
                }
            }
            for b in bad {
                eprintln!("skipped {b:?}: not a valid episode id");
            }
            Ok(())
        }
        QuarantineCmd::Show { id } => {
            let id = parse_ids(std::slice::from_ref(id))?.remove(0);
            let dir = spool.quarantine_dir(&id);
            if !dir.is_dir() {
                return Err(CliError::Failed(quarantine::not_here(spool, &id)));
            }
            let r = quarantine::read_reason(spool, &id).map_err(io)?;
            let mut v = r.to_json();
            v["episode_id"] = serde_json::Value::String(id.to_string());
            v["kind"] = serde_json::Value::from(r.kind_str());
            v["path"] = serde_json::Value::String(dir.display().to_string());
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            Ok(())
        }
        QuarantineCmd::Retry { ids, all } => {
            let ids = if *all {
                quarantine::list_ids(spool).map_err(io)?.0
            } else {
                parse_ids(ids)?
            };
            each(&ids, "re-queued", "re-queue", |id| {
                quarantine::requeue(spool, id)
            })
        }
        QuarantineCmd::Purge { ids } => {
            let ids = parse_ids(ids)?;
            each(&ids, "purged", "purge", |id| quarantine::purge(spool, id))
        }
    }
}

/// Apply `f` to every id, reporting each; fail if any failed.
fn each(
    ids: &[EpisodeId],
    done: &str,
    verb: &str,
    f: impl Fn(&EpisodeId) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let mut failed = Vec::new();
    for id in ids {
        match f(id) {
            Ok(()) => println!("{done} {id}"),
            Err(e) => {
                eprintln!("cannot {verb} {id}: {e}");
                failed.push(id.to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "could not {verb}: {}",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_go_before_or_after_arguments() {
        let a = Cli::try_parse_from([
            "ferry-agent",
            "quarantine",
            "retry",
            "a",
            "--spool",
            "/s",
            "b",
        ])
        .unwrap();
        assert_eq!(a.common.spool.as_deref(), Some("/s"));
        let Cmd::Quarantine {
            cmd: QuarantineCmd::Retry { ids, all },
        } = a.cmd
        else {
            panic!()
        };
        assert_eq!(ids, ["a", "b"]);
        assert!(!all);
        let a = Cli::try_parse_from(["ferry-agent", "--config", "/c", "drain", "--timeout", "30s"])
            .unwrap();
        assert_eq!(a.common.config, Some(PathBuf::from("/c")));
        assert!(matches!(a.cmd, Cmd::Drain { timeout: Some(t) } if t == Duration::from_secs(30)));
        let a = Cli::try_parse_from(["ferry-agent", "pack", "-o", "x.tar.zst", "dir"]).unwrap();
        assert!(matches!(a.cmd, Cmd::Pack { .. }));
        assert!(Cli::try_parse_from(["ferry-agent", "quarantine", "retry"]).is_err());
        assert!(Cli::try_parse_from(["ferry-agent", "quarantine", "retry", "--all"]).is_ok());
        assert!(Cli::try_parse_from([
            "ferry-agent",
            "run",
            "--token-file",
            "/t",
            "--receiver",
            "http://x"
        ])
        .is_ok());
    }
}
