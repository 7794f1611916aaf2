//! `cargo xtask bench …`: benchmarks that print a side-by-side table with ratios and record it
//! in `docs/BENCHMARKS.md`. They measure; they never assert a time.

mod fabric;
mod measure;
mod report;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// The communication fabric, host-native: channel round trip and throughput, and a Python
    /// function through real boto3 vs the shim.
    Fabric,
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Fabric => fabric::run(),
    }
}
