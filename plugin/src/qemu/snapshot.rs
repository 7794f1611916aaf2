//! QEMU snapshots: the migration stream of a paused VM saved to a file, and a manifest of what a
//! restore must match.
//!
//! ```text
//!  take (VM paused)                     DIR/             restore (new QEMU, -S -incoming defer)
//!  getfd DIR/memory (created)           memory        ──► getfd DIR/memory (opened)
//!  migrate "fd:snapshot"            ──►               ──► migrate-incoming "fd:snapshot"
//!  query-migrate until completed        snapshot.json ──► its shape checked against the spec
//!  (the VM stays paused)                                  query-migrate until completed: paused
//! ```
//!
//! **QEMU reads and writes the file itself**: the open file goes over the QMP socket
//! (SCM_RIGHTS, `getfd`), so no shell or `cat` runs and no pipe sits in between, which would
//! cost a copy of the whole stream and a wake-up across cores for every 64 KiB of it.
//!
//! **The region travels in the stream.** QEMU migrates an ivshmem device only with `master=on`,
//! and then saves the region's bytes with guest RAM and, on restore, writes them back into the
//! region file: whatever was put into the region before the restore completes is overwritten
//! with its contents at snapshot time. Data prefetched for a cold start must be copied into the
//! region after [`load`] returns, before the VM resumes.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::args::MACHINE;
use super::qmp::Qmp;
use super::{refused, NAME};
use crate::accel::Accel;
use crate::error::VmmError;
use crate::spec::VmSpec;
use crate::vm::Snapshot;

/// The migration stream's file name in a snapshot directory.
const MEMORY_FILE: &str = "memory";
/// The name QEMU knows the stream's file by, and the migration URI that names it.
const FD_NAME: &str = "snapshot";
const MIGRATION_URI: &str = "fd:snapshot";
/// The longest a migration may take, either way (256 MiB take ~0.7 s under TCG).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);
const MIGRATION_POLL: Duration = Duration::from_millis(10);

/// `snapshot.json` of a QEMU snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"qemu"`.
    vmm: String,
    /// The QEMU that wrote the stream (a different one may not read it).
    pub qemu_version: String,
    shape: Shape,
}

/// What the restoring QEMU must have exactly as the saving one had it: the migration stream
/// only carries state, and QEMU rejects a stream whose devices or RAM sizes differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    machine: String,
    accel: Accel,
    memory_mib: u32,
    vcpus: u8,
    region_size: Option<u64>,
    /// Whether each disk is read-only, in order.
    disks_read_only: Vec<bool>,
    doorbell: bool,
    network: bool,
}

impl Shape {
    pub fn of(spec: &VmSpec, accel: Accel) -> Shape {
        Shape {
            machine: MACHINE.to_owned(),
            accel,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            region_size: spec.region.as_ref().map(|r| r.size),
            disks_read_only: spec.disks.iter().map(|d| d.read_only).collect(),
            doorbell: spec.doorbell,
            network: spec.network.is_some(),
        }
    }

    /// Whether the VM has a doorbell port.
    pub fn has_doorbell(&self) -> bool {
        self.doorbell
    }

    /// `field: snapshot value ≠ spec value` for each field that differs.
    fn differences(&self, spec: &Shape) -> Vec<String> {
        let (saved, wanted) = (json!(self), json!(spec));
        let (Value::Object(saved), Value::Object(wanted)) = (saved, wanted) else {
            unreachable!("a struct serializes to a JSON object")
        };
        saved
            .into_iter()
            .filter(|(key, value)| wanted.get(key) != Some(value))
            .map(|(key, value)| {
                format!("{key} is {value} in the snapshot, {} in the spec", wanted[&key])
            })
            .collect()
    }
}

