//! `quarantine/<id>/` and its `quarantine_reason.json`: moving an episode in
//! (with the reason), reading reasons written by this or an older shipper,
//! and moving episodes back (`retry`, or the 412 re-check). Executing
//! `Action::Quarantine` is here too: the reason and its remediation text
//! for each kind, the move, and the log policy (a rejected commit is told
//! at ERROR once until it is allowed again, the other kinds every time).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::atomic::Ordering;

use ferry_proto::action::{DIGEST_MISMATCH_LIMIT, LOCAL_READ_LIMIT};
use ferry_proto::{Commit, EpisodeId, QuarantineKind};
use serde_json::{Map, Value};

use crate::episode::Detail;
use crate::fsio;
use crate::run::{blocking, lock, Agent};
use crate::spool::{self, Spool, REASON_FILE};

/// One `quarantine_reason.json`. Read leniently: every field may be
/// missing, unknown fields are kept and written back unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reason {
    /// HTTP status of the answer; `None` for local reasons.
    pub status_code: Option<u16>,
    pub error: String,
    /// The receiver's answer body (JSON when it was JSON), or null.
    pub body: Value,
    /// UTC `%Y-%m-%dT%H:%M:%SZ`.
    pub quarantined_at_wall: Option<String>,
    pub commit: Option<String>,
    pub attempts: Option<u32>,
    pub remediation: Option<String>,
    /// The recorded quarantine kind; `None` when the file names none or
    /// one this version does not know (see [`Reason::kind`] for the
    /// inferred one).
    pub kind: Option<QuarantineKind>,
    /// Every other field, written back unchanged. A `kind` this version
    /// does not know (written by a newer or older agent) stays here, raw,
    /// so that it survives a round trip as it was.
    pub extra: Map<String, Value>,
}

impl Reason {
    /// The kind, one of proto's closed set; inferred for files written
    /// before the field existed (a 412 is a rejected commit, another
    /// answer a refusal) or naming no kind; `None` when nothing says.
    pub fn kind(&self) -> Option<QuarantineKind> {
        if let Some(k) = self.kind {
            return Some(k);
        }
        match self.status_code {
            Some(412) => Some(QuarantineKind::CommitRejected),
            Some(_) => Some(QuarantineKind::Refused),
            None => None,
        }
    }

    /// [`Reason::kind`]'s name, `unknown` when there is none (operator
    /// views).
    pub fn kind_str(&self) -> &'static str {
        self.kind().map_or("unknown", QuarantineKind::as_str)
    }

    pub fn is_commit_rejected(&self) -> bool {
        self.kind() == Some(QuarantineKind::CommitRejected)
    }

    pub fn from_json(bytes: &[u8]) -> Reason {
        let v: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            Value::Object(Map::from_iter([(
                "error".to_string(),
                Value::String(format!("unreadable {REASON_FILE}: {e}")),
            )]))
        });
        let mut m = match v {
            Value::Object(m) => m,
            other => Map::from_iter([("body".to_string(), other)]),
        };
        let str_of = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let status_code = match m.remove("status_code") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        // Only a kind this version knows leaves `extra`; anything else is
        // kept there as written.
        let kind = match m.get("kind") {
            Some(Value::String(s)) => QuarantineKind::parse(s),
            _ => None,
        };
        if kind.is_some() {
            m.remove("kind");
        }
        let attempts = match m.remove("attempts") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Reason {
            status_code,
            error: str_of(m.remove("error")).unwrap_or_default(),
            body: m.remove("body").unwrap_or(Value::Null),
            quarantined_at_wall: str_of(m.remove("quarantined_at_wall")),
            commit: str_of(m.remove("commit")),
            attempts,
            remediation: str_of(m.remove("remediation")),
            kind,
            extra: m,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert(
            "status_code".into(),
            self.status_code.map_or(Value::Null, Value::from),
        );
        m.insert("error".into(), Value::String(self.error.clone()));
        m.insert("body".into(), self.body.clone());
        let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        m.insert("quarantined_at_wall".into(), opt(&self.quarantined_at_wall));
        if self.commit.is_some() {
            m.insert("commit".into(), opt(&self.commit));
        }
        if let Some(a) = self.attempts {
            m.insert("attempts".into(), Value::from(a));
        }
        if self.remediation.is_some() {
            m.insert("remediation".into(), opt(&self.remediation));
        }
        if let Some(k) = self.kind {
            m.insert("kind".into(), Value::String(k.as_str().to_string()));
        }
        Value::Object(m)
    }
}

