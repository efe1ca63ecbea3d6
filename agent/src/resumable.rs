//! Resumable uploads (SPEC §8, tus 1.0) for tarballs of at least
//! `resumable_threshold` bytes: every byte the receiver acknowledged is
//! never sent again, across a dropped link, a `kill -9` of either side or
//! a reboot.
//!
//! The upload's URL is kept beside the tarball in
//! `outbox/<id>.upload.json` (written crash-safely, removed with the
//! tarball when the episode is retired, parked, quarantined or re-packed),
//! so a restart resumes. Each attempt: create the upload if there is no
//! record (`POST`; the receiver decides every header row of SPEC §2 there,
//! answered like a PUT's), ask `HEAD` for the offset, send the rest in one
//! `PATCH` streamed like a PUT's body (bandwidth limit, progress for the
//! watchdog, stall timeout, shutdown abort). A 404 or 410 (expired, or the
//! receiver lost it) forgets the record and creates a new upload; an offset
//! mismatch asks HEAD again. A creation answered without `Tus-Resumable`
//! (a receiver without tus) falls back to the PUT. The completing PATCH is
//! answered like a PUT (201/200 with the §2 JSON, 400 digest-mismatch, 409),
//! and the caller classifies it with `proto::decide` as for a PUT: a
//! 200/201 retires only when its JSON names the episode and sha256 sent.
//!
//! The record is read from a directory others may write to: it is opened
//! without following links, bounded, and its URL must be a path under
//! `/v1/uploads/` of the configured receiver, so a planted record cannot
//! send the device token anywhere else.

use std::path::Path;

use base64::Engine;
use ferry_durable::safe;
use ferry_proto::headers::tus;
use ferry_proto::{Commit, EpisodeId, Reply, Sha256, UPLOADS_PATH};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;
use tokio_util::sync::CancellationToken;

use crate::fsio;
use crate::run::blocking;
use crate::ship::{Shipper, UploadResult};
use crate::spool::Spool;

/// `outbox/<id>.upload.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The upload's path on the receiver: `/v1/uploads/{upload}`.
    pub url: String,
    /// The tarball it uploads: a record of another tarball is forgotten.
    pub sha256: String,
    pub size: u64,
    /// The bytes the receiver last said it holds (its HEAD), for `status`
    /// and `doctor`; the next attempt asks again.
    #[serde(default)]
    pub offset: u64,
}

/// Largest record read.
const RECORD_CAP: u64 = 4096;

/// Rounds of create / HEAD / PATCH in one attempt (a lost upload, an
/// offset that moved), before the attempt ends with its last answer.
const ROUNDS: usize = 3;

/// Whether `url` is a path of an upload on the receiver.
pub fn valid_url(url: &str) -> bool {
    url.strip_prefix(UPLOADS_PATH)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The record of `id` (blocking); `None` when there is none or it is not
/// one the agent wrote (logged, and left for the next write to replace).
pub fn read_record(spool: &Spool, id: &EpisodeId) -> Option<UploadRecord> {
    let path = spool.upload_record(id);
    let bytes = match safe::read_regular(&path, RECORD_CAP) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(episode = %id, "cannot read {}; starting a new upload", fsio::describe(&path, &e));
            return None;
        }
    };
    match serde_json::from_slice::<UploadRecord>(&bytes) {
        Ok(r) if valid_url(&r.url) => Some(r),
        _ => {
            tracing::warn!(episode = %id, path = %path.display(), "not an upload record the agent wrote; starting a new upload");
            None
        }
    }
}

/// Writes the record (blocking): temp file, fsync, rename, fsync dir.
pub fn write_record(spool: &Spool, id: &EpisodeId, rec: &UploadRecord) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    fsio::write_atomic(&spool.upload_record(id), &text)
}

/// Keeps the offset the receiver reported in the record, for `status`.
async fn note_offset(s: &Shipment<'_>, url: &str, size: u64, offset: u64) {
    let rec = UploadRecord {
        url: url.to_owned(),
        sha256: s.sha256.to_string(),
        size,
        offset,
    };
    let (spool, id) = (s.spool.clone(), s.id.clone());
    if let Err(e) = blocking(move || write_record(&spool, &id, &rec)).await {
        tracing::warn!(episode = %s.id, "cannot note the upload's offset: {e}");
    }
}

fn forget(spool: &Spool, id: &EpisodeId) -> std::io::Result<()> {
    fsio::remove_file_durable(&spool.upload_record(id))
}

/// What one resumable attempt came to.
pub enum Resumable {
    Done(UploadResult),
    /// The receiver has no tus routes (an older release: its answer to the
    /// creation has no `Tus-Resumable`): PUT the tarball instead; here is
    /// its descriptor back.
    Unsupported(std::fs::File),
}

/// The episode being shipped.
pub struct Shipment<'a> {
    pub spool: &'a Spool,
    pub id: &'a EpisodeId,
    pub commit: &'a Commit,
    pub sha256: &'a Sha256,
    pub tarball: &'a Path,
}

