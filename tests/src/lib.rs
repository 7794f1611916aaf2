//! Harness for the integration tests: starts real servers (Garage, the backend, libvirtd) on
//! loopback.
//!
//! Everything here is blocking (`std::process`), so it works from plain `#[test]` functions.
//! Every process the harness starts is owned by a value that kills it on drop.

mod artifacts;
mod backend;
mod error;
mod garage;
pub mod libvirtd;
mod rng;

pub use artifacts::{guest_lib, nexus_binary};
pub use backend::Backend;
pub use error::HarnessError;
pub use garage::Garage;
pub use rng::Rng;
