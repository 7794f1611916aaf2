//! `cargo xtask test`: set-up, the guest images (the VM tests boot them), then build the
//! workspace, lint it (clippy with the workspace lints, warnings denied), run the Rust tests,
//! the Python tests of the guest shim, and every fuzz target briefly. Stops at the first
//! failing step and names it.

use std::env;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::image::{self, Flavour};
use crate::{cmd, fuzz, setup, workspace_root};

/// pytest's exit code when it collected no tests.
const PYTEST_NO_TESTS: i32 = 5;
/// Seconds each fuzz target runs: enough to run the seeds and what they quickly lead to.
const FUZZ_SECONDS: u64 = 10;

pub fn run() -> Result<()> {
    let tools = setup::run().context("Step `setup` failed")?;
    let root = workspace_root();
    let step = |name: &str, command: &mut Command| {
        println!("test: {name}");
        cmd::run(command.current_dir(root)).with_context(|| format!("Step `{name}` failed"))
    };
    println!("test: guest images");
    for flavour in [Flavour::Nexus, Flavour::Baseline] {
        image::ensure(flavour, false).context("Step `guest images` failed")?;
    }
    // xtask's `stack` half (demo, benchmarks) is built and tested with the rest.
    step("cargo build", cmd::cargo().args(["build", "--workspace", "--features", "xtask/stack"]))?;
    step(
        "cargo clippy",
        cmd::cargo()
            .args(["clippy", "--workspace", "--all-targets", "--features", "xtask/stack"])
            .args(["--", "-D", "warnings"]),
    )?;
    step(
        "cargo test",
        cmd::cargo()
            .args(["test", "--workspace", "--features", "xtask/stack"])
            .env("NEXUS_GARAGE", &tools.garage)
            .env("NEXUS_PYTHON", &tools.python),
    )?;
    pytest(root, &tools).context("Step `pytest` failed")?;
    println!("test: fuzz, {FUZZ_SECONDS} s a target");
    fuzz::smoke(FUZZ_SECONDS).context("Step `fuzz` failed")
}

/// Runs pytest on `guest/python/tests` against the debug build, if that folder exists.
fn pytest(root: &Path, tools: &setup::Tools) -> Result<()> {
    let tests = root.join("guest/python/tests");
    if !tests.is_dir() {
        println!("test: pytest skipped, no {}", tests.display());
        return Ok(());
    }
    println!("test: pytest");
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t));
    let target = target.join("debug");
    let status = cmd::status(
        Command::new(&tools.python)
            .args(["-m", "pytest"])
            .arg(&tests)
            .current_dir(root)
            .env("PYTHONPATH", root.join("guest/python"))
            .env("NEXUS_BIN", target.join("nexus"))
            .env("NEXUS_GUEST_LIB", target.join("libnexus_guest.so"))
            .env("NEXUS_GARAGE", &tools.garage)
            .env("NEXUS_PYTHON", &tools.python),
    )?;
    match status.code() {
        Some(0) => Ok(()),
        Some(PYTEST_NO_TESTS) if !has_test_files(&tests)? => {
            println!("test: pytest found no tests in {}", tests.display());
            Ok(())
        }
        _ => bail!("pytest failed ({status})"),
    }
}

/// Whether `dir` holds, at any depth, a file pytest collects by default.
fn has_test_files(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir).with_context(|| format!("Cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let is_test =
            name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py"));
        if is_test || (path.is_dir() && has_test_files(&path)?) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_files_are_found_at_any_depth_and_only_by_pytest_names() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("conftest.py"), "").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/helpers.py"), "").unwrap();
        assert!(!has_test_files(dir.path()).unwrap());
        fs::write(dir.path().join("sub/s3_test.py"), "").unwrap();
        assert!(has_test_files(dir.path()).unwrap());
        fs::remove_file(dir.path().join("sub/s3_test.py")).unwrap();
        fs::write(dir.path().join("sub/test_put.py"), "").unwrap();
        assert!(has_test_files(dir.path()).unwrap());
    }
}
