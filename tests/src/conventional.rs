//! A conventional serverless platform for one function, the baseline Nexus is measured against:
//! it plays a Lambda-style worker. Its VMs boot the baseline image with a virtio NIC on a tap,
//! receive invocations over HTTP from the worker and reach object storage over the same NIC
//! with the real boto3; they carry no Nexus device (no region, no doorbell).
//!
//! ```text
//!  host namespace                 namespace (NetNs, removed on drop)
//!  Garage 127.0.0.1 ◄── Link ◄─── 10.200.0.1:PORT (listener on br0) ◄── boto3 ┐
//!   (the storage link's model:     br0 10.200.0.1 ── tapN ── VM 10.200.0.N+2 │
//!    latency, pacing, or DIRECT)   QEMU started in here       runtime :8080 ─┘
//!  Conventional::invoke ───────── POST /invoke (HTTP/1.1, a connection per invocation) ──►
//!  LambdaFront 127.0.0.1 ◄─ Link ◄─ 10.200.0.1:PORT2 ◄── boto3 lambda.invoke (Platform::lambda)
//! ```
//!
//! A VM is started like the backend starts one (the backend's code disk and kernel command
//! line, plus `nexus.ip=` and `nexus.serve=http:8080`) and is ready when its runtime answers
//! `GET /ready`. Invocations take an idle VM (waiting for one while all are busy), one
//! invocation per VM at a time. A cold start is a restore of a snapshot of a warm VM into a new
//! QEMU on the same tap. Dropping a `Conventional` stops its VMs, then removes the namespace.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nexus_backend::functions::code_disk::{self, DiskError};
use nexus_backend::functions::{cmdline, FunctionSpec};
use nexus_plugin::qemu::{Qemu, QemuVm};
use nexus_plugin::{AccelChoice, Disk, Network, Snapshot, Vm, VmSpec, VmState, VmmError};
use serde_json::Value;

use crate::link::{Link, LinkProfile};
use crate::netns::{NetNs, NetnsError, Tap, GATEWAY};
use crate::HarnessError;

/// The port the in-guest runtime serves invocations on.
pub const RUNTIME_PORT: u16 = 8080;
/// The header the runtime sets on the answer of a handler that raised (Lambda's).
const FUNCTION_ERROR: &str = "x-amz-function-error";
/// How often a starting VM's runtime is asked whether it is ready.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a connection to a runtime may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one readiness check may take, connection included: a SYN sent before the guest's
/// NIC is up is lost, and waiting for the kernel's retransmission (1 s, then 3 s) would add
/// seconds to the boot the platform reports.
const READY_TIMEOUT: Duration = Duration::from_millis(250);
/// How long an answer may take beyond the function's timeout.
const ANSWER_GRACE: Duration = Duration::from_secs(30);
/// Console lines an error carries.
const SERIAL_LINES: usize = 30;

/// Errors of the conventional platform.
#[derive(Debug, thiserror::Error)]
pub enum ConventionalError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("Cannot build the code disk")]
    CodeDisk(#[from] DiskError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// A VM's runtime did not become ready.
    #[error("VM {vm} not ready: {reason}\n--- console (tail) ---\n{serial}")]
    NotReady { vm: String, reason: String, serial: String },
    /// An invocation's exchange with a runtime failed.
    #[error("Invocation on {addr} failed: {reason}")]
    Exchange { addr: SocketAddr, reason: String },
    /// The handler raised (the body is Lambda's error shape).
    #[error("The handler failed: {0}")]
    Handler(String),
    /// There is no VM to invoke or snapshot.
    #[error("The function has no running VM: add one first")]
    NoVm,
}

