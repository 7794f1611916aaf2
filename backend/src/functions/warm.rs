//! Booting a function's VM and keeping it warm.
//!
//! ```text
//!  region file created ─► VMM started with it (paused) ─► doorbell's host end connected
//!  ─► region served (stream kick) ─► boot ─► agent starts the runtime ─► runtime acks the
//!  epoch (ready) ─► invocations
//! ```
//! A VM that exits or is not ready in time is stopped, its region removed, and the error
//! carries the tail of its console.
//!
//! A VM an operator saved and restored with virsh comes back with the region as it was saved:
//! [`reserve`] pauses it, serves the region afresh (a new epoch, a new doorbell), then resumes
//! and kicks it, as after a restore of the function's own snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nexus_channel::notify::Kick;
use nexus_channel::Region;
use nexus_plugin::{
    AccelChoice, Disk, Network, RegionOnRestore, RegionSpec, Snapshot, Vm, VmSpec, VmState, Vmm,
    VmmError,
};
use serde::Serialize;

use super::pool::{Use, Vital};
use super::spec::{Flavour, FunctionSpec};
use super::FunctionError;
use crate::arriving::Arriving;
use crate::backend::{Backend, BackendError};
use crate::config::VmConfig;
use crate::policy::Policy;
use crate::served::Placed;
use crate::storage::error_chain;

/// Console lines an error carries.
const SERIAL_LINES: usize = 30;

/// A running VM serving one function.
#[derive(Debug)]
pub struct Warm {
    pub region: String,
    /// Locked only for a lifecycle call (pause, snapshot, stop), never across an invocation.
    pub vm: Mutex<Box<dyn Vm>>,
    pub booted_in: Duration,
    /// The libvirt domain of an operator's VM (which the backend never stops: see
    /// `operator.rs`); `None` for the function's own.
    pub operator: Option<String>,
}

/// What `nexus fn ls` shows of a warm VM.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WarmInfo {
    pub region: String,
    pub vmm: &'static str,
    pub accel: String,
    pub state: String,
    pub pid: Option<u32>,
    pub boot_ms: u64,
    pub serial_log: PathBuf,
    /// Serving an invocation (or being snapshotted) now.
    pub busy: bool,
    /// Out of service, its VMM and region being stopped (it leaves the list once they are
    /// gone).
    pub stopping: bool,
    /// The libvirt domain, for an operator's VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl Vital for Warm {
    /// Whether it can serve: not ended, and not saved or restored behind the backend's back
    /// (those wait outside the pool: see `Functions::follow_vms`).
    fn alive(&self) -> bool {
        matches!(self.vm().info().state, VmState::Created | VmState::Running | VmState::Paused)
    }

    fn disposable(&self) -> bool {
        self.operator.is_none()
    }
}

impl Warm {
    /// The VM, for a lifecycle call.
    pub fn vm(&self) -> MutexGuard<'_, Box<dyn Vm>> {
        self.vm.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self, now: Use) -> WarmInfo {
        let info = self.vm().info();
        WarmInfo {
            busy: now == Use::Busy,
            stopping: now == Use::Stopping,
            region: self.region.clone(),
            vmm: info.vmm,
            accel: info.accel.to_string(),
            state: info.state.to_string(),
            pid: info.pid,
            boot_ms: self.booted_in.as_millis() as u64,
            serial_log: info.serial_log,
            operator: self.operator.clone(),
        }
    }

    /// The VM's state now.
    pub fn state(&self) -> VmState {
        self.vm().info().state
    }

    /// Stops the VM and removes its region (an invocation still running in it fails).
    pub fn stop(&self, backend: &Backend) {
        if let Err(e) = self.vm().stop() {
            tracing::warn!(region = %self.region, "Stopping the VM failed: {e}");
        }
        let _ = backend.remove_region(&self.region);
    }
}

/// How a VM comes up.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Boot the kernel.
    Boot,
    /// Restore a snapshot of a warm VM of the same function: its runtime is already loaded and
    /// resyncs to the region's new epoch.
    Restore(&'a Snapshot),
}

/// The inputs a cold start prefetches, to copy into its region's staging area while the VM
/// starts: those that are in by then; a `Get` of one still arriving streams it instead.
pub struct Stage<'a> {
    pub backend: &'a Backend,
    pub policy: &'a Policy,
    pub objects: &'a [Arc<Arriving>],
}

