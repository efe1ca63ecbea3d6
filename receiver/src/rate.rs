//! The upload rate of the last hour, for the status page's chart: a ring of
//! 60 one-minute buckets (bytes and episodes stored) in memory. It is this
//! process's view only: it starts empty at each start and does not see
//! what other receivers sharing the index store.

use std::sync::Mutex;

/// Minutes kept.
pub const MINUTES: usize = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The minute (unix seconds / 60) this bucket counts; buckets of an
    /// older minute read as empty.
    minute: i64,
    pub bytes: u64,
    pub uploads: u64,
}

#[derive(Debug)]
pub struct UploadRate {
    ring: Mutex<[Bucket; MINUTES]>,
}

impl Default for UploadRate {
    fn default() -> Self {
        Self {
            ring: Mutex::new([Bucket::default(); MINUTES]),
        }
    }
}

impl UploadRate {
    /// Counts one stored episode of `bytes` at `now` (unix seconds).
    pub fn record(&self, bytes: u64, now: i64) {
        let minute = now.div_euclid(60);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut ring[minute.rem_euclid(MINUTES as i64) as usize];
        if b.minute != minute {
            *b = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        b.bytes = b.bytes.saturating_add(bytes);
        b.uploads += 1;
    }

    /// The last [`MINUTES`] minutes up to `now`, oldest first.
    pub fn last_hour(&self, now: i64) -> Vec<Bucket> {
        let current = now.div_euclid(60);
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (0..MINUTES as i64)
            .rev()
            .map(|ago| {
                let minute = current - ago;
                let b = ring[minute.rem_euclid(MINUTES as i64) as usize];
                if b.minute == minute {
                    b
                } else {
                    Bucket {
                        minute,
                        ..Bucket::default()
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_older_than_an_hour_read_as_empty() {
        let r = UploadRate::default();
        r.record(100, 600);
        r.record(50, 630);
        r.record(7, 660);
        let h = r.last_hour(660);
        assert_eq!(h.len(), MINUTES);
        assert_eq!((h[58].bytes, h[58].uploads), (150, 2));
        assert_eq!((h[59].bytes, h[59].uploads), (7, 1));
        // Minute 11 (660 s) is the oldest of the hour that ends in minute
        // 70; a minute later it is gone, and its slot counts another one.
        assert_eq!(r.last_hour(660 + 3540)[0].uploads, 1);
        assert!(r.last_hour(660 + 3600).iter().all(|b| b.uploads == 0));
        r.record(1, 660 + 3600);
        let h = r.last_hour(660 + 3600);
        assert_eq!((h[59].bytes, h[59].uploads), (1, 1));
    }
}
