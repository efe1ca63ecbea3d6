//! The index of devices, commits and episodes: the [`Index`] trait and its
//! two backends, SQLite (`sqlite.rs`, embedded by default) and PostgreSQL
//! (`postgres.rs`), which share their SQL (`sql.rs`). No database type
//! crosses the trait: errors are [`IndexError`], decided from database
//! error codes where they are made.

pub mod postgres;
mod rejections_sql;
pub(crate) mod sql;
pub mod sqlite;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::{Commit, EpisodeId, Sha256};

use crate::config::Database;

/// A boxed future, so that [`Index`] can be used as `Arc<dyn Index>`.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, IndexError>> + Send + 'a>>;

/// Why an index operation failed, decided from database error codes (never
/// from message text) where the error is made; no database type crosses
/// the trait.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexError {
    /// The database's disk is full: answer 507.
    #[error("index database is out of space: {0}")]
    Full(String),
    /// A row names a device that no longer exists (the foreign key refused
    /// it): the device was renamed while its upload was between its header
    /// checks and its row. Answer 503: its retry is checked under the new
    /// name.
    #[error("the episode's device was renamed during its upload: {0}")]
    DeviceRenamed(String),
    /// The database cannot be reached now (no connection within
    /// `database_timeout`, a connection lost, the server shutting down or
    /// out of connections): transient, answer 503 with `Retry-After`.
    #[error("index database unreachable: {0}")]
    Unreachable(String),
    /// The database refused a statement: about the rows, not the
    /// connection (answer 500; a batch is retried row by row).
    #[error("index database error: {0}")]
    Refused(String),
    /// An opening or migration problem, or a broken invariant.
    #[error("{0}")]
    Setup(String),
}

impl IndexError {
    /// Whether the failure is the database being out of reach (transient).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, IndexError::Unreachable(_))
    }
}

/// A device as authentication sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    pub name: String,
    pub token_hash: Vec<u8>,
    pub revoked: bool,
}

/// A new index row for a stored episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEpisode {
    pub episode_id: EpisodeId,
    pub sha256: Sha256,
    pub size: u64,
    pub commit: Commit,
    pub device: String,
    /// Unix seconds.
    pub stored_at: i64,
}

/// A stored episode as the index holds it. Its wire shape,
/// `proto::admin::EpisodeInfo`, is made at the edge (`ops::episode_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub device: String,
    pub episode_id: EpisodeId,
    pub sha256: Sha256,
    pub size: u64,
    pub commit: Commit,
    /// Unix seconds.
    pub stored_at: i64,
}

/// Result of [`Index::insert_episodes`]: the unique key on
/// `(device, episode_id)` decides which of two racing uploads of one device
/// is first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// This insert created the row.
    Created,
    /// The device already had a row with this id (the race was lost); here
    /// it is.
    Exists(Episode),
    /// Not inserted: the device or the commit lost its standing while the
    /// upload was in flight (checked in the insert itself).
    Refused(Standing),
}

/// Why a row was refused at insert time (issue 13, item 12): the standing
/// checked before the body is checked again in the statement that inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The device was revoked: answer 403.
    DeviceRevoked,
    /// No device has this name any more (it was renamed): answer 503, the
    /// retry is checked under the new name.
    DeviceGone,
    /// The commit was taken off the allow-list: answer 412.
    CommitNotAllowed,
    /// The collector is deleting an object with these bytes
    /// ([`Index::mark_collecting`]): answer 503, the retry stores them
    /// again.
    ObjectBeingCollected,
}

/// Result of [`Index::rename_device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameDevice {
    Renamed,
    NoSuchDevice,
    NameTaken,
}

/// Result of [`Index::add_device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddDevice {
    Added,
    NameTaken,
}

/// The allow-list's answer for one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub allowed: bool,
    pub head_commit: Option<String>,
}

