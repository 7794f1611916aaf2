//! The Cloud Hypervisor adapter: one `cloud-hypervisor` process per VM, driven over its REST API.
//!
//! ```text
//!  CloudHypervisor::new  find the binary; KVM creates a VM; a throwaway VMM's vmm.ping lists
//!                        `ivshmem` (else a clear error, before any VM starts)
//!  create(spec)   spawn cloud-hypervisor --api-socket WORK/api.sock; vm.create          Created
//!                 (kernel, initramfs, disks, serial → WORK/serial.log, vsock WORK/vsock.sock,
//!                  the region as ivshmem {path, size}; no NIC)
//!  boot()         vm.boot                                                                Running
//!  pause/resume   vm.pause / vm.resume                                           Paused / Running
//!  snapshot(dir)  vm.snapshot file://DIR, then DIR/snapshot.json                          Paused
//!  restore(…)     WORK/restore/ = the snapshot with this VM's own config.json (region, serial,
//!                 vsock); spawn; vm.restore {source_url, memory_restore_mode}             Paused
//!  stop()         vmm.shutdown, wait ≤ 5 s, else SIGKILL; reap                           Stopped
//! ```
//!
//! The work dir holds `api.sock`, `serial.log` (the guest console), `ch.log` (CH's stdout and
//! stderr, whose tail goes into start-up errors), `vsock.sock` and `vsock.sock_20056` (the
//! doorbell, see `doorbell.rs`). The REST client is in `api.rs`, the VM config in
//! `vm_config.rs`, snapshots in `snapshot.rs`.
//!
//! **Restores keep the region.** CH's snapshot holds the ivshmem device, not the file's bytes
//! ([`RegionOnRestore::Kept`]): the host may prefetch straight into a region while CH restores.
//!
//! **No CH outlives its owner.** As for QEMU, every VMM process is forked by the adapter's one
//! `vmm-spawner` thread with `PR_SET_PDEATHSIG(SIGKILL)` (see `crate::process`), and dropping a
//! [`ChVm`] stops it.

mod api;
mod doorbell;
mod probe;
mod snapshot;
mod vm_config;

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use self::api::ApiError;
use self::api::{Api, ApiRuntime};
pub use self::doorbell::guest_port_path;
use self::doorbell::VsockDoorbell;
pub use self::probe::{check_kvm, find_binary, BINARY_ENV};
pub use self::snapshot::copy_for_restore;
use self::snapshot::Shape;
use self::vm_config::OwnFiles;
use crate::accel::Accel;
use crate::error::VmmError;
use crate::process::{remove_stale, Process, Spawner};
use crate::spec::VmSpec;
use crate::vm::{RegionOnRestore, Snapshot, Vm, VmInfo, VmState, Vmm};

/// The adapter's name, also in the snapshots it writes.
pub const NAME: &str = "cloud-hypervisor";
/// How long CH may take to open its API socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_POLL: Duration = Duration::from_millis(5);
/// How long an API request may take (a snapshot or restore of a large guest takes seconds).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`Vm::stop`] gives CH to exit after `vmm.shutdown` before it SIGKILLs it.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a CH that failed a request is given to exit, so that its log says why.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// Lines of CH's log carried by an error.
const LOG_TAIL_LINES: usize = 20;

/// How a restore brings guest memory back (`vm.restore`'s `memory_restore_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryRestoreMode {
    /// Read the whole memory file before the guest runs.
    #[default]
    Copy,
    /// Map it and fault pages in as the guest touches them (userfaultfd).
    OnDemand,
}

impl MemoryRestoreMode {
    fn as_str(self) -> &'static str {
        match self {
            MemoryRestoreMode::Copy => "Copy",
            MemoryRestoreMode::OnDemand => "OnDemand",
        }
    }
}

/// How the adapter runs Cloud Hypervisor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChOptions {
    /// The `cloud-hypervisor` binary; `None`: `$NEXUS_CLOUD_HYPERVISOR`, else `PATH`.
    pub binary: Option<PathBuf>,
    pub memory_restore_mode: MemoryRestoreMode,
}

/// The Cloud Hypervisor adapter.
#[derive(Debug)]
pub struct CloudHypervisor {
    binary: PathBuf,
    version: String,
    memory_restore_mode: MemoryRestoreMode,
    spawner: Spawner,
    runtime: Arc<ApiRuntime>,
}

