//! The action for one attempt, executed. The decision is `proto`'s
//! (`decide`, with the strikes `tally` keeps); the moves out of
//! `episodes/` are the action modules' (`retire`, `quarantine`,
//! `conflict`: each its effects, its log lines and its text); what stays
//! here touches no episode directory: re-pack, the two back-offs, a skipped
//! pass, an abandoned upload.
//!
//! To add an action: a row in `proto::decide`, its strike rule in
//! `proto::strikes_after`, and an arm below (a module of its own when it
//! moves the episode).

use std::time::Duration;

use ferry_proto::{Action, EpisodeId, Outcome};
use serde_json::Value;
use tokio::time::Instant;

use super::tally::Record;
use super::{log_aborted, Detail, Happened, Step};
use crate::run::{blocking, lock, Agent};
use crate::{conflict, quarantine, retire};

/// Execute the table's action for one attempt; the next step is the start
/// again when the episode must be re-packed and shipped now.
pub(super) async fn act<'a>(agent: &'a Agent, id: &EpisodeId, h: Box<Happened<'a>>) -> Step<'a> {
    let outcome = h.what.outcome(id);
    let (before, action) = agent.tally.decide(id, outcome);
    let attempts = before.attempts + 1;
    let (commit, sha256, detail) = (h.commit.as_ref(), h.what.sha256(), &h.detail);
    match action {
        Action::Retire => retire::execute(agent, id, sha256, detail).await,
        Action::Conflict => conflict::execute(agent, id, commit, sha256, detail).await,
        Action::Quarantine(kind) => {
            quarantine::execute(agent, id, kind, commit, attempts, detail).await
        }
        Action::Repack => return repack(agent, id, &before).await,
        Action::DeviceBackoff => device_backoff(agent, detail).await,
        Action::Backoff { retry_after } => backoff(agent, id, outcome, retry_after, detail).await,
        Action::SkipThisPass => skip_this_pass(agent, id, &before, detail).await,
        Action::Abandon => log_aborted(id, "while uploading"),
    }
    Step::Done
}

/// A digest mismatch under the limit: delete the tarball and start again.
async fn repack<'a>(agent: &'a Agent, id: &EpisodeId, before: &Record) -> Step<'a> {
    tracing::warn!(episode = %id, "digest mismatch reported by the receiver; re-packing ({} of {})", before.strikes.digest_mismatch + 1, ferry_proto::action::DIGEST_MISMATCH_LIMIT);
    let (sp, i) = (agent.spool.clone(), id.clone());
    if let Err(e) = blocking(move || sp.remove_tarballs(&i)).await {
        tracing::error!(episode = %id, "cannot delete the tarball to re-pack: {e}");
        return Step::Done;
    }
    Step::Found
}

/// 401/403: all shipping waits; the operator is told at most once per
/// `backoff_max` at ERROR (the rest at DEBUG).
async fn device_backoff(agent: &Agent, detail: &Detail) {
    let delay = agent.gate.fail(None);
    let due = {
        let mut last = lock(&agent.device_logged);
        let due = last.is_none_or(|t| t.elapsed() >= agent.cfg.backoff_max);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    let msg = format!(
        "the receiver refuses this device ({}): check token_file {} holds the token printed by `ferry-receiver devices add NAME` (a revoked device needs a new one); all shipping paused, retrying in {}",
        detail.error,
        agent.shipper.token_file().display(),
        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
    );
    if due {
        tracing::error!("{msg}");
    } else {
        tracing::debug!("{msg}");
    }
    agent.record_error(&msg).await;
}

/// Transient: the tarball stays, all shipping waits.
async fn backoff(
    agent: &Agent,
    id: &EpisodeId,
    outcome: Outcome<'_>,
    retry_after: Option<Duration>,
    detail: &Detail,
) {
    let delay = agent.gate.fail(retry_after);
    let what = if outcome == Outcome::DiskFull {
        "device disk problem writing the outbox"
    } else {
        "transient failure"
    };
    let error = match ferry_proto::action::unconfirmed(outcome) {
        Some(why) => untrusted(&detail.error, why, &detail.body),
        None => detail.error.clone(),
    };
    let msg = format!(
        "{what} shipping {id}: {error}; tarball kept, retrying in {}",
        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
    );
    tracing::warn!("{msg}");
    agent.record_error(&msg).await;
}

/// Longest part of an untrusted answer's body quoted in the log.
const BODY_EXCERPT: usize = 200;

/// Why a 200/201 was not taken as the receiver's word that it holds the
/// episode, for the operator: most likely something on the way answers in
/// its stead, so the start of its body is quoted.
fn untrusted(error: &str, why: ferry_proto::action::Unconfirmed<'_>, body: &Value) -> String {
    let body = match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut excerpt: String = body.chars().take(BODY_EXCERPT).collect();
    if excerpt.len() < body.len() {
        excerpt.push('…');
    }
    format!(
        "the answer {error} is not trusted: {why}, so it does not say the receiver holds this episode (a proxy or captive portal answering in its stead?); body: {excerpt:?}"
    )
}

/// A local read error under the limit: reported with the pass's others.
async fn skip_this_pass(agent: &Agent, id: &EpisodeId, before: &Record, detail: &Detail) {
    lock(&agent.pass_errors).push(format!(
        "{id} (strike {} of {}): {}",
        before.strikes.local_read + 1,
        ferry_proto::action::LOCAL_READ_LIMIT,
        detail.error
    ));
    agent
        .record_error(&format!("{id} unreadable: {}", detail.error))
        .await;
}
