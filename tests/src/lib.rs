//! Harness for the integration tests and benchmarks: starts real servers (Garage, the backend,
//! Prometheus, libvirtd) on loopback, and a conventional serverless platform (function VMs on
//! taps in a network namespace of their own) to compare Nexus with.
//!
//! Everything here is blocking (`std::process`), so it works from plain `#[test]` functions.
//! Every process the harness starts is owned by a value that kills it on drop.

mod artifacts;
mod backend;
pub mod conventional;
mod error;
mod garage;
pub mod lambda_front;
pub mod libvirtd;
mod link;
pub mod netns;
mod prometheus;
mod rng;
mod test_guest;

pub use artifacts::{guest_lib, nexus_binary};
pub use backend::Backend;
pub use conventional::{Conventional, Saved};
pub use error::HarnessError;
pub use garage::Garage;
pub use lambda_front::LambdaFront;
pub use link::{Link, LinkProfile};
pub use netns::NetNs;
pub use prometheus::Prometheus;
pub use rng::Rng;
pub use test_guest::{layout_header, test_guest};
