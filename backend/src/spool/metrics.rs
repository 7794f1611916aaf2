//! The spool's metrics: its backlog and the outcome of each upload attempt.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// `nexus_writeback_backlog_objects`, `nexus_writeback_backlog_bytes`,
/// `nexus_writeback_uploads_total{outcome="ok|retry"}`.
#[derive(Debug, Clone, Default)]
pub struct SpoolMetrics {
    objects: Gauge,
    bytes: Gauge,
    uploads: Family<OutcomeLabels, Counter>,
}

impl SpoolMetrics {
    /// The spool's metrics, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let spool = Self::default();
        metrics.register(
            "writeback_backlog_objects",
            "Puts and deletes acknowledged but not yet applied to the store",
            spool.objects.clone(),
        );
        metrics.register(
            "writeback_backlog_bytes",
            "Bytes of the puts acknowledged but not yet uploaded",
            spool.bytes.clone(),
        );
        metrics.register(
            "writeback_uploads",
            "Upload attempts of spooled puts and deletes, by outcome (ok, or retry after failing)",
            spool.uploads.clone(),
        );
        for outcome in ["ok", "retry"] {
            let _ = spool.uploads.get_or_create(&OutcomeLabels { outcome });
        }
        spool
    }

    /// The backlog now.
    pub fn backlog(&self, objects: usize, bytes: u64) {
        self.objects.set(i64::try_from(objects).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// An upload the store took.
    pub fn uploaded(&self) {
        self.uploads.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
    }

    /// An upload that failed and will be tried again.
    pub fn retry(&self) {
        self.uploads.get_or_create(&OutcomeLabels { outcome: "retry" }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names() {
        let metrics = Metrics::new();
        let spool = SpoolMetrics::register(&metrics);
        spool.backlog(3, 4096);
        spool.retry();
        spool.uploaded();
        spool.uploaded();
        let text = metrics.encode();
        for sample in [
            "nexus_writeback_backlog_objects 3\n",
            "nexus_writeback_backlog_bytes 4096\n",
            "nexus_writeback_uploads_total{outcome=\"ok\"} 2\n",
            "nexus_writeback_uploads_total{outcome=\"retry\"} 1\n",
        ] {
            assert!(text.contains(sample), "missing {sample:?} in\n{text}");
        }
    }
}
