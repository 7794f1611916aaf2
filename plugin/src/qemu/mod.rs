//! The QEMU adapter: one `qemu-system-x86_64` process per VM, driven over QMP.
//!
//! ```text
//!  create(spec)   spawn qemu … -S ──► wait for WORK/qmp.sock, greeting, qmp_capabilities: Created
//!  boot()         cont                                                                  Running
//!  pause/resume   stop / cont                                                   Paused / Running
//!  snapshot(dir)  getfd DIR/memory, migrate fd:, poll query-migrate; snapshot.json     Paused
//!  restore(…)     spawn qemu … -S -incoming defer, getfd, migrate-incoming fd:, poll   Paused
//!  stop()         quit, wait ≤ 5 s, else SIGKILL; reap                                  Stopped
//! ```
//!
//! The work dir holds `qmp.sock`, `serial.log` (the guest console), `qemu.pid`, `qemu.log`
//! (QEMU's stdout and stderr, whose tail goes into start-up errors) and `doorbell.sock` (the
//! doorbell's host end, a virtio-serial port in the guest). The region is an
//! `ivshmem-plain` device backed by the region file (`share=on`), with `master=on` because
//! QEMU refuses to migrate ivshmem otherwise. A NIC on a tap ([`Network::Tap`](crate::Network))
//! is opened by name in QEMU's network namespace (that of the thread that created the adapter,
//! whose spawner thread forks every QEMU), with vhost-net under KVM when `/dev/vhost-net`
//! exists. The command line is built in `args.rs`.
//!
//! **Restores overwrite the region.** With `master=on` the region's contents are part of the
//! migration stream: a snapshot saves them and a restore writes them back into the region file,
//! replacing whatever was put there before [`Qemu::restore_vm`] returns (a failed restore may
//! leave it partly overwritten). Data staged for a cold start must be copied into the region
//! after the restore and before `resume` (see `snapshot.rs`).
//!
//! **No QEMU outlives its owner.** Every QEMU is started with `PR_SET_PDEATHSIG(SIGKILL)`. The
//! kernel sends that signal when the *thread* that forked the child exits, not the process, so
//! all QEMUs are forked by one long-lived `vmm-spawner` thread owned by the adapter (and kept
//! alive by every VM it started), never by the short-lived thread that asked (see
//! `crate::process`).
//! Dropping a [`QemuVm`] stops it.

mod args;
mod qmp;
mod snapshot;

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use self::args::{qemu_args, Host, Start, WorkPaths};
use self::qmp::Qmp;
pub use self::qmp::QmpError;
use self::snapshot::Shape;
use crate::accel::Accel;
use crate::error::VmmError;
use crate::process::{remove_stale, Process, Spawner};
use crate::spec::VmSpec;
use crate::vm::{RegionOnRestore, Snapshot, Vm, VmInfo, VmState, Vmm};

/// The adapter's name, also in the snapshots it writes.
const NAME: &str = "qemu";
const BINARY: &str = "qemu-system-x86_64";
/// The kernel's virtio-net backend, which a tap NIC uses under KVM when it exists.
const VHOST_NET: &str = "/dev/vhost-net";
/// How long QEMU may take to open its QMP socket and greet.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a QMP command may take to answer.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Vm::stop`] gives QEMU to answer `quit` and exit before it SIGKILLs it.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a QEMU that broke its QMP connection is given to exit, so its error can be read.
const EXIT_GRACE: Duration = Duration::from_secs(1);
const START_POLL: Duration = Duration::from_millis(10);
/// Lines of QEMU's log carried by an error.
const LOG_TAIL_LINES: usize = 20;

/// The QEMU adapter.
#[derive(Debug)]
pub struct Qemu {
    spawner: Spawner,
    /// TCG's translation cache per VM, MiB; QEMU's default if `None`.
    tcg_cache_mib: Option<u32>,
}

impl Qemu {
    /// Starts the adapter's `vmm-spawner` thread.
    pub fn new() -> Result<Qemu, VmmError> {
        let spawner = Spawner::start().map_err(VmmError::io("start the vmm-spawner thread"))?;
        Ok(Qemu { spawner, tcg_cache_mib: None })
    }

    /// Bounds TCG's translation cache of every VM it starts to `mib` (`-accel tcg,tb-size=`).
    /// The cache is host memory an emulated VM holds beyond its guest's, which KVM does not
    /// have; bounding it keeps memory figures closer to a KVM host's.
    pub fn with_tcg_cache(self, mib: Option<u32>) -> Qemu {
        Qemu { tcg_cache_mib: mib, ..self }
    }

    /// [`Vmm::create`], keeping the QEMU-specific type.
    pub fn create_vm(&self, spec: &VmSpec) -> Result<QemuVm, VmmError> {
        self.start(spec, spec.accel.resolve(), Start::Fresh)
    }

