//! The libvirt adapter: each function VM is a libvirt domain (visible to `virsh`), driven
//! through libvirt's API.
//!
//! ```text
//!  create(spec)   link the region into /dev/shm, start the doorbell relay,
//!                 virDomainDefineXML(domain.rs) + virDomainCreateWithFlags(PAUSED)   Created
//!  boot()         virDomainResume                                                    Running
//!  pause/resume   virDomainSuspend / virDomainResume                         Paused / Running
//!  snapshot(dir)  virDomainSaveFlags(DIR/domain.save, PAUSED), then virDomainRestoreFlags of
//!                 it (a save ends the QEMU process); DIR/snapshot.json              Paused
//!  restore(…)     the saved work dir, doorbell and region name made again for this VM's
//!                 region; virDomainRestoreFlags(DIR/domain.save, PAUSED)             Paused
//!  stop()         virDomainDestroy + virDomainUndefine, unlink the region's name     Stopped
//!  virsh suspend/resume/destroy        seen through lifecycle events (events.rs): info()
//!  virsh save     the QEMU process ends; region, name and doorbell stay               Saved
//!  virsh restore  a QEMU process the adapter did not start, region rewritten       Restored
//!  pause() of a Restored VM takes that process as the VM's own                       Paused
//! ```
//!
//! **Operators' domains** (operator.rs): [`Libvirt::attach_operator`] gives a domain an
//! operator wrote its region (linked under its own name, owned by its QEMU user) and a
//! doorbell relay, while libvirt's hook script holds its start, so without a call to
//! libvirtd (which waits for the hook). Such a VM never defines, destroys or snapshots its
//! domain: the operator does; [`Vm::stop`] only takes the region and doorbell away.
//!
//! **The region.** libvirt backs `<shmem name='N'>` by `/dev/shm/N` and refuses a `/` in N, so
//! the adapter hard-links the backend's region file (normally `/dev/shm/nexus/<id>.region`) as
//! `/dev/shm/nexus-<vm>.region`: one inode, two names, and the region directory must be on
//! the filesystem of `/dev/shm`. With `role='master'` libvirt can save the domain; the save
//! image carries the region's contents and a restore writes them back
//! ([`RegionOnRestore::Rewritten`], as with the qemu adapter).
//!
//! **Ownership.** The domain's static DAC label runs QEMU as the backend's own user and group
//! without relabelling anything, so the region stays a 0600 file of that user (nobody else can
//! map it) and the images keep their owners: the same isolation as the qemu adapter.
//!
//! **Snapshots keep their domain.** libvirt restores a save image only under the name and UUID
//! it was saved with, so [`Libvirt::restore`] brings back the saved domain (its name, work dir
//! and region name, not the spec's: see `snapshot.rs`), and fails while a domain of that name
//! exists.

mod domain;
mod doorbell;
mod events;
mod operator;
mod snapshot;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use self::domain::{domain_xml, Host};
use self::doorbell::Relay;
use self::events::{Lifecycle, Seen};
use crate::accel::Accel;
use crate::error::VmmError;
use crate::spec::VmSpec;
use crate::vm::{RegionOnRestore, Snapshot, Vm, VmInfo, VmState, Vmm};
pub use operator::{DomainError, DomainXml, Expected, Kind, OperatorDomain};

/// The adapter's name, also in the snapshots it writes.
const NAME: &str = "libvirt";
/// The libvirt daemon the adapter talks to.
pub const DEFAULT_URI: &str = "qemu:///system";
/// Where libvirt's shmem devices live.
const SHM_DIR: &str = "/dev/shm";
/// Where libvirt's QEMU driver writes each running domain's pid.
const PID_DIR: &str = "/run/libvirt/qemu";
/// How long the adapter waits for the `started` event of a QEMU process it started.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a libvirt call failed.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// libvirt refused or failed a call.
    #[error("libvirt: cannot {what}")]
    Api {
        what: String,
        #[source]
        source: virt::error::Error,
    },
    /// The event loop could not be registered.
    #[error("Cannot register libvirt's event loop: {0}")]
    EventLoop(String),
}

/// The libvirt adapter: one connection to libvirtd, and the lifecycle events it delivers.
#[derive(Debug)]
pub struct Libvirt {
    conn: Connect,
    lifecycle: Arc<Lifecycle>,
}

impl Libvirt {
    /// Connects to libvirtd at [`DEFAULT_URI`].
    pub fn new() -> Result<Libvirt, VmmError> {
        Self::connect(DEFAULT_URI)
    }

