//! The Python venv for the guest shim's tests and the benchmarks' inputs (Pillow draws the
//! thumbnail benchmark's photo), at `~/.cache/nexus/venv`.
//!
//! Packages are installed when the venv is new or [`PACKAGES`] changed since the last install;
//! the installed list is recorded in a marker file inside the venv.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// The real boto3 the tests and the baseline guest image use.
pub const BOTO3: &str = "boto3>=1.40,<2";
/// What the venv holds: pip requirement specifiers, one per package.
pub const PACKAGES: &[&str] = &[BOTO3, "pytest>=8,<10", "pillow>=10,<13"];

/// Inside the venv: the package list last installed.
const MARKER: &str = "nexus-packages.txt";

/// Makes sure the venv at `venv` exists with [`PACKAGES`]; returns its `python`.
pub fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let marker = venv.join(MARKER);
    let wanted = PACKAGES.join("\n");
    if !python.is_file() {
        println!("setup: creating the Python venv at {}", venv.display());
        cmd::run(Command::new(base_python()).args(["-m", "venv"]).arg(venv))?;
    } else if fs::read_to_string(&marker).ok().as_deref() == Some(&wanted) {
        println!("setup: Python venv at {} is up to date", venv.display());
        return Ok(python);
    }
    println!("setup: installing Python packages: {}", PACKAGES.join(", "));
    cmd::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES),
    )?;
    fs::write(&marker, wanted).with_context(|| format!("Cannot write {}", marker.display()))?;
    Ok(python)
}

/// The interpreter to make the venv with: Debian's, else whichever `python3` is on `PATH`.
fn base_python() -> &'static str {
    const DEBIAN: &str = "/usr/bin/python3";
    if Path::new(DEBIAN).is_file() {
        DEBIAN
    } else {
        "python3"
    }
}
