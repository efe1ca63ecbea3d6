//! 409: the receiver holds different bytes under this id. The episode moves
//! to `conflict/<id>/` with `conflict.json` and is never shipped again by
//! itself; `doctor` lists it. Told at ERROR and counted, so that `drain`
//! exits 1.

use std::io;
use std::sync::atomic::Ordering;

use ferry_proto::{Commit, EpisodeId, Sha256};
use serde::{Deserialize, Serialize};

use crate::episode::Detail;
use crate::fsio;
use crate::run::{blocking, Agent};
use crate::spool::{self, Spool, CONFLICT_FILE};

/// Contents of `conflict.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub episode_id: String,
    /// Our sha256 (the bytes we tried to ship).
    pub sha256: String,
    /// The sha256 the receiver holds, when it said.
    pub existing_sha256: Option<String>,
    pub commit: String,
    /// UTC `%Y-%m-%dT%H:%M:%SZ`.
    pub at: String,
}

/// Move the episode to `conflict/` and record both digests.
pub fn park(
    spool: &Spool,
    id: &EpisodeId,
    ours: &Sha256,
    theirs: Option<&str>,
    commit: &Commit,
) -> io::Result<()> {
    let dest = spool.conflict_dir(id);
    fsio::move_dir_replacing(&spool.episode_dir(id), &dest)?;
    let rec = ConflictRecord {
        episode_id: id.to_string(),
        sha256: ours.to_string(),
        existing_sha256: theirs.map(str::to_owned),
        commit: commit.to_string(),
        at: spool::now_wall(),
    };
    let text = serde_json::to_vec_pretty(&rec).expect("serialisable");
    // Into the producer's directory: see `Spool::write_record`.
    spool.write_record(spool::CONFLICT, id, CONFLICT_FILE, &text)?;
    spool.remove_tarballs(id)
}

/// Execute `Action::Conflict` for an answered upload.
pub(crate) async fn execute(
    agent: &Agent,
    id: &EpisodeId,
    commit: Option<&Commit>,
    sha: Option<&Sha256>,
    detail: &Detail,
) {
    let (sp, i, c, s, theirs) = (
        agent.spool.clone(),
        id.clone(),
        commit.cloned(),
        sha.cloned(),
        detail.existing_sha256.clone(),
    );
    let moved = blocking(move || match (c, s) {
        (Some(c), Some(s)) => park(&sp, &i, &s, theirs.as_deref(), &c),
        _ => Err(std::io::Error::other("conflict without commit or digest")),
    })
    .await;
    let msg = format!(
        "{id}: the receiver holds different bytes under this id ({}); moved to conflict/, not shipped again. Compare and remove one copy, see `ferry-agent doctor`",
        detail.error
    );
    match moved {
        Ok(()) => {
            agent.conflicts.fetch_add(1, Ordering::Relaxed);
            agent.metrics.conflict();
            tracing::error!("{msg}")
        }
        Err(e) => tracing::error!("{msg}; but moving it failed: {e}"),
    }
    agent.left_episodes();
    agent.record_error(&msg).await;
}