    /// Connects to libvirtd at `uri` and subscribes to its domains' lifecycle events.
    pub fn connect(uri: &str) -> Result<Libvirt, VmmError> {
        let failed = |e: LibvirtError| VmmError::Control {
            vm: "-".into(),
            command: format!("connect to {uri}"),
            source: Box::new(e),
        };
        events::start_event_loop().map_err(failed)?;
        let conn = Connect::open(Some(uri)).map_err(|source| {
            failed(LibvirtError::Api {
                what: format!("connect to {uri} (is libvirtd running? `virtlogd -d; libvirtd -d`)"),
                source,
            })
        })?;
        let lifecycle = Arc::new(Lifecycle::default());
        events::subscribe(&conn, lifecycle.clone()).map_err(failed)?;
        Ok(Libvirt { conn, lifecycle })
    }

    /// Destroys and undefines the domains a backend that died left behind: those the adapter
    /// defined (Nexus metadata, `managed='backend'`) whose work dirs lie under `state_dir`,
    /// with their region names in `/dev/shm`. Operators' domains are left alone. Returns their
    /// names.
    pub fn remove_left_behind(&self, state_dir: &Path) -> Result<Vec<String>, VmmError> {
        let all = self.conn.list_all_domains(0).map_err(api("-", "list the domains"))?;
        let under = state_dir.to_string_lossy();
        let mut removed = Vec::new();
        for domain in all {
            let Ok(xml) = domain.get_xml_desc(0) else { continue };
            let managed = DomainXml::parse(&xml).is_ok_and(|d| d.kind() == Kind::Managed);
            let ours = managed
                && [format!("'{under}/"), format!("\"{under}/")].iter().any(|p| xml.contains(p));
            if !ours {
                continue;
            }
            let name = domain.get_name().unwrap_or_default();
            if domain.is_active().unwrap_or(false) {
                domain.destroy().map_err(api(&name, "destroy a domain left behind"))?;
            }
            domain.undefine().map_err(api(&name, "undefine a domain left behind"))?;
            let link = Path::new(SHM_DIR).join(format!("nexus-{name}.region"));
            let _ = std::fs::remove_file(link);
            tracing::info!(
                domain = name,
                "Removed a libvirt domain an earlier backend left behind"
            );
            removed.push(name);
        }
        Ok(removed)
    }

    /// [`Vmm::create`], keeping the libvirt-specific type.
    pub fn create_vm(&self, spec: &VmSpec) -> Result<LibvirtVm, VmmError> {
        let mut vm = self.prepare(spec, spec.name.clone(), None)?;
        let xml = vm.xml(spec);
        let defined =
            Domain::define_xml(&self.conn, &xml).map_err(api(&vm.name, "define the domain"))?;
        vm.domain = Some(defined);
        let started = defined_start(vm.domain.as_ref());
        if let Err(error) = started {
            return Err(vm.start_failed("start the domain", error));
        }
        vm.process = vm.domain.as_ref().and_then(Domain::get_id);
        self.lifecycle.set(&vm.name, Seen::Paused);
        tracing::debug!(vm = vm.name, accel = %vm.accel, "libvirt domain started");
        Ok(vm)
    }

