//! `cargo xtask bench …`: benchmarks that print a side-by-side table with ratios and record it
//! in `docs/BENCHMARKS.md`. They measure; they never assert a time.

mod cold;
mod fabric;
mod measure;
mod report;
mod vm;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// The communication fabric, host-native: channel round trip and throughput, and a Python
    /// function through real boto3 vs the shim.
    Fabric,
    /// The same function in a baseline VM and a Nexus VM: memory, VMM RSS, warm and cold
    /// latency.
    Vm,
    /// Cold starts with a 64 MiB input: boot, restore then fetch, restore with prefetch.
    Cold,
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Fabric => fabric::run(),
        Bench::Vm => vm::run(),
        Bench::Cold => cold::run(),
    }
}
