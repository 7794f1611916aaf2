//! `cargo xtask bench …`: benchmarks that print a side-by-side table with ratios and record it
//! in `docs/BENCHMARKS.md`. They measure; they never assert a time.
//!
//! Without a subcommand, `full` runs baseline and Nexus side by side under load and prints the
//! one table that sets the results against the paper's claims and our goals.

mod backend_fleet;
mod cgroup;
mod ch;
mod chain;
mod cold;
mod cold_vmm;
mod conventional_fleet;
mod density;
mod density_bench;
mod density_table;
mod fabric;
mod fleet;
mod full;
mod full_notes;
mod full_table;
mod libvirt;
mod load;
pub(crate) mod measure;
mod memory_cgroup;
mod node_cpu;
mod phase;
mod platform;
mod plot;
mod probes;
mod reference;
pub(crate) mod report;
pub(crate) mod stack;
pub(crate) mod stats;
mod vm;
mod workload;

use anyhow::Result;
use clap::{Args, Subcommand};
use stack::Storage;

/// `cargo xtask bench [fabric|vm|cold|ch|chain|libvirt|density] [options of the
/// side-by-side run]`.
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
    /// The same function in a conventional baseline VM (tap NIC, HTTP, boto3) and a Nexus VM:
    /// memory, VMM RSS and CPU, warm latency, boot and first invocation.
    Vm(Distance),
    /// Cold starts with 1, 16, 32 and 64 MiB inputs: boot, restore then fetch, restore with
    /// prefetch, and how much of the hideable time the prefetch hid.
    Cold(ColdBench),
    /// Cloud Hypervisor next to QEMU with the test guest: boot, snapshot, restore (Copy vs
    /// OnDemand), one call.
    Ch,
    /// A chain of three functions calling each other: through the backend (Nexus) vs over
    /// HTTP from baseline VMs.
    Chain,
    /// The same function through the QEMU adapter and the libvirt adapter: cold start,
    /// snapshot and restore, warm p50, and the memory libvirt's daemons add per VM.
    Libvirt,
    /// Density found, not computed: VMs of each flavour started one by one in a memory cgroup
    /// with a fixed budget, each loaded at a fixed rate, until the next does not fit or the
    /// tail latency breaks the SLO.
    Density(DensityBench),
}

/// `cargo xtask bench cold` options.
#[derive(Debug, Args)]
pub struct ColdBench {
    #[command(flatten)]
    distance: Distance,
    /// `qemu`: the Python function under QEMU; `cloud-hypervisor`: the test guest under Cloud
    /// Hypervisor on KVM (found through NEXUS_CLOUD_HYPERVISOR or PATH).
    #[arg(long, value_enum, default_value = "qemu")]
    vmm: cold_vmm::ColdVmm,
}

/// `cargo xtask bench density` options.
#[derive(Debug, Args)]
pub struct DensityBench {
    #[command(flatten)]
    distance: Distance,
    #[command(flatten)]
    search: density::DensityArgs,
}

/// How far the object store is.
#[derive(Debug, Args)]
pub struct Distance {
    /// `remote`: behind a link with cloud object storage's latency and bandwidth; `local`:
    /// on loopback.
    #[arg(long, value_enum, default_value = "remote")]
    pub storage: Storage,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.which {
        None => full::run(&args.options),
        Some(Bench::Fabric) => fabric::run(),
        Some(Bench::Vm(distance)) => vm::run(distance.storage),
        Some(Bench::Cold(cold)) => cold::run(cold.distance.storage, cold.vmm),
        Some(Bench::Ch) => ch::run(),
        Some(Bench::Chain) => chain::run(),
        Some(Bench::Libvirt) => libvirt::run(),
        Some(Bench::Density(density)) => {
            density_bench::run(density.distance.storage, &density.search)
        }
    }
}
