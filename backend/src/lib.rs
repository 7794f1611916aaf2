//! The Nexus backend.
pub mod config;
pub mod metrics;
pub mod policy;
