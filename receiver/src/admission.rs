//! Connection admission: how many connections the receiver holds open, and
//! which of them may still do anything but operator requests.
//!
//! Every open connection costs a file descriptor. Without a cap, idle
//! sockets from one client exhaust the descriptors: accept fails, and
//! `/healthz` stops answering, so the orchestrator kills a receiver that
//! is only busy. So connections are admitted in two tiers:
//!
//! - the **general** tier, `max_connections - PRIORITY_RESERVE` of them, serve
//!   everything;
//! - the **priority** tier, the last [`PRIORITY_RESERVE`], is used only while
//!   the general tier is full. Its connections serve health, readiness,
//!   metrics, the admin API and the status page; anything else is answered
//!   503 `overloaded`. They have a short header timeout and no keep-alive,
//!   and when the tier is full its oldest connection is closed to make room
//!   for the new one, so idle sockets cannot hold it either, and the
//!   descriptors in use never pass `max_connections`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections kept for operator requests while the general tier is full.
pub const PRIORITY_RESERVE: usize = 32;

/// Descriptors kept out of the automatic connection cap: the index
/// database's pool, log and listening sockets, and for each upload slot its
/// temporary file and the duplicate its flusher thread syncs through.
fn fd_headroom(max_concurrent_uploads: usize) -> u64 {
    let per_upload = 4u64;
    128u64.saturating_add(per_upload.saturating_mul(max_concurrent_uploads as u64))
}

/// Raises the soft file-descriptor limit to the hard one (as Go's runtime
/// and most servers do) and returns the connection cap it allows: the
/// limit less [`fd_headroom`], at least `MIN_CONNECTIONS`.
pub fn auto_max_connections(max_concurrent_uploads: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if cur < max {
            lim.current = Some(max);
            if let Err(e) = setrlimit(Resource::Nofile, lim) {
                tracing::warn!(error = %e, "cannot raise the file-descriptor limit to its hard limit");
                lim.current = Some(cur);
            }
        }
    }
    // No limit at all: cap at a number the kernel's default maximum allows.
    let soft = lim.current.unwrap_or(1 << 20);
    let cap = soft.saturating_sub(fd_headroom(max_concurrent_uploads));
    usize::try_from(cap)
        .unwrap_or(usize::MAX)
        .max(crate::config::MIN_CONNECTIONS)
}

/// The two tiers. Shared by the accept loop and the connection tasks.
pub struct Admission {
    general: Arc<Semaphore>,
    priority: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_id: AtomicU64,
}

/// What a newly accepted connection gets.
pub enum Ticket {
    /// Serve everything; the permit is held for the connection's life.
    General(OwnedSemaphorePermit),
    /// Serve operator requests only; closed when `evicted` is cancelled.
    Priority(PriorityGuard),
}

/// A place in the priority tier, given back on drop.
pub struct PriorityGuard {
    admission: Arc<Admission>,
    id: u64,
    pub evicted: CancellationToken,
}

impl Drop for PriorityGuard {
    fn drop(&mut self) {
        let mut q = self
            .admission
            .priority
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.retain(|(id, _)| *id != self.id);
    }
}

impl Admission {
    /// `max_connections` in all, of which [`PRIORITY_RESERVE`] are the
    /// priority tier.
    pub fn new(max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            general: Arc::new(Semaphore::new(
                max_connections.saturating_sub(PRIORITY_RESERVE).max(1),
            )),
            priority: Mutex::new(VecDeque::with_capacity(PRIORITY_RESERVE)),
            next_id: AtomicU64::new(0),
        })
    }

    /// A ticket for a connection just accepted. Never refuses: a full
    /// priority tier closes its oldest connection instead, so the newest
    /// one (perhaps a health probe) gets its chance.
    pub fn admit(self: &Arc<Self>) -> Ticket {
        if let Ok(permit) = self.general.clone().try_acquire_owned() {
            return Ticket::General(permit);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        {
            let mut q = self.priority.lock().unwrap_or_else(|e| e.into_inner());
            while q.len() >= PRIORITY_RESERVE {
                if let Some((_, oldest)) = q.pop_front() {
                    oldest.cancel();
                }
            }
            q.push_back((id, evicted.clone()));
        }
        Ticket::Priority(PriorityGuard {
            admission: Arc::clone(self),
            id,
            evicted,
        })
    }

    /// Connections in the priority tier now.
    #[cfg(test)]
    fn priority_open(&self) -> usize {
        self.priority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Whether a request path is one the priority tier serves: what an
/// orchestrator, Prometheus or an operator needs while devices are shed.
pub fn is_priority_path(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/metrics")
        || path == "/v1/admin"
        || path.starts_with("/v1/admin/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_first_then_priority_evicting_the_oldest() {
        let a = Admission::new(PRIORITY_RESERVE + 2);
        let g1 = a.admit();
        let g2 = a.admit();
        assert!(matches!(g1, Ticket::General(_)));
        assert!(matches!(g2, Ticket::General(_)));
        let mut prio = Vec::new();
        for _ in 0..PRIORITY_RESERVE {
            match a.admit() {
                Ticket::Priority(g) => prio.push(g),
                Ticket::General(_) => panic!("general tier over its share"),
            }
        }
        assert_eq!(a.priority_open(), PRIORITY_RESERVE);
        assert!(prio.iter().all(|g| !g.evicted.is_cancelled()));
        let Ticket::Priority(newest) = a.admit() else {
            panic!("general tier over its share")
        };
        assert!(prio[0].evicted.is_cancelled(), "the oldest makes room");
        assert!(prio[1..].iter().all(|g| !g.evicted.is_cancelled()));
        assert_eq!(a.priority_open(), PRIORITY_RESERVE);
        drop(newest);
        assert_eq!(a.priority_open(), PRIORITY_RESERVE - 1);
        drop(g1);
        assert!(
            matches!(a.admit(), Ticket::General(_)),
            "a freed general place is reused"
        );
        assert_eq!(
            a.general.available_permits(),
            1,
            "one of two general places held"
        );
    }

    #[test]
    fn priority_paths() {
        for p in ["/", "/healthz", "/readyz", "/metrics", "/v1/admin/devices"] {
            assert!(is_priority_path(p), "{p}");
        }
        for p in ["/v1/episodes/x", "/v1/whoami", "/v1/adminx", "/healthz/x"] {
            assert!(!is_priority_path(p), "{p}");
        }
    }
}
