//! Finding the region: an explicit path, or the ivshmem device's BAR2 in sysfs.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
/// The virtio device id of a vsock device.
const VIRTIO_ID_VSOCK: &str = "0x0013";

/// Where the doorbell is, whichever transport the VMM gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// A character device to open: a virtio-serial port (QEMU), or `$NEXUS_DOORBELL`.
    Path(PathBuf),
    /// A vsock port of the host (CID 2) to connect to (Cloud Hypervisor's hybrid vsock).
    Vsock { port: u32 },
}

/// The doorbell of the region at `region`, if there is one: `$NEXUS_DOORBELL`, else the
/// virtio-serial port named `org.nexus.doorbell`, else, for a region that is a PCI BAR (a VM's
/// ivshmem device), the host's doorbell vsock port when the VM has a virtio-vsock device (both
/// found through sysfs: a minimal guest has no udev). Without one, both sides are on one host
/// and share a futex (a host that is itself a VM may have a vsock device of its own).
pub fn find_doorbell(region: &Path) -> Option<Doorbell> {
    if let Some(path) = std::env::var_os(DOORBELL_ENV) {
        return Some(Doorbell::Path(PathBuf::from(path)));
    }
    if let Some(port) = find_port(Path::new(VIRTIO_PORTS), Path::new("/dev")) {
        return Some(Doorbell::Path(port));
    }
    (region.starts_with(PCI_DEVICES) && has_vsock(Path::new(VIRTIO_DEVICES)))
        .then_some(Doorbell::Vsock { port: nexus_channel::notify::VSOCK_DOORBELL_PORT })
}

impl Doorbell {
    /// Opens the doorbell: the device read-write, or a stream connection to the host's port.
    pub fn connect(&self) -> io::Result<OwnedFd> {
        match self {
            Doorbell::Path(path) => {
                Ok(OpenOptions::new().read(true).write(true).open(path)?.into())
            }
            Doorbell::Vsock { port } => connect_vsock(libc::VMADDR_CID_HOST, *port),
        }
    }
}

/// Makes the descriptor `fd` (which something else owns and keeps polling) refer to `stream`
/// instead, non-blocking: a doorbell reconnected under a notifier that keeps its descriptor.
pub(crate) fn replace_stream(fd: RawFd, stream: OwnedFd) -> io::Result<()> {
    let fd_of_stream = stream.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd_of_stream, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd_of_stream, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup2(2) atomically closes `fd` and makes it a copy of `stream`; `fd` stays a
    // valid descriptor for its owner throughout, and `stream`'s own number is closed on drop.
    if unsafe { libc::dup2(stream.as_raw_fd(), fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A stream connection to vsock `port` of context `cid`.
fn connect_vsock(cid: u32, port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data for which all zeros is a valid value.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    let length = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `address` is a live sockaddr_vm and `length` is its size.
    let connected =
        unsafe { libc::connect(socket.as_raw_fd(), (&raw const address).cast(), length) };
    if connected != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn find_port(ports: &Path, dev: &Path) -> Option<PathBuf> {
    std::fs::read_dir(ports).ok()?.flatten().find_map(|port| {
        let name = std::fs::read_to_string(port.path().join("name")).ok()?;
        (name.trim() == DOORBELL_PORT).then(|| dev.join(port.file_name()))
    })
}

/// Whether a virtio-vsock device is present.
fn has_vsock(devices: &Path) -> bool {
    std::fs::read_dir(devices).into_iter().flatten().flatten().any(|device| {
        let id = std::fs::read_to_string(device.path().join("device")).unwrap_or_default();
        id.trim() == VIRTIO_ID_VSOCK
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
    fn a_replaced_stream_keeps_its_descriptor_number() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let (old, _old_peer) = UnixStream::pair().unwrap();
        let (new, mut new_peer) = UnixStream::pair().unwrap();
        let fd = old.as_raw_fd();
        replace_stream(fd, new.into()).unwrap();
        // SAFETY: F_GETFL on a descriptor this test owns.
        assert_ne!(unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK, 0);
        (&old).write_all(b"k").unwrap();
        let mut byte = [0u8];
        new_peer.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"k", "the old descriptor now reaches the new peer");
    }

    #[test]
    fn finds_a_virtio_vsock_device_by_its_id() {
        let sys = tempfile::tempdir().unwrap();
        for (name, id) in [("virtio0", "0x0002"), ("virtio1", "0x0013")] {
            std::fs::create_dir(sys.path().join(name)).unwrap();
            std::fs::write(sys.path().join(name).join("device"), format!("{id}\n")).unwrap();
        }
        assert!(has_vsock(sys.path()));
        std::fs::remove_dir_all(sys.path().join("virtio1")).unwrap();
        assert!(!has_vsock(sys.path()));
        assert!(!has_vsock(&sys.path().join("missing")));
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
