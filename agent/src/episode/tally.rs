//! Per-episode counts the agent keeps while an episode is in `episodes/`:
//! its strikes (consecutive failures of one kind, updated by
//! `proto::strikes_after`), its attempts, and the passes in a row that found
//! it changing while it was packed. Forgotten when the episode moves on.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_proto::{decide, strikes_after, Action, EpisodeId, Outcome, Strikes};

use crate::run::lock;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Record {
    pub strikes: Strikes,
    pub attempts: u32,
    /// Passes in a row that found the episode changing while it was packed.
    pub changed_passes: u32,
}

/// The records of every episode that has one.
#[derive(Debug, Default)]
pub(crate) struct Tally(Mutex<HashMap<EpisodeId, Record>>);

impl Tally {
    /// Packed whole: the run of passes that found it changing is over.
    pub fn packed(&self, id: &EpisodeId) {
        if let Some(rec) = lock(&self.0).get_mut(id) {
            rec.changed_passes = 0;
        }
    }

    /// Found changing once more; how many passes in a row now.
    pub fn changed(&self, id: &EpisodeId) -> u32 {
        let mut map = lock(&self.0);
        let rec = map.entry(id.clone()).or_default();
        rec.changed_passes += 1;
        rec.changed_passes
    }

    /// The action for `outcome` given the episode's strikes, and the record
    /// as it was before; the record is updated (or forgotten, when the
    /// action moves the episode out of `episodes/`).
    pub fn decide(&self, id: &EpisodeId, outcome: Outcome<'_>) -> (Record, Action) {
        let mut map = lock(&self.0);
        let before = map.get(id).copied().unwrap_or_default();
        let action = decide(outcome, before.strikes);
        if action.moves_episode() {
            map.remove(id);
            return (before, action);
        }
        let rec = map.entry(id.clone()).or_default();
        if action.counts_as_attempt() {
            rec.attempts += 1;
        }
        rec.strikes = strikes_after(rec.strikes, action);
        (before, action)
    }
}
