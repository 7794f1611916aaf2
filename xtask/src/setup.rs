//! `cargo xtask setup`: installs what the project needs on a fresh Debian 12 machine.
//!
//! Idempotent; one `setup:` line per step. Two levels: [`demo`] installs only what the demo
//! needs (apt packages to build guest images and boot them); [`run`] adds what the tests and
//! benchmarks need: more apt packages, Garage (built from crates.io into
//! `~/.cache/nexus/garage`, ≈ 10-20 min once) and the Python venv (see `python`). Packages are
//! installed without their recommends: nothing here needs them (qemu-system-x86's would add
//! its GUI, UEFI firmware and block drivers; the BIOS and NIC ROMs a boot needs are
//! dependencies).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::{cmd, python};

/// Debian packages the demo needs: the guest image (`cargo xtask guest-image`) and booting it.
/// Building the `nexus` binary needs clang, bpftool and libbpf's headers (its eBPF probes,
/// compiled against the kernel's BTF) and libvirt's library (the libvirt adapter, through
/// pkg-config).
const DEMO_APT_PACKAGES: &[&str] = &[
    "python3",
    "debootstrap",
    "cpio",
    "lz4",
    "e2fsprogs",
    "binutils",
    "kmod",
    "qemu-system-x86",
    "clang",
    "bpftool",
    "libbpf-dev",
    "libvirt-dev",
    "pkg-config",
];
/// Debian packages the tests and benchmarks need besides: the venv, pip (which the backend
/// runs to install a function's requirements.txt), gcc for the freestanding test guest
/// (tests/ch-guest, built by the tests), g++ for libFuzzer (the fuzz targets), the Prometheus
/// server the probe tests scrape with, and libvirtd with virsh for the libvirt tests.
const TEST_APT_PACKAGES: &[&str] = &[
    "python3-venv",
    "python3-pip",
    "gcc",
    "g++",
    "prometheus",
    "libvirt-daemon-system",
    "libvirt-clients",
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

/// Everything: what the demo needs, then what the tests and benchmarks need.
pub fn run() -> Result<Tools> {
    let cache = cache_dir()?;
    install_apt_packages(&[DEMO_APT_PACKAGES, TEST_APT_PACKAGES].concat())?;
    let garage = install_garage(&cache.join("garage"))?;
    let python = python::ensure_venv(&cache.join("venv"))?;
    Ok(Tools { garage, python })
}

/// `~/.cache/nexus`: where set-up installs tools (the test harness looks there too).
pub fn cache_dir() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/nexus"))
}

/// Only what the demo needs.
pub fn demo() -> Result<()> {
    install_apt_packages(DEMO_APT_PACKAGES)
}

fn install_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present: {}", packages.join(", "));
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
    cmd::run(apt(&["install", "-y", "--no-install-recommends"]).args(&missing)).with_context(hint)
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