impl Stage<'_> {
    /// Copies the objects that are in into `region`.
    fn place(&self, region: &Region) -> Option<Placed> {
        let placed = self.backend.place_staged(region, self.policy, self.objects);
        placed.inspect_err(|e| tracing::warn!("Cannot stage the prefetched inputs: {e}")).ok()
    }

    /// Runs `work` while another thread waits until every object is in (or `work` is done),
    /// then copies those that are in into `region`; returns both outcomes.
    fn alongside<T>(&self, region: &Region, work: impl FnOnce() -> T) -> (T, Option<Placed>) {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let placing = s.spawn(|| {
                while !done.load(Ordering::Acquire) && !self.objects.iter().all(|o| o.is_in()) {
                    std::thread::sleep(STAGE_POLL);
                }
                self.place(region)
            });
            let outcome = {
                let _done = SetOnDrop(&done); // even if `work` panics, the wait ends
                work()
            };
            let placed = placing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (outcome, placed)
        })
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How often a starting VM's runtime is checked for its ready (a restored one is ready tens
/// of milliseconds after it resumes: a coarser poll would add to every cold start).
const READY_POLL: Duration = Duration::from_millis(2);
/// How often staging looks whether the prefetched inputs are in.
const STAGE_POLL: Duration = Duration::from_millis(2);

/// Starts a VM for `spec`, with `code` as its code disk, and waits until its runtime is ready.
/// With `stage`, the prefetched inputs that are in are copied into the staging area while the
/// VM starts, and published before it takes an invocation: beside the restore when the VMM
/// keeps the region's contents across one (nothing else writes the region then), right after
/// it when the restore rewrites the region (QEMU), beside the boot otherwise.
pub fn start(
    backend: &Backend,
    vmm: &dyn Vmm,
    spec: &FunctionSpec,
    code: &Path,
    instance: u64,
    from: Start<'_>,
    stage: Option<&Stage<'_>>,
) -> Result<Warm, FunctionError> {
    let started = Instant::now();
    let config = &backend.config().vm;
    let image = config.images.join(spec.flavour.name());
    let files = [kernel_file(vmm), "initrd.img", "rootfs.ext4"].map(|f| image.join(f));
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(FunctionError::NoImage(missing.clone()));
    }
    let [kernel, initrd, rootfs] = files;
    let work = config.state_dir.join("vms").join(format!("{}-{instance}", spec.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| FunctionError::Io(work.clone(), e))?;
    let policy = spec.policy_in(backend.config());
    let region_size = backend.config().region.size;
    let (mut created, mut placed) = (None, None);
    let region =
        backend.create_region_with(&spec.name, policy, |region| -> Result<Kick, VmmError> {
            let mut vm = VmSpec::new(format!("{}-{instance}", spec.name), &kernel, &work);
            vm.function = Some(spec.name.clone());
            vm.initrd = Some(initrd.clone());
            vm.cmdline = cmdline(spec);
            vm.disks = vec![
                Disk { path: rootfs.clone(), read_only: true },
                Disk { path: code.to_owned(), read_only: true },
            ];
            vm.memory_mib = spec.memory_mib;
            vm.vcpus = spec.vcpus;
            vm.region = Some(RegionSpec { path: region.path().to_owned(), size: region_size });
            vm.doorbell = true;
            vm.network = (spec.flavour == Flavour::Baseline).then_some(Network::User);
            vm.accel = accel(config);
            let mut vm = match (from, stage) {
                (Start::Boot, _) => vmm.create(&vm)?,
                (Start::Restore(snapshot), Some(stage)) => {
                    if vmm.region_on_restore() == RegionOnRestore::Kept {
                        let restoring = || vmm.restore(&vm, snapshot);
                        let (restored, during) = stage.alongside(region, restoring);
                        placed = during;
                        restored?
                    } else {
                        // The restore rewrote the region: what is in now goes in after it, into
                        // pages the restore already wrote, before the region is served.
                        let restored = vmm.restore(&vm, snapshot)?;
                        placed = stage.place(region);
                        restored
                    }
                }
                (Start::Restore(snapshot), None) => vmm.restore(&vm, snapshot)?,
            };
            let stream = vm.doorbell()?;
            created = Some(vm);
            Ok(Kick::Stream(stream.into()))
        });
    let region = region.map_err(|e| match e {
        BackendError::Attach { .. } => FunctionError::Boot {
            name: spec.name.clone(),
            reason: error_chain(&e),
            serial: String::new(),
        },
        other => other.into(),
    })?;
    let Some(vm) = created else {
        return Err(FunctionError::Boot {
            name: spec.name.clone(),
            reason: "no VM".into(),
            serial: String::new(),
        });
    };
    if let Some(placed) = placed {
        adopt(backend, &region.id, placed, "the restore");
    }
    if let Some(pid) = vm.info().pid {
        backend.vm_started(&region.id, pid);
    }
    let mut warm =
        Warm { region: region.id, vm: Mutex::new(vm), booted_in: Duration::ZERO, operator: None };
    let boot_stage = stage.filter(|_| matches!(from, Start::Boot));
    let ran = match (boot_stage, backend.region(&warm.region)) {
        (Some(stage), Ok(memory)) => {
            let (ran, placed) = stage.alongside(&memory, || run(backend, &warm, config, from));
            if let Some(placed) = placed {
                adopt(backend, &warm.region, placed, "the boot");
            }
            ran
        }
        _ => run(backend, &warm, config, from),
    };
    match ran {
        Ok(()) => {
            warm.booted_in = started.elapsed();
            let ms = warm.booted_in.as_millis() as u64;
            let how = if matches!(from, Start::Boot) { "booted" } else { "restored" };
            tracing::info!(function = %spec.name, region = %warm.region, ms, how, "Function VM ready");
            Ok(warm)
        }
        Err(reason) => {
            let serial = warm.vm().serial_tail(SERIAL_LINES);
            warm.stop(backend);
            Err(FunctionError::Boot { name: spec.name.clone(), reason, serial })
        }
    }
}

