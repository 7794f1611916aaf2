//! Cloud Hypervisor snapshots: what `vm.snapshot` writes, a manifest, and the per-restore copy of
//! its config that lets one snapshot restore into several VMs at once.
//!
//! ```text
//!  DIR/ (vm.snapshot file://DIR)         WORK/restore/ (one per restoring VM)
//!    config.json   the VM config   ──►     config.json   copy: this VM's region, serial, vsock
//!    state.json    device state    ──►     state.json    symlink
//!    memory-ranges guest RAM       ──►     memory-ranges symlink
//!    snapshot.json our manifest            (vm.restore source_url = file://WORK/restore)
//! ```
//! **The region is not in the snapshot.** CH saves the ivshmem device's registers, not the
//! file's bytes: a restored VM maps whatever file its config names, as the host left it. So the
//! host may fill a region while the VMM restores ([`crate::RegionOnRestore::Kept`]).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::vm_config::{repoint, OwnFiles};
use super::NAME;
use crate::error::VmmError;
use crate::spec::VmSpec;
use crate::vm::Snapshot;

/// CH's own file in a snapshot that a restore rewrites.
const CONFIG: &str = "config.json";

/// `snapshot.json` of a CH snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"cloud-hypervisor"`.
    vmm: String,
    /// The CH that wrote it (`vmm.ping`'s version).
    pub ch_version: String,
    shape: Shape,
}

/// What a restoring VM's spec must match: CH restores memory and devices as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    memory_mib: u32,
    vcpus: u8,
    region_size: Option<u64>,
    disks: usize,
    doorbell: bool,
}

impl Shape {
    pub fn of(spec: &VmSpec) -> Shape {
        Shape {
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            region_size: spec.region.as_ref().map(|r| r.size),
            disks: spec.disks.len(),
            doorbell: spec.doorbell,
        }
    }

    pub fn has_doorbell(&self) -> bool {
        self.doorbell
    }
}

/// Writes the manifest of a snapshot CH just wrote into `dir`.
pub fn write_manifest(dir: &Path, ch_version: &str, shape: &Shape) -> Result<Snapshot, VmmError> {
    let manifest =
        Manifest { vmm: NAME.into(), ch_version: ch_version.into(), shape: shape.clone() };
    Snapshot::write(dir, NAME, &manifest)
}

/// Checks that `snapshot` is a CH snapshot of a VM shaped like `spec`.
pub fn check(snapshot: &Snapshot, spec: &VmSpec) -> Result<Manifest, VmmError> {
    let bad = |reason: String| snapshot.bad(reason);
    let manifest: Manifest = snapshot.read_manifest(NAME)?;
    let wanted = Shape::of(spec);
    if manifest.shape != wanted {
        return Err(bad(format!(
            "it holds a VM of {:?}, the spec asks for {wanted:?}",
            manifest.shape
        )));
    }
    Ok(manifest)
}

/// Prepares `into` as the source of one restore of `snapshot`: CH's config re-pointed at this
/// VM's files, every other file linked.
pub fn prepare_restore(
    snapshot: &Snapshot,
    spec: &VmSpec,
    files: &OwnFiles<'_>,
    into: &Path,
) -> Result<(), VmmError> {
    copy_for_restore(&snapshot.dir, into, |config| repoint(config, spec, files))
}

/// Makes `into` a copy of the CH snapshot in `from` for one restore: its `config.json` edited by
/// `edit`, every other file (bar our manifest) linked. `vm.restore` from `file://<into>` then
/// uses the edited paths (CH reuses the paths a config names).
pub fn copy_for_restore(
    from: &Path,
    into: &Path,
    edit: impl FnOnce(&mut Value) -> Result<(), String>,
) -> Result<(), VmmError> {
    let bad = |reason: String| VmmError::BadSnapshot { dir: from.to_owned(), reason };
    let _ = fs::remove_dir_all(into);
    fs::create_dir_all(into).map_err(VmmError::io(format!("create {}", into.display())))?;
    let entries = fs::read_dir(from).map_err(|e| bad(format!("cannot list it: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(format!("cannot list it: {e}")))?;
        let name = entry.file_name();
        if name == CONFIG || name == Snapshot::MANIFEST {
            continue;
        }
        let link = into.join(&name);
        std::os::unix::fs::symlink(entry.path(), &link)
            .map_err(VmmError::io(format!("link {}", link.display())))?;
    }
    let text = fs::read_to_string(from.join(CONFIG))
        .map_err(|e| bad(format!("cannot read {CONFIG}: {e}")))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid {CONFIG}: {e}")))?;
    edit(&mut config).map_err(bad)?;
    let path = into.join(CONFIG);
    fs::write(&path, config.to_string()).map_err(VmmError::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RegionSpec;

    fn spec(region: &str) -> VmSpec {
        VmSpec {
            region: Some(RegionSpec { path: region.into(), size: 1 << 20 }),
            ..VmSpec::new("f", "/k", "/w")
        }
    }

    #[test]
    fn each_restore_gets_its_own_config_and_shares_the_rest() {
        let snapshot_dir = tempfile::tempdir().unwrap();
        let files =
            OwnFiles { serial: Path::new("/a/serial.log"), vsock: Path::new("/a/vsock.sock") };
        let saved = super::super::vm_config::create_body(&spec("/r/a"), &files).unwrap();
        fs::write(snapshot_dir.path().join(CONFIG), saved.to_string()).unwrap();
        fs::write(snapshot_dir.path().join("memory-ranges"), b"RAM").unwrap();
        let snapshot =
            write_manifest(snapshot_dir.path(), "53.0.0", &Shape::of(&spec("/r/a"))).unwrap();
        let snapshot = Snapshot::open(&snapshot.dir).unwrap();

        let work = tempfile::tempdir().unwrap();
        for vm in ["b", "c"] {
            let spec = spec(&format!("/r/{vm}"));
            check(&snapshot, &spec).unwrap();
            let serial = work.path().join(vm).join("serial.log");
            let own = OwnFiles { serial: &serial, vsock: Path::new("/x/vsock.sock") };
            let into = work.path().join(vm).join("restore");
            prepare_restore(&snapshot, &spec, &own, &into).unwrap();
            let config: Value =
                serde_json::from_str(&fs::read_to_string(into.join(CONFIG)).unwrap()).unwrap();
            assert_eq!(config["ivshmem"]["path"], format!("/r/{vm}"));
            assert_eq!(config["serial"]["file"], serial.to_str().unwrap());
            assert_eq!(fs::read(into.join("memory-ranges")).unwrap(), b"RAM");
            assert!(!into.join(Snapshot::MANIFEST).exists());
        }

        let bigger = VmSpec { memory_mib: 512, ..spec("/r/d") };
        let error = check(&snapshot, &bigger).unwrap_err().to_string();
        assert!(error.contains("memory_mib: 256") && error.contains("memory_mib: 512"), "{error}");
        let qemu = Snapshot { vmm: "qemu".into(), ..snapshot };
        let error = check(&qemu, &spec("/r/e")).unwrap_err().to_string();
        assert!(error.ends_with("it was taken by qemu, not cloud-hypervisor"), "{error}");
    }
}
