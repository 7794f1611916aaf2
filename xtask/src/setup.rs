//! `cargo xtask setup`: installs what the project needs on a fresh Debian 12 machine.
//!
//! Idempotent; one `setup:` line per step. Steps: apt packages, Garage (built from crates.io
//! into `~/.cache/nexus/garage`), the Python venv (see `python`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::{cmd, python};

/// Debian packages the project needs.
const APT_PACKAGES: &[&str] = &[
    "python3",
    "python3-venv",
    "python3-pip",
    // Guest images (`cargo xtask guest-image`) and booting them.
    "debootstrap",
    "cpio",
    "lz4",
    "e2fsprogs",
    "binutils",
    "kmod",
    "qemu-system-x86",
    "qemu-utils",
    // The libvirt adapter and its tests: libvirtd, virsh, and the library the `virt` crate
    // links (libvirt 9.0 on Debian 12).
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-dev",
    "pkg-config",
];
const GARAGE_VERSION: &str = "2.5.0";

/// What later steps use from the set-up.
#[derive(Debug)]
pub struct Tools {
    /// The Garage binary (the tests read it from `NEXUS_GARAGE`).
    pub garage: PathBuf,
    /// The venv's Python (the tests read it from `NEXUS_PYTHON`).
    pub python: PathBuf,
}

pub fn run() -> Result<Tools> {
    let cache = cache_dir()?;
    install_apt_packages()?;
    let garage = install_garage(&cache.join("garage"))?;
    let python = python::ensure_venv(&cache.join("venv"))?;
    Ok(Tools { garage, python })
}

/// `~/.cache/nexus`: where set-up installs tools (the test harness looks there too).
pub fn cache_dir() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/nexus"))
}

fn install_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present: {}", APT_PACKAGES.join(", "));
        return Ok(());
    }
    println!("setup: installing apt packages: {}", missing.join(", "));
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        command
    };
    let hint = || format!("Cannot install apt packages (run as root?): {}", missing.join(" "));
    cmd::run(&mut apt(&["update"])).with_context(hint)?;
    cmd::run(apt(&["install", "-y"]).args(&missing)).with_context(hint)
}

/// Whether dpkg reports `package` as installed (not merely known or half-removed).
fn dpkg_installed(package: &str) -> bool {
    let output = Command::new("dpkg").args(["-s", package]).stderr(Stdio::null()).output();
    output.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "Status: install ok installed")
    })
}

/// Installs Garage under `root` unless it is there; returns the binary.
fn install_garage(root: &Path) -> Result<PathBuf> {
    let binary = root.join("bin/garage");
    if binary.is_file() {
        println!("setup: Garage present at {}", binary.display());
        return Ok(binary);
    }
    println!(
        "setup: building Garage {GARAGE_VERSION} into {} (takes ~10-20 min, once)",
        root.display()
    );
    cmd::run(
        cmd::cargo()
            .args(["install", "garage", "--version", GARAGE_VERSION, "--locked", "--root"])
            .arg(root),
    )?;
    Ok(binary)
}