/// Read the reason of a quarantined episode; a missing file (a crash
/// between the move and the write, or an old shipper) is an empty reason.
pub fn read_reason(spool: &Spool, id: &EpisodeId) -> io::Result<Reason> {
    let path = spool.quarantine_dir(id).join(REASON_FILE);
    match ferry_durable::safe::read_regular(&path, spool::SMALL_FILE_CAP) {
        Ok(b) => Ok(Reason::from_json(&b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Reason::default()),
        Err(e) => Err(e),
    }
}

/// Move `episodes/<id>` to `quarantine/<id>` and write the reason there.
/// The move comes first so that the reason file is never inside
/// `episodes/` (where it would be packed and change the digest); a crash in
/// between leaves a quarantined episode without a reason, which reads as
/// an empty one.
pub fn quarantine(spool: &Spool, id: &EpisodeId, reason: &Reason) -> io::Result<()> {
    let dest = spool.quarantine_dir(id);
    fsio::move_dir_replacing(&spool.episode_dir(id), &dest)?;
    let mut reason = reason.clone();
    if reason.quarantined_at_wall.is_none() {
        reason.quarantined_at_wall = Some(spool::now_wall());
    }
    let text = serde_json::to_vec_pretty(&reason.to_json()).expect("JSON values serialise");
    // The directory is the producer's: whatever it planted under the
    // reason's name or a temporary one is replaced or refused, never
    // written through.
    spool.write_record(spool::QUARANTINE, id, REASON_FILE, &text)?;
    spool.remove_tarballs(id)
}

/// Move `quarantine/<id>` back to `episodes/<id>`. The reason file is
/// removed (durably) first, so it is never packed; a crash in between
/// leaves the episode quarantined without a reason, and retrying again
/// finishes the job.
pub fn requeue(spool: &Spool, id: &EpisodeId) -> io::Result<()> {
    let dir = spool.quarantine_dir(id);
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, not_here(spool, id)));
    }
    if spool.episode_dir(id).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("episodes/{id} exists already; remove one of the two copies first"),
        ));
    }
    fsio::remove_file_durable(&dir.join(REASON_FILE))?;
    // A crash while the reason was being written can leave its temporary
    // file; it must not travel back and be packed either.
    let tmp_prefix = format!(".{REASON_FILE}.tmp-");
    for e in fs::read_dir(&dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
            fsio::remove_file_durable(&e.path())?;
        }
    }
    fsio::rename_durable(&dir, &spool.episode_dir(id))
}

/// "not in quarantine", saying where it is instead.
pub fn not_here(spool: &Spool, id: &EpisodeId) -> String {
    match spool.state_of(id) {
        Some(state) => format!("{id} is not in quarantine (it is {})", state.as_str()),
        None => format!("{id} is not in quarantine (no such episode)"),
    }
}

/// Delete a quarantined episode for good.
pub fn purge(spool: &Spool, id: &EpisodeId) -> io::Result<()> {
    let dir = spool.quarantine_dir(id);
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, not_here(spool, id)));
    }
    // Rename aside first so that a crash mid-delete leaves a dot name the
    // sweep finishes, never a half-deleted episode under its own name.
    let aside = fsio::aside_name(&dir);
    fsio::rename_durable(&dir, &aside)?;
    fsio::remove_path(&aside)
}

/// Ids in `quarantine/`, sorted; invalid names are returned separately.
pub fn list_ids(spool: &Spool) -> io::Result<(Vec<EpisodeId>, Vec<String>)> {
    let mut ids = Vec::new();
    let mut bad = Vec::new();
    for e in fs::read_dir(spool.dir(spool::QUARANTINE))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match EpisodeId::parse(&name) {
            Ok(id) => ids.push(id),
            Err(_) => bad.push(name),
        }
    }
    ids.sort();
    Ok((ids, bad))
}

/// The episodes quarantined for a rejected commit (412), by commit: what
/// the re-check asks the receiver about.
pub fn rejected_by_commit(spool: &Spool) -> io::Result<HashMap<Commit, Vec<EpisodeId>>> {
    let (ids, _) = list_ids(spool)?;
    let mut by_commit: HashMap<Commit, Vec<EpisodeId>> = HashMap::new();
    for id in ids {
        let Ok(r) = read_reason(spool, &id) else {
            continue;
        };
        if !r.is_commit_rejected() {
            continue;
        }
        // Old reason files may not name the commit: read meta.json.
        let c = r
            .commit
            .as_deref()
            .and_then(|c| Commit::parse_lenient(c).ok())
            .or_else(|| spool::read_commit(&spool.quarantine_dir(&id)).ok());
        if let Some(c) = c {
            by_commit.entry(c).or_default().push(id);
        }
    }
    Ok(by_commit)
}

