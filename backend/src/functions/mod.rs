//! Functions: deployed code, a pool of warm VMs each, and invocations.
//!
//! Deploying packs the code into a disk image. An invocation leases an idle VM of its function,
//! or starts one more (a cold start: boot, or restore of the function's snapshot, with the
//! invocation's hinted inputs prefetched meanwhile) while the function has fewer than its
//! `max_vms`, else waits a bounded time for one to be released (see `pool.rs`). Each VM serves
//! one invocation at a time; an idle VM is stopped after `vm.keep_alive_secs`.
//!
//! **Timeouts.** The guest runtime ends a handler at the function's timeout and answers with
//! Lambda's timeout error. A VM whose guest has not answered `vm.timeout_grace_secs` after
//! that is recycled: stopped, its region released, so that nothing it holds (host buffers,
//! permits) can wedge later invocations, which start a new VM. Stopping or removing a function
//! never waits for its invocations: their VMs are stopped under them and they fail.
//!
//! **VMs virsh saved.** A VM an operator saves (`virsh save`) leaves the pool but keeps its
//! region, domain and doorbell; once `virsh restore` brings it back, the backend serves its
//! region afresh at a new epoch and it rejoins the pool (`follow_vms`, each second, from what
//! libvirt's events said). `fn stop`, `fn rm` and a backend that stops release it too.
//! **Operators' VMs** join a function's pool through libvirt's hook (`operator.rs`).

mod callee;
pub mod code_disk;
mod metrics;
mod operator;
mod pool;
mod requirements;
pub mod spec;
mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_channel::wire::ObjectRef;
use nexus_plugin::cloud_hypervisor::{ChOptions, CloudHypervisor, MemoryRestoreMode};
use nexus_plugin::libvirt::Libvirt;
use nexus_plugin::qemu::Qemu;
use nexus_plugin::{Snapshot, VmState, Vmm, VmmError};
use serde::Serialize;

use crate::backend::{Backend, BackendError};
use crate::config::VmmKind;
use crate::invoke::{InvokeError, Outcome};
use metrics::FunctionMetrics;
pub use operator::DomainAttached;
use pool::{Acquired, Lease, Leaving, Pool, Refused, Use, Vital};
pub use spec::{Flavour, FunctionSpec, SpecError};
pub use warm::{cmdline, WarmInfo};
use warm::{Start, Warm};

/// Errors of function operations.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The spec is invalid.
    #[error("Invalid function spec")]
    Spec(#[from] SpecError),
    /// The code disk could not be built.
    #[error(transparent)]
    Disk(#[from] code_disk::DiskError),
    /// No function of that name.
    #[error("No function {0}")]
    NoFunction(String),
    /// Every VM of the function stayed busy for the whole wait.
    #[error("All {max_vms} VMs of function {name} stayed busy for {waited:?}: raise its max_vms or retry")]
    Busy { name: String, max_vms: u32, waited: Duration },
    /// No VMM could be started.
    #[error("No VMM available: {0}")]
    NoVmm(String),
    /// A guest image file is missing.
    #[error("Guest image file {0} is missing: build images with `cargo xtask guest-image` and point vm.images at them")]
    NoImage(PathBuf),
    /// A file operation failed.
    #[error("Cannot prepare {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The VM did not come up.
    #[error("Function {name} did not start: {reason}\n--- console (tail) ---\n{serial}")]
    Boot { name: String, reason: String, serial: String },
    /// The VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A region operation failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An operator's libvirt domain cannot have a region; the message says why.
    #[error("{0}")]
    Domain(String),
}

#[derive(Debug)]
struct Deployed {
    spec: FunctionSpec,
    code_disk: PathBuf,
    vms: Pool<Warm>,
    /// Its VMs that virsh saved, until virsh restores them.
    saved: Mutex<Vec<Arc<Warm>>>,
    /// A snapshot of a warm VM of this function: cold starts restore it instead of booting.
    snapshot: Mutex<Option<Snapshot>>,
}

/// How an invocation found its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdStart {
    /// The VM booted.
    Booted(Duration),
    /// The VM was restored from the function's snapshot.
    Restored(Duration),
}

