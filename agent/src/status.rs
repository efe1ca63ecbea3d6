//! `ferry-agent status`: counts from the spool only (no network), shared
//! with `doctor` and the `STATUS=` line.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use serde::Serialize;

use crate::quarantine;
use crate::scan;
use crate::spool::{self, Spool};
use crate::state::AgentState;

/// Counts of every state directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub pending: u64,
    pub writing: u64,
    pub invalid: u64,
    pub unreadable: u64,
    pub outbox: u64,
    pub partial: u64,
    pub shipped: u64,
    pub quarantined: u64,
    pub quarantine_by_reason: BTreeMap<String, u64>,
    pub conflicts: u64,
    /// `done.marker` time of the oldest pending episode (UTC), if any: how
    /// far behind the device is.
    pub oldest_pending_at: Option<String>,
    /// Resumable uploads in progress (SPEC §8), with the bytes the
    /// receiver last said it holds.
    pub resumable: Vec<Resumable>,
}

/// One resumable upload in progress.
#[derive(Debug, Clone, Serialize)]
pub struct Resumable {
    pub episode: String,
    pub offset: u64,
    pub size: u64,
}

impl Resumable {
    /// `ep-1 12.0 MiB of 32.0 MiB`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} of {}",
            self.episode,
            bytesize::ByteSize(self.offset).to_string_as(true),
            bytesize::ByteSize(self.size).to_string_as(true)
        )
    }
}

/// `read_dir`, with a missing directory read as empty (a spool the agent
/// has not prepared yet, or an old one without `conflict/`).
fn entries(spool: &Spool, dir: &str) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(spool.dir(dir)) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            crate::fsio::describe(&spool.dir(dir), &e),
        )),
    }
}

fn count_dirs(spool: &Spool, dir: &str) -> io::Result<u64> {
    let mut n = 0;
    for e in entries(spool, dir)? {
        if !e.file_name().to_string_lossy().starts_with('.') {
            n += 1;
        }
    }
    Ok(n)
}

pub fn counts(s: &Spool) -> io::Result<Counts> {
    let r = if s.dir(spool::EPISODES).exists() {
        scan::scan(s, 1, None)?
    } else {
        scan::ScanReport::default()
    };
    let mut c = Counts {
        pending: r.ready_total,
        writing: r.writing,
        invalid: r.invalid_total,
        unreadable: r.error_total,
        shipped: count_dirs(s, spool::SHIPPED)?,
        conflicts: count_dirs(s, spool::CONFLICT)?,
        oldest_pending_at: r
            .batch
            .first()
            .map(|r| humantime::format_rfc3339_seconds(r.done_at).to_string()),
        ..Counts::default()
    };
    for e in entries(s, spool::OUTBOX)? {
        let name = e.file_name();
        let name = name.to_string_lossy();
        match spool::parse_outbox_name(&name) {
            Some((_, true)) => c.partial += 1,
            Some((_, false)) => c.outbox += 1,
            None => {}
        }
        // A resumable upload in progress, by its record.
        let Some(id) = spool::parse_upload_record_name(&name) else {
            continue;
        };
        if let Some(r) = crate::resumable::read_record(s, &id) {
            c.resumable.push(Resumable {
                episode: id.to_string(),
                offset: r.offset,
                size: r.size,
            });
        }
    }
    c.resumable.sort_by(|a, b| a.episode.cmp(&b.episode));
    let (ids, bad) = if s.dir(spool::QUARANTINE).exists() {
        quarantine::list_ids(s)?
    } else {
        Default::default()
    };
    c.quarantined = ids.len() as u64 + bad.len() as u64;
    for id in ids {
        let kind = match quarantine::read_reason(s, &id) {
            Ok(r) => r.kind_str().to_string(),
            Err(_) => "unreadable-reason".to_string(),
        };
        *c.quarantine_by_reason.entry(kind).or_default() += 1;
    }
    Ok(c)
}

/// The `status` command.
pub fn print(s: &Spool, json: bool) -> anyhow::Result<()> {
    let c = counts(s)?;
    let st = AgentState::load(&s.state_file());
    if json {
        let v = serde_json::json!({
            "spool": s.root(),
            "counts": c,
            "last_success_at": st.last_success_at,
            "last_error": st.last_error,
            "last_error_at": st.last_error_at,
            "shipped_today": st.shipped_on(&spool::now_wall()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("spool        {}", s.root().display());
    match &c.oldest_pending_at {
        Some(t) => println!("pending      {} (oldest finished {t})", c.pending),
        None => println!("pending      {}", c.pending),
    }
    println!("writing      {}", c.writing);
    println!("outbox       {} (+{} partial)", c.outbox, c.partial);
    for r in &c.resumable {
        println!("  resumable  {} (as the receiver last said)", r.describe());
    }
    println!("shipped      {}", c.shipped);
    println!("quarantined  {}", c.quarantined);
    for (k, n) in &c.quarantine_by_reason {
        println!("  {k:<22} {n}");
    }
    println!("conflicts    {}", c.conflicts);
    if c.invalid > 0 {
        println!(
            "invalid      {} (names that are not episode ids; never shipped)",
            c.invalid
        );
    }
    if c.unreadable > 0 {
        println!("unreadable   {}", c.unreadable);
    }
    println!(
        "last success {}",
        st.last_success_at.as_deref().unwrap_or("never")
    );
    if let Some(e) = &st.last_error {
        println!(
            "last error   {} ({})",
            e,
            st.last_error_at.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