    /// [`Vmm::restore`], keeping the QEMU-specific type.
    pub fn restore_vm(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<QemuVm, VmmError> {
        let accel = spec.accel.resolve();
        let manifest = snapshot::check(snapshot, &Shape::of(spec, accel))?;
        let mut vm = self.start(spec, accel, Start::Incoming)?;
        let qmp = vm.qmp.as_mut().expect("a started VM has a QMP session");
        if let Err(error) = snapshot::load(qmp, &vm.name, snapshot) {
            let Some(status) = vm.exited_within(EXIT_GRACE) else { return Err(error) };
            let running = vm.qmp.as_ref().map_or("", Qmp::version);
            let version = if manifest.qemu_version == running {
                String::new()
            } else {
                format!(" (taken by QEMU {}, this is QEMU {running})", manifest.qemu_version)
            };
            return Err(VmmError::Spawn {
                vm: vm.name.clone(),
                vmm: NAME,
                reason: format!(
                    "QEMU exited ({status}) loading snapshot {}{version}",
                    snapshot.dir.display()
                ),
                stderr_tail: vm.log_tail(),
            });
        }
        vm.state = VmState::Paused;
        Ok(vm)
    }

    /// Spawns QEMU for `spec` on `accel`, paused, and connects to its QMP socket.
    fn start(&self, spec: &VmSpec, accel: Accel, start: Start) -> Result<QemuVm, VmmError> {
        spec.validate()?;
        let paths = WorkPaths::new(&spec.work_dir);
        fs::create_dir_all(&spec.work_dir)
            .map_err(VmmError::io(format!("create work dir {}", spec.work_dir.display())))?;
        remove_stale(&paths.qmp)?;

        let mut command = Command::new(BINARY);
        let vhost_net = Path::new(VHOST_NET).exists();
        let host = Host { accel, tcg_cache_mib: self.tcg_cache_mib, vhost_net };
        command.args(qemu_args(spec, host, &paths, start));
        let process = Process::start(&self.spawner, command, &paths.log).map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::NotFound => {
                    format!("{BINARY} not found: install it (apt-get install qemu-system-x86)")
                }
                _ => format!("cannot run {BINARY}: {e}"),
            };
            VmmError::Spawn { vm: spec.name.clone(), vmm: NAME, reason, stderr_tail: String::new() }
        })?;
        tracing::debug!(vm = spec.name, pid = process.pid(), %accel, "QEMU started");
        let mut vm = QemuVm {
            name: spec.name.clone(),
            accel,
            state: VmState::Created,
            shape: Shape::of(spec, accel),
            paths,
            process: Some(process),
            qmp: None,
            _spawner: self.spawner.clone(),
        };
        vm.qmp = Some(vm.connect()?);
        Ok(vm)
    }
}

impl Vmm for Qemu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn region_on_restore(&self) -> RegionOnRestore {
        // master=on puts the region's contents into the migration stream.
        RegionOnRestore::Rewritten
    }

    fn create(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.create_vm(spec)?))
    }

    fn restore(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.restore_vm(spec, snapshot)?))
    }
}

/// A VM in a QEMU process.
#[derive(Debug)]
pub struct QemuVm {
    name: String,
    accel: Accel,
    /// The state as last set by this handle; [`QemuVm::state`] adds whether QEMU has exited.
    state: VmState,
    shape: Shape,
    paths: WorkPaths,
    /// `None` once stopped and reaped.
    process: Option<Process>,
    /// `None` before the handshake and after [`Vm::stop`].
    qmp: Option<Qmp>,
    /// Keeps the thread that forked QEMU, and so QEMU, alive while this VM is.
    _spawner: Spawner,
}