/// What a PUT needs from the index before it reads a body, read in one
/// round trip (none at all for an unknown token): the device the token
/// belongs to, the commit's standing and that device's stored episode of
/// the id, if any (another device's episode of the same id is none of its
/// business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    pub device: DeviceAuth,
    pub commit: CommitStatus,
    pub episode: Option<Episode>,
}

/// The 412 answers one device got for one commit (times in unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub commit: String,
    pub device: String,
    pub attempts: u64,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A device as the operator sees it: its state, last contact and what it
/// stored (times in unix seconds). Made into its wire shape
/// (`ferry_proto::admin::DeviceInfo`) only at the edge, by
/// `ops::device_info`, so the status page works on the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub revoked: bool,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub last_upload_at: Option<i64>,
    pub episodes: u64,
    pub bytes: u64,
}

/// An allow-list entry (time in unix seconds); its wire shape
/// (`ferry_proto::admin::CommitInfo`) is made by `ops::commit_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCommit {
    pub commit: Commit,
    pub head: bool,
    pub note: Option<String>,
    pub allowed_at: i64,
}

/// A resumable upload whose bytes are in the shared object store (see
/// `store::uploads::shared`): its row in the index, so that any replica
/// continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedUpload {
    pub id: String,
    pub device: String,
    pub episode_id: EpisodeId,
    pub commit: Commit,
    /// The sha256 the creation claimed for the whole body.
    pub sha256: Sha256,
    pub length: u64,
    /// Unix seconds.
    pub created: i64,
    /// The object store's multipart upload.
    pub multipart: String,
    pub progress: Progress,
}

/// What a PATCH moves on, saved only while its lease is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes received and durable: the parts and the tail.
    pub received: u64,
    /// Unix seconds: reclaimed after this.
    pub expires: i64,
    /// The ETags of the parts uploaded, in order.
    pub parts: Vec<String>,
    /// The sha256 state of the `received` bytes (`uploads::HashState`).
    pub hash: Vec<u8>,
    /// The incomplete-part object's name (a new one per write; empty when
    /// there has been none).
    pub tail_key: String,
    /// Bytes in the incomplete-part object, after the parts.
    pub tail: u64,
    /// The last PATCH ended before its body did.
    pub interrupted: bool,
}

/// Result of [`Index::lease_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// The lease is ours until the time asked; here is the row.
    Taken(Box<SharedUpload>),
    /// Another PATCH holds it.
    Held,
    /// No such upload.
    Missing,
}

/// Open resumable uploads, for the caps checked at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenUploads {
    /// All of them.
    pub count: u64,
    /// Bytes they still expect, declared minus received.
    pub pending: u64,
    /// The device's own (id, created), the one to end first first: the
    /// longest idle (earliest `expires`), then the least received.
    pub device: Vec<(String, i64)>,
}

/// Totals for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub episodes: u64,
    pub bytes: u64,
    pub devices: u64,
    pub commits: u64,
}

