//! The functions' metrics: `nexus_function_vms{function,state}`, how many VMs each function has
//! idle, busy, starting and stopping, refreshed before every scrape (a removed function's series go).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::pool::Counts;
use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    function: String,
    state: &'static str,
}

/// `nexus_function_vms{function,state="idle|busy|starting|stopping"}`.
#[derive(Debug, Clone, Default)]
pub struct FunctionMetrics {
    vms: Family<VmLabels, Gauge>,
}

impl FunctionMetrics {
    /// The functions' metrics, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let functions = Self::default();
        metrics.register(
            "function_vms",
            "Warm VMs of each function, by state (idle, busy, starting, stopping)",
            functions.vms.clone(),
        );
        functions
    }

    /// Replaces every series with the counts of the functions deployed now.
    pub fn set<'a>(&self, counts: impl IntoIterator<Item = (&'a str, Counts)>) {
        self.vms.clear();
        for (function, counts) in counts {
            let Counts { idle, busy, starting, stopping } = counts;
            for (state, n) in
                [("idle", idle), ("busy", busy), ("starting", starting), ("stopping", stopping)]
            {
                let labels = VmLabels { function: function.to_owned(), state };
                self.vms.get_or_create(&labels).set(i64::from(n));
            }
        }
    }
}