    /// [`Vmm::restore`], keeping the libvirt-specific type.
    pub fn restore_vm(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<LibvirtVm, VmmError> {
        let accel = spec.accel.resolve();
        let manifest = snapshot::check(snapshot, spec, accel)?;
        let saved = VmSpec { work_dir: manifest.host.work_dir.clone(), ..spec.clone() };
        let mut vm = self.prepare(&saved, manifest.domain.clone(), manifest.host.shmem.clone())?;
        if let Err(error) = snapshot::restore(&self.conn, snapshot) {
            return Err(vm.start_failed("restore the saved domain", error));
        }
        let domain = Domain::lookup_by_name(&self.conn, &vm.name)
            .map_err(api(&vm.name, "find the restored domain"))?;
        vm.process = domain.get_id();
        vm.domain = Some(domain);
        vm.state = VmState::Paused;
        self.lifecycle.set(&vm.name, Seen::Paused);
        Ok(vm)
    }

    /// Gives the operator's `domain` (checked) the region file at `region` and a doorbell
    /// relay, before libvirt starts its QEMU process. Calls no libvirt API: the hook script
    /// that asks for this holds up the domain's start, and libvirtd would wait for it.
    pub fn attach_operator(
        &self,
        domain: &OperatorDomain,
        region: &Path,
    ) -> Result<LibvirtVm, VmmError> {
        let name = &domain.name;
        let io = |what: String| VmmError::io(what);
        let owned_by_qemu = |path: &Path| {
            std::os::unix::fs::chown(path, Some(domain.owner.0), Some(domain.owner.1))
                .map_err(io(format!("give {} to QEMU's user", path.display())))
        };
        owned_by_qemu(region)?;
        let shmem = link_region(name, region, Some(&domain.shmem))?;
        let dir = domain.doorbell.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let relay = Relay::start(&domain.doorbell, name)
            .map_err(io(format!("listen on {}", domain.doorbell.display())))?;
        owned_by_qemu(&domain.doorbell)?;
        self.lifecycle.forget(name);
        Ok(LibvirtVm {
            name: name.clone(),
            accel: crate::accel::detect_accel(),
            state: VmState::Created,
            conn: self.conn.clone(),
            lifecycle: self.lifecycle.clone(),
            domain: None,
            owned: false,
            process: None,
            shmem: Some(shmem),
            relay: Some(relay),
            work_dir: dir.to_owned(),
            serial_log: domain.serial_log.clone(),
            doorbell_path: domain.doorbell.clone(),
            owner: domain.owner,
        })
    }

    /// The host side of a VM named `name`: work dir, region name (`shmem`, else one made up
    /// from `name`), doorbell relay.
    fn prepare(
        &self,
        spec: &VmSpec,
        name: String,
        shmem: Option<String>,
    ) -> Result<LibvirtVm, VmmError> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.work_dir)
            .map_err(VmmError::io(format!("create work dir {}", spec.work_dir.display())))?;
        let shmem = spec
            .region
            .as_ref()
            .map(|r| link_region(&name, &r.path, shmem.as_deref()))
            .transpose()?;
        let doorbell_path = spec.work_dir.join("doorbell.sock");
        let relay = match spec.doorbell {
            true => Some(
                Relay::start(&doorbell_path, &name)
                    .map_err(VmmError::io(format!("listen on {}", doorbell_path.display())))?,
            ),
            false => None,
        };
        // The work dir was made by this process: its owner is the backend's user and group.
        let made = std::fs::metadata(&spec.work_dir)
            .map_err(VmmError::io(format!("stat {}", spec.work_dir.display())))?;
        let owner = (made.uid(), made.gid());
        Ok(LibvirtVm {
            name,
            accel: spec.accel.resolve(),
            state: VmState::Created,
            conn: self.conn.clone(),
            lifecycle: self.lifecycle.clone(),
            domain: None,
            owned: true,
            process: None,
            shmem,
            relay,
            serial_log: spec.work_dir.join("serial.log"),
            work_dir: spec.work_dir.clone(),
            doorbell_path,
            owner,
        })
    }
}

impl Vmm for Libvirt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn region_on_restore(&self) -> RegionOnRestore {
        // role='master' puts the region's contents into the save image.
        RegionOnRestore::Rewritten
    }

    fn create(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.create_vm(spec)?))
    }

    fn restore(&self, spec: &VmSpec, snapshot: &Snapshot) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.restore_vm(spec, snapshot)?))
    }
}

/// The region's name under `/dev/shm` as libvirt sees it, and the link that gives it.
#[derive(Debug)]
struct Shmem {
    name: String,
    /// The hard link the adapter made (`None` if the region already lives in `/dev/shm`).
    link: Option<PathBuf>,
}

/// Names the region file `path` in `/dev/shm` for the domain `vm`: as `wanted` (a restored
/// domain's saved name), else by its own name if it is in `/dev/shm`, else `nexus-<vm>.region`.
fn link_region(vm: &str, path: &Path, wanted: Option<&str>) -> Result<Shmem, VmmError> {
    let own = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_shm = path.parent() == Some(Path::new(SHM_DIR));
    if in_shm && wanted.is_none_or(|w| w == own) {
        return Ok(Shmem { name: own, link: None });
    }
    let name = wanted.map_or_else(|| format!("nexus-{vm}.region"), str::to_owned);
    let link = Path::new(SHM_DIR).join(&name);
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(path, &link).map_err(|e| match e.kind() {
        io::ErrorKind::CrossesDevices => VmmError::InvalidSpec {
            vm: vm.to_owned(),
            reason: format!(
                "libvirt maps regions from {SHM_DIR}, but {} is on another filesystem: put \
                 region.dir under {SHM_DIR}",
                path.display()
            ),
        },
        _ => VmmError::io(format!("link {} as {}", path.display(), link.display()))(e),
    })?;
    Ok(Shmem { name, link: Some(link) })
}