/// Publishes the inputs placed in region `id` during `when`.
fn adopt(backend: &Backend, id: &str, placed: Placed, when: &str) {
    match backend.adopt_staged(id, placed) {
        Ok(in_place) => tracing::info!(region = id, in_place, "Staged during {when}"),
        Err(e) => tracing::warn!(region = id, "Cannot publish the staged objects: {e}"),
    }
}

/// Runs the VM and waits for the runtime's ready; the error says what went wrong.
fn run(backend: &Backend, warm: &Warm, config: &VmConfig, from: Start<'_>) -> Result<(), String> {
    match from {
        Start::Boot => warm.vm().boot().map_err(|e| e.to_string())?,
        Start::Restore(_) => resume_restored(backend, warm)?,
    }
    wait_ready(backend, warm, config)
}

/// Resumes a restored VM whose region was served afresh, and wakes its runtime.
fn resume_restored(backend: &Backend, warm: &Warm) -> Result<(), String> {
    warm.vm().resume().map_err(|e| e.to_string())?;
    // The restored runtime sleeps on its doorbell with no flag left to say so.
    backend.kick_guest(&warm.region).map_err(|e| e.to_string())
}

/// Serves the region of a VM that virsh restored ([`VmState::Restored`]) afresh and resumes
/// it; returns once its runtime is ready at the new epoch.
pub fn reserve(backend: &Backend, warm: &Warm) -> Result<(), String> {
    let kick = {
        let mut vm = warm.vm();
        vm.pause().map_err(|e| e.to_string())?;
        Kick::Stream(vm.doorbell().map_err(|e| e.to_string())?.into())
    };
    let info = backend.reopen_region(&warm.region, kick).map_err(|e| error_chain(&e))?;
    if let Some(pid) = warm.vm().info().pid {
        backend.vm_started(&warm.region, pid);
    }
    resume_restored(backend, warm)?;
    wait_ready(backend, warm, &backend.config().vm)?;
    tracing::info!(region = %warm.region, epoch = info.epoch, "A VM restored by virsh serves again");
    Ok(())
}

/// Waits until the runtime of `warm` acknowledges its region's epoch.
pub fn wait_ready(backend: &Backend, warm: &Warm, config: &VmConfig) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(config.boot_timeout_secs);
    loop {
        if backend.region_ready(&warm.region).map_err(|e| e.to_string())? {
            return Ok(());
        }
        if !warm.alive() {
            return Err("the VM exited before its runtime was ready".into());
        }
        if Instant::now() > deadline {
            return Err(format!("the runtime was not ready after {} s", config.boot_timeout_secs));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// The image's kernel `vmm` boots: Cloud Hypervisor loads ELF kernels only (the PVH
/// `vmlinux` the image builder extracts), QEMU the bzImage.
fn kernel_file(vmm: &dyn Vmm) -> &'static str {
    match vmm.name() {
        nexus_plugin::cloud_hypervisor::NAME => "vmlinux",
        _ => "vmlinuz",
    }
}

/// The kernel command line of a function's VM: the console, the root disk, and what the
/// agent runs.
pub fn cmdline(spec: &FunctionSpec) -> String {
    format!(
        "console=ttyS0 root=/dev/vda ro panic=-1 quiet nexus.function={} nexus.handler=/var/task/{} nexus.timeout={}",
        spec.name, spec.handler, spec.timeout_secs
    )
}

fn accel(config: &VmConfig) -> AccelChoice {
    match config.accel.as_str() {
        "kvm" => AccelChoice::Kvm,
        "tcg" => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}
