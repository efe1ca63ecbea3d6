//! `GET /`: the operator console (SPEC §9), plain server-rendered HTML
//! readable on a phone: commits answered 412 with their devices and the
//! command that allows each, devices falling behind (no upload within
//! `behind_after`) first, the upload rate of the last hour as an inline
//! SVG, the allow-list and the latest episodes. No scripts, no external
//! assets; every value from the index is HTML-escaped. Who may see it:
//! `page_auth`.
//!
//! Cost per request: one row per device (the per-device totals are kept by
//! the index's insert trigger), the allow-list, the rejections of the
//! window, the 50 newest episodes by index; no scan of the episodes.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use ferry_proto::admin::RejectedCommit;

use super::{page_auth, AppError, SharedState};
use crate::store::{unix_now, AllowedCommit, Device, Totals};

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

/// `1.5 MiB`: binary units, one decimal from KiB on.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `45 s`, `12 min`, `5 h`, `3 d`: the largest whole unit.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// The index's unix seconds as a time; before 1970 is shown as 1970, as
/// `store::format_time` shows it.
fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// `5 min ago`, or `never`.
fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    match t {
        Some(t) => format!(
            "{} ago",
            human_age(now.duration_since(t).unwrap_or_default())
        ),
        None => "never".to_owned(),
    }
}

/// Whether an active device stored nothing within `behind_after` of `now`
/// (a device that never uploaded counts from its creation).
pub fn falling_behind(d: &Device, now: SystemTime, behind_after: Duration) -> bool {
    if d.revoked {
        return false;
    }
    let last = at(d.last_upload_at.unwrap_or(d.created_at));
    now.duration_since(last).unwrap_or_default() > behind_after
}