impl CloudHypervisor {
    /// Finds the binary and checks, before any VM starts, that KVM can create a VM and that
    /// the binary has the `ivshmem` feature.
    pub fn new(options: ChOptions) -> Result<CloudHypervisor, VmmError> {
        let unusable = |reason: String| VmmError::Spawn {
            vm: "(probe)".into(),
            vmm: NAME,
            reason,
            stderr_tail: String::new(),
        };
        let binary = probe::find_binary(options.binary.as_deref()).ok_or_else(|| {
            unusable(format!(
                "no cloud-hypervisor binary: set vm.cloud_hypervisor in the config or \
                 ${BINARY_ENV}, or put it on PATH (built with --features ivshmem)"
            ))
        })?;
        probe::check_kvm().map_err(|e| unusable(format!("KVM cannot run guests here: {e}")))?;
        let spawner = Spawner::start().map_err(VmmError::io("start the vmm-spawner thread"))?;
        let runtime = ApiRuntime::start().map_err(VmmError::io("start the ch-api runtime"))?;
        let mut adapter = CloudHypervisor {
            binary,
            version: String::new(),
            memory_restore_mode: options.memory_restore_mode,
            spawner,
            runtime,
        };
        let ping = adapter.ping()?;
        let features = probe::features(&ping);
        if !features.iter().any(|f| f == "ivshmem") {
            return Err(unusable(format!(
                "{} lacks the ivshmem feature (it has: {}): build Cloud Hypervisor with \
                 `cargo build --release --features ivshmem`",
                adapter.binary.display(),
                features.join(", ")
            )));
        }
        adapter.version = ping["version"].as_str().unwrap_or("unknown").to_owned();
        Ok(adapter)
    }

    /// The binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The `vmm.ping` answer of a throwaway VMM process.
    fn ping(&self) -> Result<Value, VmmError> {
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nexus-ch-probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
        let probe = VmSpec::new("probe", "/nonexistent", &dir);
        let result = self.spawn(&probe).and_then(|mut vm| {
            let ping = vm.api.get("vmm.ping").map_err(refused(&vm.name, "vmm.ping"));
            vm.stop()?;
            ping
        });
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// [`Vmm::create`], keeping the CH-specific type.
    pub fn create_vm(&self, spec: &VmSpec) -> Result<ChVm, VmmError> {
        let mut vm = self.spawn(spec)?;
        let body = vm_config::create_body(spec, &vm.paths.own_files())?;
        vm.request("vm.create", Some(&body))?;
        Ok(vm)
    }

    /// [`Vmm::restore`] with this adapter's memory restore mode, keeping the CH-specific type.
    pub fn restore_vm(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<ChVm, VmmError> {
        self.restore_with(spec, snapshot, self.memory_restore_mode)
    }

    /// Restores `snapshot` into a new VMM with `spec`'s region, console and vsock, left paused.
    pub fn restore_with(
        &self,
        spec: &VmSpec,
        snapshot: &Snapshot,
        mode: MemoryRestoreMode,
    ) -> Result<ChVm, VmmError> {
        spec.validate()?;
        snapshot::check(snapshot, spec)?;
        let mut vm = self.spawn(spec)?;
        snapshot::prepare_restore(snapshot, spec, &vm.paths.own_files(), &vm.paths.restore)?;
        let body = json!({
            "source_url": format!("file://{}", vm.paths.restore.display()),
            "memory_restore_mode": mode.as_str(),
            "resume": false,
        });
        vm.request("vm.restore", Some(&body))?;
        vm.state = VmState::Paused;
        Ok(vm)
    }

    /// Starts a VMM process with no VM, for `spec`'s work dir, and waits for its API socket.
    fn spawn(&self, spec: &VmSpec) -> Result<ChVm, VmmError> {
        spec.validate()?;
        fs::create_dir_all(&spec.work_dir)
            .map_err(VmmError::io(format!("create work dir {}", spec.work_dir.display())))?;
        let paths = WorkPaths::new(&spec.work_dir);
        for stale in [&paths.api, &paths.vsock] {
            remove_stale(stale)?;
        }
        // Listening before the guest can run: its first connection must find the doorbell.
        let doorbell = match spec.doorbell {
            true => Some(
                VsockDoorbell::listen(&paths.vsock)
                    .map_err(VmmError::io("listen for the vsock doorbell"))?,
            ),
            false => None,
        };
        let mut command = Command::new(&self.binary);
        command.arg("--api-socket").arg(format!("path={}", paths.api.display()));
        let process =
            Process::start(&self.spawner, command, &paths.log).map_err(|e| VmmError::Spawn {
                vm: spec.name.clone(),
                vmm: NAME,
                reason: format!("cannot run {}: {e}", self.binary.display()),
                stderr_tail: String::new(),
            })?;
        tracing::debug!(vm = spec.name, pid = process.pid(), "Cloud Hypervisor started");
        let vm = ChVm {
            name: spec.name.clone(),
            state: VmState::Created,
            shape: Shape::of(spec),
            version: self.version.clone(),
            api: Api::new(&paths.api, API_TIMEOUT, self.runtime.clone()),
            paths,
            process: Some(process),
            doorbell,
            _spawner: self.spawner.clone(),
        };
        vm.wait_for_api()?;
        Ok(vm)
    }
}

impl Vmm for CloudHypervisor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn region_on_restore(&self) -> RegionOnRestore {
        // The snapshot holds the ivshmem device's registers, never the file's bytes.
        RegionOnRestore::Kept
    }

    fn create(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.create_vm(spec)?))
    }

    fn restore(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.restore_vm(spec, snapshot)?))
    }
}