/// Saves the paused VM behind `qmp` into `dir`; the VM stays paused.
pub fn take(qmp: &mut Qmp, vm: &str, shape: &Shape, dir: &Path) -> Result<Snapshot, VmmError> {
    fs::create_dir_all(dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
    let path = dir.join(MEMORY_FILE);
    let file = File::create(&path).map_err(VmmError::io(format!("create {}", path.display())))?;
    pass_file(qmp, vm, &file)?;
    let uri = json!({ "uri": MIGRATION_URI });
    qmp.execute("migrate", Some(uri)).map_err(refused(vm, "migrate"))?;
    wait_for_migration(qmp, vm, "snapshot")?;

    let manifest = Manifest {
        vmm: NAME.to_owned(),
        qemu_version: qmp.version().to_owned(),
        shape: shape.clone(),
    };
    Snapshot::write(dir, NAME, &manifest)
}

/// Reads the manifest of `snapshot` and checks that it was taken by QEMU from a VM of `shape`.
pub fn check(snapshot: &Snapshot, shape: &Shape) -> Result<Manifest, VmmError> {
    let bad = |reason: String| snapshot.bad(reason);
    let manifest: Manifest = snapshot.read_manifest(NAME)?;
    let differences = manifest.shape.differences(shape);
    if !differences.is_empty() {
        return Err(bad(differences.join("; ")));
    }
    if !snapshot.dir.join(MEMORY_FILE).is_file() {
        return Err(bad(format!("{MEMORY_FILE} is missing")));
    }
    Ok(manifest)
}

/// Streams `snapshot` into the QEMU behind `qmp`, started with `-incoming defer`; it is left
/// paused, the region holding what it held at snapshot time.
pub fn load(qmp: &mut Qmp, vm: &str, snapshot: &Snapshot) -> Result<(), VmmError> {
    let path = snapshot.dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(VmmError::io(format!("open {}", path.display())))?;
    pass_file(qmp, vm, &file)?;
    let uri = json!({ "uri": MIGRATION_URI });
    qmp.execute("migrate-incoming", Some(uri)).map_err(refused(vm, "migrate-incoming"))?;
    wait_for_migration(qmp, vm, "restore")
}

/// Polls `query-migrate` until the migration in either direction completes.
fn wait_for_migration(qmp: &mut Qmp, vm: &str, what: &str) -> Result<(), VmmError> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = qmp.execute("query-migrate", None).map_err(refused(vm, "query-migrate"))?;
        // The status is absent until an incoming migration has set up.
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some(status @ ("failed" | "cancelled")) => {
                let desc =
                    info.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                let source = format!("migration {status}: {desc}").into();
                return Err(VmmError::Control {
                    vm: vm.to_owned(),
                    command: what.to_owned(),
                    source,
                });
            }
            _ if Instant::now() >= deadline => {
                return Err(VmmError::Timeout {
                    vm: vm.to_owned(),
                    what: what.to_owned(),
                    after: MIGRATION_TIMEOUT,
                })
            }
            _ => thread::sleep(MIGRATION_POLL),
        }
    }
}

/// Hands `file` to QEMU under [`FD_NAME`], for the next migration's [`MIGRATION_URI`]
/// (QEMU takes the descriptor over when the migration starts).
fn pass_file(qmp: &mut Qmp, vm: &str, file: &File) -> Result<(), VmmError> {
    let name = json!({ "fdname": FD_NAME });
    qmp.execute_with_fd("getfd", Some(name), file.as_fd()).map_err(refused(vm, "getfd"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RegionSpec;

    fn spec() -> VmSpec {
        VmSpec {
            region: Some(RegionSpec { path: "/dev/shm/r".into(), size: 1 << 20 }),
            ..VmSpec::new("f", "/k", "/w")
        }
    }

    #[test]
    fn a_restore_must_match_memory_devices_and_accelerator() {
        let saved = Shape::of(&spec(), Accel::Tcg);
        assert!(saved.differences(&Shape::of(&spec(), Accel::Tcg)).is_empty());
        let bigger = VmSpec { memory_mib: 512, region: None, ..spec() };
        assert_eq!(
            saved.differences(&Shape::of(&bigger, Accel::Kvm)),
            [
                "accel is \"tcg\" in the snapshot, \"kvm\" in the spec",
                "memory_mib is 256 in the snapshot, 512 in the spec",
                "region_size is 1048576 in the snapshot, null in the spec",
            ]
        );
    }

    #[test]
    fn check_rejects_another_vmm_a_mismatch_and_a_missing_stream() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::of(&spec(), Accel::Tcg);
        let manifest =
            Manifest { vmm: NAME.into(), qemu_version: "7.2.22".into(), shape: shape.clone() };
        fs::write(dir.path().join("snapshot.json"), serde_json::to_string(&manifest).unwrap())
            .unwrap();
        let snapshot = Snapshot::open(dir.path()).unwrap();

        let other = Snapshot { vmm: "cloud-hypervisor".into(), ..snapshot.clone() };
        let error = check(&other, &shape).unwrap_err().to_string();
        assert!(error.ends_with("it was taken by cloud-hypervisor, not qemu"), "{error}");
        let one_cpu_more = Shape::of(&VmSpec { vcpus: 2, ..spec() }, Accel::Tcg);
        let error = check(&snapshot, &one_cpu_more).unwrap_err().to_string();
        assert!(error.ends_with("vcpus is 1 in the snapshot, 2 in the spec"), "{error}");
        let error = check(&snapshot, &shape).unwrap_err().to_string();
        assert!(error.ends_with("memory is missing"), "{error}");

        fs::write(dir.path().join("memory"), b"QEVM").unwrap();
        assert_eq!(check(&snapshot, &shape).unwrap().qemu_version, "7.2.22");
    }
}
