//! Functions: deployed code, one warm VM each, and invocations.
//!
//! Deploying packs the code into a disk image; the first invocation boots a VM (cold start)
//! which then stays warm and serves the function's invocations one at a time. Removing a
//! function, or stopping the backend, stops its VM.

mod callee;
mod code_disk;
mod requirements;
pub mod spec;
mod warm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_channel::wire::ObjectRef;
use nexus_plugin::qemu::Qemu;
use nexus_plugin::{Snapshot, Vmm, VmmError};
use serde::Serialize;

use crate::backend::{Backend, BackendError};
use crate::invoke::Outcome;
pub use spec::{Flavour, FunctionSpec, SpecError};
pub use warm::WarmInfo;
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
}

#[derive(Debug)]
struct Deployed {
    spec: FunctionSpec,
    code_disk: PathBuf,
    warm: tokio::sync::Mutex<Option<Warm>>,
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
    pub warm: Option<WarmInfo>,
}

/// An invocation's outcome and whether it had to start a VM.
#[derive(Debug)]
pub struct Invoked {
    pub outcome: Outcome,
    pub cold_start: Option<ColdStart>,
    /// Objects prefetched while the VM started (a cold start with hints).
    pub prefetched: usize,
}

/// The deployed functions.
#[derive(Debug)]
pub struct Functions {
    backend: Arc<Backend>,
    vmm: Result<Box<dyn Vmm>, String>,
    deployed: Mutex<BTreeMap<String, Arc<Deployed>>>,
    instances: AtomicU64,
}

impl Functions {
    /// The functions of `backend`; VMs run on QEMU.
    pub fn new(backend: Arc<Backend>) -> Self {
        let vmm = Qemu::new().map(|q| Box::new(q) as Box<dyn Vmm>).map_err(|e| e.to_string());
        Self { backend, vmm, deployed: Mutex::default(), instances: AtomicU64::new(1) }
    }

