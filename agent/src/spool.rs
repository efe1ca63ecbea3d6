//! The spool layout of SPEC §1 and the closed [`EpisodeState`] enum. Paths
//! are built here and nowhere else; every move between states is one
//! crash-safe rename (see `fsio`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_proto::{Commit, EpisodeId};

use ferry_durable::safe;

use crate::fsio;

pub const EPISODES: &str = "episodes";
pub const OUTBOX: &str = "outbox";
pub const SHIPPED: &str = "shipped";
pub const QUARANTINE: &str = "quarantine";
pub const CONFLICT: &str = "conflict";
pub const DONE_MARKER: &str = "done.marker";
pub const META: &str = "meta.json";
pub const REASON_FILE: &str = "quarantine_reason.json";
pub const CONFLICT_FILE: &str = "conflict.json";
pub const STATE_FILE: &str = ".ferry-agent-state.json";
pub const LOCK_FILE: &str = ".ferry-agent.lock";
/// The most of `meta.json`, a reason file or the state file that is read:
/// a producer may put anything there (a sparse 1 GB file, `/dev/zero`).
pub const SMALL_FILE_CAP: u64 = 1 << 20;
const TARBALL_EXT: &str = ".tar.zst";
const PARTIAL_EXT: &str = ".tar.zst.partial";
pub const UPLOAD_EXT: &str = ".upload.json";