/// What a conventional platform needs besides the function.
#[derive(Debug, Clone)]
pub struct Platform {
    /// The baseline image's bzImage, initrd and root file system.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// Holds the code disk, packages and one folder per VM (created).
    pub work_dir: PathBuf,
    /// The prefix of the network namespace's name (`nexus-bench`: `nexus-bench-PID-N`).
    pub netns_prefix: String,
    pub accel: AccelChoice,
    /// TCG's translation cache per VM, MiB, as the backend's `vm.tcg_cache_mib`.
    pub tcg_cache_mib: Option<u32>,
    /// The object store on the host (Garage's S3 port on loopback).
    pub storage: SocketAddr,
    /// The link between the VMs and the store, as the backend's: [`LinkProfile::DIRECT`] for
    /// storage on loopback.
    pub link: LinkProfile,
    pub link_seed: u64,
    /// A Lambda Invoke endpoint on the host ([`crate::LambdaFront`]) that the VMs' boto3 reaches
    /// through a listener in the namespace, for calls to other functions; `None`: no calls.
    pub lambda: Option<SocketAddr>,
    /// How long a VM may take to boot until its runtime answers.
    pub boot_timeout: Duration,
}

/// A saved warm VM, which [`Conventional::restore`] brings back on its tap.
#[derive(Debug, Clone)]
pub struct Saved {
    pub snapshot: Snapshot,
    slot: usize,
}

/// A VM brought back from a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// QEMU's pid.
    pub pid: u32,
    /// From the restore's start until the runtime answered.
    pub ready_in: Duration,
}

/// The platform: its namespace, storage link and VMs.
#[derive(Debug)]
pub struct Conventional {
    spec: FunctionSpec,
    platform: Platform,
    code: PathBuf,
    qemu: Qemu,
    /// One per tap; `vm` is `None` while saved. Field order: VMs stop before the namespace.
    slots: Vec<Slot>,
    idle: Mutex<VecDeque<usize>>,
    released: Condvar,
    _link: Link,
    _lambda_link: Option<Link>,
    netns: NetNs,
}

#[derive(Debug)]
struct Slot {
    tap: Tap,
    vm: Option<QemuVm>,
    pid: u32,
}

impl Conventional {
    /// Sets up the platform for `spec` (its `environment` holds the store's credentials and
    /// region): the namespace, the storage listener in it, the code disk and the QEMU adapter.
    /// No VM yet.
    pub fn start(mut spec: FunctionSpec, platform: Platform) -> Result<Self, ConventionalError> {
        std::fs::create_dir_all(&platform.work_dir)
            .map_err(HarnessError::io(format!("create {}", platform.work_dir.display())))?;
        let netns = NetNs::for_this_run(&platform.netns_prefix)?;
        let listen = |what: &str| -> Result<TcpListener, ConventionalError> {
            let bound = netns.run(|| TcpListener::bind((GATEWAY, 0)))?;
            let failed = HarnessError::io(format!("bind {what} in namespace {}", netns.name()));
            Ok(bound.map_err(failed)?)
        };
        // Made here, in the host namespace: the links' connections to the host start here.
        let listener = listen("the storage link")?;
        let link = Link::start_on(listener, platform.storage, platform.link, platform.link_seed)?;
        spec.environment.insert("AWS_ENDPOINT_URL".into(), format!("http://{}", link.addr));
        let lambda_link = match platform.lambda {
            Some(front) => {
                let listener = listen("the Lambda endpoint's link")?;
                let link = Link::start_on(listener, front, LinkProfile::DIRECT, 0)?;
                let endpoint = format!("http://{}", link.addr);
                spec.environment.insert("AWS_ENDPOINT_URL_LAMBDA".into(), endpoint);
                Some(link)
            }
            None => None,
        };
        let code =
            code_disk::build(&spec, &platform.work_dir, &platform.work_dir.join("packages"))?;
        // The adapter's spawner thread starts inside the namespace: every QEMU is forked there.
        let qemu = netns.run(Qemu::new)??.with_tcg_cache(platform.tcg_cache_mib);
        Ok(Conventional {
            spec,
            platform,
            code,
            qemu,
            slots: Vec::new(),
            idle: Mutex::default(),
            released: Condvar::new(),
            _link: link,
            _lambda_link: lambda_link,
            netns,
        })
    }