    /// Deploys (or replaces) a function; blocking: it builds the code disk.
    pub fn deploy(&self, spec: FunctionSpec) -> Result<FunctionInfo, FunctionError> {
        spec.validate()?;
        let dir = self.backend.config().vm.state_dir.join("functions").join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| FunctionError::Io(dir.clone(), e))?;
        let packages = self.backend.config().vm.state_dir.join("packages");
        let code_disk = code_disk::build(&spec, &dir, &packages)?;
        // The image is named by its content: the same spec and image is the same function.
        if let Some(same) =
            self.get(&spec.name).ok().filter(|d| d.spec == spec && d.code_disk == code_disk)
        {
            tracing::info!(function = %spec.name, "Function unchanged; its VM keeps running");
            let warm = same.warm.try_lock().ok().and_then(|w| w.as_ref().map(Warm::info));
            return Ok(FunctionInfo { spec, warm });
        }
        let deployed = Arc::new(Deployed {
            spec: spec.clone(),
            code_disk,
            warm: Default::default(),
            snapshot: Mutex::default(),
        });
        if let Some(old) = self.lock().insert(spec.name.clone(), deployed) {
            self.stop_warm(&old);
        }
        tracing::info!(function = %spec.name, flavour = spec.flavour.name(), "Function deployed");
        Ok(FunctionInfo { spec, warm: None })
    }

    /// Runs one invocation, starting the function's VM first if it has none (restoring its
    /// snapshot if it has one). On such a cold start the objects named in `hints` are fetched
    /// while the VM starts and staged for the invocation; a wrong hint costs only its fetch.
    pub async fn invoke(
        &self,
        name: &str,
        event: &[u8],
        hints: &[ObjectRef],
    ) -> Result<Invoked, FunctionError> {
        let deployed = self.get(name)?;
        let mut warm = deployed.warm.lock().await;
        let (mut cold_start, mut staged) = (None, Vec::new());
        if !warm.as_ref().is_some_and(Warm::alive) {
            if let Some(dead) = warm.take() {
                dead.stop(&self.backend);
            }
            let policy = deployed.spec.policy_in(self.backend.config());
            let fetching = self.backend.prefetch(&policy, hints);
            let snapshot = lock(&deployed.snapshot).clone();
            let started = self.start(&deployed, snapshot.as_ref())?;
            cold_start = Some(match snapshot {
                Some(_) => ColdStart::Restored(started.booted_in),
                None => ColdStart::Booted(started.booted_in),
            });
            staged = fetching.await;
            *warm = Some(started);
        }
        let region = warm.as_ref().map(|w| w.region.clone()).unwrap_or_default();
        let deadline = Duration::from_secs(deployed.spec.timeout_secs);
        let prefetched = staged.len();
        let outcome = self.backend.invoke_region(&region, event, deadline, staged).await?;
        Ok(Invoked { outcome, cold_start, prefetched })
    }

    /// Starts a VM for `deployed`: restores `snapshot` if given, else boots.
    fn start(
        &self,
        deployed: &Deployed,
        snapshot: Option<&Snapshot>,
    ) -> Result<Warm, FunctionError> {
        let vmm = self.vmm.as_ref().map_err(|e| FunctionError::NoVmm(e.clone()))?;
        let instance = self.instances.fetch_add(1, Ordering::Relaxed);
        let from = snapshot.map_or(Start::Boot, Start::Restore);
        // Starting blocks for seconds (QEMU, the guest): keep it off the other async workers,
        // which meanwhile run the prefetches.
        tokio::task::block_in_place(|| {
            warm::start(
                &self.backend,
                vmm.as_ref(),
                &deployed.spec,
                &deployed.code_disk,
                instance,
                from,
            )
        })
    }

    /// Snapshots the function's warm VM (starting one if needed), which then runs on: later
    /// cold starts restore the snapshot instead of booting. The channel is quiet meanwhile:
    /// invocations of the function wait for the snapshot, and its runtime waits for the next.
    pub async fn snapshot(&self, name: &str) -> Result<Snapshot, FunctionError> {
        let deployed = self.get(name)?;
        let mut warm = deployed.warm.lock().await;
        if !warm.as_ref().is_some_and(Warm::alive) {
            let existing = lock(&deployed.snapshot).clone();
            *warm = Some(self.start(&deployed, existing.as_ref())?);
        }
        let vm = &mut warm.as_mut().ok_or_else(|| FunctionError::NoFunction(name.into()))?.vm;
        let dir = self.backend.config().vm.state_dir.join("functions").join(name).join("snapshot");
        let _ = std::fs::remove_dir_all(&dir);
        let snapshot = tokio::task::block_in_place(|| -> Result<Snapshot, FunctionError> {
            vm.pause()?;
            let snapshot = vm.snapshot(&dir);
            vm.resume()?;
            Ok(snapshot?)
        })?;
        *lock(&deployed.snapshot) = Some(snapshot.clone());
        tracing::info!(function = name, dir = %dir.display(), "Function snapshot taken");
        Ok(snapshot)
    }

    /// Stops the function's warm VM, if any; the next invocation is a cold start.
    pub async fn stop_vm(&self, name: &str) -> Result<(), FunctionError> {
        let deployed = self.get(name)?;
        if let Some(warm) = deployed.warm.lock().await.take() {
            tokio::task::block_in_place(|| warm.stop(&self.backend));
        }
        Ok(())
    }

    /// Every function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        let deployed: Vec<Arc<Deployed>> = self.lock().values().cloned().collect();
        deployed
            .iter()
            .map(|d| FunctionInfo {
                spec: d.spec.clone(),
                warm: d.warm.try_lock().ok().and_then(|w| w.as_ref().map(Warm::info)),
            })
            .collect()
    }

    /// Removes a function and stops its VM.
    pub async fn remove(&self, name: &str) -> Result<(), FunctionError> {
        let deployed =
            self.lock().remove(name).ok_or_else(|| FunctionError::NoFunction(name.into()))?;
        if let Some(warm) = deployed.warm.lock().await.take() {
            tokio::task::block_in_place(|| warm.stop(&self.backend));
        }
        Ok(())
    }

    /// Stops every function's VM (the backend is stopping).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.lock());
        for deployed in all.values() {
            self.stop_warm(deployed);
        }
    }

    fn stop_warm(&self, deployed: &Deployed) {
        if let Some(warm) = deployed.warm.try_lock().ok().and_then(|mut w| w.take()) {
            warm.stop(&self.backend);
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Deployed>, FunctionError> {
        self.lock().get(name).cloned().ok_or_else(|| FunctionError::NoFunction(name.into()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Deployed>>> {
        lock(&self.deployed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