/// The files of one VM in its work dir.
#[derive(Debug)]
struct WorkPaths {
    api: PathBuf,
    serial: PathBuf,
    log: PathBuf,
    vsock: PathBuf,
    /// The source of a restore (see `snapshot.rs`).
    restore: PathBuf,
}

impl WorkPaths {
    fn new(work: &Path) -> WorkPaths {
        WorkPaths {
            api: work.join("api.sock"),
            serial: work.join("serial.log"),
            log: work.join("ch.log"),
            vsock: work.join("vsock.sock"),
            restore: work.join("restore"),
        }
    }

    fn own_files(&self) -> OwnFiles<'_> {
        OwnFiles { serial: &self.serial, vsock: &self.vsock }
    }
}

/// A VM in a Cloud Hypervisor process.
#[derive(Debug)]
pub struct ChVm {
    name: String,
    /// The state as last set by this handle; [`ChVm::state`] adds whether CH has exited.
    state: VmState,
    shape: Shape,
    version: String,
    api: Api,
    paths: WorkPaths,
    /// `None` once stopped and reaped.
    process: Option<Process>,
    /// `None` when the spec asked for no doorbell, and once stopped.
    doorbell: Option<VsockDoorbell>,
    /// Keeps the thread that forked CH, and so CH, alive while this VM is.
    _spawner: Spawner,
}

impl ChVm {
    /// `vm.info`: CH's view of the VM (its config, state and memory size).
    pub fn vm_info(&self) -> Result<Value, VmmError> {
        self.api.get("vm.info").map_err(refused(&self.name, "vm.info"))
    }

    /// `vm.counters`: CH's per-device counters (bytes and operations of each disk, vsock...).
    pub fn counters(&self) -> Result<Value, VmmError> {
        self.api.get("vm.counters").map_err(refused(&self.name, "vm.counters"))
    }

    /// The API socket, for `ch-remote --api-socket`.
    pub fn api_socket(&self) -> &Path {
        self.api.socket()
    }

    /// The vsock socket of the VM (CH's hybrid vsock), when the spec asked for a doorbell.
    pub fn vsock_socket(&self) -> Option<&Path> {
        self.doorbell.as_ref().map(|_| self.paths.vsock.as_path())
    }

    /// How many guest connections the doorbell has seen.
    pub fn doorbell_connections(&self) -> u64 {
        self.doorbell.as_ref().map_or(0, VsockDoorbell::connections)
    }

    fn state(&self) -> VmState {
        match (self.state, &self.process) {
            (VmState::Created | VmState::Running | VmState::Paused, Some(process))
                if process.exit_status().is_some() =>
            {
                VmState::Exited
            }
            (state, _) => state,
        }
    }

    /// A `PUT` of `endpoint`; a CH that exits over it yields its log instead.
    fn request(&mut self, endpoint: &str, body: Option<&Value>) -> Result<Value, VmmError> {
        if self.process.is_none() {
            return Err(self.wrong_state("control"));
        }
        self.api.put(endpoint, body).map_err(|error| match self.exited_within(EXIT_GRACE) {
            Some(status) => VmmError::GuestFailed {
                vm: self.name.clone(),
                reason: format!(
                    "Cloud Hypervisor exited ({status}) during {endpoint}: {}",
                    self.log_tail().trim_end()
                ),
                serial_tail: self.serial_tail(LOG_TAIL_LINES),
            },
            None => refused(&self.name, endpoint)(error),
        })
    }

    /// Sends `endpoint` if the VM is in one of `from`; a VM already in `to` is left alone.
    fn transition(
        &mut self,
        op: &'static str,
        endpoint: &str,
        from: &[VmState],
        to: VmState,
    ) -> Result<(), VmmError> {
        match self.state() {
            state if state == to => return Ok(()),
            state if from.contains(&state) => {}
            _ => return Err(self.wrong_state(op)),
        }
        self.request(endpoint, None)?;
        self.state = to;
        Ok(())
    }

