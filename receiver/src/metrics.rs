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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    pub commit: String,
}

/// Every metric the receiver exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub bytes_received: Counter,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let objects_collected = Counter::default();
        registry.register(
            "objects_collected",
            "Unreferenced objects deleted by the collector",
            objects_collected.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "bytes_received",
            "Upload body bytes received",
            bytes_received.clone(),
        );
        // 10 ms .. ~5.8 h
        let upload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 21));
        registry.register(
            "upload_duration_seconds",
            "Time from the start of an upload to its answer, for uploads that read a body",
            upload_seconds.clone(),
        );
        let episodes_stored = Counter::default();
        registry.register(
            "episodes_stored",
            "Episodes stored (201)",
            episodes_stored.clone(),
        );
        let commit_rejected = Family::<CommitLabels, Counter>::default();
        registry.register(
            "commit_rejected",
            "412 answers by commit",
            commit_rejected.clone(),
        );
        let uploads_in_flight = Gauge::default();
        registry.register(
            "uploads_in_flight",
            "Uploads holding an upload slot",
            uploads_in_flight.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open",
            connections_open.clone(),
        );
        let connections_shedding = Counter::default();
        registry.register(
            "connections_shedding",
            "Connections admitted to the priority tier (operator routes only) because the general tier was full",
            connections_shedding.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Priority-tier connections closed to make room for a newer one",
            connections_evicted.clone(),
        );
        let commit = crate::store::commit::CommitStats::default();
        registry.register(
            "commit_batch_size",
            "Verified uploads made durable and indexed together, per batch",
            commit.batch_size.clone(),
        );
        registry.register(
            "commit_durable_seconds",
            "Per batch: making its files and their names durable",
            commit.durable_seconds.clone(),
        );
        registry.register(
            "commit_index_seconds",
            "Per batch: its index transaction",
            commit.index_seconds.clone(),
        );
        Self {
            registry,
            commit,
            requests,
            bytes_received,
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
            "ferry_bytes_received_total",
            "ferry_upload_duration_seconds",
            "ferry_episodes_stored_total",
            "ferry_commit_rejected_total",
            "ferry_uploads_in_flight",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
