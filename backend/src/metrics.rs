//! The backend's Prometheus metrics, exported on `/metrics`.

use std::time::Duration;

use nexus_channel::wire::{Op, Status};

/// All backend metrics.
#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    /// A completed call: its function, op, status, duration and bytes each way.
    pub fn call(&self, _function: &str, _op: Op, _status: Status, _took: Duration, _to_guest: u64, _from_guest: u64) {}

    /// A call rejected before it reached storage (bad descriptor, policy, rate).
    pub fn rejected(&self, _function: &str, _reason: &'static str) {}

    /// A region stopped being served because its guest corrupted it.
    pub fn region_faulted(&self, _function: &str) {}

    /// Number of regions currently served.
    pub fn set_regions(&self, _count: i64) {}

    /// The text exposition.
    pub fn encode(&self) -> String {
        String::new()
    }
}
