//! JSON shapes of the operator surfaces: the receiver's admin API
//! (`/v1/admin/...`) and its `--json` command-line output. Both print the
//! same types so that scripts can switch between them.

use serde::{Deserialize, Serialize};

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub commit: String,
    /// Whether this is the head commit (the one remediations point to).
    pub head: bool,
    pub note: Option<String>,
    /// UTC, `%Y-%m-%dT%H:%M:%SZ`.
    pub allowed_at: String,
}

/// One device. The token itself is never stored or shown after `add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub revoked: bool,
    pub created_at: String,
    /// Last authenticated request, if any.
    pub last_seen_at: Option<String>,
    /// Last episode stored (201), if any.
    pub last_upload_at: Option<String>,
    pub episodes: u64,
    pub bytes: u64,
}

/// One stored episode. Ids are scoped to their device: an episode is named
/// by `device` and `episode_id` together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeInfo {
    pub episode_id: String,
    pub sha256: String,
    pub size: u64,
    pub commit: String,
    pub device: String,
    pub stored_at: String,
}

/// Body of `POST /v1/admin/commits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowCommit {
    pub commit: String,
    #[serde(default)]
    pub head: bool,
    #[serde(default)]
    pub note: Option<String>,
}

/// Body of `POST /v1/admin/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddDevice {
    pub name: String,
}

/// Body of `POST /v1/admin/devices/{name}/rename`: the new name. The
/// device keeps its token and its episodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameDevice {
    pub name: String,
}

/// Answer of `POST /v1/admin/devices`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    pub name: String,
    pub token: String,
}

/// The `status` of a revocation's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Revoked {
    Revoked,
}

/// Answer of `DELETE /v1/admin/commits/{commit}`. (Fields in alphabetical
/// order, as this body was always written.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRevoked {
    pub commit: String,
    pub status: Revoked,
}

/// Answer of `DELETE /v1/admin/devices/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevoked {
    pub name: String,
    pub status: Revoked,
}

/// What `episodes verify` found of one episode's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyState {
    /// Its bytes hash to the indexed sha256 and size.
    Ok,
    /// Its bytes hash to something else, or it has another size.
    Mismatch,
    /// There is no object for it.
    Missing,
    /// It (or its index row) could not be read.
    Unreadable,
}

impl VerifyState {
    /// Every state, in the order a summary lists them.
    pub const ALL: [VerifyState; 4] = [
        VerifyState::Ok,
        VerifyState::Mismatch,
        VerifyState::Missing,
        VerifyState::Unreadable,
    ];

    /// The string this state is serialised as.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyState::Ok => "ok",
            VerifyState::Mismatch => "mismatch",
            VerifyState::Missing => "missing",
            VerifyState::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for VerifyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of `episodes verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyFinding {
    pub device: String,
    pub episode_id: String,
    pub state: VerifyState,
    pub expected_sha256: String,
    pub actual_sha256: Option<String>,
    pub detail: Option<String>,
}

/// One device's attempts with a rejected commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedDevice {
    pub device: String,
    /// Uploads answered 412 for this commit.
    pub attempts: u64,
    /// UTC, `%Y-%m-%dT%H:%M:%SZ`.
    pub first_seen: String,
    pub last_seen: String,
}

/// One commit answered 412 within the receiver's `rejected_window`, from
/// `commits rejected --json` and `GET /v1/admin/commits/rejected`, newest
/// first. A commit that is on the allow-list is not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCommit {
    pub commit: String,
    /// Attempts of every device together.
    pub attempts: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// The devices running it, most recent first.
    pub devices: Vec<RejectedDevice>,
    /// The command that allows it: [`allow_command`].
    pub allow_command: String,
}

/// The exact command an operator runs to allow `commit`.
pub fn allow_command(commit: &str) -> String {
    format!("ferry-receiver commits allow {commit}")
}