impl QemuVm {
    /// Runs a QMP command and returns its `return` value (for what the [`Vm`] trait does not
    /// cover, such as `query-status`).
    pub fn qmp(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, VmmError> {
        let result = match self.qmp.as_mut() {
            Some(qmp) => qmp.execute(command, arguments),
            None => return Err(self.wrong_state("send QMP commands to")),
        };
        result.map_err(|error| self.qmp_failed(command, error))
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

    /// Sends `command` if the VM is in one of `from`; a VM already in `to` is left alone.
    fn transition(
        &mut self,
        op: &'static str,
        command: &str,
        from: &[VmState],
        to: VmState,
    ) -> Result<(), VmmError> {
        match self.state() {
            state if state == to => return Ok(()),
            state if from.contains(&state) => {}
            _ => return Err(self.wrong_state(op)),
        }
        self.qmp(command, None)?;
        self.state = to;
        Ok(())
    }

    fn wrong_state(&self, op: &'static str) -> VmmError {
        VmmError::WrongState { vm: self.name.clone(), op, state: self.state() }
    }

    /// The error for a failed QMP command: QEMU's own, or the guest's end if QEMU exited.
    fn qmp_failed(&self, command: &str, error: QmpError) -> VmmError {
        match self.exited_within(EXIT_GRACE) {
            Some(status) => VmmError::GuestFailed {
                vm: self.name.clone(),
                reason: format!(
                    "QEMU exited ({status}) during {command}: {}",
                    self.log_tail().trim_end()
                ),
                serial_tail: self.serial_tail(LOG_TAIL_LINES),
            },
            None => refused(&self.name, command)(error),
        }
    }

    /// Waits for the QMP socket and negotiates; a QEMU that exits first yields its log tail.
    fn connect(&self) -> Result<Qmp, VmmError> {
        let spawn_error = |reason: String| VmmError::Spawn {
            vm: self.name.clone(),
            vmm: NAME,
            reason,
            stderr_tail: self.log_tail(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited_within(Duration::ZERO) {
                return Err(spawn_error(format!("QEMU exited ({status}) during start-up")));
            }
            match Qmp::connect(&self.paths.qmp, QMP_TIMEOUT) {
                Ok(qmp) => return Ok(qmp),
                Err(QmpError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    thread::sleep(START_POLL)
                }
                Err(error) => {
                    let reason = match self.exited_within(EXIT_GRACE) {
                        Some(status) => format!("QEMU exited ({status}) during start-up"),
                        None => format!("no QMP session on {}: {error}", self.paths.qmp.display()),
                    };
                    return Err(spawn_error(reason));
                }
            }
        }
    }

    /// QEMU's exit status if it exits within `grace`.
    fn exited_within(&self, grace: Duration) -> Option<ExitStatus> {
        self.process.as_ref()?.wait_timeout(grace)
    }

    fn log_tail(&self) -> String {
        self.process.as_ref().map(|p| p.log_tail(LOG_TAIL_LINES)).unwrap_or_default()
    }
}

impl Vm for QemuVm {
    fn boot(&mut self) -> Result<(), VmmError> {
        self.transition("boot", "cont", &[VmState::Created], VmState::Running)
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        self.transition("pause", "stop", &[VmState::Running], VmState::Paused)
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        self.transition("resume", "cont", &[VmState::Paused], VmState::Running)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmmError> {
        if self.state() != VmState::Paused {
            return Err(self.wrong_state("snapshot"));
        }
        let Some(qmp) = self.qmp.as_mut() else { return Err(self.wrong_state("snapshot")) };
        snapshot::take(qmp, &self.name, &self.shape, dir)
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        let Some(process) = self.process.take() else { return Ok(()) };
        let deadline = Instant::now() + QUIT_TIMEOUT;
        // Without a QMP session, or if quit fails, the SIGKILL below comes at once.
        let quitting = match self.qmp.take() {
            Some(mut qmp) if process.exit_status().is_none() => {
                qmp.set_timeout(QUIT_TIMEOUT);
                matches!(qmp.execute("quit", None), Ok(_) | Err(QmpError::Closed))
            }
            _ => false,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let exited =
            process.exit_status().is_some() || (quitting && process.wait_timeout(left).is_some());
        if !exited {
            if quitting {
                tracing::warn!(
                    vm = self.name,
                    "QEMU ignored quit for {QUIT_TIMEOUT:?}: killing it"
                );
            }
            if let Err(e) = process.kill() {
                let pid = process.pid();
                self.process = Some(process);
                return Err(VmmError::io(format!("kill QEMU process {pid}"))(e));
            }
        }
        self.state = VmState::Stopped;
        // QEMU leaves its socket behind when killed; a missing one is fine.
        let _ = fs::remove_file(&self.paths.qmp);
        Ok(())
    }

    fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            vmm: NAME,
            accel: self.accel,
            state: self.state(),
            pid: self.process.as_ref().map(Process::pid),
            serial_log: self.paths.serial.clone(),
        }
    }

    fn serial_tail(&self, lines: usize) -> String {
        crate::serial::tail_lines(&self.paths.serial, lines)
    }

    fn doorbell(&mut self) -> Result<UnixStream, VmmError> {
        if !self.shape.has_doorbell() {
            return Err(VmmError::InvalidSpec {
                vm: self.name.clone(),
                reason: "its spec asked for no doorbell".into(),
            });
        }
        UnixStream::connect(&self.paths.doorbell).map_err(VmmError::io(format!(
            "connect to the doorbell {}",
            self.paths.doorbell.display()
        )))
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(vm = self.name, "Cannot stop QEMU: {error}");
        }
    }
}

/// Maps a failed QMP exchange of `command` for VM `vm` to [`VmmError::Control`].
fn refused(vm: &str, command: &str) -> impl FnOnce(QmpError) -> VmmError {
    let (vm, command) = (vm.to_owned(), command.to_owned());
    move |error| VmmError::Control { vm, command, source: Box::new(error) }
}