/// The index of devices, commits and episodes. Every method is one short
/// query or transaction; nothing is cached, so a change made by the CLI in
/// another process is seen by the next request.
pub trait Index: Send + Sync + 'static {
    /// A trivial query, for `/readyz`.
    fn ping(&self) -> BoxFut<'_, ()>;

    fn device_by_token_hash<'a>(&'a self, hash: &'a [u8]) -> BoxFut<'a, Option<DeviceAuth>>;
    /// Records that the device was seen at `now` (unix seconds).
    fn touch_device<'a>(&'a self, name: &'a str, now: i64) -> BoxFut<'a, ()>;
    fn add_device<'a>(
        &'a self,
        name: &'a str,
        token_hash: &'a [u8],
        now: i64,
    ) -> BoxFut<'a, AddDevice>;
    /// Revokes a device; `false` when there is no such device.
    fn revoke_device<'a>(&'a self, name: &'a str) -> BoxFut<'a, bool>;
    /// Renames a device in one transaction; its token and its episodes go
    /// with it (the episodes' `device` follows by `ON UPDATE CASCADE`).
    fn rename_device<'a>(&'a self, old: &'a str, new: &'a str) -> BoxFut<'a, RenameDevice>;
    fn list_devices(&self) -> BoxFut<'_, Vec<Device>>;
    /// One device as [`Index::list_devices`] shows it; `None` when unknown.
    fn device<'a>(&'a self, name: &'a str) -> BoxFut<'a, Option<Device>>;

    /// Adds (or updates) an allow-list entry. With `head`, it becomes the one
    /// head commit. An existing note is kept when `note` is `None`.
    fn allow_commit<'a>(
        &'a self,
        commit: &'a str,
        head: bool,
        note: Option<&'a str>,
        now: i64,
    ) -> BoxFut<'a, ()>;
    /// Removes an allow-list entry; `false` when it was not there.
    fn revoke_commit<'a>(&'a self, commit: &'a str) -> BoxFut<'a, bool>;
    fn list_commits(&self) -> BoxFut<'_, Vec<AllowedCommit>>;
    fn commit_status<'a>(&'a self, commit: &'a str) -> BoxFut<'a, CommitStatus>;

    /// A device's episode of this id.
    fn episode<'a>(&'a self, device: &'a str, id: &'a str) -> BoxFut<'a, Option<Episode>>;
    /// Every device's episode of this id (at most `limit`), for an operator
    /// who names an episode by its id alone.
    fn episodes_with_id<'a>(&'a self, id: &'a str, limit: u64) -> BoxFut<'a, Vec<Episode>>;
    /// [`Preflight`] for a PUT: the three reads above in one query; `None`
    /// for an unknown token.
    fn preflight<'a>(
        &'a self,
        token_hash: &'a [u8],
        commit: &'a str,
        episode_id: &'a str,
    ) -> BoxFut<'a, Option<Preflight>>;
    /// Inserts the rows of stored episodes in one transaction (one synced
    /// commit), one result per row, in order; the unique key (device, id)
    /// decides races, within the batch too. The devices' last upload is
    /// recorded by the INSERT itself (trigger `episodes_record_upload`).
    fn insert_episodes<'a>(&'a self, rows: &'a [NewEpisode]) -> BoxFut<'a, Vec<Inserted>>;
    /// Episodes (of one device, or of all), newest first; all of them when
    /// `limit` is `None`.
    fn list_episodes<'a>(
        &'a self,
        device: Option<&'a str>,
        limit: Option<u64>,
    ) -> BoxFut<'a, Vec<Episode>>;
    /// Adds tallies of 412 answers to the stored ones (one transaction),
    /// keeps only the `keep_per_device` newest of each device in `rows`
    /// and removes those last seen before `prune_before`.
    fn record_rejections<'a>(
        &'a self,
        rows: &'a [Rejection],
        prune_before: i64,
        keep_per_device: u64,
    ) -> BoxFut<'a, ()>;
    /// Stored tallies last seen at or after `since` whose commit is not on
    /// the allow-list, newest first, at most `limit`.
    fn rejections(&self, since: i64, limit: u64) -> BoxFut<'_, Vec<Rejection>>;
    /// Of these digests, those that some row (of any device) references:
    /// objects are content-addressed and shared by every row with the same
    /// bytes.
    fn referenced<'a>(&'a self, shas: &'a [Sha256]) -> BoxFut<'a, HashSet<Sha256>>;
    /// The write gate, held shared by a commit batch from before its
    /// objects become visible under their final keys until its rows are
    /// committed (see `store::collect`). Released with [`Gate::release`],
    /// which fails when the gate may have been lost meanwhile.
    fn write_gate(&self) -> BoxFut<'_, Gate>;
    /// Records that the collector is about to delete these objects, until
    /// `until` (unix seconds), committed before any delete is sent: a row
    /// naming one of them is refused meanwhile
    /// (`Standing::ObjectBeingCollected`). Marks past their time are
    /// removed by the same call.
    fn mark_collecting<'a>(&'a self, shas: &'a [Sha256], until: i64, now: i64) -> BoxFut<'a, ()>;
    /// Removes the marks once their deletes are known to be done.
    fn unmark_collecting<'a>(&'a self, shas: &'a [Sha256]) -> BoxFut<'a, ()>;
    /// The collection lease and the write gate, exclusively: while held, no
    /// batch of any replica is between making an object visible and
    /// committing its row. `None` when another replica holds the lease.
    fn collect_gate(&self) -> BoxFut<'_, Option<Gate>>;
    fn totals(&self) -> BoxFut<'_, Totals>;

    /// Records a new resumable upload (its lease free).
    fn create_upload<'a>(&'a self, up: &'a SharedUpload) -> BoxFut<'a, ()>;
    /// A resumable upload's row.
    fn upload<'a>(&'a self, id: &'a str) -> BoxFut<'a, Option<SharedUpload>>;
    /// Takes the upload's lease for `lease` until `until` (unix seconds)
    /// when it is free or past its time.
    fn lease_upload<'a>(
        &'a self,
        id: &'a str,
        lease: &'a str,
        now: i64,
        until: i64,
    ) -> BoxFut<'a, Leased>;
    /// Saves a PATCH's progress and extends its lease to `until`, if
    /// `lease` still holds it; `false` when it was lost (nothing saved).
    fn save_upload<'a>(
        &'a self,
        id: &'a str,
        lease: &'a str,
        progress: &'a Progress,
        until: i64,
    ) -> BoxFut<'a, bool>;
    /// Lets the lease go, if `lease` holds it.
    fn release_upload<'a>(&'a self, id: &'a str, lease: &'a str) -> BoxFut<'a, ()>;
    /// Removes an upload's row; `false` when it was not there.
    fn delete_upload<'a>(&'a self, id: &'a str) -> BoxFut<'a, bool>;
    /// Uploads that expired before `now`, at most `limit`.
    fn expired_uploads(&self, now: i64, limit: u64) -> BoxFut<'_, Vec<SharedUpload>>;
    /// The open uploads, and `device`'s (see [`OpenUploads`]).
    fn open_uploads<'a>(&'a self, device: &'a str) -> BoxFut<'a, OpenUploads>;
}