    /// Boots one more VM on a new tap and waits until its runtime answers; returns QEMU's pid.
    pub fn add(&mut self) -> Result<u32, ConventionalError> {
        let tap = self.netns.add_tap()?;
        let spec = self.vm_spec(&tap, self.slots.len());
        let mut vm = self.qemu.create_vm(&spec)?;
        vm.boot()?;
        let pid = self.ready(&vm, &tap)?;
        self.slots.push(Slot { tap, vm: Some(vm), pid });
        self.lock_idle().push_back(self.slots.len() - 1);
        self.released.notify_one();
        Ok(pid)
    }

    /// Invokes the function with `event` on an idle VM (waiting for one while all are busy);
    /// returns the handler's result. Callable from many threads at once.
    pub fn invoke(&self, event: &Value) -> Result<Value, ConventionalError> {
        let slot = self.take_idle()?;
        let addr = SocketAddr::from((self.slots[slot].tap.guest, RUNTIME_PORT));
        let timeout = Duration::from_secs(self.spec.timeout_secs) + ANSWER_GRACE;
        // A runtime that timed out restarts: its port refuses connections until it is ready.
        let patience = self.platform.boot_timeout;
        let body = event.to_string();
        let answer = self.exchange(addr, "POST", "/invoke", body.as_bytes(), patience, timeout);
        self.lock_idle().push_back(slot);
        self.released.notify_one();
        let answer = answer?;
        if answer.status != 200 {
            let reason = format!("HTTP {}: {}", answer.status, answer.body);
            return Err(ConventionalError::Exchange { addr, reason });
        }
        if answer.function_error {
            return Err(ConventionalError::Handler(answer.body));
        }
        serde_json::from_str(&answer.body).map_err(|e| ConventionalError::Exchange {
            addr,
            reason: format!("the result is not JSON ({e}): {}", answer.body),
        })
    }

    /// The QEMU processes of the running VMs.
    pub fn pids(&self) -> Vec<u32> {
        self.slots.iter().filter(|s| s.vm.is_some()).map(|s| s.pid).collect()
    }

    /// The network namespace's name.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// Saves the most recently added running VM into `dir` and stops it; its tap stays for
    /// [`Conventional::restore`].
    pub fn snapshot(&mut self, dir: &Path) -> Result<Saved, ConventionalError> {
        let slot =
            self.slots.iter().rposition(|s| s.vm.is_some()).ok_or(ConventionalError::NoVm)?;
        let mut vm = self.slots[slot].vm.take().ok_or(ConventionalError::NoVm)?;
        self.lock_idle().retain(|&s| s != slot);
        vm.pause()?;
        let snapshot = vm.snapshot(dir)?;
        vm.stop()?;
        Ok(Saved { snapshot, slot })
    }

    /// Restores `saved` into a new QEMU on its tap (stopping a VM restored there before),
    /// resumes it and waits until its runtime answers; `ready_in` times that from the new
    /// QEMU's start.
    pub fn restore(&mut self, saved: &Saved) -> Result<Restored, ConventionalError> {
        let slot = saved.slot;
        self.lock_idle().retain(|&s| s != slot);
        if let Some(mut earlier) = self.slots[slot].vm.take() {
            earlier.stop()?;
        }
        let started = Instant::now();
        let tap = self.slots[slot].tap.clone();
        let mut vm = self.qemu.restore_vm(&self.vm_spec(&tap, slot), &saved.snapshot)?;
        vm.resume()?;
        let pid = self.ready(&vm, &tap)?;
        self.slots[slot].vm = Some(vm);
        self.slots[slot].pid = pid;
        self.lock_idle().push_back(slot);
        self.released.notify_one();
        Ok(Restored { pid, ready_in: started.elapsed() })
    }

    /// The spec of VM number `index` on `tap`.
    fn vm_spec(&self, tap: &Tap, index: usize) -> VmSpec {
        let name = format!("{}-conventional-{index}", self.spec.name);
        let work = self.platform.work_dir.join(&name);
        let mut vm = VmSpec::new(name, &self.platform.kernel, work);
        vm.function = Some(self.spec.name.clone());
        vm.initrd = Some(self.platform.initrd.clone());
        let serve = format!("nexus.serve=http:{RUNTIME_PORT}");
        vm.cmdline = format!("{} {} {serve}", cmdline(&self.spec), tap.kernel_param());
        vm.disks = vec![
            Disk { path: self.platform.rootfs.clone(), read_only: true },
            Disk { path: self.code.clone(), read_only: true },
        ];
        vm.memory_mib = self.spec.memory_mib;
        vm.vcpus = self.spec.vcpus;
        vm.network = Some(Network::Tap { ifname: tap.name.clone(), mac: tap.mac.clone() });
        vm.accel = self.platform.accel;
        vm
    }

