//! The backend: the regions it serves and the services they share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nexus_channel::layout::host_state;
use nexus_channel::notify::Kick;
use nexus_channel::region::RegionError;
use nexus_channel::wire::ObjectRef;
use nexus_channel::Region;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::arriving::Arriving;
use crate::cache::ObjectCache;
use crate::config::{is_function_name, Config};
use crate::invoke::{InvokeError, Outcome};
use crate::metrics::Metrics;
use crate::observe::{Observer, ProbeStatus};
use crate::ops;
use crate::ops::Context;
use crate::policy::{Access, Policy};
use crate::region_dir::{RegionDir, RegionDirError};
use crate::serve::{serve, Shared};
use crate::served::{Placed, ServedRegion};
use crate::spool::{Spool, SpoolError};
use crate::storage::{Storage, StorageError};

/// Errors of backend operations.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The storage configuration is unusable.
    #[error("Invalid storage configuration")]
    Storage(#[from] StorageError),
    /// The write-back spool cannot be used.
    #[error("Cannot open the write-back spool")]
    Spool(#[from] SpoolError),
    /// The region directory cannot be used safely.
    #[error(transparent)]
    RegionDir(#[from] RegionDirError),
    /// A function name that cannot name a region.
    #[error("Invalid function name {0:?}: use lowercase letters, digits, '-' and '_'")]
    FunctionName(String),
    /// No region with this id.
    #[error("No region {0}")]
    NoRegion(String),
    /// The region file could not be set up.
    #[error("Cannot set up region {id}")]
    Region {
        id: String,
        #[source]
        source: RegionError,
    },
    /// The region file could not be created.
    #[error("Cannot create region {id}")]
    RegionFile {
        id: String,
        #[source]
        source: RegionDirError,
    },
    /// An invocation failed.
    #[error("Invocation on region {id} failed")]
    Invoke {
        id: String,
        #[source]
        source: InvokeError,
    },
    /// Whatever serves the region (a VMM) could not be attached.
    #[error("Cannot attach region {id}")]
    Attach {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The serving thread could not be started.
    #[error("Cannot start the serving thread of region {id}")]
    Thread {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// A region as the control API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionInfo {
    pub id: String,
    pub function: String,
    pub path: PathBuf,
    pub state: &'static str,
    /// The channel's epoch: a new one each time the region is served afresh.
    pub epoch: u64,
    pub open_streams: usize,
    /// Invocations sent to the guest and not answered yet.
    pub invocations_in_flight: usize,
}

#[derive(Debug)]
struct Attached {
    served: Arc<ServedRegion>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The serving thread's kernel thread id (for the probes' attribution).
    serving_tid: Option<u32>,
}

impl Attached {
    fn info(&self) -> RegionInfo {
        RegionInfo {
            id: self.served.id.clone(),
            function: self.served.function.clone(),
            path: self.path.clone(),
            state: if self.served.is_faulted() { "faulted" } else { "serving" },
            epoch: self.served.epoch(),
            open_streams: self.served.streams.len(),
            invocations_in_flight: self.served.invocations.in_flight(),
        }
    }

    /// Stops serving and removes the region file.
    fn detach(self) {
        let path = self.path.clone();
        self.stop_serving();
        let _ = std::fs::remove_file(path);
    }

    /// Stops the serving thread; invocations in flight fail and the guest sees `GONE`.
    fn stop_serving(mut self) -> Arc<ServedRegion> {
        self.stop.store(true, Ordering::Release);
        let _ = self.served.notifier.wake_self();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.served.invocations.abandon();
        let _ = self.served.set_state(host_state::GONE);
        self.served
    }
}

/// The always-on backend.
#[derive(Debug)]
pub struct Backend {
    config: Config,
    shared: Arc<Shared>,
    /// Where region files are created, held (and locked) while the backend runs.
    region_dir: RegionDir,
    regions: Mutex<BTreeMap<String, Attached>>,
    observer: Arc<Observer>,
    next_id: AtomicU64,
    /// Epochs handed to regions: they start at the wall clock in milliseconds, so they grow
    /// across backend restarts too.
    next_epoch: AtomicU64,
}

impl Backend {
    /// A backend for `config` whose I/O runs on `runtime`.
    pub fn new(config: Config, runtime: Handle) -> Result<Self, BackendError> {
        let region_dir = RegionDir::open(&config.region.dir, config.region.group.as_deref())?;
        let stale = region_dir.remove_stale()?;
        if !stale.is_empty() {
            let (count, dir) = (stale.len(), region_dir.path().display());
            let message = format!("Removed {count} region files an earlier backend left in {dir}");
            tracing::info!(files = ?stale, "{message}");
        }
        let storage = Arc::new(Storage::new(&config.storage)?);
        let cache = Arc::new(ObjectCache::new(&config.cache));
        let metrics = Metrics::new();
        let spool = if config.writeback.enabled {
            Some(Spool::start(&config, storage.clone(), cache.clone(), &metrics, &runtime)?)
        } else {
            None
        };
        let observer = Arc::new(Observer::start(&config.probes));
        metrics.register_collector(observer.clone());
        let context = Context { storage, cache, metrics, spool, invoker: Default::default() };
        if !context.storage.keeps_attributes() {
            tracing::info!("The local-directory store does not keep ContentType or Metadata");
        }
        let shared = Arc::new(Shared {
            context,
            runtime,
            inflight: Arc::new(Semaphore::new(config.limits.max_inflight)),
            per_region: config.limits.max_inflight_per_region,
        });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let first_epoch = now.map_or(1, |d| d.as_millis() as u64);
        Ok(Self {
            config,
            shared,
            region_dir,
            regions: Mutex::default(),
            observer,
            next_id: AtomicU64::new(1),
            next_epoch: AtomicU64::new(first_epoch),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Lets guests `Invoke` functions through `invoker` (set once; later calls are ignored).
    pub fn set_invoker(&self, invoker: std::sync::Weak<dyn crate::ops::invoke::Invoker>) {
        let _ = self.shared.context.invoker.set(invoker);
    }

    /// The metrics of every region.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.context.metrics
    }

    /// Bytes in the object cache.
    pub fn cache_bytes(&self) -> u64 {
        self.shared.context.cache.bytes()
    }

    /// Creates a region for `function`, starts serving it and returns where it is; both sides
    /// are on this host and sleep on a shared futex.
    pub fn create_region(&self, function: &str) -> Result<RegionInfo, BackendError> {
        let policy = self.config.policy_for(function).clone();
        self.create_region_with(function, policy, |_: &Region| {
            Ok::<_, std::convert::Infallible>(Kick::Futex)
        })
    }

    /// Creates a region for `function`; `attach` then gets it (e.g. starts a VMM with its file)
    /// and answers how the guest is woken; then the region is served.
    pub fn create_region_with<E>(
        &self,
        function: &str,
        policy: Policy,
        attach: impl FnOnce(&Region) -> Result<Kick, E>,
    ) -> Result<RegionInfo, BackendError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if !is_function_name(function) {
            return Err(BackendError::FunctionName(function.chars().take(64).collect()));
        }
        let id = format!("{function}-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (file, path) = self
            .region_dir
            .create(&format!("{id}.region"))
            .map_err(|source| BackendError::RegionFile { id: id.clone(), source })?;
        let region_err = |source| BackendError::Region { id: id.clone(), source };
        let geometry = self.config.region.geometry();
        let created = Region::create_in_file(&file, &path, &geometry);
        drop(file);
        let region = match created {
            Ok(region) => Arc::new(region),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(region_err(e));
            }
        };
        let kick = match attach(&region) {
            Ok(kick) => kick,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(BackendError::Attach { id, source: Box::new(e) });
            }
        };
        let served = self.serve(id, function.to_owned(), region, path.clone(), policy, kick);
        if served.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        served
    }

    /// Serves region `id` afresh over the same file, at a new epoch, waking its guest by
    /// `kick`: its VM was restored outside Nexus (`virsh restore`), which wrote back what the
    /// region held when it was saved. The old serving stops first (its invocations fail).
    pub fn reopen_region(&self, id: &str, kick: Kick) -> Result<RegionInfo, BackendError> {
        let attached = self.lock().remove(id).ok_or_else(|| BackendError::NoRegion(id.into()))?;
        let path = attached.path.clone();
        let old = attached.stop_serving();
        self.observer.forget(id);
        let (function, policy) = (old.function.clone(), old.policy.clone());
        let served =
            self.serve(id.to_owned(), function, old.region.clone(), path.clone(), policy, kick);
        if served.is_err() {
            let _ = std::fs::remove_file(&path);
            self.metrics().set_regions(self.lock().len() as i64);
        }
        served
    }

    /// Serves `region` (file `path`) as region `id` from a clean header at a new epoch.
    fn serve(
        &self,
        id: String,
        function: String,
        region: Arc<Region>,
        path: PathBuf,
        policy: Policy,
        kick: Kick,
    ) -> Result<RegionInfo, BackendError> {
        let region_err = |source| BackendError::Region { id: id.clone(), source };
        let geometry = self.config.region.geometry();
        // Whatever attached may have written the region (a VM restored from a snapshot brings
        // its old contents back, writing every page): free the pages that hold only zeros
        // (a body the guest still holds keeps its bytes), then start from a clean header and
        // empty rings.
        let data = geometry.data_offset as usize;
        region.discard_zero_pages(data, region.len() - data).map_err(region_err)?;
        region.initialize(&geometry).map_err(region_err)?;
        let spin = Duration::from_micros(self.config.region.spin_us);
        let served = Arc::new(ServedRegion::new(
            id.clone(),
            function.clone(),
            region,
            geometry,
            policy,
            spin,
            kick,
        ));
        served.open_channel(self.next_epoch.fetch_add(1, Ordering::Relaxed)).map_err(region_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tid_sender, tid) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("nexus-{id}"))
            .spawn({
                let (served, shared, stop) = (served.clone(), self.shared.clone(), stop.clone());
                move || {
                    // SAFETY: gettid has no preconditions and cannot fail.
                    let _ = tid_sender.send(unsafe { libc::gettid() } as u32);
                    serve(served, shared, stop)
                }
            })
            .map_err(|source| BackendError::Thread { id: id.clone(), source })?;
        let serving_tid = tid.recv().ok();
        let attached = Attached { served, path, stop, thread: Some(thread), serving_tid };
        let info = attached.info();
        let mut regions = self.lock();
        regions.insert(id, attached);
        self.metrics().set_regions(regions.len() as i64);
        tracing::info!(region = %info.id, function, path = %info.path.display(), epoch = info.epoch, "Region served");
        Ok(info)
    }

    /// Whether the guest of region `id` is ready for invocations.
    pub fn region_ready(&self, id: &str) -> Result<bool, BackendError> {
        Ok(self.served(id)?.guest_ready())
    }

    /// Wakes the guest of region `id` whether or not it said it sleeps (after a restore).
    pub fn kick_guest(&self, id: &str) -> Result<(), BackendError> {
        let served = self.served(id)?;
        served.notifier.kick_peer().map_err(|source| BackendError::Region { id: id.into(), source })
    }

    /// Starts fetching the objects `hints` name at once, on other workers, so that they
    /// arrive while the caller does something else (starts a VM); returns them as they
    /// arrive. Only objects `policy` lets the function read are fetched, each of at most its
    /// size limit and of what the backend would keep of it (the staging area, or the cache's
    /// largest object). A hint that is skipped or fails costs only its fetch.
    pub fn prefetch(self: &Arc<Self>, policy: &Policy, hints: &[ObjectRef]) -> Vec<Arc<Arriving>> {
        let kept =
            self.config.region.geometry().staging_size.max(self.config.cache.max_object_bytes);
        let max_bytes = policy.max_object_size.min(kept);
        hints
            .iter()
            .filter(|hint| match policy.check(Access::Read, &hint.bucket, &hint.key) {
                Ok(()) => true,
                Err(denied) => {
                    tracing::info!(bucket = %hint.bucket, key = %hint.key, "Prefetch hint skipped: {denied}");
                    false
                }
            })
            .map(|hint| {
                let object = Arriving::new(&hint.bucket, &hint.key);
                let (backend, fetching) = (self.clone(), object.clone());
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let context = &backend.shared.context;
                    let fetched = ops::get::fetch_into(context, &fetching, max_bytes).await;
                    let (bucket, key) = (&fetching.bucket, &fetching.key);
                    match &fetched {
                        Ok(()) => {
                            let ms = started.elapsed().as_millis() as u64;
                            tracing::info!(%bucket, %key, ms, "Prefetched");
                        }
                        Err(e) => tracing::info!(%bucket, %key, "Prefetch hint not fetched: {}", e.message),
                    }
                    fetching.finish(fetched.map_err(|e| e.message));
                });
                object
            })
            .collect()
    }

    /// Copies those of prefetched `objects` that arrived into the staging area of `region`
    /// while its VM starts, before its first invocation (see [`Placed`]). Objects with a write
    /// waiting in the spool are left out, as [`Backend::invoke_region`] does.
    /// [`Backend::adopt_staged`] publishes them once the region is served.
    pub fn place_staged(
        &self,
        region: &Region,
        policy: &Policy,
        objects: &[Arc<Arriving>],
    ) -> Result<Placed, RegionError> {
        let spool = self.shared.context.spool.as_ref();
        let fresh =
            objects.iter().filter(|o| !spool.is_some_and(|s| s.has_pending(&o.bucket, &o.key)));
        Placed::place(region, &self.config.region.geometry(), policy, fresh)
    }

    /// Publishes the objects [`Backend::place_staged`] put into region `id`; how many the guest
    /// can read in place.
    pub fn adopt_staged(&self, id: &str, placed: Placed) -> Result<usize, BackendError> {
        let served = self.served(id)?;
        served.adopt(placed).map_err(|source| BackendError::Region { id: id.into(), source })
    }

    /// The memory of region `id`.
    pub fn region(&self, id: &str) -> Result<Arc<Region>, BackendError> {
        Ok(self.served(id)?.region.clone())
    }

    /// The policy of region `id`'s function.
    pub fn region_policy(&self, id: &str) -> Result<Policy, BackendError> {
        Ok(self.served(id)?.policy.clone())
    }

    /// The VM of region `id` runs as process `pid`: the probes (when on) account its CPU and
    /// memory, and its serving thread's CPU, to it until the region is removed.
    pub fn vm_started(&self, id: &str, pid: u32) {
        let attached = self.lock().get(id).map(|a| (a.served.function.clone(), a.serving_tid));
        if let Some((function, serving_tid)) = attached {
            self.observer.track(id, &function, pid, serving_tid);
        }
    }

    /// Whether the eBPF probes are on, and what they see.
    pub fn probe_status(&self) -> &ProbeStatus {
        self.observer.status()
    }

    /// Stops serving region `id` and removes its file.
    pub fn remove_region(&self, id: &str) -> Result<(), BackendError> {
        let attached = {
            let mut regions = self.lock();
            let attached = regions.remove(id).ok_or_else(|| BackendError::NoRegion(id.into()))?;
            self.metrics().set_regions(regions.len() as i64);
            attached
        };
        attached.detach();
        self.observer.forget(id);
        tracing::info!(region = id, "Region removed");
        Ok(())
    }

    /// Runs one invocation on region `id`, with `staged` (prefetched objects) staged for it
    /// (see [`ServedRegion::stage`]) and dropped when it ends. Objects with a write waiting in
    /// the spool are not staged: the spool holds a newer state of them than storage gave.
    pub async fn invoke_region(
        &self,
        id: &str,
        event: &[u8],
        deadline: Duration,
        mut staged: Vec<Arc<Arriving>>,
    ) -> Result<Outcome, BackendError> {
        let served = self.served(id)?;
        let region_err = |source| BackendError::Region { id: id.into(), source };
        if !staged.is_empty() {
            if let Some(spool) = &self.shared.context.spool {
                staged.retain(|o| !spool.has_pending(&o.bucket, &o.key));
            }
            let (count, started) = (staged.len(), std::time::Instant::now());
            let in_place = served.stage(staged).map_err(region_err)?;
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(region = id, staged = count, in_place, ms, "Prefetched objects staged");
        }
        let outcome = served.invoke(event, deadline).await;
        served.unstage();
        outcome.map_err(|source| BackendError::Invoke { id: id.into(), source })
    }

    /// The host end of region `id`.
    fn served(&self, id: &str) -> Result<Arc<ServedRegion>, BackendError> {
        let regions = self.lock();
        let attached = regions.get(id).ok_or_else(|| BackendError::NoRegion(id.into()))?;
        Ok(attached.served.clone())
    }

    /// Every region.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.lock().values().map(Attached::info).collect()
    }

    /// Stops serving every region, then the write-back uploads (after a few seconds' grace).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.lock());
        for (id, attached) in all {
            attached.detach();
            self.observer.forget(&id);
        }
        self.metrics().set_regions(0);
        if let Some(spool) = &self.shared.context.spool {
            spool.stop();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attached>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
