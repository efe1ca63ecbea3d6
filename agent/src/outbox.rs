//! The tarball an episode ships from: the one an earlier run left in
//! `outbox/`, if it is one the agent made, or a fresh pack. Either way the
//! caller gets it open, and uploads from that descriptor.
//!
//! Whoever can write the outbox is not trusted: a left-over tarball is
//! opened `O_NOFOLLOW|O_NONBLOCK`, must be a regular file owned by the
//! agent's user with one link, and must decode as an archive of this very
//! episode (`archive::check`). Anything else is removed (the name, never
//! what it points to) and the episode packed again.

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use ferry_durable::safe;
use ferry_proto::{EpisodeId, Sha256};
use tokio_util::sync::CancellationToken;

use crate::fsio;
use crate::pack::archive::{self, CheckError};
use crate::pack::{self, PackError, PackOptions, Packed};
use crate::spool::Spool;

/// The tarball to upload, open for reading.
pub struct Tarball {
    pub packed: Packed,
    pub file: File,
}

/// Re-use the checked left-over tarball, or pack the episode.
pub fn obtain(
    spool: &Spool,
    id: &EpisodeId,
    opts: PackOptions,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<Tarball, PackError> {
    if let Some(t) = left_over(spool, id, progress, cancel)? {
        tracing::debug!(episode = %id, sha256 = %t.packed.sha256, "re-hashed the tarball left in the outbox");
        return Ok(t);
    }
    let src = spool.episode_dir(id);
    let tarball = spool.tarball(id);
    let (packed, file) = pack::pack_dir_open(&src, id.as_str(), &tarball, opts, progress, cancel)?;
    tracing::debug!(episode = %id, sha256 = %packed.sha256, size = packed.size, "packed");
    Ok(Tarball { packed, file })
}

/// The tarball an earlier run left, when it passes every check; `None`
/// when there is none or it was removed for failing one.
fn left_over(
    spool: &Spool,
    id: &EpisodeId,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<Option<Tarball>, PackError> {
    let path = spool.tarball(id);
    let read = |source| PackError::Read {
        path: path.clone(),
        source,
    };
    let (mut file, snap) = match safe::open_regular(&path) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => match safe::not_regular(&e) {
            Some(_) => return discard(spool, id, &e.to_string()),
            None => return Err(read(e)),
        },
    };
    let me = rustix::process::geteuid().as_raw();
    if snap.uid != me || snap.nlink != 1 {
        let why = format!(
            "owned by uid {} with {} links (the agent runs as uid {me} and makes files with one link)",
            snap.uid, snap.nlink
        );
        return discard(spool, id, &why);
    }
    let stop = || cancel.is_cancelled();
    match archive::check(&mut file, id.as_str(), Some(progress), &stop) {
        Ok(c) => Ok(Some(Tarball {
            packed: Packed {
                sha256: Sha256::from_bytes(&c.digest),
                size: c.size,
            },
            file,
        })),
        Err(CheckError::Foreign(why)) => discard(spool, id, &why),
        Err(CheckError::Read(e)) => Err(read(e)),
        Err(CheckError::Cancelled) => Err(PackError::Cancelled),
    }
}

fn discard(spool: &Spool, id: &EpisodeId, why: &str) -> Result<Option<Tarball>, PackError> {
    let path = spool.tarball(id);
    tracing::warn!(
        episode = %id,
        "{} is not a tarball the agent made ({why}); removed (not followed), packing the episode again",
        path.display()
    );
    fsio::remove_file_durable(&path).map_err(|source| PackError::Write { path, source })?;
    Ok(None)
}