/// A function as `nexus fn ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    pub spec: FunctionSpec,
    /// The disk image of its code (a VM of an operator's mounts it as its second disk).
    pub code_disk: PathBuf,
    /// Its warm VMs, idle ones first, then those virsh saved.
    pub vms: Vec<WarmInfo>,
}

/// An invocation's outcome and whether it had to start a VM.
#[derive(Debug)]
pub struct Invoked {
    pub outcome: Outcome,
    pub cold_start: Option<ColdStart>,
    /// Objects prefetched for a cold start with hints: fetched whole by the end of the
    /// invocation.
    pub prefetched: usize,
}

/// The deployed functions.
#[derive(Debug)]
pub struct Functions {
    backend: Arc<Backend>,
    /// One adapter per VMM kind, started when a function first needs it.
    vmms: Mutex<BTreeMap<VmmKind, Arc<dyn Vmm>>>,
    /// The libvirt adapter, connected when a function or an operator's domain first needs it.
    libvirt: Mutex<Option<Arc<Libvirt>>>,
    /// Operators' VMs by domain name: (function, VM).
    domains: Mutex<BTreeMap<String, (String, Arc<Warm>)>>,
    deployed: Mutex<BTreeMap<String, Arc<Deployed>>>,
    instances: AtomicU64,
    metrics: FunctionMetrics,
}

impl Functions {
    /// The functions of `backend`.
    pub fn new(backend: Arc<Backend>) -> Self {
        Self {
            metrics: FunctionMetrics::register(backend.metrics()),
            backend,
            vmms: Mutex::default(),
            libvirt: Mutex::default(),
            domains: Mutex::default(),
            deployed: Mutex::default(),
            instances: AtomicU64::new(1),
        }
    }

    /// The adapter of `kind`, started on first use.
    fn vmm_for(&self, kind: VmmKind) -> Result<Arc<dyn Vmm>, FunctionError> {
        let mut vmms = lock(&self.vmms);
        if let Some(vmm) = vmms.get(&kind) {
            return Ok(vmm.clone());
        }
        let no_vmm = |e: VmmError| FunctionError::NoVmm(e.to_string());
        let vmm: Arc<dyn Vmm> = match kind {
            VmmKind::Qemu => {
                let cache = self.backend.config().vm.tcg_cache_mib;
                Arc::new(Qemu::new().map_err(no_vmm)?.with_tcg_cache(cache))
            }
            VmmKind::CloudHypervisor => {
                let options = ChOptions {
                    binary: self.backend.config().vm.cloud_hypervisor.clone(),
                    memory_restore_mode: MemoryRestoreMode::OnDemand,
                };
                Arc::new(CloudHypervisor::new(options).map_err(no_vmm)?)
            }
            VmmKind::Libvirt => {
                let libvirt = self.libvirt()?;
                // Domains of this state dir are a dead backend's: its VMs never outlive it.
                libvirt.remove_left_behind(&self.backend.config().vm.state_dir)?;
                libvirt
            }
        };
        vmms.insert(kind, vmm.clone());
        Ok(vmm)
    }

    /// The libvirt adapter, connected on first use.
    fn libvirt(&self) -> Result<Arc<Libvirt>, FunctionError> {
        let mut libvirt = lock(&self.libvirt);
        if let Some(connected) = libvirt.as_ref() {
            return Ok(connected.clone());
        }
        let connected = Arc::new(Libvirt::new().map_err(|e| FunctionError::NoVmm(e.to_string()))?);
        *libvirt = Some(connected.clone());
        Ok(connected)
    }

