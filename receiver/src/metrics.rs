//! The Prometheus registry of the receiver and the metrics in it.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Distinct commits tracked by `ferry_commit_rejected_total` before further
/// ones are counted under `commit="other"`: a misbehaving client must not
/// be able to grow the registry without bound.
const MAX_REJECTED_COMMITS: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// The `route` of `ferry_bytes_received_total`: `put` (SPEC §2) or `tus`
/// (SPEC §8), nothing else.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BodyRouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    pub commit: String,
}

/// Every metric the receiver exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    /// Body bytes of `PUT /v1/episodes/{id}`.
    pub bytes_received: Counter,
    /// Body bytes of tus PATCHes (the same family, `route="tus"`).
    pub bytes_received_tus: Counter,
    /// tus PATCHes that went on from an offset above 0 after the upload's
    /// previous PATCH ended early or the receiver restarted.
    pub uploads_resumed: Counter,
    /// Incomplete tus uploads reclaimed after `upload_expiry`.
    pub uploads_expired: Counter,
    /// Incomplete tus uploads ended to make room for a newer one of their
    /// device (`max_open_uploads_per_device`).
    pub uploads_evicted: Counter,
    /// Unreferenced objects deleted by this replica's collector.
    pub objects_collected: Counter,
    pub upload_seconds: Histogram,
    pub episodes_stored: Counter,
    pub commit_rejected: Family<CommitLabels, Counter>,
    pub uploads_in_flight: Gauge,
    pub connections_open: Gauge,
    pub connections_shedding: Counter,
    pub connections_evicted: Counter,
    pub commit: crate::store::commit::CommitStats,
    rejected_seen: Mutex<HashSet<String>>,
}

/// Registers `metric` under `name` and hands it back.
fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// The commit stage's histograms (`store::commit::CommitStats`).
fn register_commit(registry: &mut Registry) -> crate::store::commit::CommitStats {
    let stats = crate::store::commit::CommitStats::default();
    crate::store::commit::CommitStats {
        batch_size: register(
            registry,
            "commit_batch_size",
            "Verified uploads made durable and indexed together, per batch",
            stats.batch_size,
        ),
        durable_seconds: register(
            registry,
            "commit_durable_seconds",
            "Per batch: making its objects durable and visible under their final keys",
            stats.durable_seconds,
        ),
        index_seconds: register(
            registry,
            "commit_index_seconds",
            "Per batch: its index transaction",
            stats.index_seconds,
        ),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let requests = register(
            &mut registry,
            "http_requests",
            "HTTP requests by route, method and status",
            Family::<RouteLabels, Counter>::default(),
        );
        let objects_collected = register(
            &mut registry,
            "objects_collected",
            "Unreferenced objects deleted by the collector",
            Counter::default(),
        );
        let by_route = register(
            &mut registry,
            "bytes_received",
            "Upload body bytes received, by route (put, tus)",
            Family::<BodyRouteLabels, Counter>::default(),
        );
        let bytes_received = by_route
            .get_or_create(&BodyRouteLabels { route: "put" })
            .clone();
        let bytes_received_tus = by_route
            .get_or_create(&BodyRouteLabels { route: "tus" })
            .clone();
        let uploads_resumed = register(
            &mut registry,
            "uploads_resumed",
            "tus PATCHes resuming an upload after an interrupted PATCH or a restart",
            Counter::default(),
        );
        let uploads_expired = register(
            &mut registry,
            "uploads_expired",
            "Incomplete tus uploads reclaimed after upload_expiry",
            Counter::default(),
        );
        let uploads_evicted = register(
            &mut registry,
            "uploads_evicted",
            "Incomplete tus uploads ended for a newer one of their device (max_open_uploads_per_device)",
            Counter::default(),
        );
        // 10 ms .. ~5.8 h
        let upload_seconds = register(
            &mut registry,
            "upload_duration_seconds",
            "Time from the start of an upload to its answer, for uploads that read a body",
            Histogram::new(exponential_buckets(0.01, 2.0, 21)),
        );
        let episodes_stored = register(
            &mut registry,
            "episodes_stored",
            "Episodes stored (201)",
            Counter::default(),
        );
        let commit_rejected = register(
            &mut registry,
            "commit_rejected",
            "412 answers by commit",
            Family::<CommitLabels, Counter>::default(),
        );
        let uploads_in_flight = register(
            &mut registry,
            "uploads_in_flight",
            "Uploads holding an upload slot",
            Gauge::default(),
        );
        let connections_open = register(
            &mut registry,
            "connections_open",
            "Client connections open",
            Gauge::default(),
        );
        let connections_shedding = register(&mut registry, "connections_shedding", "Connections admitted to the priority tier (operator routes only) because the general tier was full", Counter::default());
        let connections_evicted = register(
            &mut registry,
            "connections_evicted",
            "Priority-tier connections closed to make room for a newer one",
            Counter::default(),
        );
        let commit = register_commit(&mut registry);
        Self {
            registry,
            commit,
            requests,
            bytes_received,
            bytes_received_tus,
            uploads_resumed,
            uploads_evicted,
            uploads_expired,
            objects_collected,
            upload_seconds,
            episodes_stored,
            commit_rejected,
            uploads_in_flight,
            connections_open,
            connections_shedding,
            connections_evicted,
            rejected_seen: Mutex::new(HashSet::new()),
        }
    }

    /// Counts one 412 for `commit`, with bounded label cardinality.
    pub fn rejected(&self, commit: &str) {
        let label = {
            let mut seen = self.rejected_seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(commit) || seen.len() < MAX_REJECTED_COMMITS {
                seen.insert(commit.to_owned());
                commit.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.commit_rejected
            .get_or_create(&CommitLabels { commit: label })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RouteLabels {
                route: "/v1/episodes/{id}".into(),
                method: "PUT".into(),
                status: 201,
            })
            .inc();
        m.rejected(&"a".repeat(40));
        let text = m.encode();
        for name in [
            "ferry_http_requests_total",
            "ferry_bytes_received_total{route=\"put\"}",
            "ferry_bytes_received_total{route=\"tus\"}",
            "ferry_uploads_resumed_total",
            "ferry_uploads_expired_total",
            "ferry_upload_duration_seconds",
            "ferry_episodes_stored_total",
            "ferry_commit_rejected_total",
            "ferry_uploads_in_flight",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
