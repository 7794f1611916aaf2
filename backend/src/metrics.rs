//! The backend's Prometheus metrics, exported on `/metrics`.
//!
//! [`Metrics`] owns the registry, with every name under `nexus_`. The call metrics are declared
//! here because every call ends in [`Metrics::call`] or [`Metrics::rejected`]; other modules
//! declare their own metrics next to the code that counts them and add them with
//! [`Metrics::register`].

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nexus_channel::wire::{Op, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    op: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    function: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    function: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

/// All backend metrics, updated from any thread. An update takes a read lock on its family
/// (a write lock only for a new label set) and an atomic add, or a short lock for a histogram.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    calls: Family<CallLabels, Counter>,
    durations: Family<OpLabels, Histogram, fn() -> Histogram>,
    bytes: Family<BytesLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    faulted: Family<FunctionLabels, Counter>,
    prefetch_streamed: Family<FunctionLabels, Counter>,
    regions: Gauge,
    inflight: Gauge,
}

/// Call durations from 1 µs to 8 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 24))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the call metrics.
    pub fn new() -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::with_prefix("nexus")),
            calls: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            bytes: Family::default(),
            rejected: Family::default(),
            faulted: Family::default(),
            prefetch_streamed: Family::default(),
            regions: Gauge::default(),
            inflight: Gauge::default(),
        };
        let mut registry = metrics.lock();
        registry.register(
            "calls",
            "Calls completed, by function, op and status",
            metrics.calls.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Time from reading a call to posting its completion",
            Unit::Seconds,
            metrics.durations.clone(),
        );
        registry.register(
            "bytes",
            "Object bytes moved, by function and direction",
            metrics.bytes.clone(),
        );
        registry.register(
            "rejected_calls",
            "Calls rejected before reaching storage, by function and reason",
            metrics.rejected.clone(),
        );
        registry.register(
            "regions_faulted",
            "Regions no longer served because their guest corrupted them",
            metrics.faulted.clone(),
        );
        registry.register(
            "prefetch_streamed",
            "Gets answered from a prefetched input still arriving, not fetched again",
            metrics.prefetch_streamed.clone(),
        );
        registry.register("regions", "Regions currently served", metrics.regions.clone());
        registry.register("inflight_calls", "Calls currently in flight", metrics.inflight.clone());
        drop(registry);
        metrics
    }

    /// A completed call: its function, op, status, duration and bytes each way.
    pub fn call(
        &self,
        function: &str,
        op: Op,
        status: Status,
        took: Duration,
        to_guest: u64,
        from_guest: u64,
    ) {
        let function = function.to_owned();
        let op = op.name();
        self.calls
            .get_or_create(&CallLabels { function: function.clone(), op, status: status.code() })
            .inc();
        self.durations.get_or_create(&OpLabels { op }).observe(took.as_secs_f64());
        let mut labels = BytesLabels { function, direction: "to_guest" };
        self.bytes.get_or_create(&labels).inc_by(to_guest);
        labels.direction = "from_guest";
        self.bytes.get_or_create(&labels).inc_by(from_guest);
    }

    /// A call rejected before it reached storage (bad descriptor, policy, rate).
    pub fn rejected(&self, function: &str, reason: &'static str) {
        self.rejected
            .get_or_create(&RejectedLabels { function: function.to_owned(), reason })
            .inc();
    }

    /// A region stopped being served because its guest corrupted it.
    pub fn region_faulted(&self, function: &str) {
        self.faulted.get_or_create(&FunctionLabels { function: function.to_owned() }).inc();
    }

    /// A `Get` of function `function` streams a prefetched input as it arrives.
    pub fn prefetch_streamed(&self, function: &str) {
        let labels = FunctionLabels { function: function.to_owned() };
        self.prefetch_streamed.get_or_create(&labels).inc();
    }

    /// Number of regions currently served.
    pub fn set_regions(&self, count: i64) {
        self.regions.set(count);
    }

    /// A call started waiting on I/O (one answered inline never is in flight).
    pub fn call_started(&self) {
        self.inflight.inc();
    }

    /// A call [`Metrics::call_started`] counted was answered.
    pub fn call_answered(&self) {
        self.inflight.dec();
    }

    /// Adds a metric declared elsewhere. `name` gets the `nexus_` prefix; a counter also gets
    /// `_total`, so leave both out.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Adds metrics that `collector` reads afresh at each scrape (their names get the
    /// `nexus_` prefix).
    pub fn register_collector(&self, collector: impl Collector) {
        self.lock().register_collector(Box::new(collector));
    }

    /// The OpenMetrics text exposition (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut exposition = String::new();
        // A String never refuses a write, so only a metric can fail to encode.
        if text::encode(&mut exposition, &self.lock()).is_err() {
            tracing::error!("A registered metric cannot be encoded as text");
        }
        exposition
    }

    /// The registry; a panic while it was held cannot leave it half-updated.
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted() {
        let metrics = Metrics::new();
        metrics.call("thumb", Op::Get, Status::Ok, Duration::from_micros(3), 300, 0);
        metrics.call("thumb", Op::Get, Status::Ok, Duration::from_millis(2), 200, 0);
        metrics.call("thumb", Op::Put, Status::AccessDenied, Duration::from_micros(1), 0, 10);
        metrics.rejected("thumb", "rate_limited");
        metrics.region_faulted("evil");
        metrics.set_regions(3);
        (0..8).for_each(|_| metrics.call_started());
        metrics.call_answered();
        let text = metrics.encode();
        for sample in [
            "nexus_calls_total{function=\"thumb\",op=\"get\",status=\"OK\"} 2\n",
            "nexus_calls_total{function=\"thumb\",op=\"put\",status=\"AccessDenied\"} 1\n",
            "nexus_call_duration_seconds_count{op=\"get\"} 2\n",
            "nexus_call_duration_seconds_sum{op=\"get\"} 0.002003\n",
            "nexus_call_duration_seconds_bucket{le=\"0.000004\",op=\"get\"} 1\n",
            "nexus_call_duration_seconds_bucket{le=\"+Inf\",op=\"get\"} 2\n",
            "nexus_bytes_total{function=\"thumb\",direction=\"to_guest\"} 500\n",
            "nexus_bytes_total{function=\"thumb\",direction=\"from_guest\"} 10\n",
            "nexus_rejected_calls_total{function=\"thumb\",reason=\"rate_limited\"} 1\n",
            "nexus_regions_faulted_total{function=\"evil\"} 1\n",
            "nexus_regions 3\n",
            "nexus_inflight_calls 7\n",
            "# TYPE nexus_call_duration_seconds histogram\n",
            "# UNIT nexus_call_duration_seconds seconds\n",
        ] {
            assert!(text.contains(sample), "missing {sample:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn other_modules_register_their_own() {
        let metrics = Metrics::new();
        let hits = Counter::<u64>::default();
        metrics.register("cache_hits", "Cache hits", hits.clone());
        hits.inc_by(4);
        assert!(metrics.encode().contains("nexus_cache_hits_total 4\n"));
    }

    #[test]
    fn metrics_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }
}
