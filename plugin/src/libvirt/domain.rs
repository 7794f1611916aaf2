//! The domain XML of a spec: `configs/libvirt/domain.xml` with its placeholders filled.
//!
//! ```text
//!  <domain type=qemu|kvm>  name = spec.name, Nexus metadata (function, region)
//!    <os> kernel [initrd] cmdline           direct kernel boot, no firmware
//!    <seclabel dac static +UID:+GID>        QEMU runs as the backend's user
//!    <devices> serial → WORK/serial.log
//!              disk vdX … (virtio, raw)
//!              <shmem name=REGION role=master> ivshmem-plain, /dev/shm/REGION
//!              <channel unix connect WORK/doorbell.sock> → org.nexus.doorbell
//!              [<interface type=user|ethernet>] baseline flavour only (ethernet: a tap)
//! ```

use std::fmt::Write;
use std::path::Path;

use crate::accel::Accel;
use crate::spec::{Network, VmSpec};

/// The template, documented in place.
const TEMPLATE: &str = include_str!("../../../configs/libvirt/domain.xml");
/// The XML namespace of the Nexus metadata (as in the template).
pub const METADATA_NS: &str = "https://nexus.dev/libvirt/1";
/// The name of the guest's virtio-serial doorbell port (the same as the qemu adapter's).
pub const DOORBELL_PORT: &str = "org.nexus.doorbell";

/// What the XML needs beyond the spec.
#[derive(Debug)]
pub struct Host<'a> {
    pub accel: Accel,
    /// The region's name under `/dev/shm`.
    pub shmem: Option<&'a str>,
    pub serial_log: &'a Path,
    pub doorbell: &'a Path,
    /// The user and group QEMU runs as.
    pub owner: (u32, u32),
}

/// The domain XML that runs `spec` on `host`.
pub fn domain_xml(spec: &VmSpec, host: &Host<'_>) -> String {
    let (kind, cpu) = match host.accel {
        Accel::Kvm => ("kvm", "<cpu mode='host-passthrough'/>".to_owned()),
        // TCG runs `rep movs/stos` a byte per step when erms/fsrm are advertised (args.rs).
        Accel::Tcg => (
            "qemu",
            "<cpu mode='maximum'><feature policy='disable' name='erms'/>\
             <feature policy='disable' name='fsrm'/></cpu>"
                .to_owned(),
        ),
    };
    let os_extra = match &spec.initrd {
        Some(initrd) => format!("\n    <initrd>{}</initrd>", escape_path(initrd)),
        None => String::new(),
    };
    let mut devices = String::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let target = format!("vd{}", char::from(b'a' + i as u8));
        let readonly = if disk.read_only { "<readonly/>" } else { "" };
        let _ = writeln!(
            devices,
            "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='{target}' bus='virtio'/>{readonly}</disk>",
            escape_path(&disk.path)
        );
    }
    if let (Some(region), Some(shmem)) = (&spec.region, host.shmem) {
        let _ = writeln!(
            devices,
            "    <shmem name='{}' role='master'><model type='ivshmem-plain'/>\
             <size unit='b'>{}</size></shmem>",
            escape(shmem),
            region.size
        );
    }
    if spec.doorbell {
        let _ = writeln!(
            devices,
            "    <channel type='unix'><source mode='connect' path='{}'>\
             <reconnect enabled='yes' timeout='1'/></source>\
             <target type='virtio' name='{DOORBELL_PORT}'/></channel>",
            escape_path(host.doorbell)
        );
    }
    match &spec.network {
        None => {}
        Some(Network::User) => {
            devices.push_str("    <interface type='user'><model type='virtio'/></interface>\n");
        }
        Some(Network::Tap { ifname, mac }) => {
            let _ = writeln!(
                devices,
                "    <interface type='ethernet'><target dev='{}' managed='no'/>\
                 <mac address='{}'/><model type='virtio'/></interface>",
                escape(ifname),
                escape(mac)
            );
        }
    }
    let function = spec.function.as_deref().unwrap_or(&spec.name);
    [
        ("@TYPE@", kind.to_owned()),
        ("@NAME@", escape(&spec.name)),
        ("@FUNCTION@", escape(function)),
        ("@REGION@", escape(host.shmem.unwrap_or(""))),
        ("@MEMORY_MIB@", spec.memory_mib.to_string()),
        ("@VCPUS@", spec.vcpus.to_string()),
        ("@CPU@", cpu),
        ("@KERNEL@", escape_path(&spec.kernel)),
        ("@OS_EXTRA@", os_extra),
        ("@CMDLINE@", escape(&spec.cmdline)),
        ("@OWNER@", format!("+{}:+{}", host.owner.0, host.owner.1)),
        ("@SERIAL_LOG@", escape_path(host.serial_log)),
        ("@DEVICES@", devices.trim_end().to_owned()),
    ]
    .into_iter()
    .fold(body(), |xml, (key, value)| xml.replace(key, &value))
}