/// A function VM as a libvirt domain.
#[derive(Debug)]
pub struct LibvirtVm {
    /// The domain's name.
    name: String,
    accel: Accel,
    /// The state as last set by this handle; [`LibvirtVm::state`] adds what virsh did.
    state: VmState,
    conn: Connect,
    lifecycle: Arc<Lifecycle>,
    /// `None` before the domain is defined (or, for an operator's, looked up) and after
    /// [`Vm::stop`].
    domain: Option<Domain>,
    /// Whether the adapter defined the domain (else an operator did, and keeps it).
    owned: bool,
    /// The domain id of the QEMU process this VM runs in, as the adapter last started or
    /// adopted it.
    process: Option<u32>,
    shmem: Option<Shmem>,
    relay: Option<Relay>,
    work_dir: PathBuf,
    serial_log: PathBuf,
    doorbell_path: PathBuf,
    owner: (u32, u32),
}

impl LibvirtVm {
    /// The domain's name (for a restored VM, the name it was saved under).
    pub fn domain_name(&self) -> &str {
        &self.name
    }

    fn paths(&self) -> snapshot::HostPaths {
        snapshot::HostPaths {
            work_dir: self.work_dir.clone(),
            shmem: self.shmem.as_ref().map(|s| s.name.clone()),
        }
    }

    fn xml(&self, spec: &VmSpec) -> String {
        let serial_log = self.serial_log();
        let host = Host {
            accel: self.accel,
            shmem: self.shmem.as_ref().map(|s| s.name.as_str()),
            serial_log: &serial_log,
            doorbell: &self.doorbell_path,
            owner: self.owner,
        };
        domain_xml(spec, &host)
    }

    fn serial_log(&self) -> PathBuf {
        self.serial_log.clone()
    }

    /// The state, with what libvirt reported since: a domain suspended, resumed, ended, saved
    /// or restored behind the adapter's back (virsh) shows as such.
    fn state(&self) -> VmState {
        if matches!(self.state, VmState::Stopped | VmState::Exited) {
            return self.state;
        }
        let seen = self.lifecycle.get(&self.name);
        // An operator's domain starts its own processes; the adapter's start only its own.
        let started = self.lifecycle.started(&self.name);
        let foreign = self.owned && started.is_some() && started != self.process;
        match (self.state, seen) {
            (_, Some(Seen::Gone(_))) => VmState::Exited,
            (_, Some(Seen::Saved)) => VmState::Saved,
            (_, Some(Seen::Running | Seen::Paused)) if foreign => VmState::Restored,
            (VmState::Running | VmState::Created, Some(Seen::Paused)) if !self.owned => {
                VmState::Paused
            }
            (VmState::Created, Some(Seen::Running)) if !self.owned => VmState::Running,
            (VmState::Running, Some(Seen::Paused)) => VmState::Paused,
            (VmState::Paused, Some(Seen::Running)) => VmState::Running,
            (state, _) => state,
        }
    }

    /// The domain, looked up by name the first time for an operator's.
    fn domain(&mut self, op: &'static str) -> Result<&Domain, VmmError> {
        if self.domain.is_none() && !self.owned && self.state != VmState::Stopped {
            let found = Domain::lookup_by_name(&self.conn, &self.name)
                .map_err(api(&self.name, "find the domain"))?;
            self.domain = Some(found);
        }
        let wrong = self.wrong_state(op);
        self.domain.as_ref().ok_or(wrong)
    }

    /// Takes the QEMU process a `virsh restore` started as this VM's own, paused: the
    /// region holds what the save image held, for the owner to serve afresh.
    fn adopt_restored(&mut self) -> Result<(), VmmError> {
        let started = self.lifecycle.started(&self.name);
        self.domain("pause")?.suspend().map_err(api(&self.name, "pause the restored domain"))?;
        self.process = started;
        self.state = VmState::Paused;
        self.lifecycle.set(&self.name, Seen::Paused);
        tracing::info!(vm = self.name, "Adopted the domain's restored QEMU process");
        Ok(())
    }

    /// Undoes a half-made VM and turns libvirt's error into a start-up error.
    fn start_failed(&mut self, what: &str, error: virt::error::Error) -> VmmError {
        let _ = self.stop();
        VmmError::Spawn {
            vm: self.name.clone(),
            vmm: NAME,
            reason: format!("cannot {what}: {}", error.message()),
            stderr_tail: crate::serial::tail_lines(
                &Path::new("/var/log/libvirt/qemu").join(format!("{}.log", self.name)),
                10,
            ),
        }
    }