/// A held gate or lease (see [`Index::write_gate`]).
pub struct Gate(Box<dyn Held>);

/// What a backend holds for a [`Gate`].
pub trait Held: Send {
    /// Whether it is still held (a round trip on its own connection).
    fn check(&mut self) -> BoxFut<'_, ()>;
    /// Lets go; an error means the gate may not have been held throughout
    /// (its database connection was lost).
    fn release(self: Box<Self>) -> BoxFut<'static, ()>;
}

impl Gate {
    pub fn new(held: impl Held + 'static) -> Self {
        Gate(Box::new(held))
    }

    /// `Err` when the gate is no longer held (its connection was lost).
    pub async fn check(&mut self) -> Result<(), IndexError> {
        self.0.check().await
    }

    /// Lets go; `Err` when the gate may have been lost while held.
    pub async fn release(self) -> Result<(), IndexError> {
        self.0.release().await
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// Opens (creating and migrating as needed) the configured index.
pub async fn open(config: &crate::config::Config) -> Result<Arc<dyn Index>, IndexError> {
    match &config.database {
        Database::Sqlite(path) => Ok(Arc::new(sqlite::SqliteIndex::open(path).await?)),
        Database::Postgres(url) => Ok(Arc::new(
            postgres::PgIndex::open(
                url,
                config.database_max_connections,
                config.database_timeout,
            )
            .await?,
        )),
    }
}

/// Now, in unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as UTC `%Y-%m-%dT%H:%M:%SZ`.
pub fn format_time(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_seconds() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
