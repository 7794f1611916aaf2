//! Finding the region: an explicit path, or the ivshmem device's BAR2 in sysfs.

use std::path::{Path, PathBuf};

/// PCI vendor and device of an ivshmem device (Red Hat, Inc. · Inter-VM shared memory).
const IVSHMEM_VENDOR: &str = "0x1af4";
const IVSHMEM_DEVICE: &str = "0x1110";
const PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// Environment variable naming the region file explicitly.
pub const REGION_ENV: &str = "NEXUS_REGION";

/// Errors while looking for the region.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Neither a path nor a device was found.
    #[error("No Nexus region: set {REGION_ENV} or attach an ivshmem device (PCI 1af4:1110)")]
    NotFound,
}

/// The path of the region to map: `$NEXUS_REGION` if set, else the BAR2 of the first ivshmem
/// PCI device. (A guest kernel module mapping BAR2 write-back would plug in here.)
pub fn find_region() -> Result<PathBuf, LocateError> {
    if let Some(path) = std::env::var_os(REGION_ENV) {
        return Ok(PathBuf::from(path));
    }
    find_ivshmem(Path::new(PCI_DEVICES)).ok_or(LocateError::NotFound)
}

/// Environment variable naming the doorbell explicitly.
pub const DOORBELL_ENV: &str = "NEXUS_DOORBELL";
/// Name of the virtio-serial port a VMM connects to the backend's doorbell socket.
const DOORBELL_PORT: &str = "org.nexus.doorbell";
const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The doorbell stream, if there is one: `$NEXUS_DOORBELL`, else the virtio-serial port named
/// `org.nexus.doorbell` inside a VM (found through sysfs: a minimal guest has no udev to make
/// `/dev/virtio-ports/` links). Without one, both sides are on one host and share a futex.
pub fn find_doorbell() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(DOORBELL_ENV) {
        return Some(PathBuf::from(path));
    }
    find_port(Path::new(VIRTIO_PORTS), Path::new("/dev"))
}

fn find_port(ports: &Path, dev: &Path) -> Option<PathBuf> {
    std::fs::read_dir(ports).ok()?.flatten().find_map(|port| {
        let name = std::fs::read_to_string(port.path().join("name")).ok()?;
        (name.trim() == DOORBELL_PORT).then(|| dev.join(port.file_name()))
    })
}

fn find_ivshmem(devices: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(devices)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|dev| {
            let id = |name| std::fs::read_to_string(dev.join(name)).unwrap_or_default();
            id("vendor").trim() == IVSHMEM_VENDOR && id("device").trim() == IVSHMEM_DEVICE
        })
        .map(|dev| dev.join("resource2"))
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_doorbell_port_by_name() {
        let sys = tempfile::tempdir().unwrap();
        for (port, name) in
            [("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", "org.nexus.doorbell")]
        {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_port(sys.path(), Path::new("/dev")), Some(PathBuf::from("/dev/vport1p1")));
    }

    #[test]
    fn finds_the_ivshmem_bar_among_pci_devices() {
        let sys = tempfile::tempdir().unwrap();
        for (name, vendor, device) in
            [("0000:00:01.0", "0x8086", "0x1237"), ("0000:00:03.0", "0x1af4", "0x1110")]
        {
            let dev = sys.path().join(name);
            std::fs::create_dir(&dev).unwrap();
            std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(dev.join("device"), format!("{device}\n")).unwrap();
        }
        assert_eq!(find_ivshmem(sys.path()), Some(sys.path().join("0000:00:03.0/resource2")));
        std::fs::remove_dir_all(sys.path().join("0000:00:03.0")).unwrap();
        assert_eq!(find_ivshmem(sys.path()), None);
    }
}
