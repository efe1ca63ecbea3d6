//! Operator operations shared by the command line (`cli.rs`) and the admin
//! API (`http/admin.rs`), so both validate and answer alike.

use std::sync::Arc;

use ferry_proto::admin::{
    AllowCommit, CommitInfo, DeviceInfo, EpisodeInfo, NewDevice, VerifyFinding, VerifyState,
};
use ferry_proto::{Commit, EpisodeId, Sha256};

use crate::store::objects::Objects;
use crate::store::{
    format_time, unix_now, AddDevice, AllowedCommit, Device, Episode, Index, IndexError,
    RenameDevice,
};
use crate::tokens;

/// Why an operator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] crate::store::objects::StoreError),
}

/// Device names follow the episode id grammar: one safe, printable token.
pub fn check_device_name(name: &str) -> Result<(), OpError> {
    EpisodeId::parse(name).map(|_| ()).map_err(|e| {
        OpError::Invalid(format!(
            "device name {name:?}: {}",
            e.to_string().replace("episode id", "name")
        ))
    })
}

/// Registers a device and returns its token, which is shown only now.
pub async fn add_device(index: &Arc<dyn Index>, name: &str) -> Result<NewDevice, OpError> {
    check_device_name(name)?;
    let token = tokens::generate();
    match index
        .add_device(name, &tokens::hash(&token), unix_now())
        .await?
    {
        AddDevice::Added => Ok(NewDevice {
            name: name.to_owned(),
            token,
        }),
        AddDevice::NameTaken => Err(OpError::Exists(format!(
            "a device named {name:?} already exists (revoked devices keep their name)"
        ))),
    }
}

pub async fn revoke_device(index: &Arc<dyn Index>, name: &str) -> Result<(), OpError> {
    if index.revoke_device(name).await? {
        Ok(())
    } else {
        Err(OpError::NotFound(format!("no device named {name:?}")))
    }
}

/// Renames a device. It keeps its token and its episodes, so a device
/// re-imaged under a new host name ships on with its old token file and a
/// re-ship of an episode it stored before is still answered 200.
pub async fn rename_device(
    index: &Arc<dyn Index>,
    old: &str,
    new: &str,
) -> Result<Device, OpError> {
    check_device_name(new)?;
    if old == new {
        return Err(OpError::Invalid(format!(
            "device {old:?} already has that name"
        )));
    }
    match index.rename_device(old, new).await? {
        RenameDevice::Renamed => {}
        RenameDevice::NoSuchDevice => {
            return Err(OpError::NotFound(format!("no device named {old:?}")))
        }
        RenameDevice::NameTaken => {
            return Err(OpError::Exists(format!(
                "a device named {new:?} already exists (revoked devices keep their name)"
            )))
        }
    }
    device(index, new).await
}

/// One device, or `NotFound`.
pub async fn device(index: &Arc<dyn Index>, name: &str) -> Result<Device, OpError> {
    index
        .device(name)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("no device named {name:?}")))
}

/// Stored episodes, newest first: one device's (which must exist, so that a
/// misspelt name is an error rather than an empty list) or every device's.
pub async fn list_episodes(
    index: &Arc<dyn Index>,
    device: Option<&str>,
    limit: Option<u64>,
) -> Result<Vec<Episode>, OpError> {
    if let Some(name) = device {
        self::device(index, name).await?;
    }
    Ok(index.list_episodes(device, limit).await?)
}

/// A device in its wire shape (SPEC §5's `--json`, the admin API).
pub fn device_info(d: &Device) -> DeviceInfo {
    DeviceInfo {
        name: d.name.clone(),
        revoked: d.revoked,
        created_at: format_time(d.created_at),
        last_seen_at: d.last_seen_at.map(format_time),
        last_upload_at: d.last_upload_at.map(format_time),
        episodes: d.episodes,
        bytes: d.bytes,
    }
}

/// An allow-list entry in its wire shape (SPEC §5's `--json`, the admin
/// API).
pub fn commit_info(c: &AllowedCommit) -> CommitInfo {
    CommitInfo {
        commit: c.commit.to_string(),
        head: c.head,
        note: c.note.clone(),
        allowed_at: format_time(c.allowed_at),
    }
}

/// An episode in its wire shape (SPEC §5's `--json`, the admin API).
pub fn episode_info(e: &Episode) -> EpisodeInfo {
    EpisodeInfo {
        episode_id: e.episode_id.to_string(),
        sha256: e.sha256.to_string(),
        size: e.size,
        commit: e.commit.to_string(),
        device: e.device.clone(),
        stored_at: format_time(e.stored_at),
    }
}

/// A device's episode, or `NotFound`.
pub async fn episode(index: &Arc<dyn Index>, device: &str, id: &str) -> Result<Episode, OpError> {
    index
        .episode(device, id)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("episode {device}/{id} is not stored")))
}

/// How many devices a bare id that several stored names in its error.
const AMBIGUOUS_SHOWN: u64 = 10;

