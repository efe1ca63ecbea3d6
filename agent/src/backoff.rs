//! Exponential backoff with full jitter (base 1 s, capped at `backoff_max`,
//! `Retry-After` as a floor, itself capped at `backoff_max`: the value is
//! the receiver's), and the gate every upload waits at while the agent
//! backs off. No arithmetic on a remote value can overflow here.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Backoff state: the number of consecutive failures.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            cap,
            failures: 0,
        }
    }

    /// The ceiling of the next delay: `min(cap, base * 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let exp = self.failures.min(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// Record a failure and return how long to wait: uniform in
    /// `[0, ceiling]` (full jitter), never less than `retry_after` capped
    /// at the cap (SPEC §3: honoured, capped at `backoff_max`).
    pub fn fail(&mut self, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let jittered = Duration::from_secs_f64(rng.gen_range(0.0..=ceiling.as_secs_f64()));
        jittered.max(retry_after.unwrap_or_default().min(self.cap))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A shared "not before" instant: uploads wait here while backing off.
#[derive(Debug)]
pub struct Gate {
    inner: std::sync::Mutex<(Backoff, Instant)>,
}

impl Gate {
    pub fn new(cap: Duration) -> Gate {
        Gate {
            inner: std::sync::Mutex::new((Backoff::new(cap), Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Backoff, Instant)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A failure: push the gate out by the next backoff delay (never pull
    /// it in). Returns the delay.
    pub fn fail(&self, retry_after: Option<Duration>) -> Duration {
        let mut g = self.lock();
        let d = g.0.fail(retry_after, &mut rand::thread_rng());
        // Far enough in the future for any cap the operator may set.
        let now = Instant::now();
        let until = now
            .checked_add(d)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        if until > g.1 {
            g.1 = until;
        }
        d
    }

    /// A success: open the gate and forget the failures.
    pub fn succeed(&self) {
        let mut g = self.lock();
        g.0.reset();
        g.1 = Instant::now();
    }

    /// When the gate opens.
    pub fn open_at(&self) -> Instant {
        self.lock().1
    }

    /// Wait until the gate is open (it may move while waiting).
    pub async fn wait(&self) {
        loop {
            let at = self.open_at();
            if at <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_full_jitter_bounds_and_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cap = Duration::from_secs(300);
        let mut b = Backoff::new(cap);
        for n in 0..40u32 {
            let ceiling = Duration::from_secs(1u64 << n.min(20)).min(cap);
            assert_eq!(b.ceiling(), ceiling);
            let d = b.fail(None, &mut rng);
            assert!(d <= ceiling, "{n}: {d:?} > {ceiling:?}");
        }
        let d = b.fail(Some(Duration::from_secs(200)), &mut rng);
        assert!(d >= Duration::from_secs(200), "Retry-After is a floor");
        let d = b.fail(Some(Duration::from_secs(900)), &mut rng);
        assert_eq!(d, cap, "a floor capped at backoff_max");
        let d = b.fail(Some(Duration::from_secs(u64::MAX)), &mut rng);
        assert_eq!(d, cap, "the receiver's value is never trusted");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn failures_counts_consecutive_failures_until_a_reset() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_secs(60));
        assert_eq!(b.failures(), 0);
        for n in 1..=3 {
            b.fail(None, &mut rng);
            assert_eq!(b.failures(), n);
        }
        b.reset();
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn jitter_spreads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(300));
            for _ in 0..6 {
                b.fail(None, &mut rng);
            }
            seen.insert(b.fail(None, &mut rng).as_millis() / 1000);
        }
        assert!(seen.len() > 5, "{seen:?}");
    }

    /// A success opens a gate that is still closed, and forgets the
    /// failures (the next delay is at most the base again).
    #[tokio::test(start_paused = true)]
    async fn a_success_opens_a_closed_gate_at_once() {
        let g = Gate::new(Duration::from_secs(600));
        for _ in 0..5 {
            g.fail(None);
        }
        g.fail(Some(Duration::from_secs(30)));
        assert!(g.open_at() > Instant::now());
        g.succeed();
        let t = Instant::now();
        g.wait().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert!(g.fail(None) <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_until_the_delay_passes() {
        let g = Gate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        g.wait().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let d = g.fail(Some(Duration::from_secs(5)));
        assert!(d >= Duration::from_secs(5));
        g.wait().await;
        assert!(
            t0.elapsed() >= Duration::from_secs(5) && t0.elapsed() <= d + Duration::from_millis(1)
        );
        g.succeed();
        // Retry-After: 18446744073709551615 once panicked here.
        assert_eq!(g.fail(Some(Duration::MAX)), Duration::from_secs(60));
        assert!(g.open_at() <= Instant::now() + Duration::from_secs(60));
        g.succeed();
        let t1 = Instant::now();
        g.wait().await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }
}
