//! What the adapter checks before any VM starts: which binary, whether KVM can create a VM,
//! and whether that binary was built with the `ivshmem` feature (its `vmm.ping` lists them).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The environment variable naming the binary when the config does not.
pub const BINARY_ENV: &str = "NEXUS_CLOUD_HYPERVISOR";
/// The binary's name on `PATH`.
const BINARY: &str = "cloud-hypervisor";
/// `KVM_GET_API_VERSION` and `KVM_CREATE_VM`: `_IO(0xAE, 0x00)` and `_IO(0xAE, 0x01)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;

/// The binary to run: `configured`, else `$NEXUS_CLOUD_HYPERVISOR`, else `cloud-hypervisor` on
/// `PATH`; `None` if none of these names a file.
pub fn find_binary(configured: Option<&Path>) -> Option<PathBuf> {
    let from_env = std::env::var_os(BINARY_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    match configured.map(Path::to_owned).or(from_env) {
        Some(path) => Some(path),
        None => search_path(std::env::var_os("PATH")?, BINARY),
    }
}

fn search_path(path: OsString, name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Checks that `/dev/kvm` opens read-write, speaks API version 12 and creates a VM.
pub fn check_kvm() -> Result<(), String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm cannot be opened read-write ({e})"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!("/dev/kvm speaks KVM API version {version}, not {KVM_API_VERSION}"));
    }
    // SAFETY: KVM_CREATE_VM takes a machine type (0: the default) and returns a new descriptor,
    // which is closed at once.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!("KVM cannot create a VM ({})", std::io::Error::last_os_error()));
    }
    // SAFETY: `vm` is a descriptor KVM just gave us and nothing else holds.
    unsafe { libc::close(vm) };
    Ok(())
}

/// The build features a `vmm.ping` answer lists.
pub fn features(ping: &serde_json::Value) -> Vec<String> {
    ping["features"]
        .as_array()
        .map(|list| list.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_binary_on_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cloud-hypervisor"), b"").unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(search_path(path, BINARY), Some(dir.path().join("cloud-hypervisor")));
        assert_eq!(search_path("/nonexistent".into(), BINARY), None);
        assert_eq!(find_binary(Some(Path::new("/opt/ch"))), Some(PathBuf::from("/opt/ch")));
    }

    #[test]
    fn reads_the_features_of_a_ping() {
        let ping = serde_json::json!({ "version": "53.0.0", "features": ["kvm", "ivshmem"] });
        assert_eq!(features(&ping), ["kvm", "ivshmem"]);
        assert!(features(&serde_json::json!({})).is_empty());
    }
}
