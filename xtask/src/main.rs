//! Project chores, run as `cargo xtask <command>`: set-up of a fresh machine and the full test
//! run. Each command lives in its own module; `cmd` runs the programs they need.

mod bench;
mod cmd;
mod python;
mod setup;
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
    /// Install what the project needs (apt packages, Garage, a Python venv); idempotent.
    Setup,
    /// Set up, build, then run the Rust and Python test suites.
    Test,
    /// Run a benchmark; it prints a table and records it in docs/BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Chore::Setup => setup::run().map(drop),
        Chore::Test => test::run(),
        Chore::Bench(which) => bench::run(which),
    }
}

/// The workspace root: the parent of this crate's folder.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ lives inside the workspace")
}
