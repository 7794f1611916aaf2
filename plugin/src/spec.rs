//! What a VM is made of, independent of the VMM that runs it.

use std::path::PathBuf;

use crate::accel::{detect_accel, Accel};
use crate::error::VmmError;

/// A function VM: its kernel, disks, size, region and where its VMM keeps its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Names the VM in logs, errors and the VMM process (`[A-Za-z0-9._-]+`).
    pub name: String,
    /// The function the VM serves, for VMMs that record it (libvirt's domain metadata).
    pub function: Option<String>,
    /// The kernel, booted directly (no firmware, no boot loader).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Block devices, in order (the first is `/dev/vda` in a Linux guest).
    pub disks: Vec<Disk>,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The shared-memory region, attached as an ivshmem-plain PCI device (BAR2).
    pub region: Option<RegionSpec>,
    /// Whether the guest gets a doorbell: a byte stream between the backend and the guest agent,
    /// the blocking notification path of the channel. The adapter supplies it (its host end is
    /// [`Vm::doorbell`](crate::Vm::doorbell)) and decides how it reaches the guest.
    pub doorbell: bool,
    /// A NIC; only the baseline flavour has one.
    pub network: Option<Network>,
    /// Where the VMM keeps its control socket, console log and pid file (created if missing).
    pub work_dir: PathBuf,
    pub accel: AccelChoice,
}

/// A block device backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The region file (normally `/dev/shm/nexus/<vm>.region`) and its size in bytes: a power of
/// two, equal to the file's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    pub path: PathBuf,
    pub size: u64,
}

/// How a VM's NIC reaches the outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// User-mode networking inside the VMM: the guest is 10.0.2.15 and reaches the host's
    /// loopback at 10.0.2.2; no privileges or host interfaces needed.
    User,
    /// A virtio NIC on an existing tap device (the caller creates it, in the network namespace
    /// the VMM process runs in, and addresses the guest through the kernel command line).
    Tap {
        /// The tap device's name.
        ifname: String,
        /// The guest NIC's MAC address (`52:54:00:…`).
        mac: String,
    },
}

/// Which accelerator to ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelChoice {
    /// Whatever [`detect_accel`] picks.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// The accelerator this choice means on this host.
    pub fn resolve(self) -> Accel {
        match self {
            AccelChoice::Auto => detect_accel(),
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
        }
    }
}

impl VmSpec {
    /// A 256 MiB, 1-vCPU VM booting `kernel` with an empty command line and nothing attached.
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            name: name.into(),
            function: None,
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            memory_mib: 256,
            vcpus: 1,
            region: None,
            doorbell: false,
            network: None,
            work_dir: work_dir.into(),
            accel: AccelChoice::Auto,
        }
    }

    /// Checks what no VMM would accept, so that the error names the field instead of a VMM
    /// failing later with its own words.
    pub fn validate(&self) -> Result<(), VmmError> {
        let invalid = |reason: String| VmmError::InvalidSpec { vm: self.name.clone(), reason };
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !name_ok {
            return Err(invalid(format!("name {:?} must match [A-Za-z0-9._-]+", self.name)));
        }
        if self.memory_mib == 0 || self.vcpus == 0 {
            return Err(invalid("memory_mib and vcpus must be at least 1".into()));
        }
        if let Some(Network::Tap { ifname, mac }) = &self.network {
            let ifname_ok = !ifname.is_empty()
                && ifname.len() < 16
                && ifname.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ifname_ok {
                return Err(invalid(format!("tap {ifname:?} must match [A-Za-z0-9._-]{{1,15}}")));
            }
            let octets: Vec<&str> = mac.split(':').collect();
            let mac_ok = octets.len() == 6
                && octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
            if !mac_ok {
                return Err(invalid(format!("MAC {mac:?} must be six hex pairs, colon-separated")));
            }
        }
        if let Some(region) = &self.region {
            if !region.size.is_power_of_two() || region.size < 4096 {
                return Err(invalid(format!(
                    "region size {} must be a power of two of at least 4096 bytes",
                    region.size
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("fn-1.a_b", "/k", "/w")
    }

    #[test]
    fn accepts_a_plain_spec() {
        spec().validate().unwrap();
    }

    #[test]
    fn rejects_bad_names_sizes_and_regions() {
        let bad_name = VmSpec { name: "a b".into(), ..spec() };
        let no_memory = VmSpec { memory_mib: 0, ..spec() };
        let odd_region =
            VmSpec { region: Some(RegionSpec { path: "/r".into(), size: 3 << 20 }), ..spec() };
        let tap = |ifname: &str, mac: &str| VmSpec {
            network: Some(Network::Tap { ifname: ifname.into(), mac: mac.into() }),
            ..spec()
        };
        tap("nx-tap0", "52:54:00:12:34:56").validate().unwrap();
        let long_tap = tap("a-name-of-16-chr", "52:54:00:12:34:56");
        let bad_mac = tap("nx-tap0", "52:54:00:12:34");
        for bad in [bad_name, no_memory, odd_region, long_tap, bad_mac] {
            assert!(matches!(bad.validate(), Err(VmmError::InvalidSpec { .. })), "{bad:?}");
        }
    }
}
