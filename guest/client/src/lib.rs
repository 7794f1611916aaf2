//! Guest side of the Nexus channel.
//!
//! [`find_region`] is the only place that knows how the region is found: an explicit path
//! (`NEXUS_REGION`, a `/dev/shm` file when the function runs on the host) or the ivshmem PCI
//! device's BAR2 inside a VM. Everything after that is the same on both.
//!
//! A [`Client`] owns the guest end of the call rings and the guest buffers. Calls are made one
//! at a time (a mutex serialises them); buffers are leased separately so that a response body
//! can stay mapped while other calls go on; objects the host staged for the running invocation
//! are found and read without a call ([`Client::staged`]). [`ffi`] exports the same to C for the Python shim.

pub mod client;
pub mod ffi;
mod invocations;
mod locate;
mod objects;

pub use client::{Client, ClientError, Reply, Request};
pub use invocations::{Invocation, INFLIGHT_ENV};
pub use locate::{find_doorbell, find_region, Doorbell, LocateError};
pub use objects::StagedObject;