    fn transition(
        &mut self,
        op: &'static str,
        from: &[VmState],
        to: VmState,
    ) -> Result<(), VmmError> {
        match self.state() {
            state if state == to => return Ok(()),
            state if from.contains(&state) => {}
            _ => return Err(self.wrong_state(op)),
        }
        let domain = self.domain(op)?;
        let done = match to {
            VmState::Paused => domain.suspend(),
            _ => domain.resume(),
        };
        done.map_err(api(&self.name, op))?;
        self.state = to;
        let seen = if to == VmState::Paused { Seen::Paused } else { Seen::Running };
        self.lifecycle.set(&self.name, seen);
        Ok(())
    }

    fn wrong_state(&self, op: &'static str) -> VmmError {
        VmmError::WrongState { vm: self.name.clone(), op, state: self.state() }
    }
}

impl Vm for LibvirtVm {
    fn boot(&mut self) -> Result<(), VmmError> {
        self.transition("boot", &[VmState::Created], VmState::Running)
    }

    fn pause(&mut self) -> Result<(), VmmError> {
        if self.state() == VmState::Restored {
            return self.adopt_restored();
        }
        self.transition("pause", &[VmState::Running], VmState::Paused)
    }

    fn resume(&mut self) -> Result<(), VmmError> {
        self.transition("resume", &[VmState::Paused], VmState::Running)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<Snapshot, VmmError> {
        if self.state() != VmState::Paused || !self.owned {
            // An operator's domain is theirs to save.
            return Err(self.wrong_state("snapshot"));
        }
        let domain = self.domain.as_ref().ok_or_else(|| self.wrong_state("snapshot"))?;
        let manifest = snapshot::Manifest::new(&self.name, self.accel, self.paths());
        let taken = snapshot::take(&self.conn, domain, dir, manifest)?;
        // The save ended the QEMU process and the restore started another.
        let restored = Domain::lookup_by_name(&self.conn, &self.name)
            .map_err(api(&self.name, "find the restored domain"))?;
        self.process = restored.get_id();
        if let Some(id) = self.process {
            if !self.lifecycle.wait_started(&self.name, id, EVENT_TIMEOUT) {
                tracing::warn!(vm = self.name, "libvirt sent no event for the restored domain");
            }
        }
        self.domain = Some(restored);
        self.lifecycle.set(&self.name, Seen::Paused);
        Ok(taken)
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        if let Some(domain) = self.domain.take().filter(|_| self.owned) {
            // Not running (destroyed with virsh, or never started) is fine.
            if domain.is_active().unwrap_or(false) {
                domain.destroy().map_err(api(&self.name, "destroy the domain"))?;
            }
            if let Err(error) = domain.undefine() {
                if domain.is_persistent().unwrap_or(false) {
                    return Err(api(&self.name, "undefine the domain")(error));
                }
            }
        }
        self.state = VmState::Stopped;
        if let Some(link) = self.shmem.as_ref().and_then(|s| s.link.as_ref()) {
            let _ = std::fs::remove_file(link);
        }
        self.lifecycle.forget(&self.name);
        Ok(())
    }

    fn info(&self) -> VmInfo {
        let state = self.state();
        let pid = match state {
            VmState::Created | VmState::Running | VmState::Paused | VmState::Restored => {
                std::fs::read_to_string(Path::new(PID_DIR).join(format!("{}.pid", self.name)))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
            }
            _ => None,
        };
        VmInfo {
            name: self.name.clone(),
            vmm: NAME,
            accel: self.accel,
            state,
            pid,
            serial_log: self.serial_log(),
        }
    }

    fn serial_tail(&self, lines: usize) -> String {
        crate::serial::tail_lines(&self.serial_log(), lines)
    }

    fn doorbell(&mut self) -> Result<UnixStream, VmmError> {
        let Some(relay) = &self.relay else {
            let reason = "its spec asked for no doorbell".into();
            return Err(VmmError::InvalidSpec { vm: self.name.clone(), reason });
        };
        relay.host_end().map_err(VmmError::io(format!("connect the doorbell of {}", self.name)))
    }
}

impl Drop for LibvirtVm {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(vm = self.name, "Cannot stop the libvirt domain: {error}");
        }
    }
}

/// Starts a defined domain, paused.
fn defined_start(domain: Option<&Domain>) -> Result<u32, virt::error::Error> {
    let domain = domain.expect("the domain was defined");
    domain.create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
}

/// Maps a failed libvirt call `what` on VM `vm` to [`VmmError::Control`].
fn api(vm: &str, what: &str) -> impl FnOnce(virt::error::Error) -> VmmError {
    let (vm, what) = (vm.to_owned(), what.to_owned());
    move |source| VmmError::Control {
        vm,
        command: what.clone(),
        source: Box::new(LibvirtError::Api { what, source }),
    }
}
