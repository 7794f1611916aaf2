//! The Nexus backend: one always-on host daemon that serves every function VM's region.
//!
//! ```text
//!  daemon ── api (control: regions, status, /metrics) ── backend (region registry)
//!                                                          │ one serving thread per region
//!                                                          ▼
//!                      serve ── ops (get/put/list/…) ── storage (object_store) · cache
//!                        │                       │        arriving (prefetched inputs)
//!                        │                       │        policy · metrics
//!                        │                       └─ spool (write-back) ── uploaders
//!                      served (host end of a region: rings, doorbell, streams)
//!                      region_dir (the region files' directory: owned, checked, locked)
//!  observe (eBPF probes, /proc: per-VM CPU and memory on /metrics)
//!  hook (libvirt's hook script: operators' domains ask the API for their regions)
//! ```

pub mod api;
pub mod arriving;
pub mod backend;
mod cache;
pub mod ch_proxy;
pub mod client;
pub mod config;
pub mod daemon;
pub mod functions;
pub mod hook;
pub mod invoke;
pub mod metrics;
pub mod observe;
mod ops;
pub mod policy;
pub mod region_dir;
mod serve;
mod served;
mod spool;
pub mod storage;
mod streams;