fn metadata(s: &Shipment<'_>) -> String {
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    format!(
        "{} {},{} {},{} {}",
        tus::META_EPISODE_ID,
        b64(s.id.as_str()),
        tus::META_COMMIT,
        b64(s.commit.as_str()),
        tus::META_SHA256,
        b64(s.sha256.as_str())
    )
}

/// What an upload attempt that never got the receiver's answer about the
/// episode itself reports: a HEAD, or rounds run out. Such an answer is
/// about the upload's state, never about the episode, so nothing but a
/// transient result (or the device's own 401/403, which `decide` backs off
/// on) may come of it: a stray 200 must not retire, a 404 must not
/// quarantine.
fn unsettled(r: UploadResult, why: &str) -> UploadResult {
    match r {
        UploadResult::Answered(a) if matches!(a.status, 401 | 403 | 408 | 429 | 500..=599) => {
            UploadResult::Answered(a)
        }
        UploadResult::Answered(a) => UploadResult::Network(format!(
            "{why}: the receiver answered {} ({})",
            a.status, a.body
        )),
        other => other,
    }
}

fn gone(r: &UploadResult) -> bool {
    matches!(r, UploadResult::Answered(a) if a.status == 404 || a.status == 410)
}

impl Shipper {
    /// One attempt to ship a tarball with tus; see the module doc.
    pub async fn tus_episode(
        &self,
        s: &Shipment<'_>,
        file: std::fs::File,
        cancel: &CancellationToken,
    ) -> (Resumable, Option<String>) {
        let token = self.token().await;
        let problem = token.as_ref().err().cloned();
        let done = |r| (Resumable::Done(r), problem.clone());
        let read_failed = |source| UploadResult::TarballRead {
            path: s.tarball.to_owned(),
            source,
        };
        let file = tokio::fs::File::from_std(file);
        let size = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return done(read_failed(e)),
        };
        let mut last = UploadResult::Network("no attempt".into());
        for _ in 0..ROUNDS {
            let (spool, id) = (s.spool.clone(), s.id.clone());
            let record = blocking(move || read_record(&spool, &id))
                .await
                .filter(|r| r.sha256 == s.sha256.as_str() && r.size == size);
            let (url, known) = match record {
                Some(r) => (r.url, r.offset),
                None => match self.tus_create(s, size, &token, cancel).await {
                    Ok(url) => (url, 0),
                    Err(r) => {
                        if matches!(&r, UploadResult::Answered(a) if !a.tus) {
                            let std = file.into_std().await;
                            return (Resumable::Unsupported(std), problem);
                        }
                        return done(r);
                    }
                },
            };
            let rb = self
                .request(Method::HEAD, &url, &token)
                .header(tus::RESUMABLE, tus::PROTOCOL_VERSION);
            let head = self.send_small(rb, cancel).await;
            let offset = match &head {
                UploadResult::Answered(a) if a.status == 200 => {
                    a.upload_offset.filter(|o| *o <= size)
                }
                _ => None,
            };
            let Some(offset) = offset else {
                if gone(&head) || matches!(&head, UploadResult::Answered(a) if a.status == 200) {
                    tracing::info!(episode = %s.id, url, "the receiver no longer has the upload; starting a new one");
                    let (spool, id) = (s.spool.clone(), s.id.clone());
                    if let Err(e) = blocking(move || forget(&spool, &id)).await {
                        return done(read_failed(e));
                    }
                    last = head;
                    continue;
                }
                return done(unsettled(head, "asking for the upload's offset"));
            };
            if offset > 0 {
                tracing::info!(episode = %s.id, offset, size, "resuming the upload");
            }
            if offset != known {
                note_offset(s, &url, size, offset).await;
            }
            let r = self
                .tus_patch(s, &file, &url, (offset, size), &token, cancel)
                .await;
            let again = match &r {
                // Not complete yet (the receiver kept less than was sent):
                // HEAD says where to go on.
                UploadResult::Answered(a) if a.status == 204 => true,
                UploadResult::Answered(a) => {
                    matches!(a.reply, Some(Reply::OffsetMismatch { .. })) || gone(&r)
                }
                _ => false,
            };
            if !again {
                return done(r);
            }
            if gone(&r) {
                let (spool, id) = (s.spool.clone(), s.id.clone());
                if let Err(e) = blocking(move || forget(&spool, &id)).await {
                    return done(read_failed(e));
                }
            }
            last = r;
        }
        done(unsettled(
            last,
            &format!("the upload did not settle in {ROUNDS} rounds"),
        ))
    }

    /// One PATCH with the rest of the tarball, from `offset` of `size`.
    async fn tus_patch(
        &self,
        s: &Shipment<'_>,
        file: &tokio::fs::File,
        url: &str,
        (offset, size): (u64, u64),
        token: &Result<String, String>,
        cancel: &CancellationToken,
    ) -> UploadResult {
        let read_failed = |source| UploadResult::TarballRead {
            path: s.tarball.to_owned(),
            source,
        };
        let mut part = match file.try_clone().await {
            Ok(f) => f,
            Err(e) => return read_failed(e),
        };
        if let Err(e) = part.seek(std::io::SeekFrom::Start(offset)).await {
            return read_failed(e);
        }
        let (body, watch) = self.stream_from(part, size - offset);
        let rb = self
            .request(Method::PATCH, url, token)
            .header(tus::RESUMABLE, tus::PROTOCOL_VERSION)
            .header(reqwest::header::CONTENT_TYPE, tus::PATCH_CONTENT_TYPE)
            .header(tus::UPLOAD_OFFSET, offset)
            .header(reqwest::header::CONTENT_LENGTH, size - offset)
            .body(body);
        self.send_streamed(rb, watch, s.tarball, cancel).await
    }

    /// `POST /v1/uploads`; the new upload's path, recorded; or the answer
    /// that settled the episode (200, 409, 412, ...) or the failure.
    async fn tus_create(
        &self,
        s: &Shipment<'_>,
        size: u64,
        token: &Result<String, String>,
        cancel: &CancellationToken,
    ) -> Result<String, UploadResult> {
        let rb = self
            .request(Method::POST, UPLOADS_PATH, token)
            .header(tus::RESUMABLE, tus::PROTOCOL_VERSION)
            .header(tus::UPLOAD_LENGTH, size)
            .header(tus::UPLOAD_METADATA, metadata(s))
            .header(reqwest::header::CONTENT_LENGTH, 0);
        let r = self.send_small(rb, cancel).await;
        let url = match &r {
            UploadResult::Answered(a) if a.status == 201 => a.location.clone(),
            _ => return Err(r),
        };
        let Some(url) = url.filter(|u| valid_url(u)) else {
            return Err(UploadResult::Network(
                "the receiver created an upload without a Location under /v1/uploads/".into(),
            ));
        };
        let rec = UploadRecord {
            url: url.clone(),
            sha256: s.sha256.to_string(),
            size,
            offset: 0,
        };
        let (spool, id) = (s.spool.clone(), s.id.clone());
        if let Err(e) = blocking(move || write_record(&spool, &id, &rec)).await {
            tracing::warn!(episode = %s.id, "cannot keep the upload URL ({}); a restart starts the upload over", fsio::describe(&s.spool.upload_record(s.id), &e));
        }
        tracing::info!(episode = %s.id, url, size, "resumable upload created");
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upload_paths_of_the_receiver_are_kept() {
        assert!(valid_url("/v1/uploads/0123abcdef"));
        for bad in [
            "",
            "/v1/uploads/",
            "http://elsewhere/v1/uploads/x",
            "/v1/uploads/../admin",
            "/v1/uploads/a/b",
            "//evil/v1/uploads/x",
        ] {
            assert!(!valid_url(bad), "{bad}");
        }
    }

    fn answered(status: u16, reply: Option<Reply>) -> UploadResult {
        UploadResult::Answered(crate::ship::Answer {
            status,
            reply,
            retry_after: None,
            body: String::new(),
            location: None,
            upload_offset: None,
            tus: true,
        })
    }

    /// A HEAD's answer, or the last answer when the rounds ran out, is about
    /// the upload, not the episode: a 200 must never retire it, a 404 or a
    /// 400 never quarantine it; the device's 401/403 and transient answers
    /// keep their meaning.
    #[test]
    fn an_unsettled_upload_is_transient_whatever_the_receiver_answered() {
        for status in [200, 201, 204, 400, 404, 409, 410, 412, 460] {
            assert!(
                matches!(
                    unsettled(answered(status, None), "t"),
                    UploadResult::Network(_)
                ),
                "{status}"
            );
        }
        for status in [401, 403, 408, 429, 500, 503, 507] {
            assert!(
                matches!(unsettled(answered(status, None), "t"), UploadResult::Answered(a) if a.status == status),
                "{status}"
            );
        }
    }

    #[test]
    fn a_record_is_written_whole_and_read_back_only_when_valid() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().to_owned());
        std::fs::create_dir_all(dir.path().join(crate::spool::OUTBOX)).unwrap();
        let id = EpisodeId::parse("ep-1").unwrap();
        assert_eq!(read_record(&spool, &id), None);
        let rec = UploadRecord {
            url: "/v1/uploads/abc".into(),
            sha256: "a".repeat(64),
            size: 7,
            offset: 3,
        };
        write_record(&spool, &id, &rec).unwrap();
        assert_eq!(read_record(&spool, &id), Some(rec));
        std::fs::write(
            spool.upload_record(&id),
            br#"{"url":"https://elsewhere/steal","sha256":"","size":1}"#,
        )
        .unwrap();
        assert_eq!(read_record(&spool, &id), None, "a planted URL is refused");
        spool.remove_tarballs(&id).unwrap();
        assert!(!spool.upload_record(&id).exists());
    }
}
