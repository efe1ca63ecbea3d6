//! 200/201: the receiver holds the episode durably. Move it to `shipped/`
//! and delete the tarball, in that order: a crash in between leaves an
//! orphan tarball (swept later), never a shipped episode shipped twice.

use std::io;

use ferry_proto::EpisodeId;

use crate::fsio;
use crate::spool::Spool;

pub fn retire(spool: &Spool, id: &EpisodeId) -> io::Result<()> {
    fsio::move_dir_replacing(&spool.episode_dir(id), &spool.shipped_dir(id))?;
    spool.remove_tarballs(id)
}
