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
    share_kvm_with_its_group()?;
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
    wait_for_libvirtd()
}

/// Restarts libvirtd (it looks for hook scripts only when it starts); its running domains
/// run on. Connections opened before are lost.
pub fn restart_libvirtd() -> Result<(), HarnessError> {
    let pids =
        Command::new("pidof").arg("libvirtd").output().map_err(HarnessError::io("run pidof"))?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let Ok(pid) = pid.parse::<i32>() else { continue };
        // SAFETY: kill(2) with a pid pidof named; it only sends a signal.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let started =
        Command::new("libvirtd").arg("-d").status().map_err(HarnessError::io("run libvirtd -d"))?;
    if !started.success() {
        return Err(HarnessError::Libvirt(format!("`libvirtd -d` failed ({started})")));
    }
    wait_for_libvirtd()
}

/// Waits until libvirtd answers.
fn wait_for_libvirtd() -> Result<(), HarnessError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match virsh(&["version"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Gives `/dev/kvm` the owner and mode udev gives it on a standard Debian (root:kvm 0660),
/// where no udev did (containers, CI). libvirt probes QEMU as root but checks that its cached
/// capabilities still hold as its QEMU user (libvirt-qemu, in group kvm): with `/dev/kvm`
/// root-only the two disagree ("KVM was enabled when probing, but it is not available now")
/// and libvirtd probes QEMU again before every domain it starts, ≈ 90 s each on a busy host.
fn share_kvm_with_its_group() -> Result<(), HarnessError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let kvm = std::path::Path::new("/dev/kvm");
    let Ok(meta) = std::fs::metadata(kvm) else { return Ok(()) };
    let group = Command::new("getent").args(["group", "kvm"]).output();
    let gid = group.ok().and_then(|out| {
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.split(':').nth(2)?.trim().parse::<u32>().ok()
    });
    let Some(gid) = gid else { return Ok(()) };
    if meta.gid() != gid {
        std::os::unix::fs::chown(kvm, None, Some(gid))
            .map_err(HarnessError::io("give /dev/kvm to group kvm"))?;
    }
    if meta.mode() & 0o060 != 0o060 {
        std::fs::set_permissions(kvm, std::fs::Permissions::from_mode(0o660))
            .map_err(HarnessError::io("make /dev/kvm 0660"))?;
    }
    Ok(())
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
