//! The first stage of `cargo xtask demo` and `cargo xtask bench`: install the Debian packages
//! that building the stack needs (the demo's own, which include the build's), then run the
//! same command again in an xtask built with the `stack` feature, and exit as it exits.
//!
//! ```text
//! cargo xtask demo ──▶ setup::demo (apt) ──▶ cargo run -p xtask --features stack -- demo
//!                                              (compiles backend, adapters, probes: progress
//!                                               shown by cargo)
//! ```

use std::env;
use std::process;

use anyhow::Result;

use crate::{cmd, setup, workspace_root};

/// Prepares the machine, then hands this command to the `stack` build of xtask.
pub fn with_stack() -> Result<()> {
    setup::demo()?;
    println!(
        "xtask: building the backend, the VMM adapters and the probes (first time: ≈ 3-5 min)"
    );
    let status = cmd::status(
        cmd::cargo()
            .current_dir(workspace_root())
            .args(["run", "-p", "xtask", "--features", "stack", "--"])
            .args(env::args_os().skip(1)),
    )?;
    process::exit(status.code().unwrap_or(1))
}