    /// Waits until the runtime of `vm` on `tap` answers `GET /ready`; returns QEMU's pid.
    fn ready(&self, vm: &QemuVm, tap: &Tap) -> Result<u32, ConventionalError> {
        let info = vm.info();
        let not_ready = |reason: String| ConventionalError::NotReady {
            vm: info.name.clone(),
            reason,
            serial: vm.serial_tail(SERIAL_LINES),
        };
        let addr = SocketAddr::from((tap.guest, RUNTIME_PORT));
        let deadline = Instant::now() + self.platform.boot_timeout;
        loop {
            match self.exchange(addr, "GET", "/ready", b"", Duration::ZERO, READY_TIMEOUT) {
                Ok(answer) if answer.status == 200 => break,
                Ok(_) | Err(_) if Instant::now() < deadline => thread::sleep(READY_POLL),
                Ok(answer) => {
                    return Err(not_ready(format!("GET /ready answered {}", answer.status)))
                }
                Err(error) => return Err(not_ready(format!("{error}"))),
            }
            if vm.info().state != VmState::Running {
                return Err(not_ready("QEMU exited".into()));
            }
        }
        info.pid.ok_or_else(|| not_ready("QEMU has no pid".into()))
    }

    /// One HTTP/1.1 request on a connection of its own, opened inside the namespace; a refused
    /// connection is tried again for up to `patience`; the answer may take `timeout` (and the
    /// connection up to `timeout` or [`CONNECT_TIMEOUT`], the shorter).
    fn exchange(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
        patience: Duration,
        timeout: Duration,
    ) -> Result<Answer, ConventionalError> {
        let failed = |e: io::Error| ConventionalError::Exchange { addr, reason: e.to_string() };
        let deadline = Instant::now() + patience;
        let connect = || loop {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT.min(timeout)) {
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    thread::sleep(READY_POLL)
                }
                done => return done,
            }
        };
        let mut stream = self.netns.run(connect)?.map_err(failed)?;
        stream.set_read_timeout(Some(timeout)).map_err(failed)?;
        stream.set_nodelay(true).map_err(failed)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).map_err(failed)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(failed)?;
        Answer::parse(&response).ok_or_else(|| ConventionalError::Exchange {
            addr,
            reason: format!("not an HTTP answer: {:?}", String::from_utf8_lossy(&response)),
        })
    }

    /// An idle VM's slot, waiting while all are busy.
    fn take_idle(&self) -> Result<usize, ConventionalError> {
        let mut idle = self.lock_idle();
        loop {
            if let Some(slot) = idle.pop_front() {
                return Ok(slot);
            }
            if self.slots.iter().all(|s| s.vm.is_none()) {
                return Err(ConventionalError::NoVm);
            }
            idle = self.released.wait(idle).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, VecDeque<usize>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a runtime answered: status, whether the handler raised, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    function_error: bool,
    body: String,
}

impl Answer {
    /// Parses a whole HTTP/1.1 response (the connection closed after it).
    fn parse(response: &[u8]) -> Option<Answer> {
        let text = String::from_utf8_lossy(response);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let function_error = lines
            .filter_map(|line| line.split_once(':'))
            .any(|(name, _)| name.trim().eq_ignore_ascii_case(FUNCTION_ERROR));
        Some(Answer { status, function_error, body: body.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_answer_and_its_error_header() {
        let ok = Answer::parse(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((ok.status, ok.function_error, ok.body.as_str()), (200, false, "{}"));
        let raised = b"HTTP/1.1 200 OK\r\nX-Amz-Function-Error: Unhandled\r\n\r\n{\"e\":1}";
        assert!(Answer::parse(raised).unwrap().function_error);
        assert!(Answer::parse(b"garbage").is_none());
    }
}
