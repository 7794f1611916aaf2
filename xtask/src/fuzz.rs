//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target of the channel's parsers
//! (libFuzzer; needs a nightly toolchain), installing cargo-fuzz first if it is missing.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cmd, workspace_root};

const TARGETS: [&str; 3] = ["call_parser", "hostile_region", "staging_directory"];

pub fn run(seconds: u64) -> Result<()> {
    let installed = Command::new("cargo").args(["fuzz", "--version"]).output();
    if !installed.is_ok_and(|o| o.status.success()) {
        println!("fuzz: installing cargo-fuzz (≈ 1 min, once)");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = workspace_root().join("channel/fuzz");
    for target in TARGETS {
        println!("fuzz: {target} for {seconds} s");
        cmd::run(
            Command::new("cargo")
                .current_dir(&dir)
                .args(["+nightly", "fuzz", "run", target, "-O", "--"])
                .arg(format!("-max_total_time={seconds}"))
                .args(["-max_len=8192", "-print_final_stats=1"]),
        )
        .with_context(|| {
            format!("fuzz target {target} failed: see channel/fuzz/artifacts/{target}")
        })?;
    }
    Ok(())
}