    fn wrong_state(&self, op: &'static str) -> VmmError {
        VmmError::WrongState { vm: self.name.clone(), op, state: self.state() }
    }

    /// Waits until the API socket answers a ping; a CH that exits first yields its log tail.
    fn wait_for_api(&self) -> Result<(), VmmError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited_within(Duration::ZERO) {
                return Err(self.spawn_error(format!("it exited ({status}) during start-up")));
            }
            match self.api.get("vmm.ping") {
                Ok(_) => return Ok(()),
                Err(ApiError::Connect(..)) if Instant::now() < deadline => {
                    thread::sleep(START_POLL)
                }
                Err(error) => {
                    return Err(self
                        .spawn_error(format!("no API on {}: {error}", self.paths.api.display())))
                }
            }
        }
    }

    fn spawn_error(&self, reason: String) -> VmmError {
        VmmError::Spawn { vm: self.name.clone(), vmm: NAME, reason, stderr_tail: self.log_tail() }
    }

    fn exited_within(&self, grace: Duration) -> Option<ExitStatus> {
        self.process.as_ref()?.wait_timeout(grace)
    }

    fn log_tail(&self) -> String {
        self.process.as_ref().map(|p| p.log_tail(LOG_TAIL_LINES)).unwrap_or_default()
    }
}

impl Vm for ChVm {
    fn boot(&mut self) -> Result<(), VmmError> {
        self.transition("boot", "vm.boot", &[VmState::Created], VmState::Running)
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        self.transition("pause", "vm.pause", &[VmState::Running], VmState::Paused)
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        self.transition("resume", "vm.resume", &[VmState::Paused], VmState::Running)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmmError> {
        if self.state() != VmState::Paused {
            return Err(self.wrong_state("snapshot"));
        }
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
        let dir = dir.canonicalize().map_err(VmmError::io(format!("resolve {}", dir.display())))?;
        let body = json!({ "destination_url": format!("file://{}", dir.display()) });
        self.request("vm.snapshot", Some(&body))?;
        snapshot::write_manifest(&dir, &self.version, &self.shape)
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        let Some(process) = self.process.take() else { return Ok(()) };
        // Without an answer to vmm.shutdown the SIGKILL below comes at once.
        let quitting =
            process.exit_status().is_none() && self.api.put("vmm.shutdown", None).is_ok();
        let exited = process.exit_status().is_some()
            || (quitting && process.wait_timeout(QUIT_TIMEOUT).is_some());
        if !exited {
            if quitting {
                tracing::warn!(vm = self.name, "Cloud Hypervisor ignored vmm.shutdown: killing it");
            }
            if let Err(e) = process.kill() {
                let pid = process.pid();
                self.process = Some(process);
                return Err(VmmError::io(format!("kill Cloud Hypervisor process {pid}"))(e));
            }
        }
        self.state = VmState::Stopped;
        self.doorbell = None;
        // CH leaves its sockets behind when killed; missing ones are fine.
        for socket in [&self.paths.api, &self.paths.vsock] {
            let _ = fs::remove_file(socket);
        }
        Ok(())
    }

    fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            vmm: NAME,
            accel: Accel::Kvm,
            state: self.state(),
            pid: self.process.as_ref().map(Process::pid),
            serial_log: self.paths.serial.clone(),
        }
    }

    fn serial_tail(&self, lines: usize) -> String {
        crate::serial::tail_lines(&self.paths.serial, lines)
    }

    fn doorbell(&mut self) -> Result<UnixStream, VmmError> {
        let invalid =
            |reason: &str| VmmError::InvalidSpec { vm: self.name.clone(), reason: reason.into() };
        if !self.shape.has_doorbell() {
            return Err(invalid("its spec asked for no doorbell"));
        }
        self.doorbell
            .as_mut()
            .and_then(VsockDoorbell::take_host_end)
            .ok_or_else(|| invalid("its doorbell was already taken"))
    }
}

impl Drop for ChVm {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(vm = self.name, "Cannot stop Cloud Hypervisor: {error}");
        }
    }
}

/// Maps a failed API request `endpoint` of VM `vm` to [`VmmError::Control`].
fn refused(vm: &str, endpoint: &str) -> impl FnOnce(ApiError) -> VmmError {
    let (vm, command) = (vm.to_owned(), endpoint.to_owned());
    move |error| VmmError::Control { vm, command, source: Box::new(error) }
}
