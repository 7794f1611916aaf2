//! Project chores, run as `cargo xtask <command>`: set-up of a fresh machine and the full test
//! run. Each command lives in its own module; `cmd` runs the programs they need.
//!
//! Built in two stages (see the `stack` feature in Cargo.toml): without the feature, xtask
//! needs nothing but Rust, so `demo` and `bench` first install the Debian packages that the
//! stack's build needs, then run again with it ([`relaunch`]).

#[cfg(feature = "stack")]
mod bench;
mod cmd;
#[cfg(feature = "stack")]
mod demo;
mod fuzz;
mod image;
mod python;
#[cfg(not(feature = "stack"))]
mod relaunch;
mod setup;
#[cfg(feature = "stack")]
mod soak;
mod test;

use std::path::Path;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Nexus project chores")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Debug, Subcommand)]
enum Chore {
    /// Set up, then run the main job: a boto3 function in a Nexus VM, served by the backend.
    Demo {
        /// Run the function as a host process on a region instead of in a VM.
        #[arg(long)]
        native: bool,
    },
    /// Install what the project needs (apt packages, Garage, a Python venv); idempotent.
    Setup,
    /// Set up, build, then run the Rust and Python test suites.
    Test,
    /// Fuzz every parser of untrusted bytes (nightly toolchain and cargo-fuzz, installed if
    /// missing); records the figures in docs/fuzzing.md.
    Fuzz {
        /// Seconds per fuzz target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets fuzzed at a time (one core each).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Run the benchmarks side by side (or one of them); each prints a table and records it in
    /// docs/BENCHMARKS.md.
    #[cfg(feature = "stack")]
    Bench(bench::BenchArgs),
    /// Run the benchmarks side by side (or one of them); each prints a table and records it in
    /// docs/BENCHMARKS.md. `cargo xtask bench --help` lists them.
    #[cfg(not(feature = "stack"))]
    #[command(disable_help_flag = true)]
    Bench {
        /// What the benchmark stage is given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Hold load and faults for minutes (regions, VMs, kill -9, slow and down storage) and
    /// record the table in docs/BENCHMARKS.md.
    #[cfg(feature = "stack")]
    Soak(soak::SoakArgs),
    /// Hold load and faults for minutes (regions, VMs, kill -9, slow and down storage) and
    /// record the table in docs/BENCHMARKS.md. `cargo xtask soak --help` lists its options.
    #[cfg(not(feature = "stack"))]
    #[command(disable_help_flag = true)]
    Soak {
        /// What the soak stage is given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the function-VM guest images (kernel, initramfs, rootfs) from Debian packages.
    GuestImage {
        /// Which image to build.
        #[arg(long, value_enum, default_value = "all")]
        flavour: image::Choice,
        /// Rebuild even if up to date, debootstrap included.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        #[cfg(feature = "stack")]
        Chore::Demo { native } => demo::run(native),
        #[cfg(not(feature = "stack"))]
        Chore::Demo { .. } => relaunch::with_stack(),
        Chore::Setup => setup::run().map(drop),
        Chore::Test => test::run(),
        Chore::GuestImage { flavour, force } => image::run(flavour, force),
        #[cfg(feature = "stack")]
        Chore::Bench(which) => bench::run(which),
        #[cfg(not(feature = "stack"))]
        Chore::Bench { .. } => relaunch::with_stack(),
        #[cfg(feature = "stack")]
        Chore::Soak(args) => soak::run(args),
        #[cfg(not(feature = "stack"))]
        Chore::Soak { .. } => relaunch::with_stack(),
        Chore::Fuzz { time, jobs } => fuzz::run(time, jobs),
    }
}

/// The workspace root: the parent of this crate's folder.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ lives inside the workspace")
}
