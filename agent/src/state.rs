//! `<spool>/.ferry-agent-state.json`: the little the agent remembers across
//! restarts for `doctor` and `STATUS=` (last success, last error, shipped
//! today). Written crash-safely (a new file under a random name, so two
//! saves at once never share a temporary file); read leniently (a missing or damaged file
//! is an empty state, never a reason not to start).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsio;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    pub last_success_at: Option<String>,
    pub last_success_episode: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
    /// `YYYY-MM-DD` (UTC) that `shipped_today` counts.
    pub shipped_day: Option<String>,
    pub shipped_today: u64,
}

impl AgentState {
    pub fn load(path: &Path) -> AgentState {
        ferry_durable::safe::read_regular(path, crate::spool::SMALL_FILE_CAP)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        fsio::write_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("serialisable"),
        )
    }

    /// Shipped today, as of `now_wall` (`%Y-%m-%dT%H:%M:%SZ`).
    pub fn shipped_on(&self, now_wall: &str) -> u64 {
        if self.shipped_day.as_deref() == Some(&now_wall[..10]) {
            self.shipped_today
        } else {
            0
        }
    }

    pub fn record_success(&mut self, episode: &str, now_wall: &str) {
        let day = &now_wall[..10];
        if self.shipped_day.as_deref() != Some(day) {
            self.shipped_day = Some(day.to_string());
            self.shipped_today = 0;
        }
        self.shipped_today += 1;
        self.last_success_at = Some(now_wall.to_string());
        self.last_success_episode = Some(episode.to_string());
    }

    pub fn record_error(&mut self, error: &str, now_wall: &str) {
        self.last_error = Some(error.to_string());
        self.last_error_at = Some(now_wall.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_on_a_new_day_and_bad_files_read_empty() {
        let mut s = AgentState::default();
        s.record_success("a", "2026-01-01T10:00:00Z");
        s.record_success("b", "2026-01-01T11:00:00Z");
        assert_eq!(s.shipped_on("2026-01-01T12:00:00Z"), 2);
        assert_eq!(s.shipped_on("2026-01-02T00:00:00Z"), 0);
        s.record_success("c", "2026-01-02T00:00:01Z");
        assert_eq!(s.shipped_today, 1);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(AgentState::load(&p), AgentState::default());
        s.save(&p).unwrap();
        assert_eq!(AgentState::load(&p), s);
    }
}
