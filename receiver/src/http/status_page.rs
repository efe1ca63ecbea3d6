//! `GET /`: a plain HTML status page for operators — totals, devices (those
//! not seen for a day first, marked "falling behind"), the allow-list and
//! the latest episodes. No scripts, no external assets; every value is
//! HTML-escaped.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use ferry_proto::admin::DeviceInfo;

use super::{AppError, SharedState};

/// A device not seen for longer than this is "falling behind".
pub const FALLING_BEHIND: Duration = Duration::from_secs(24 * 3600);
/// Rows shown per table; the admin API has the rest.
const MAX_ROWS: usize = 500;
const RECENT_EPISODES: u64 = 50;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a device has not been seen within [`FALLING_BEHIND`] of `now`.
pub fn falling_behind(d: &DeviceInfo, now: SystemTime) -> bool {
    if d.revoked {
        return false;
    }
    let seen = d
        .last_seen_at
        .as_deref()
        .or(Some(d.created_at.as_str()))
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    match seen {
        Some(t) => now.duration_since(t).unwrap_or_default() > FALLING_BEHIND,
        None => true,
    }
}

pub async fn page(State(st): State<SharedState>) -> Result<Response, AppError> {
    let totals = st.index.totals().await?;
    let mut devices = st.index.list_devices().await?;
    let commits = st.index.list_commits().await?;
    let episodes = st.index.list_episodes(None, Some(RECENT_EPISODES)).await?;
    let now = SystemTime::now();
    devices.sort_by_key(|d| !falling_behind(d, now));
    let behind = devices.iter().filter(|d| falling_behind(d, now)).count();

    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ferry receiver</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}\
         td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}tr.behind{{background:#fdd}}\
         code{{font-size:90%}}</style></head><body><h1>ferry receiver</h1>\
         <p>{} episodes ({} bytes) · {} devices ({} falling behind) · {} allowed commits · \
         {} of {} upload slots in use</p>",
        totals.episodes,
        totals.bytes,
        totals.devices,
        behind,
        totals.commits,
        st.config.max_concurrent_uploads - st.upload_slots.available_permits(),
        st.config.max_concurrent_uploads,
    );
    h.push_str(
        "<h2>Devices</h2><table><tr><th>name</th><th>state</th><th>last seen</th>\
         <th>last upload</th><th>episodes</th><th>bytes</th></tr>",
    );
    for d in devices.iter().take(MAX_ROWS) {
        let fb = falling_behind(d, now);
        let state = match (d.revoked, fb) {
            (true, _) => "revoked",
            (false, true) => "falling behind",
            _ => "ok",
        };
        let _ = write!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if fb { " class=\"behind\"" } else { "" },
            esc(&d.name),
            state,
            esc(d.last_seen_at.as_deref().unwrap_or("never")),
            esc(d.last_upload_at.as_deref().unwrap_or("never")),
            d.episodes,
            d.bytes,
        );
    }
    h.push_str("</table><h2>Allowed commits</h2><table><tr><th>commit</th><th>head</th><th>note</th><th>allowed at</th></tr>");
    for c in commits.iter().take(MAX_ROWS) {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.commit),
            if c.head { "head" } else { "" },
            esc(c.note.as_deref().unwrap_or("")),
            esc(&c.allowed_at),
        );
    }
    h.push_str(
        "</table><h2>Recent episodes</h2><table><tr><th>episode</th><th>device</th><th>commit</th>\
         <th>size</th><th>sha256</th><th>stored at</th></tr>",
    );
    for e in &episodes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&e.episode_id),
            esc(&e.device),
            esc(&e.commit[..e.commit.len().min(12)]),
            e.size,
            esc(&e.sha256[..e.sha256.len().min(16)]),
            esc(&e.stored_at),
        );
    }
    h.push_str("</table></body></html>");
    let mut resp = Html(h).into_response();
    resp.headers_mut()
        .extend(SECURITY_HEADERS.iter().map(|(k, v)| {
            (
                header::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            )
        }));
    Ok(resp)
}

/// The page loads nothing and runs nothing (inline styles only), and is
/// never framed: an escaping mistake cannot become a script, and the page
/// cannot be overlaid for clickjacking.
const SECURITY_HEADERS: [(&str, &str); 3] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn device(last_seen: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            name: "d".into(),
            revoked: false,
            created_at: "2026-01-01T00:00:00Z".into(),
            last_seen_at: last_seen.map(str::to_owned),
            last_upload_at: None,
            episodes: 0,
            bytes: 0,
        }
    }

    #[test]
    fn devices_unseen_for_a_day_fall_behind() {
        let now = humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
        assert!(!falling_behind(&device(Some("2026-01-02T12:00:00Z")), now));
        assert!(falling_behind(&device(Some("2026-01-01T12:00:00Z")), now));
        // Never seen: counted from creation.
        assert!(falling_behind(&device(None), now));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
