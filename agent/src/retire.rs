//! 200/201: the receiver holds the episode durably. Move it to `shipped/`
//! and delete the tarball, in that order: a crash in between leaves an
//! orphan tarball (swept later), never a shipped episode shipped twice.
//! Then the books: the back-off ends, the success is logged and saved in
//! the agent's state (after the move, so a crash before it loses only the
//! line in `doctor`).

use std::io;

use ferry_proto::{EpisodeId, Sha256};

use crate::episode::Detail;
use crate::fsio;
use crate::run::{blocking, lock, Agent};
use crate::spool::{self, Spool};

pub fn retire(spool: &Spool, id: &EpisodeId) -> io::Result<()> {
    fsio::move_dir_replacing(&spool.episode_dir(id), &spool.shipped_dir(id))?;
    spool.remove_tarballs(id)
}

/// Execute `Action::Retire` for an answered upload.
pub(crate) async fn execute(agent: &Agent, id: &EpisodeId, sha: Option<&Sha256>, detail: &Detail) {
    let (sp, i) = (agent.spool.clone(), id.clone());
    match blocking(move || retire(&sp, &i)).await {
        Ok(()) => {
            agent.gate.succeed();
            *lock(&agent.device_logged) = None;
            tracing::info!(episode = %id, sha256 = %sha.map(|s| s.as_str()).unwrap_or(""), answer = %detail.error, "shipped");
            agent.left_episodes();
            agent.metrics.shipped();
            let now = spool::now_wall();
            let st = {
                let mut st = lock(&agent.state);
                st.record_success(id.as_str(), &now);
                st.clone()
            };
            agent.save_state(st).await;
        }
        Err(e) => {
            let msg = format!(
                "shipped {id} but cannot retire it: {}",
                fsio::describe(&agent.spool.episode_dir(id), &e)
            );
            tracing::error!("{msg}");
            agent.record_error(&msg).await;
        }
    }
}