/// Where an episode is in its life. One directory per state; an episode is
/// in exactly one of them (the outbox tarball is a cache of `Pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpisodeState {
    /// In `episodes/` without `done.marker`: the producer is still writing.
    Writing,
    /// In `episodes/` with `done.marker`: to be packed and shipped.
    Pending,
    /// In `shipped/`: the receiver acknowledged it (200/201).
    Shipped,
    /// In `quarantine/`: parked with a reason.
    Quarantined,
    /// In `conflict/`: the receiver holds different bytes under this id.
    Conflict,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeState::Writing => "writing",
            EpisodeState::Pending => "pending",
            EpisodeState::Shipped => "shipped",
            EpisodeState::Quarantined => "quarantined",
            EpisodeState::Conflict => "conflict",
        }
    }
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    pub fn new(root: impl Into<PathBuf>) -> Spool {
        Spool { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create the state directories that are missing (an old spool may
    /// lack `conflict/`), and prove the spool is writable.
    pub fn prepare(&self) -> io::Result<()> {
        for d in [EPISODES, OUTBOX, SHIPPED, QUARANTINE, CONFLICT] {
            fs::create_dir_all(self.root.join(d))?;
        }
        self.probe_writable()
    }

    /// Prove the spool root is writable (a file written crash-safely and
    /// removed), creating nothing else: what `doctor` checks.
    pub fn probe_writable(&self) -> io::Result<()> {
        let probe = self
            .root
            .join(format!(".ferry-agent-probe-{}", std::process::id()));
        fsio::write_atomic(&probe, b"ok")?;
        fs::remove_file(&probe)
    }

    pub fn dir(&self, state_dir: &str) -> PathBuf {
        self.root.join(state_dir)
    }

    pub fn episode_dir(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(EPISODES).join(id.as_str())
    }

    pub fn shipped_dir(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(SHIPPED).join(id.as_str())
    }

    pub fn quarantine_dir(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(QUARANTINE).join(id.as_str())
    }

    pub fn conflict_dir(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(CONFLICT).join(id.as_str())
    }

    pub fn tarball(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(OUTBOX).join(format!("{id}{TARBALL_EXT}"))
    }

    /// `outbox/<id>.upload.json`: the resumable upload of the tarball
    /// (SPEC §8), kept beside it.
    pub fn upload_record(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(OUTBOX).join(format!("{id}{UPLOAD_EXT}"))
    }

    pub fn partial(&self, id: &EpisodeId) -> PathBuf {
        self.root.join(OUTBOX).join(format!("{id}{PARTIAL_EXT}"))
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// The state of an episode, looked up on disk (for the CLI).
    pub fn state_of(&self, id: &EpisodeId) -> Option<EpisodeState> {
        let ep = self.episode_dir(id);
        if ep.is_dir() {
            // Not followed, as the scan looks at it.
            return Some(if ep.join(DONE_MARKER).symlink_metadata().is_ok() {
                EpisodeState::Pending
            } else {
                EpisodeState::Writing
            });
        }
        [
            (self.shipped_dir(id), EpisodeState::Shipped),
            (self.quarantine_dir(id), EpisodeState::Quarantined),
            (self.conflict_dir(id), EpisodeState::Conflict),
        ]
        .into_iter()
        .find(|(p, _)| p.is_dir())
        .map(|(_, s)| s)
    }

    /// Write `name` (a reason or conflict record) into `<state_dir>/<id>/`,
    /// an episode directory the producer made: opened without following a
    /// symlink, the file made `O_EXCL|O_NOFOLLOW` under a random name and
    /// renamed over `name` (see `ferry_durable::safe::Dir::replace`).
    pub fn write_record(
        &self,
        state_dir: &str,
        id: &EpisodeId,
        name: &str,
        bytes: &[u8],
    ) -> io::Result<()> {
        safe::Dir::open(&self.dir(state_dir))?
            .open_dir(id.as_str().as_ref())?
            .replace(name.as_ref(), bytes)
    }

    /// Delete the tarball (and a partial one) of an episode, durably.
    /// The tarball, its partial and its resumable upload's record: a
    /// record names an upload of this tarball's bytes only.
    pub fn remove_tarballs(&self, id: &EpisodeId) -> io::Result<()> {
        fsio::remove_file_durable(&self.tarball(id))?;
        fsio::remove_file_durable(&self.partial(id))?;
        fsio::remove_file_durable(&self.upload_record(id))
    }
}

/// Classify an outbox file name: `(id, is_partial)`.
/// The episode whose resumable upload record (`<id>.upload.json`) `name`
/// is.
pub fn parse_upload_record_name(name: &str) -> Option<EpisodeId> {
    EpisodeId::parse(name.strip_suffix(UPLOAD_EXT)?).ok()
}

pub fn parse_outbox_name(name: &str) -> Option<(EpisodeId, bool)> {
    if let Some(stem) = name.strip_suffix(PARTIAL_EXT) {
        return EpisodeId::parse(stem).ok().map(|id| (id, true));
    }
    let stem = name.strip_suffix(TARBALL_EXT)?;
    EpisodeId::parse(stem).ok().map(|id| (id, false))
}

/// Why the commit of an episode could not be had.
#[derive(Debug)]
pub enum MetaError {
    /// `meta.json` could not be read (EIO, …): maybe temporary.
    Read { path: PathBuf, source: io::Error },
    /// `meta.json` is missing or names no valid commit: permanent.
    NoCommit(String),
}

/// The commit in `<dir>/meta.json` (`{"code_version": {"commit": …}}`),
/// accepting upper case and surrounding whitespace.
pub fn read_commit(episode_dir: &Path) -> Result<Commit, MetaError> {
    let path = episode_dir.join(META);
    // Opened O_NOFOLLOW|O_NONBLOCK and fstat'ed: a FIFO does not hang the
    // agent, a symlink is not followed, and at most SMALL_FILE_CAP is read.
    let bytes = match safe::read_regular(&path, SMALL_FILE_CAP) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MetaError::NoCommit(format!("{META} is missing")))
        }
        Err(e) if safe::is_too_large(&e) => {
            return Err(MetaError::NoCommit(format!("{META} is {e}")))
        }
        Err(e) => match safe::not_regular(&e) {
            Some(kind) => {
                return Err(MetaError::NoCommit(format!(
                    "{META} is {}, not a regular file (not followed, not read)",
                    kind.name()
                )))
            }
            None => return Err(MetaError::Read { path, source: e }),
        },
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| MetaError::NoCommit(format!("{META} is not valid JSON: {e}")))?;
    let c = v
        .get("code_version")
        .and_then(|cv| cv.get("commit"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| MetaError::NoCommit(format!("{META} has no code_version.commit")))?;
    Commit::parse_lenient(c)
        .map_err(|e| MetaError::NoCommit(format!("{META} code_version.commit is invalid: {e}")))
}

/// Current UTC time as `%Y-%m-%dT%H:%M:%SZ`.
pub fn now_wall() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_read_leniently() {
        let d = tempfile::tempdir().unwrap();
        let c = "0123456789ABCDEF0123456789abcdef01234567";
        fs::write(
            d.path().join(META),
            format!("{{\"code_version\": {{\"commit\": \" {c}\\n\"}}, \"x\": 1}}"),
        )
        .unwrap();
        assert_eq!(
            read_commit(d.path()).unwrap().as_str(),
            c.to_ascii_lowercase()
        );
        fs::write(d.path().join(META), "{\"code_version\": {}}").unwrap();
        assert!(matches!(read_commit(d.path()), Err(MetaError::NoCommit(_))));
        fs::remove_file(d.path().join(META)).unwrap();
        assert!(matches!(read_commit(d.path()), Err(MetaError::NoCommit(_))));
        std::os::unix::fs::symlink("/dev/zero", d.path().join(META)).unwrap();
        let Err(MetaError::NoCommit(why)) = read_commit(d.path()) else {
            panic!("a symlinked meta.json is no commit")
        };
        assert!(why.contains("symlink"), "{why}");
    }

    #[test]
    fn outbox_names() {
        let (id, p) = parse_outbox_name("ep1.tar.zst.partial").unwrap();
        assert_eq!((id.as_str(), p), ("ep1", true));
        let (id, p) = parse_outbox_name("ep1.tar.zst").unwrap();
        assert_eq!((id.as_str(), p), ("ep1", false));
        assert!(parse_outbox_name("x.txt").is_none());
        assert!(parse_outbox_name("..tar.zst").is_none());
    }

    #[test]
    fn wall_time_format() {
        let s = now_wall();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T');
    }
}
