//! Harness for the integration tests: starts real servers (Garage, the backend, Prometheus,
//! libvirtd) on
//! loopback.
//!
//! Everything here is blocking (`std::process`), so it works from plain `#[test]` functions.
//! Every process the harness starts is owned by a value that kills it on drop.

mod artifacts;
mod backend;
mod error;
mod garage;
pub mod libvirtd;
mod link;
mod prometheus;
mod rng;
mod test_guest;

pub use artifacts::{guest_lib, nexus_binary};
pub use backend::Backend;
pub use error::HarnessError;
pub use garage::Garage;
pub use link::{Link, LinkProfile};
pub use prometheus::Prometheus;
pub use rng::Rng;
pub use test_guest::{layout_header, test_guest};
