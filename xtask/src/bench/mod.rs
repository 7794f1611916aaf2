//! `cargo xtask bench …`: benchmarks that print a side-by-side table with ratios and record it
//! in `docs/BENCHMARKS.md`. They measure; they never assert a time.
//!
//! Without a subcommand, `full` runs baseline and Nexus side by side under load and prints the
//! one table that sets the results against the paper's claims and our goals.

mod cold;
mod fabric;
mod full;
mod libvirt;
mod load;
mod measure;
mod phase;
mod plot;
mod report;
mod stack;
mod stats;
mod vm;

use anyhow::Result;
use clap::{Args, Subcommand};

/// `cargo xtask bench [fabric|vm|cold|libvirt] [options of the side-by-side run]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Option<Bench>,
    #[command(flatten)]
    options: full::Options,
}

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
    /// The same function through the QEMU adapter and the libvirt adapter: cold start,
    /// snapshot and restore, warm p50, and the memory libvirt's daemons add per VM.
    Libvirt,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        None => full::run(&args.options),
        Some(Bench::Fabric) => fabric::run(),
        Some(Bench::Vm) => vm::run(),
        Some(Bench::Cold) => cold::run(),
        Some(Bench::Libvirt) => libvirt::run(),
    }
}