/// Falling behind first (longest silent first), then the rest by name.
fn order_devices(devices: &mut [Device], now: SystemTime, behind_after: Duration) {
    devices.sort_by_cached_key(|d| {
        let behind = falling_behind(d, now, behind_after);
        // Clamped as `at` clamps, so that the order is the one shown.
        let last = d.last_upload_at.unwrap_or(d.created_at).max(0);
        (!behind, if behind { last } else { 0 }, d.name.clone())
    });
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1em;max-width:70em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em}\
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
tr.behind{background:#fde8e8}td.n{text-align:right}code{font-size:.9em;word-break:break-all}\
.cmd{background:#f4f4f4;padding:.1em .3em;display:inline-block}\
tr.rejected td{border-bottom:none}td.age,td.n{white-space:nowrap}.muted{color:#777}\
svg{max-width:100%;height:auto;background:#fafafa;border:1px solid #ddd}";

pub async fn page(State(st): State<SharedState>, h: HeaderMap) -> Response {
    if let Some(resp) = page_auth::refusal(&st, &h) {
        return resp;
    }
    match render(&st).await {
        Ok(html) => {
            let mut resp = Html(html).into_response();
            resp.headers_mut()
                .extend(SECURITY_HEADERS.iter().map(|(k, v)| {
                    (
                        header::HeaderName::from_static(k),
                        HeaderValue::from_static(v),
                    )
                }));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn render(st: &SharedState) -> Result<String, AppError> {
    let mut devices = st.index.list_devices().await?;
    let commits = st.index.list_commits().await?;
    // Every device row carries its totals (kept by the insert trigger), so
    // the page's totals are sums of what it has just read.
    let totals = crate::store::Totals {
        episodes: devices.iter().map(|d| d.episodes).sum(),
        bytes: devices.iter().map(|d| d.bytes).sum(),
        devices: devices.len() as u64,
        commits: commits.len() as u64,
    };
    let rejected =
        crate::rejected::list(&*st.index, &st.rejections, st.config.rejected_window).await?;
    let episodes = st.index.list_episodes(None, Some(RECENT_EPISODES)).await?;
    let now = SystemTime::now();
    let behind_after = st.config.behind_after;
    order_devices(&mut devices, now, behind_after);
    let behind = devices
        .iter()
        .filter(|d| falling_behind(d, now, behind_after))
        .count();

    let mut h = String::with_capacity(32 << 10);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>ferry receiver</title><style>{STYLE}</style></head><body><h1>ferry receiver</h1>"
    );
    summary(&mut h, st, &totals, behind, rejected.len());
    rejected_section(&mut h, &rejected, now);
    rate_section(&mut h, st);
    devices_section(&mut h, &devices, now, behind_after);
    allow_list_section(&mut h, &commits, now);
    h.push_str(
        "<h2>Recent episodes</h2><div class=\"scroll\"><table><tr><th>device/episode</th><th>commit</th>\
         <th>size</th><th>stored</th></tr>",
    );
    for e in &episodes {
        let _ = write!(
            h,
            "<tr><td>{}/{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&e.device),
            esc(e.episode_id.as_str()),
            esc(&e.commit.as_str()[..e.commit.as_str().len().min(12)]),
            human_bytes(e.size),
            ago(Some(at(e.stored_at)), now),
        );
    }
    h.push_str("</table></div></body></html>");
    Ok(h)
}

fn summary(h: &mut String, st: &SharedState, t: &Totals, behind: usize, rejected: usize) {
    let _ = write!(
        h,
        "<p id=\"summary\">{} episodes ({}) · {} devices, <b>{behind} falling behind</b> \
         (no upload for {}) · {} allowed commits, <b>{rejected} rejected</b> (last {}) · \
         {} of {} upload slots in use</p>",
        t.episodes,
        human_bytes(t.bytes),
        t.devices,
        human_age(st.config.behind_after),
        t.commits,
        human_age(st.config.rejected_window),
        st.config.max_concurrent_uploads - st.upload_slots.available_permits(),
        st.config.max_concurrent_uploads,
    );
}

fn rejected_section(h: &mut String, rejected: &[RejectedCommit], now: SystemTime) {
    h.push_str("<h2>Rejected commits</h2>");
    if rejected.is_empty() {
        h.push_str("<p class=\"muted\">None: every upload's commit was on the allow-list.</p>");
        return;
    }
    h.push_str(
        "<div class=\"scroll\"><table id=\"rejected\"><tr><th>commit</th><th>devices (attempts)</th>\
         <th>attempts</th><th>last seen</th></tr>",
    );
    for c in rejected.iter().take(MAX_ROWS) {
        let devices: Vec<String> = c
            .devices
            .iter()
            .map(|d| {
                format!(
                    "<span class=\"device\">{}</span> ({})",
                    esc(&d.device),
                    d.attempts
                )
            })
            .collect();
        let _ = write!(
            h,
            "<tr class=\"rejected\"><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"age\">{}</td></tr><tr class=\"allow\"><td colspan=\"4\">to allow it: \
             <code class=\"cmd\">{}</code></td></tr>",
            esc(&c.commit),
            devices.join(", "),
            c.attempts,
            // The tallies' wire shape is made by `rejected::list`; a time
            // it could not format would show as `never`.
            ago(humantime::parse_rfc3339(&c.last_seen).ok(), now),
            esc(&c.allow_command),
        );
    }
    h.push_str("</table></div>");
}

fn rate_section(h: &mut String, st: &SharedState) {
    let minutes = st.upload_rate.last_hour(unix_now());
    let total: u64 = minutes.iter().map(|b| b.bytes).sum();
    let uploads: u64 = minutes.iter().map(|b| b.uploads).sum();
    let _ = write!(
        h,
        "<h2>Uploads, last hour</h2><p>{uploads} episodes, {} stored by this receiver \
         (per minute; since its start at most)</p>",
        human_bytes(total)
    );
    h.push_str(&rate_svg(&minutes));
}

/// 60 bars, one per minute, scaled to the busiest; each with a tooltip.
fn rate_svg(minutes: &[crate::rate::Bucket]) -> String {
    const W: usize = 600;
    const H: u64 = 120;
    let max = minutes.iter().map(|b| b.bytes).max().unwrap_or(0).max(1);
    let bar = W / minutes.len().max(1);
    let mut s = format!(
        "<svg id=\"rate\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {}\" width=\"{W}\" \
         height=\"{}\" role=\"img\" aria-label=\"bytes stored per minute, last hour\">",
        H + 16,
        H + 16
    );
    for (i, b) in minutes.iter().enumerate() {
        let height = (b.bytes * H).div_ceil(max);
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#3a7bd5\">\
             <title>{} min ago: {} episodes, {}</title></rect>",
            i * bar,
            H - height,
            bar.saturating_sub(1).max(1),
            minutes.len() - 1 - i,
            b.uploads,
            human_bytes(b.bytes),
        );
    }
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"11\" fill=\"#555\">60 min ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">now · peak {}/min</text></svg>",
        H + 13,
        W - 2,
        H + 13,
        human_bytes(if max == 1 { 0 } else { max })
    );
    s
}

fn devices_section(h: &mut String, devices: &[Device], now: SystemTime, behind_after: Duration) {
    h.push_str(
        "<h2>Devices</h2><div class=\"scroll\"><table id=\"devices\"><tr><th>name</th><th>state</th>\
         <th>last upload</th><th>last seen</th><th>episodes</th><th>stored</th></tr>",
    );
    for d in devices.iter().take(MAX_ROWS) {
        let fb = falling_behind(d, now, behind_after);
        let state = match (d.revoked, fb) {
            (true, _) => "revoked",
            (false, true) => "falling behind",
            _ => "ok",
        };
        let _ = write!(
            h,
            "<tr class=\"{}\"><td class=\"name\">{}</td><td>{state}</td><td class=\"age\">{}</td><td class=\"age\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if fb { "device behind" } else { "device" },
            esc(&d.name),
            ago(d.last_upload_at.map(at), now),
            ago(d.last_seen_at.map(at), now),
            d.episodes,
            human_bytes(d.bytes),
        );
    }
    h.push_str("</table></div>");
    if devices.len() > MAX_ROWS {
        let _ = write!(
            h,
            "<p class=\"muted\">{} more: <code>ferry-receiver devices list</code></p>",
            devices.len() - MAX_ROWS
        );
    }
}

fn allow_list_section(h: &mut String, commits: &[AllowedCommit], now: SystemTime) {
    h.push_str(
        "<h2>Allowed commits</h2><div class=\"scroll\"><table id=\"allowed\"><tr><th>commit</th>\
         <th></th><th>note</th><th>allowed</th></tr>",
    );
    for c in commits.iter().take(MAX_ROWS) {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(c.commit.as_str()),
            if c.head { "head" } else { "" },
            esc(c.note.as_deref().unwrap_or("")),
            ago(Some(at(c.allowed_at)), now),
        );
    }
    h.push_str("</table></div>");
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

    /// Unix seconds of an RFC 3339 time, so that the cases read as dates.
    fn secs(t: &str) -> i64 {
        let t = humantime::parse_rfc3339(t).unwrap();
        t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn device(last_upload: Option<&str>) -> Device {
        Device {
            name: "d".into(),
            revoked: false,
            created_at: secs("2026-01-01T00:00:00Z"),
            last_seen_at: None,
            last_upload_at: last_upload.map(secs),
            episodes: 0,
            bytes: 0,
        }
    }

    #[test]
    fn devices_without_an_upload_for_behind_after_fall_behind() {
        let now = humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
        let day = Duration::from_secs(86_400);
        assert!(!falling_behind(
            &device(Some("2026-01-02T12:00:00Z")),
            now,
            day
        ));
        assert!(falling_behind(
            &device(Some("2026-01-01T12:00:00Z")),
            now,
            day
        ));
        // Never uploaded: counted from creation.
        assert!(falling_behind(&device(None), now, day));
        assert!(!falling_behind(&device(None), now, 3 * day));
    }

    #[test]
    fn behind_first_longest_silent_first_then_by_name() {
        let now = humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
        let mut ds = vec![
            named("b", Some("2026-01-02T23:00:00Z")),
            named("z", Some("2026-01-01T00:00:00Z")),
            named("a", Some("2026-01-02T23:00:00Z")),
            named("y", Some("2026-01-01T05:00:00Z")),
        ];
        order_devices(&mut ds, now, Duration::from_secs(86_400));
        let names: Vec<_> = ds.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["z", "y", "a", "b"]);
    }

    fn named(name: &str, last_upload: Option<&str>) -> Device {
        Device {
            name: name.into(),
            ..device(last_upload)
        }
    }

    #[test]
    fn allow_list_rows_show_the_entry_and_its_age() {
        let now = humantime::parse_rfc3339("2026-01-03T00:00:00Z").unwrap();
        let entry = AllowedCommit {
            commit: ferry_proto::Commit::parse(&"ab".repeat(20)).unwrap(),
            head: true,
            note: Some("<release>".into()),
            allowed_at: secs("2026-01-02T22:00:00Z"),
        };
        let mut h = String::new();
        allow_list_section(&mut h, &[entry], now);
        let row = format!(
            "<tr><td><code>{}</code></td><td>head</td><td>&lt;release&gt;</td><td>2 h ago</td></tr>",
            "ab".repeat(20)
        );
        assert!(h.contains(&row), "{h}");
    }

    #[test]
    fn times_before_1970_show_as_1970_like_the_wire_shape() {
        assert_eq!(at(-5), UNIX_EPOCH);
        assert_eq!(ago(Some(at(-5)), at(60)), "1 min ago");
        assert_eq!(ago(None, at(60)), "never");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_age(Duration::from_secs(59)), "59 s");
        assert_eq!(human_age(Duration::from_secs(7200)), "2 h");
        assert_eq!(human_age(Duration::from_secs(3 * 86_400)), "3 d");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
