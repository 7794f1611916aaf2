//! The VM config Cloud Hypervisor gets: the `vm.create` body built from a [`VmSpec`], and the
//! snapshot's `config.json` re-pointed at a restoring VM's own files.
//!
//! ```text
//!  {"payload": {"kernel", "initramfs", "cmdline"}, "cpus": {"boot_vcpus", "max_vcpus"},
//!   "memory": {"size"}, "disks": [{"path", "readonly"}], "serial": {"mode": "File", "file"},
//!   "console": {"mode": "Off"}, "vsock": {"cid", "socket"}, "ivshmem": {"path", "size"},
//!   "net": [{"tap", "mac"}]}
//! ```
//! `net` only for a NIC on a tap device (which CH opens by name, in its own network namespace);
//! QEMU's user-mode NIC has no CH counterpart.
//! `ivshmem` is not in CH's OpenAPI document; it exists only in CH built with `--features
//! ivshmem`.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::VmmError;
use crate::spec::{AccelChoice, Network, VmSpec};

/// The guest's vsock context id (any value above 2, the host's, will do).
pub const GUEST_CID: u32 = 3;

/// This VM's own files, which a restore re-points the snapshot's config at.
#[derive(Debug, Clone)]
pub struct OwnFiles<'a> {
    pub serial: &'a Path,
    pub vsock: &'a Path,
}

/// The `vm.create` body for `spec`.
pub fn create_body(spec: &VmSpec, files: &OwnFiles<'_>) -> Result<Value, VmmError> {
    let invalid =
        |reason: &str| VmmError::InvalidSpec { vm: spec.name.clone(), reason: reason.into() };
    if spec.network == Some(Network::User) {
        return Err(invalid("Cloud Hypervisor has no user-mode NIC: give the VM a tap device"));
    }
    if spec.accel == AccelChoice::Tcg {
        return Err(invalid("Cloud Hypervisor runs guests on KVM only, not TCG"));
    }
    let mut payload = json!({ "kernel": spec.kernel, "cmdline": spec.cmdline });
    if let Some(initrd) = &spec.initrd {
        payload["initramfs"] = json!(initrd);
    }
    let disks: Vec<Value> =
        spec.disks.iter().map(|d| json!({ "path": d.path, "readonly": d.read_only })).collect();
    let mut body = json!({
        "payload": payload,
        "cpus": { "boot_vcpus": spec.vcpus, "max_vcpus": spec.vcpus },
        "memory": { "size": u64::from(spec.memory_mib) << 20 },
        "serial": { "mode": "File", "file": files.serial },
        "console": { "mode": "Off" },
    });
    if !disks.is_empty() {
        body["disks"] = json!(disks);
    }
    if spec.doorbell {
        body["vsock"] = json!({ "cid": GUEST_CID, "socket": files.vsock });
    }
    if let Some(region) = &spec.region {
        body["ivshmem"] = json!({ "path": region.path, "size": region.size });
    }
    if let Some(Network::Tap { ifname, mac }) = &spec.network {
        body["net"] = json!([{ "tap": ifname, "mac": mac }]);
    }
    Ok(body)
}

/// A snapshot's `config.json` made this VM's: its region, console and vsock socket instead of
/// those of the VM that was saved. Fails on a config that lacks a device `spec` has.
pub fn repoint(saved: &mut Value, spec: &VmSpec, files: &OwnFiles<'_>) -> Result<(), String> {
    let mut set = |device: &str, field: &str, value: Value| -> Result<(), String> {
        match saved.get_mut(device).and_then(Value::as_object_mut) {
            Some(object) => {
                object.insert(field.into(), value);
                Ok(())
            }
            None => Err(format!("its config.json has no {device} device")),
        }
    };
    set("serial", "file", json!(files.serial))?;
    if spec.doorbell {
        set("vsock", "socket", json!(files.vsock))?;
    }
    if let Some(region) = &spec.region {
        set("ivshmem", "path", json!(region.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Disk, Network, RegionSpec};

    fn spec() -> VmSpec {
        VmSpec {
            region: Some(RegionSpec { path: "/dev/shm/nexus/f-1.region".into(), size: 32 << 20 }),
            disks: vec![Disk { path: "/img/rootfs".into(), read_only: true }],
            doorbell: true,
            ..VmSpec::new("f-1", "/img/vmlinux", "/w")
        }
    }

    fn files() -> OwnFiles<'static> {
        OwnFiles { serial: Path::new("/w/serial.log"), vsock: Path::new("/w/vsock.sock") }
    }

    #[test]
    fn a_spec_becomes_a_vm_create_body() {
        let body = create_body(&spec(), &files()).unwrap();
        assert_eq!(
            body,
            json!({
                "payload": { "kernel": "/img/vmlinux", "cmdline": "" },
                "cpus": { "boot_vcpus": 1, "max_vcpus": 1 },
                "memory": { "size": 256u64 << 20 },
                "disks": [{ "path": "/img/rootfs", "readonly": true }],
                "serial": { "mode": "File", "file": "/w/serial.log" },
                "console": { "mode": "Off" },
                "vsock": { "cid": 3, "socket": "/w/vsock.sock" },
                "ivshmem": { "path": "/dev/shm/nexus/f-1.region", "size": 32u64 << 20 },
            })
        );
        let bare = VmSpec { region: None, doorbell: false, disks: vec![], ..spec() };
        let body = create_body(&bare, &files()).unwrap();
        assert!(body.get("ivshmem").is_none() && body.get("vsock").is_none(), "{body}");
        assert!(body.get("net").is_none(), "{body}");
    }

    #[test]
    fn a_tap_nic_becomes_a_net_device() {
        let tap = Network::Tap { ifname: "nx-tap0".into(), mac: "52:54:00:00:00:05".into() };
        let spec = VmSpec { network: Some(tap), region: None, doorbell: false, ..spec() };
        let body = create_body(&spec, &files()).unwrap();
        assert_eq!(body["net"], json!([{ "tap": "nx-tap0", "mac": "52:54:00:00:00:05" }]));
    }

    #[test]
    fn refuses_what_ch_cannot_do() {
        let nic = VmSpec { network: Some(Network::User), ..spec() };
        let tcg = VmSpec { accel: AccelChoice::Tcg, ..spec() };
        for bad in [nic, tcg] {
            assert!(matches!(create_body(&bad, &files()), Err(VmmError::InvalidSpec { .. })));
        }
    }

    #[test]
    fn a_restore_gets_its_own_region_console_and_vsock() {
        let mut saved = create_body(&spec(), &files()).unwrap();
        let other = VmSpec {
            region: Some(RegionSpec { path: "/dev/shm/nexus/f-2.region".into(), size: 32 << 20 }),
            ..spec()
        };
        let own =
            OwnFiles { serial: Path::new("/v/serial.log"), vsock: Path::new("/v/vsock.sock") };
        repoint(&mut saved, &other, &own).unwrap();
        assert_eq!(saved["ivshmem"]["path"], "/dev/shm/nexus/f-2.region");
        assert_eq!(saved["ivshmem"]["size"], 32u64 << 20);
        assert_eq!(saved["serial"]["file"], "/v/serial.log");
        assert_eq!(saved["vsock"]["socket"], "/v/vsock.sock");

        let mut no_region = create_body(&VmSpec { region: None, ..spec() }, &files()).unwrap();
        let error = repoint(&mut no_region, &other, &own).unwrap_err();
        assert_eq!(error, "its config.json has no ivshmem device");
    }
}
