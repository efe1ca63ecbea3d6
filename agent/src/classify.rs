//! Turns what happened to one attempt into a `proto::Outcome`. No IO and no
//! decisions: the table in `proto::decide` decides.

use ferry_proto::{Outcome, Sent};

use crate::pack::PackError;
use crate::ship::UploadResult;

/// The outcome of an upload attempt that shipped `sent` (which a 200/201
/// must name to retire it: `proto::decide` checks).
pub fn upload<'a>(result: &'a UploadResult, sent: Sent<'a>) -> Outcome<'a> {
    match result {
        UploadResult::Answered(a) => Outcome::Answered {
            status: a.status,
            reply: a.reply.as_ref(),
            retry_after: a.retry_after,
            sent,
        },
        UploadResult::Network(_) => Outcome::Network,
        UploadResult::TarballRead { .. } => Outcome::LocalRead,
        UploadResult::Aborted => Outcome::Aborted,
    }
}

/// The outcome of a failed pack (or re-hash): by error type and errno,
/// never by message. `None` when there is nothing to decide: the episode
/// changed while it was packed, so it is not ready this pass (no strike,
/// no action; the next pass packs it again).
pub fn pack(e: &PackError) -> Option<Outcome<'static>> {
    Some(match e {
        PackError::Cancelled => Outcome::Aborted,
        PackError::Changed { .. } => return None,
        e if e.is_disk_full() => Outcome::DiskFull,
        // Any other write failure of the outbox is the device's problem
        // too (EROFS, EIO on the spool disk): transient, not the episode's.
        PackError::Write { .. } => Outcome::DiskFull,
        PackError::Read { .. } => Outcome::LocalRead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn pack_errors_map_by_side_and_errno() {
        let r = PackError::Read {
            path: "f".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(pack(&r), Some(Outcome::LocalRead));
        let w = PackError::Write {
            path: "f".into(),
            source: io::Error::from_raw_os_error(libc::EDQUOT),
        };
        assert_eq!(pack(&w), Some(Outcome::DiskFull));
        assert_eq!(pack(&PackError::Cancelled), Some(Outcome::Aborted));
        let c = PackError::Changed {
            path: "f".into(),
            what: "grew",
        };
        assert_eq!(pack(&c), None, "not ready: no action, no strike");
    }

    #[test]
    fn upload_results_map() {
        let id = ferry_proto::EpisodeId::parse("e").unwrap();
        let sha = ferry_proto::Sha256::parse(&"a".repeat(64)).unwrap();
        let sent = Sent {
            episode_id: &id,
            sha256: &sha,
        };
        assert_eq!(upload(&UploadResult::Aborted, sent), Outcome::Aborted);
        assert_eq!(
            upload(&UploadResult::Network("x".into()), sent),
            Outcome::Network
        );
    }
}
