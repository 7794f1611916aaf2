//! libvirt for the tests: the daemons started if absent (as CI does on a fresh boot: no systemd,
//! so `virtlogd -d` then `libvirtd -d`, as root), and `virsh` run as an operator would.
//! Daemons the harness starts are left running; the domains a test makes are its to remove
//! ([`Domains`] does it on drop).

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// The connection every test uses: the system daemon, which runs QEMU.
pub const URI: &str = "qemu:///system";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure libvirtd (and virtlogd, which it needs for QEMU's logs) answer on [`URI`];
/// starts them if they do not. `Err` says what is missing.
pub fn ensure_libvirtd() -> Result<(), HarnessError> {
    if virsh(&["version"]).is_ok() {
        return Ok(());
    }
    for daemon in ["virtlogd", "libvirtd"] {
        let started = Command::new(daemon).arg("-d").status().map_err(HarnessError::io(
            format!("run {daemon} -d (apt-get install libvirt-daemon-system; run as root)"),
        ))?;
        if !started.success() {
            return Err(HarnessError::Libvirt(format!("`{daemon} -d` failed ({started})")));
        }
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match virsh(&["version"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `virsh -c URI ARGS…`; its stdout, or its stderr as the error.
pub fn virsh(args: &[&str]) -> Result<String, HarnessError> {
    let output = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .map_err(HarnessError::io("run virsh (apt-get install libvirt-clients)"))?;
    if !output.status.success() {
        return Err(HarnessError::Libvirt(format!(
            "`virsh {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The names of the domains libvirt knows (running or not) that start with `prefix`.
pub fn domains(prefix: &str) -> Result<Vec<String>, HarnessError> {
    let names = virsh(&["list", "--all", "--name"])?;
    Ok(names.lines().map(str::trim).filter(|n| n.starts_with(prefix)).map(str::to_owned).collect())
}

/// The domains whose names start with a prefix, destroyed and undefined on drop: what a test
/// that fails half-way leaves behind.
#[derive(Debug)]
pub struct Domains(pub String);

impl Drop for Domains {
    fn drop(&mut self) {
        for name in domains(&self.0).unwrap_or_default() {
            let _ = virsh(&["destroy", &name]);
            let _ = virsh(&["undefine", &name]);
        }
    }
}