    /// Deploys (or replaces) a function within what the config allows; blocking: it builds
    /// the code disk.
    pub fn deploy(&self, spec: FunctionSpec) -> Result<FunctionInfo, FunctionError> {
        let spec = spec.confine(self.backend.config())?;
        spec.validate()?;
        let dir = self.backend.config().vm.state_dir.join("functions").join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| FunctionError::Io(dir.clone(), e))?;
        let packages = self.backend.config().vm.state_dir.join("packages");
        let code_disk = code_disk::build(&spec, &dir, &packages)?;
        // The image is named by its content: the same spec and image is the same function.
        if let Some(same) =
            self.get(&spec.name).ok().filter(|d| d.spec == spec && d.code_disk == code_disk)
        {
            tracing::info!(function = %spec.name, "Function unchanged; its VMs keep running");
            return Ok(same.info());
        }
        let deployed = Arc::new(Deployed {
            spec: spec.clone(),
            code_disk,
            vms: Pool::default(),
            saved: Mutex::default(),
            snapshot: Mutex::default(),
        });
        let info = deployed.info();
        if let Some(old) = self.lock().insert(spec.name.clone(), deployed) {
            self.stop_all(&old, true);
        }
        tracing::info!(function = %spec.name, flavour = spec.flavour.name(), "Function deployed");
        Ok(info)
    }

    /// Runs one invocation in an idle VM of the function, or in one it starts (restoring its
    /// snapshot if it has one). On such a cold start the objects named in `hints` are fetched
    /// while the VM starts and staged for the invocation; a wrong hint costs only its fetch.
    pub async fn invoke(
        &self,
        name: &str,
        event: &[u8],
        hints: &[ObjectRef],
    ) -> Result<Invoked, FunctionError> {
        let deployed = self.get(name)?;
        let config = self.backend.config();
        let policy = deployed.spec.policy_in(config);
        let (lease, cold_start, staged) = match self.acquire(&deployed).await? {
            Acquired::Warm(lease) => (lease, None, Vec::new()),
            Acquired::Start => {
                let objects = self.backend.prefetch(&policy, hints);
                let stage =
                    warm::Stage { backend: &self.backend, policy: &policy, objects: &objects };
                let stage = (!objects.is_empty()).then_some(&stage);
                let (lease, cold_start) = self.start_leased(&deployed, stage).await?;
                (lease, Some(cold_start), objects)
            }
        };
        let timeout = Duration::from_secs(deployed.spec.timeout_secs);
        let deadline = timeout + Duration::from_secs(config.vm.timeout_grace_secs);
        let outcome =
            self.backend.invoke_region(&lease.vm.region, event, deadline, staged.clone()).await;
        let prefetched = staged.iter().filter(|object| object.is_whole()).count();
        if let Err(BackendError::Invoke { source: InvokeError::Timeout(_), .. }) = &outcome {
            tracing::warn!(
                function = name,
                region = %lease.vm.region,
                "The guest did not answer within its timeout and grace: recycling its VM"
            );
            self.retire(&deployed, lease);
        } else {
            deployed.vms.release(lease);
        }
        Ok(Invoked { outcome: outcome?, cold_start, prefetched })
    }

    /// An idle VM of `deployed`, or room to start one; stops the dead idle VMs it finds.
    async fn acquire(&self, deployed: &Deployed) -> Result<Acquired<Warm>, FunctionError> {
        let config = self.backend.config();
        let max_vms = deployed.spec.max_vms_in(config);
        let wait = Duration::from_secs(config.vm.queue_wait_secs);
        let mut dead = Vec::new();
        let acquired = deployed.vms.acquire(max_vms, wait, &mut dead).await;
        if !dead.is_empty() {
            tokio::task::block_in_place(|| {
                dead.into_iter().for_each(|w| self.set_aside(deployed, w))
            });
        }
        acquired.map_err(|refused| match refused {
            Refused::Busy { max_vms, waited } => {
                FunctionError::Busy { name: deployed.spec.name.clone(), max_vms, waited }
            }
            Refused::Closed => FunctionError::NoFunction(deployed.spec.name.clone()),
        })
    }

    /// Starts the VM a [`Acquired::Start`] made room for, leased to the caller.
    async fn start_leased(
        &self,
        deployed: &Deployed,
        stage: Option<&warm::Stage<'_>>,
    ) -> Result<(Lease<Warm>, ColdStart), FunctionError> {
        let snapshot = lock(&deployed.snapshot).clone();
        let warm = match self.start(deployed, snapshot.as_ref(), stage) {
            Ok(warm) => warm,
            Err(e) => {
                deployed.vms.start_failed();
                return Err(e);
            }
        };
        let cold_start = match snapshot {
            Some(_) => ColdStart::Restored(warm.booted_in),
            None => ColdStart::Booted(warm.booted_in),
        };
        match deployed.vms.started(warm) {
            Ok(lease) => Ok((lease, cold_start)),
            Err(orphan) => {
                tokio::task::block_in_place(|| orphan.stop(&self.backend));
                Err(FunctionError::NoFunction(deployed.spec.name.clone()))
            }
        }
    }

    /// Starts a VM for `deployed`: restores `snapshot` if given, else boots (see `warm::start`
    /// for `stage`).
    fn start(
        &self,
        deployed: &Deployed,
        snapshot: Option<&Snapshot>,
        stage: Option<&warm::Stage<'_>>,
    ) -> Result<Warm, FunctionError> {
        let instance = self.instances.fetch_add(1, Ordering::Relaxed);
        let from = snapshot.map_or(Start::Boot, Start::Restore);
        // Starting blocks for seconds (the VMM, the guest; the first use of an adapter probes
        // its VMM): keep it off the other async workers, which meanwhile run the prefetches.
        tokio::task::block_in_place(|| {
            let vmm = self.vmm_for(deployed.spec.vmm_in(self.backend.config()))?;
            warm::start(
                &self.backend,
                vmm.as_ref(),
                &deployed.spec,
                &deployed.code_disk,
                instance,
                from,
                stage,
            )
        })
    }

    /// Takes a leased VM out of its function's pool and stops it.
    fn retire(&self, deployed: &Deployed, lease: Lease<Warm>) {
        if let Some(warm) = deployed.vms.retire(lease) {
            tokio::task::block_in_place(|| self.stop_vm(&warm));
        }
    }

    /// Snapshots a VM of the function (starting one if none is idle), which then runs on:
    /// later cold starts restore the snapshot instead of booting. The VM is leased meanwhile,
    /// so no invocation runs in it, and its runtime waits for the next one.
    pub async fn snapshot(&self, name: &str) -> Result<Snapshot, FunctionError> {
        let deployed = self.get(name)?;
        let lease = match self.acquire(&deployed).await? {
            Acquired::Warm(lease) if lease.vm.operator.is_some() => {
                let domain = lease.vm.operator.clone().unwrap_or_default();
                deployed.vms.release(lease);
                let reason = format!(
                    "Function {name}'s idle VM is the operator's domain {domain}, which Nexus \
                     does not snapshot: snapshot the function while that domain is busy or gone"
                );
                return Err(FunctionError::Domain(reason));
            }
            Acquired::Warm(lease) => lease,
            Acquired::Start => self.start_leased(&deployed, None).await?.0,
        };
        let dir = self.backend.config().vm.state_dir.join("functions").join(name).join("snapshot");
        let _ = std::fs::remove_dir_all(&dir);
        let taken = tokio::task::block_in_place(|| -> Result<Snapshot, FunctionError> {
            let mut vm = lease.vm.vm();
            vm.pause()?;
            let snapshot = vm.snapshot(&dir);
            vm.resume()?;
            Ok(snapshot?)
        });
        match taken {
            Ok(snapshot) => {
                deployed.vms.release(lease);
                *lock(&deployed.snapshot) = Some(snapshot.clone());
                tracing::info!(function = name, dir = %dir.display(), "Function snapshot taken");
                Ok(snapshot)
            }
            Err(e) => {
                self.retire(&deployed, lease);
                Err(e)
            }
        }
    }

    /// Stops the function's VMs, busy ones included (their invocations fail), and those virsh
    /// saved; the next invocation is a cold start. Operators' VMs stay.
    pub fn stop_vms(&self, name: &str) -> Result<(), FunctionError> {
        self.stop_all(&*self.get(name)?, false);
        Ok(())
    }

    /// Every function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        let deployed: Vec<Arc<Deployed>> = self.lock().values().cloned().collect();
        deployed.iter().map(|d| d.info()).collect()
    }

    /// Removes a function and stops its VMs (their invocations fail); operators' VMs lose
    /// their regions (their domains are the operators' to stop).
    pub fn remove(&self, name: &str) -> Result<(), FunctionError> {
        let deployed =
            self.lock().remove(name).ok_or_else(|| FunctionError::NoFunction(name.into()))?;
        self.stop_all(&deployed, true);
        Ok(())
    }

    /// Brings the functions' metrics up to date (before a scrape).
    pub fn refresh_metrics(&self) {
        let deployed = self.lock();
        self.metrics.set(deployed.iter().map(|(name, d)| (name.as_str(), d.vms.counts())));
    }

    /// Stops the VMs idle for longer than `vm.keep_alive_secs` and removes the idle VMs that
    /// died (their regions with them); sets aside those virsh saved, and serves again those
    /// virsh restored. Returns how many VMs left the pool.
    pub fn follow_vms(&self) -> usize {
        let keep_alive = Duration::from_secs(self.backend.config().vm.keep_alive_secs);
        let cut = Instant::now().checked_sub(keep_alive);
        let deployed: Vec<Arc<Deployed>> = self.lock().values().cloned().collect();
        let mut left = 0;
        for function in &deployed {
            let idle = cut.map(|cut| function.vms.take_idle_since(cut)).unwrap_or_default();
            left += idle.len();
            for warm in idle {
                if warm.alive() {
                    tracing::info!(region = %warm.region, "Stopping a VM idle for {keep_alive:?}");
                    self.stop_vm(&warm);
                } else {
                    self.set_aside(function, warm);
                }
            }
            self.follow_saved(function);
        }
        left
    }

    /// Keeps a VM that left the pool because virsh saved it, else stops it.
    fn set_aside(&self, deployed: &Deployed, warm: Leaving<'_, Warm>) {
        match warm.state() {
            VmState::Saved | VmState::Restored => {
                tracing::info!(region = %warm.region, "virsh saved a VM: its region waits for its restore");
                lock(&deployed.saved).push(Arc::clone(&warm));
            }
            state => {
                tracing::info!(region = %warm.region, %state, "A VM ended outside Nexus: releasing its region");
                self.stop_vm(&warm);
            }
        }
    }

    /// Serves again the saved VMs of `deployed` that virsh restored (they rejoin the pool), and
    /// stops those that ended otherwise.
    fn follow_saved(&self, deployed: &Deployed) {
        let saved = std::mem::take(&mut *lock(&deployed.saved));
        for warm in saved {
            match warm.state() {
                VmState::Saved => lock(&deployed.saved).push(warm),
                VmState::Restored => match warm::reserve(&self.backend, &warm) {
                    Ok(()) => {
                        if let Err(closed) = deployed.vms.adopt(warm) {
                            self.stop_vm(&closed);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(region = %warm.region, "Cannot serve a restored VM again: {reason}");
                        self.stop_vm(&warm);
                    }
                },
                _ => self.stop_vm(&warm),
            }
        }
    }

    /// Stops every function's VMs (the backend is stopping).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.lock());
        for deployed in all.values() {
            self.stop_all(deployed, true);
        }
    }

    /// Stops every VM of `deployed` but operators'; with `close`, for good, operators' VMs
    /// included.
    fn stop_all(&self, deployed: &Deployed, close: bool) {
        let saved = std::mem::take(&mut *lock(&deployed.saved));
        for warm in deployed.vms.take_all(close) {
            self.stop_vm(&warm);
        }
        saved.iter().for_each(|warm| self.stop_vm(warm));
        if close {
            // Operators' VMs whose guests are not ready yet are in no pool.
            let name = &deployed.spec.name;
            let waiting: Vec<Arc<Warm>> = lock(&self.domains)
                .values()
                .filter(|(f, _)| f == name)
                .map(|(_, w)| w.clone())
                .collect();
            waiting.iter().for_each(|warm| self.stop_vm(warm));
        }
    }

    /// Stops a VM and releases its region; an operator's VM is forgotten too.
    fn stop_vm(&self, warm: &Arc<Warm>) {
        warm.stop(&self.backend);
        if let Some(domain) = &warm.operator {
            let mut domains = lock(&self.domains);
            if domains.get(domain).is_some_and(|(_, held)| Arc::ptr_eq(held, warm)) {
                domains.remove(domain);
            }
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Deployed>, FunctionError> {
        self.lock().get(name).cloned().ok_or_else(|| FunctionError::NoFunction(name.into()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Deployed>>> {
        lock(&self.deployed)
    }
}

impl Deployed {
    fn info(&self) -> FunctionInfo {
        let pooled = self.vms.vms().into_iter().map(|(warm, now)| warm.info(now));
        let saved = lock(&self.saved).iter().map(|warm| warm.info(Use::Idle)).collect::<Vec<_>>();
        FunctionInfo {
            spec: self.spec.clone(),
            code_disk: self.code_disk.clone(),
            vms: pooled.chain(saved).collect(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
