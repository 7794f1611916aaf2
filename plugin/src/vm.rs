//! The traits every VMM adapter implements, and what they hand back.

use std::fmt;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::error::VmmError;
use crate::spec::VmSpec;

/// A VMM: starts VM processes, fresh or from a snapshot.
pub trait Vmm: Send + Sync + fmt::Debug {
    /// The adapter's name (`"qemu"`), also recorded in the snapshots it takes.
    fn name(&self) -> &'static str;
    /// What a restore does to the region file's contents.
    fn region_on_restore(&self) -> RegionOnRestore;
    /// Starts a VMM process for `spec` with its region attached; guest code not yet running.
    fn create(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError>;
    /// Starts a VMM process that restores `snapshot` (left paused), with `spec`'s region
    /// attached.
    fn restore(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<Box<dyn Vm>, VmmError>;
}

/// One running VMM process and the VM inside it.
pub trait Vm: Send + fmt::Debug {
    /// Starts the guest code of a created VM.
    fn boot(&mut self) -> Result<(), VmmError>;
    /// Pauses a running VM, or takes a [`VmState::Restored`] one as this VM, paused.
    fn pause(&mut self) -> Result<(), VmmError>;
    fn resume(&mut self) -> Result<(), VmmError>;
    /// Saves a paused VM's state into `dir` (created); the VM stays paused.
    fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmmError>;
    /// Stops the VMM process: graceful quit, then SIGKILL after a timeout. Idempotent; Drop
    /// calls it.
    fn stop(&mut self) -> Result<(), VmmError>;
    fn info(&self) -> VmInfo;
    /// The last `lines` lines of the guest console log.
    fn serial_tail(&self, lines: usize) -> String;
    /// The host end of the doorbell of a VM whose spec asked for one: a connected stream; a
    /// byte written to it wakes the guest agent, and a byte the agent writes arrives on it. How
    /// it reaches the guest is the adapter's business. Called after create or restore, before
    /// boot or resume, and (adapters that report [`VmState::Restored`]) after pausing a
    /// restored VM: each call hands out a new host end, and the one before stops working.
    fn doorbell(&mut self) -> Result<UnixStream, VmmError>;
}

/// What a restore does to the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionOnRestore {
    /// The snapshot carries the region's contents and the restore writes them back: data for
    /// the restored guest goes into the region after the restore, before `resume`.
    Rewritten,
    /// The snapshot holds only the device: the region file keeps what the host wrote, so the
    /// host may fill it while the VMM restores.
    Kept,
}

/// What a VM is and where it is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    /// The adapter's name.
    pub vmm: &'static str,
    pub accel: Accel,
    pub state: VmState,
    /// The VMM process, until it has been stopped and reaped.
    pub pid: Option<u32>,
    /// The guest console log, written by the VMM as the guest prints.
    pub serial_log: PathBuf,
}

/// Where a VM is in its life (see the crate doc for the transitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// The VMM is up; the guest has not executed an instruction.
    Created,
    Running,
    Paused,
    /// Stopped through [`Vm::stop`].
    Stopped,
    /// The VMM process exited on its own (a guest reboot or crash, or the VMM failing).
    Exited,
    /// Saved outside Nexus (`virsh save`): the VMM process ended, the VM's state is in a file
    /// a restore may bring back; its region stays.
    Saved,
    /// Brought back outside Nexus (`virsh restore`) by a VMM process the adapter did not
    /// start: the region holds what the save held. [`Vm::pause`] takes the process as the
    /// VM's own (Paused); its owner then serves the region afresh and resumes it.
    Restored,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
            VmState::Exited => "exited",
            VmState::Saved => "saved",
            VmState::Restored => "restored",
        })
    }
}

/// A saved VM: a directory holding the VMM's state files and `snapshot.json`, whose `vmm`
/// field names the adapter that wrote it; the rest of the manifest is the adapter's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    /// The adapter that took it.
    pub vmm: String,
}

/// The part of `snapshot.json` every adapter writes.
#[derive(Deserialize)]
struct ManifestHead {
    vmm: String,
}

impl Snapshot {
    /// The manifest's file name inside a snapshot directory.
    pub const MANIFEST: &'static str = "snapshot.json";

    /// Opens the snapshot saved in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Snapshot, VmmError> {
        let dir = dir.into();
        let bad = |reason: String| VmmError::BadSnapshot { dir: dir.clone(), reason };
        let text = fs::read_to_string(dir.join(Self::MANIFEST))
            .map_err(|e| bad(format!("cannot read {}: {e}", Self::MANIFEST)))?;
        let head: ManifestHead = serde_json::from_str(&text)
            .map_err(|e| bad(format!("invalid {}: {e}", Self::MANIFEST)))?;
        Ok(Snapshot { vmm: head.vmm, dir })
    }

    /// The path of this snapshot's manifest.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(Self::MANIFEST)
    }

    /// Records the snapshot adapter `vmm` just saved into `dir`: writes `manifest` (which must
    /// carry a `vmm` field naming the adapter) as `snapshot.json`, whole or not at all.
    pub fn write(dir: &Path, vmm: &str, manifest: &impl Serialize) -> Result<Snapshot, VmmError> {
        let snapshot = Snapshot { dir: dir.to_owned(), vmm: vmm.to_owned() };
        let path = snapshot.manifest();
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_string_pretty(manifest).expect("a manifest serializes");
        fs::write(&partial, text)
            .and_then(|()| fs::rename(&partial, &path))
            .map_err(VmmError::io(format!("write {}", path.display())))?;
        Ok(snapshot)
    }

    /// Reads the manifest of a snapshot that adapter `vmm` must have taken.
    pub fn read_manifest<M: DeserializeOwned>(&self, vmm: &str) -> Result<M, VmmError> {
        if self.vmm != vmm {
            return Err(self.bad(format!("it was taken by {}, not {vmm}", self.vmm)));
        }
        let text = fs::read_to_string(self.manifest())
            .map_err(|e| self.bad(format!("cannot read {}: {e}", Self::MANIFEST)))?;
        serde_json::from_str(&text)
            .map_err(|e| self.bad(format!("invalid {}: {e}", Self::MANIFEST)))
    }

    /// The error for a snapshot that cannot be restored, and why.
    pub fn bad(&self, reason: String) -> VmmError {
        VmmError::BadSnapshot { dir: self.dir.clone(), reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_a_manifest_and_names_what_is_wrong_with_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("snapshot.json"), r#"{"vmm":"qemu","memory_mib":256}"#).unwrap();
        let snapshot = Snapshot::open(dir.path()).unwrap();
        assert_eq!(snapshot, Snapshot { dir: dir.path().to_owned(), vmm: "qemu".into() });

        fs::write(dir.path().join("snapshot.json"), "{}").unwrap();
        let error = Snapshot::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("invalid snapshot.json: missing field `vmm`"), "{error}");
    }

    #[test]
    fn a_written_manifest_reads_back_only_for_its_own_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({ "vmm": "qemu", "memory_mib": 256 });
        let written = Snapshot::write(dir.path(), "qemu", &manifest).unwrap();
        assert_eq!(written, Snapshot::open(dir.path()).unwrap());
        assert!(!dir.path().join("snapshot.json.partial").exists());
        let read: serde_json::Value = written.read_manifest("qemu").unwrap();
        assert_eq!(read, manifest);
        let error = written.read_manifest::<serde_json::Value>("libvirt").unwrap_err();
        assert!(error.to_string().contains("it was taken by qemu, not libvirt"), "{error}");
    }
}