/// The reason to write for an episode quarantined as `kind` after
/// `attempts` attempts, with the remediation the operator is told.
pub(crate) fn reason_for(
    spool: &Spool,
    id: &EpisodeId,
    kind: QuarantineKind,
    commit: Option<&Commit>,
    attempts: u32,
    detail: &Detail,
) -> Reason {
    let mut reason = Reason {
        status_code: detail.status,
        error: detail.error.clone(),
        body: detail.body.clone(),
        quarantined_at_wall: None,
        commit: commit.map(|c| c.to_string()),
        attempts: Some(attempts),
        remediation: detail.remediation.clone(),
        kind: Some(kind),
        extra: Default::default(),
    };
    match kind {
        QuarantineKind::Unreadable => {
            reason.error = format!(
                "unreadable {LOCAL_READ_LIMIT} passes in a row: {}",
                detail.error
            );
            reason.remediation = Some(format!(
                "check the disk (dmesg, smartctl, fsck), repair or remove the file, then run `ferry-agent quarantine retry {id}`"
            ));
        }
        QuarantineKind::RepeatedDigestMismatch => {
            reason.error = format!(
                "digest-mismatch {DIGEST_MISMATCH_LIMIT} times in a row: the bytes change between packing and the receiver (RAM, disk or a middlebox): {}",
                detail.error
            );
            reason.remediation = Some(format!(
                "check the device's memory and disk and any proxy on the way, then run `ferry-agent quarantine retry {id}`"
            ));
        }
        QuarantineKind::Refused => {
            reason.remediation.get_or_insert_with(|| {
                format!("see the error; fix the episode or the receiver limit, then run `ferry-agent quarantine retry {id}`")
            });
        }
        QuarantineKind::NoCommit => {
            reason.remediation.get_or_insert_with(|| {
                format!(
                    "write the producing commit into {}/meta.json as {{\"code_version\": {{\"commit\": \"<40 hex>\"}}}}, then run `ferry-agent quarantine retry {id}`",
                    spool.quarantine_dir(id).display()
                )
            });
        }
        QuarantineKind::CommitRejected => {}
    }
    reason
}