/// An operator's name for an episode: `DEVICE/ID` (ids are scoped to their
/// device; neither part can hold a `/`), or an id alone when exactly one
/// device stored it (SPEC §5's `verify [ID...]`). An id that several
/// devices stored is bad usage: the error names them.
pub async fn resolve(index: &Arc<dyn Index>, name: &str) -> Result<Episode, OpError> {
    let invalid = |why: String| OpError::Invalid(format!("episode {name:?}: {why}"));
    if let Some((device, id)) = name.split_once('/') {
        for part in [device, id] {
            EpisodeId::parse(part).map_err(|e| invalid(e.to_string()))?;
        }
        return episode(index, device, id).await;
    }
    EpisodeId::parse(name).map_err(|e| invalid(e.to_string()))?;
    let mut rows = index.episodes_with_id(name, AMBIGUOUS_SHOWN + 1).await?;
    match rows.len() {
        0 => Err(OpError::NotFound(format!(
            "episode {name} is not stored by any device"
        ))),
        1 => Ok(rows.remove(0)),
        n => {
            let shown: Vec<String> = rows
                .iter()
                .take(AMBIGUOUS_SHOWN as usize)
                .map(|e| format!("{}/{}", e.device, e.episode_id))
                .collect();
            let more = if n as u64 > AMBIGUOUS_SHOWN {
                ", …"
            } else {
                ""
            };
            Err(invalid(format!(
                "stored by several devices ({}{more}); name one as DEVICE/ID",
                shown.join(", ")
            )))
        }
    }
}

/// Allows a commit (upper case and surrounding space are accepted from
/// humans) and returns its allow-list entry.
pub async fn allow_commit(
    index: &Arc<dyn Index>,
    req: &AllowCommit,
) -> Result<AllowedCommit, OpError> {
    let commit = parse_commit(&req.commit)?;
    index
        .allow_commit(commit.as_str(), req.head, req.note.as_deref(), unix_now())
        .await?;
    index
        .list_commits()
        .await?
        .into_iter()
        .find(|c| c.commit == commit)
        .ok_or_else(|| OpError::NotFound(format!("commit {commit} vanished after being allowed")))
}

pub async fn revoke_commit(index: &Arc<dyn Index>, commit: &str) -> Result<(), OpError> {
    let commit = parse_commit(commit)?;
    if index.revoke_commit(commit.as_str()).await? {
        Ok(())
    } else {
        Err(OpError::NotFound(format!(
            "commit {commit} is not on the allow-list"
        )))
    }
}

fn parse_commit(s: &str) -> Result<Commit, OpError> {
    Commit::parse_lenient(s).map_err(|e| OpError::Invalid(e.to_string()))
}

/// What re-hashing one object found: state, actual sha256, detail.
type Hashed = (VerifyState, Option<String>, Option<String>);

/// Re-hashes the objects of the given episodes (each named as [`resolve`]
/// takes it; all when `refs` is empty), on the blocking pool, and returns
/// one finding per episode, in the order listed. An object shared by
/// several episodes (the same bytes, from several devices or ids) is hashed
/// once: they are visited in digest order, so only the last result needs
/// keeping.
pub async fn verify(
    index: &Arc<dyn Index>,
    objects: &dyn Objects,
    refs: &[String],
) -> Result<Vec<VerifyFinding>, OpError> {
    let episodes = if refs.is_empty() {
        index.list_episodes(None, None).await?
    } else {
        let mut v = Vec::with_capacity(refs.len());
        for r in refs {
            v.push(resolve(index, r).await?);
        }
        v
    };
    let mut order: Vec<usize> = (0..episodes.len()).collect();
    order.sort_by_key(|&i| (&episodes[i].sha256, episodes[i].size));
    let mut slots: Vec<Option<Episode>> = episodes.into_iter().map(Some).collect();
    let mut findings: Vec<Option<VerifyFinding>> = vec![None; slots.len()];
    let mut last: Option<((Sha256, u64), Hashed)> = None;
    for i in order {
        let Some(e) = slots[i].take() else { continue };
        let key = (e.sha256.clone(), e.size);
        let (state, actual, detail) = match &last {
            Some((k, found)) if *k == key => found.clone(),
            _ => {
                let found = rehash(objects, &e.sha256, e.size).await;
                last = Some((key, found.clone()));
                found
            }
        };
        findings[i] = Some(VerifyFinding {
            device: e.device,
            episode_id: e.episode_id.to_string(),
            state,
            expected_sha256: e.sha256.to_string(),
            actual_sha256: actual,
            detail,
        });
    }
    Ok(findings.into_iter().flatten().collect())
}

/// Re-hashes an object through the store (a file, or the bucket).
async fn rehash(objects: &dyn Objects, sha: &Sha256, expected_size: u64) -> Hashed {
    let hashed = objects.hash(sha).await;
    let at = |e: &crate::store::objects::StoreError| e.path.display().to_string();
    match hashed {
        Ok((actual, size)) if actual == *sha && size == expected_size => {
            (VerifyState::Ok, Some(actual.to_string()), None)
        }
        Ok((actual, size)) => (
            VerifyState::Mismatch,
            Some(actual.to_string()),
            Some(format!(
                "{}: {size} bytes, sha256 {actual}",
                objects.locator(sha)
            )),
        ),
        Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => (
            VerifyState::Missing,
            None,
            Some(format!("{}: {}", at(&e), e.source)),
        ),
        Err(e) => (
            VerifyState::Unreadable,
            None,
            Some(format!("{}: {}", at(&e), e.source)),
        ),
    }
}
