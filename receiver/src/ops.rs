//! Operator operations shared by the command line (`cli.rs`) and the admin
//! API (`http/admin.rs`), so both validate and answer alike.

use std::sync::Arc;

use ferry_proto::admin::{AllowCommit, CommitInfo, NewDevice, VerifyFinding};
use ferry_proto::{Commit, EpisodeId, Sha256};

use crate::store::objects::{hash_file, ObjectStore};
use crate::store::{unix_now, AddDevice, Index, IndexError};
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

/// Allows a commit (upper case and surrounding space are accepted from
/// humans) and returns its allow-list entry.
pub async fn allow_commit(
    index: &Arc<dyn Index>,
    req: &AllowCommit,
) -> Result<CommitInfo, OpError> {
    let commit = parse_commit(&req.commit)?;
    index
        .allow_commit(commit.as_str(), req.head, req.note.as_deref(), unix_now())
        .await?;
    index
        .list_commits()
        .await?
        .into_iter()
        .find(|c| c.commit == commit.as_str())
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

/// Re-hashes the objects of the given episodes (all when `ids` is empty),
/// on the blocking pool, and returns one finding per episode.
pub async fn verify(
    index: &Arc<dyn Index>,
    objects: &ObjectStore,
    ids: &[String],
) -> Result<Vec<VerifyFinding>, OpError> {
    let episodes = if ids.is_empty() {
        index.list_episodes(None).await?
    } else {
        let mut v = Vec::with_capacity(ids.len());
        for id in ids {
            match index.episode(id).await? {
                Some(e) => v.push(e),
                None => return Err(OpError::NotFound(format!("episode {id:?} is not stored"))),
            }
        }
        v
    };
    let mut findings = Vec::with_capacity(episodes.len());
    for e in episodes {
        let Ok(sha) = Sha256::parse(&e.sha256) else {
            findings.push(VerifyFinding {
                episode_id: e.episode_id,
                state: "unreadable".into(),
                expected_sha256: e.sha256,
                actual_sha256: None,
                detail: Some("the index row holds no valid sha256".into()),
            });
            continue;
        };
        // One blocking call: find the object (see `ObjectStore::locate`),
        // then hash it.
        let (store, s) = (objects.clone(), sha.clone());
        let (path, hashed) = tokio::task::spawn_blocking(move || {
            let path = store.locate(&s);
            let hashed = hash_file(&path);
            (path, hashed)
        })
        .await
        .unwrap_or_else(|e| {
            (
                objects.path_of(&sha),
                Err(std::io::Error::other(e.to_string())),
            )
        });
        let (state, actual, detail) = match hashed {
            Ok((actual, size)) if actual == sha && size == e.size => {
                ("ok", Some(actual.to_string()), None)
            }
            Ok((actual, size)) => (
                "mismatch",
                Some(actual.to_string()),
                Some(format!("{}: {size} bytes, sha256 {actual}", path.display())),
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                ("missing", None, Some(format!("{}: {err}", path.display())))
            }
            Err(err) => (
                "unreadable",
                None,
                Some(format!("{}: {err}", path.display())),
            ),
        };
        findings.push(VerifyFinding {
            episode_id: e.episode_id,
            state: state.into(),
            expected_sha256: e.sha256,
            actual_sha256: actual,
            detail,
        });
    }
    Ok(findings)
}