/// The template without its leading comment.
fn body() -> String {
    let start = TEMPLATE.find("<domain").expect("the template holds a <domain> element");
    TEMPLATE[start..].to_owned()
}

/// `text` safe inside an XML attribute (single- or double-quoted) or element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn escape_path(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Disk, RegionSpec};

    fn spec() -> VmSpec {
        VmSpec {
            function: Some("f".into()),
            initrd: Some("/img/initrd.img".into()),
            cmdline: "console=ttyS0 nexus.function=f&g".into(),
            disks: vec![
                Disk { path: "/img/rootfs.ext4".into(), read_only: true },
                Disk { path: "/s/it's.img".into(), read_only: false },
            ],
            region: Some(RegionSpec { path: "/dev/shm/nexus/f-1.region".into(), size: 16 << 20 }),
            doorbell: true,
            ..VmSpec::new("f-1", "/img/vmlinuz", "/w")
        }
    }

    fn host() -> Host<'static> {
        Host {
            accel: Accel::Tcg,
            shmem: Some("nexus-f-1.region"),
            serial_log: Path::new("/w/serial.log"),
            doorbell: Path::new("/w/doorbell.sock"),
            owner: (0, 0),
        }
    }

    #[test]
    fn fills_every_placeholder_and_escapes_values() {
        let xml = domain_xml(&spec(), &host());
        assert!(!xml.contains('@'), "{xml}");
        assert!(xml.contains(METADATA_NS));
        for part in [
            "<domain type='qemu'>",
            "<name>f-1</name>",
            "function='f' region='nexus-f-1.region' managed='backend'",
            "<cpu mode='maximum'>",
            "<kernel>/img/vmlinuz</kernel>\n    <initrd>/img/initrd.img</initrd>",
            "<cmdline>console=ttyS0 nexus.function=f&amp;g</cmdline>",
            "<label>+0:+0</label>",
            "<source path='/w/serial.log'/>",
            "<source file='/img/rootfs.ext4'/><target dev='vda' bus='virtio'/><readonly/>",
            "<source file='/s/it&apos;s.img'/><target dev='vdb' bus='virtio'/></disk>",
            "<shmem name='nexus-f-1.region' role='master'><model type='ivshmem-plain'/><size unit='b'>16777216</size>",
            "<source mode='connect' path='/w/doorbell.sock'>",
            "<target type='virtio' name='org.nexus.doorbell'/>",
        ] {
            assert!(xml.contains(part), "{part} missing from {xml}");
        }
        assert!(!xml.contains("<interface"), "the nexus flavour has no NIC");
    }

    #[test]
    fn kvm_passes_the_host_cpu_and_baseline_gets_a_nic() {
        let spec = VmSpec { network: Some(Network::User), ..spec() };
        let xml = domain_xml(&spec, &Host { accel: Accel::Kvm, ..host() });
        assert!(xml.contains("<domain type='kvm'>") && xml.contains("host-passthrough"), "{xml}");
        assert!(xml.contains("<interface type='user'>"), "{xml}");
    }

    #[test]
    fn a_tap_nic_is_an_unmanaged_ethernet_interface() {
        let tap = Network::Tap { ifname: "nx-tap0".into(), mac: "52:54:00:00:00:05".into() };
        let spec = VmSpec { network: Some(tap), region: None, doorbell: false, ..spec() };
        let xml = domain_xml(&spec, &Host { shmem: None, ..host() });
        let nic = "<interface type='ethernet'><target dev='nx-tap0' managed='no'/>\
                   <mac address='52:54:00:00:00:05'/><model type='virtio'/></interface>";
        assert!(xml.contains(nic), "{xml}");
        assert!(!xml.contains("<shmem") && !xml.contains("<channel"), "{xml}");
    }
}
