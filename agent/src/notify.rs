//! systemd integration: `READY=1`, `STATUS=`, `STOPPING=1`, and the watchdog
//! fed on progress (SPEC §4.5): it is fed while the agent is idle or while
//! the shared progress counter moves; a pack or upload that moves no byte
//! for a watchdog interval stops the feeding and systemd restarts us.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Progress shared by every worker: bytes read or sent, entries scanned.
#[derive(Debug, Default)]
pub struct Progress {
    pub counter: AtomicU64,
    /// Upload body bytes handed to the HTTP client (the metrics textfile).
    pub sent: AtomicU64,
    active: AtomicUsize,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// Mark a unit of work (a pack, a hash, an upload) as in flight for the
    /// life of the guard: while any is in flight, the watchdog is fed only
    /// when the counter moves.
    pub fn active(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(self.clone())
    }

    /// Counts upload body bytes handed to the HTTP client.
    pub fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

pub struct ActiveGuard(Arc<Progress>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Talks to systemd (a no-op without `NOTIFY_SOCKET`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    fn send(&self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog interval systemd asked for: `WATCHDOG_USEC`, honoured when
/// `WATCHDOG_PID` is unset or names this process (as `sd_watchdog_enabled`
/// does). Read once at startup by `main`.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Decide, at each tick, whether to feed: idle, or the counter moved.
#[derive(Debug, Default)]
pub struct FeedPolicy {
    last: u64,
}

impl FeedPolicy {
    pub fn should_feed(&mut self, counter: u64, in_flight: usize) -> bool {
        let moved = counter != self.last;
        self.last = counter;
        in_flight == 0 || moved
    }
}

/// Feed the watchdog every `interval / 2` while the policy says so, until
/// cancelled.
pub async fn watchdog_task(
    interval: Duration,
    progress: Arc<Progress>,
    notifier: Notifier,
    cancel: CancellationToken,
) {
    let mut policy = FeedPolicy::default();
    let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if policy.should_feed(
            progress.counter.load(Ordering::Relaxed),
            progress.in_flight(),
        ) {
            if starving {
                tracing::info!("work is moving again; feeding the watchdog");
                starving = false;
            }
            notifier.watchdog();
        } else if !starving {
            starving = true;
            tracing::error!(
                in_flight = progress.in_flight(),
                "no progress for {}: not feeding the watchdog (a read or write hangs)",
                humantime::format_duration(interval / 2)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_when_idle_or_moving_only() {
        let mut p = FeedPolicy::default();
        assert!(p.should_feed(0, 0), "idle");
        assert!(p.should_feed(0, 0), "still idle");
        assert!(!p.should_feed(0, 1), "busy and stuck");
        assert!(p.should_feed(10, 1), "busy and moving");
        assert!(!p.should_feed(10, 2), "stuck again");
        assert!(p.should_feed(10, 0), "done");
    }

    #[test]
    fn interval_from_env() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None),
            Some(Duration::from_secs(2))
        );
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("1000"), Some(&me)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(watchdog_interval(Some("1000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }
}