/// Execute `Action::Quarantine(kind)`: move the episode in with its
/// reason, count it, tell the operator.
pub(crate) async fn execute(
    agent: &Agent,
    id: &EpisodeId,
    kind: QuarantineKind,
    commit: Option<&Commit>,
    attempts: u32,
    detail: &Detail,
) {
    let reason = reason_for(&agent.spool, id, kind, commit, attempts, detail);
    let (sp, i, r) = (agent.spool.clone(), id.clone(), reason.clone());
    if let Err(e) = blocking(move || quarantine(&sp, &i, &r)).await {
        let msg = format!(
            "cannot quarantine {id}: {}",
            fsio::describe(&agent.spool.episode_dir(id), &e)
        );
        tracing::error!("{msg}");
        agent.record_error(&msg).await;
        return;
    }
    agent.left_episodes();
    agent.quarantined.fetch_add(1, Ordering::Relaxed);
    agent.metrics.quarantined(kind);
    let rem = reason.remediation.clone().unwrap_or_default();
    if kind == QuarantineKind::CommitRejected {
        let first = commit.is_none_or(|c| lock(&agent.logged_412).insert(c.clone()));
        if first {
            tracing::error!(
                episode = %id,
                commit = %commit.map(|c| c.as_str()).unwrap_or(""),
                "the receiver rejects this commit (412); quarantined until it is allowed (re-checked every {}). Remediation: {rem}",
                humantime::format_duration(agent.cfg.recheck_interval)
            );
        } else {
            tracing::info!(episode = %id, "quarantined: commit rejected (412), as logged before");
        }
    } else {
        tracing::error!(episode = %id, kind = kind.as_str(), "quarantined: {}. Remediation: {rem}", reason.error);
    }
    agent
        .record_error(&format!(
            "{id} quarantined ({}): {}",
            kind.as_str(),
            reason.error
        ))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_reason_files_are_read_and_round_trip_unknown_fields() {
        let old = json!({
            "status_code": 412,
            "error": "commit-rejected",
            "body": "{\"status\":\"commit-rejected\"}",
            "quarantined_at_wall": "2025-01-02T03:04:05Z",
            "shipper_version": "0.3",
        });
        let r = Reason::from_json(old.to_string().as_bytes());
        assert_eq!(r.status_code, Some(412));
        assert!(r.is_commit_rejected());
        assert_eq!(
            r.quarantined_at_wall.as_deref(),
            Some("2025-01-02T03:04:05Z")
        );
        let back = r.to_json();
        assert_eq!(back["shipper_version"], "0.3");
        assert_eq!(back["status_code"], 412);
        assert_eq!(back["body"], old["body"]);
    }

    #[test]
    fn missing_and_odd_fields_are_tolerated() {
        let r = Reason::from_json(b"{\"status_code\": null, \"error\": \"EIO\"}");
        assert_eq!(r.status_code, None);
        assert_eq!(r.kind(), None);
        assert_eq!(r.kind_str(), "unknown");
        let r = Reason::from_json(br#"{"kind": "no-commit"}"#);
        assert_eq!(r.kind(), Some(QuarantineKind::NoCommit));
        // A kind no version wrote is read as what the status code says,
        // and written back as it was.
        let r = Reason::from_json(br#"{"kind": "frobbed", "status_code": 422}"#);
        assert_eq!(r.kind(), Some(QuarantineKind::Refused));
        assert_eq!(r.to_json()["kind"], "frobbed");
        let r = Reason::from_json(b"{\"status_code\": \"400\", \"attempts\": \"3\"}");
        assert_eq!(r.status_code, Some(400));
        assert_eq!(r.attempts, Some(3));
        let r = Reason::from_json(b"not json");
        assert!(r.error.contains("unreadable"));
        let r = Reason::from_json(b"{}");
        assert_eq!(r, Reason::default());
    }

    #[test]
    fn new_files_have_the_spec_fields() {
        let r = Reason {
            status_code: None,
            error: "x".into(),
            commit: Some("c".into()),
            attempts: Some(5),
            remediation: Some("fix".into()),
            kind: Some(QuarantineKind::Unreadable),
            quarantined_at_wall: Some("2026-01-01T00:00:00Z".into()),
            ..Reason::default()
        };
        let v = r.to_json();
        for k in [
            "status_code",
            "error",
            "body",
            "quarantined_at_wall",
            "commit",
            "attempts",
            "remediation",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(Reason::from_json(v.to_string().as_bytes()), r);
    }

    #[test]
    fn every_kind_round_trips_byte_for_byte() {
        for k in QuarantineKind::ALL {
            let text = format!(
                r#"{{"attempts":3,"body":null,"commit":"{c}","error":"e","kind":"{k}","quarantined_at_wall":"2026-01-01T00:00:00Z","remediation":"r","status_code":null}}"#,
                c = "a".repeat(40),
                k = k.as_str()
            );
            let r = Reason::from_json(text.as_bytes());
            assert_eq!(r.kind, Some(k));
            assert!(r.extra.is_empty(), "{:?}", r.extra);
            assert_eq!(serde_json::to_string(&r.to_json()).unwrap(), text);
        }
    }

    #[test]
    fn an_unknown_kind_loads_and_is_written_back_as_it_was() {
        // As a newer agent might write it, and an odd non-string one.
        for raw in [r#""frobbed""#, "7", r#"{"sub":"x"}"#] {
            let text = format!(
                r#"{{"body":null,"error":"","kind":{raw},"quarantined_at_wall":null,"status_code":null}}"#
            );
            let r = Reason::from_json(text.as_bytes());
            assert_eq!(r.kind, None, "{raw}");
            assert_eq!(r.kind(), None, "no status code to infer from");
            assert_eq!(r.kind_str(), "unknown");
            assert_eq!(serde_json::to_string(&r.to_json()).unwrap(), text);
        }
    }

    #[test]
    fn quarantine_then_requeue_leaves_no_reason_file_behind() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        s.prepare().unwrap();
        let id = EpisodeId::parse("ep1").unwrap();
        fs::create_dir_all(s.episode_dir(&id)).unwrap();
        fs::write(s.episode_dir(&id).join("a"), "x").unwrap();
        quarantine(&s, &id, &Reason::default()).unwrap();
        assert!(s.quarantine_dir(&id).join(REASON_FILE).exists());
        // As a crash mid-write would leave it.
        fs::write(
            s.quarantine_dir(&id).join(format!(".{REASON_FILE}.tmp-42")),
            "{",
        )
        .unwrap();
        let r = read_reason(&s, &id).unwrap();
        assert!(r.quarantined_at_wall.is_some());
        requeue(&s, &id).unwrap();
        assert_eq!(
            fs::read_dir(s.episode_dir(&id)).unwrap().count(),
            1,
            "only the episode's own file came back"
        );
        assert!(s.episode_dir(&id).join("a").exists());
        assert!(!s.quarantine_dir(&id).exists());
    }
}
