//! What the eBPF probes see during `bench vm` and `bench` when they run as root (the backend
//! then runs with `probes.enabled`): VMs' CPU by kind beside /proc's figure for their VMMs (the
//! cross-check), the sched_switch probe's own cost per event and its share of the CPUs, and the
//! memory of each VM that KSM finds duplicated — all read from the backend's `/metrics` but the
//! probe's cost, which is the kernel's run-time statistics of its program.

use std::time::{Duration, Instant};

use anyhow::Result;
use nexus_ebpf::{ksmd_cpu_time, loaded_sched_cost, procfs, KsmScanning, ProgramCost};
use nexus_tests::Backend;

use super::report::seconds;
use super::stack::{is_root, WarmVm};

/// The backend settings that turn the probes on.
pub const SETTINGS: &str = "probes: { enabled: true }\n";
/// KSM's pace while the bench waits for its passes.
const KSM_PAGES_PER_WAKE: u64 = 4000;
const KSM_SLEEP_MS: u64 = 10;
const KSM_MIN_PASSES: u64 = 3;
const KSM_MAX_PASSES: u64 = 20;
const KSM_PATIENCE: Duration = Duration::from_secs(300);

/// Whether the probes can run (they need root).
pub fn available() -> bool {
    is_root()
}

/// Whether the backend's probes are on (`nexus status`); says why not if they are off.
pub fn on(backend: &Backend) -> Result<bool> {
    let status = backend.api("GET", "/v1/status", None)?;
    let probes = &status["probes"];
    if probes["state"] == "on" {
        return Ok(true);
    }
    println!("bench: the backend's eBPF probes are off: {}", probes["reason"]);
    Ok(false)
}

/// Some VMs' CPU counters at one moment, summed.
#[derive(Debug, Clone)]
pub struct CpuReading {
    /// vCPU and other VMM threads, from the probe (s).
    vmm_s: f64,
    /// The backend threads serving the VMs' regions, from the probe (s).
    backend_s: f64,
    /// The VMM processes, from /proc/PID/stat (s).
    proc_s: f64,
    cost: Option<ProgramCost>,
    at: Instant,
}

/// What some VMs used between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub vmm_s: f64,
    pub backend_s: f64,
    pub proc_s: f64,
    /// The sched_switch probe's run time across the node (s), its runs (one per context
    /// switch), and all CPUs' time over the span (s).
    pub probe_s: f64,
    pub probe_runs: u64,
    pub cpus_s: f64,
}

impl CpuUse {
    /// The probe's mean cost per event, ns.
    pub fn ns_per_event(&self) -> f64 {
        self.probe_s * 1e9 / self.probe_runs as f64
    }

    /// The probe's share of all CPUs' time.
    pub fn cpu_share(&self) -> f64 {
        self.probe_s / self.cpus_s
    }

    /// Both spans together.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            vmm_s: self.vmm_s + other.vmm_s,
            backend_s: self.backend_s + other.backend_s,
            proc_s: self.proc_s + other.proc_s,
            probe_s: self.probe_s + other.probe_s,
            probe_runs: self.probe_runs + other.probe_runs,
            cpus_s: self.cpus_s + other.cpus_s,
        }
    }
}

impl CpuReading {
    /// Reads `vms` from the backend's `/metrics` and from /proc.
    pub fn take(backend: &Backend, vms: &[WarmVm]) -> Result<Self> {
        let mut reading = Self {
            vmm_s: 0.0,
            backend_s: 0.0,
            proc_s: 0.0,
            cost: loaded_sched_cost()?,
            at: Instant::now(),
        };
        for vm in vms {
            let label = format!("vm=\"{}\"", vm.region);
            let seconds = |kind: &str| {
                let kind = format!("kind=\"{kind}\"");
                backend.metric("nexus_vm_cpu_seconds_total", &[&label, &kind])
            };
            reading.vmm_s += seconds("vcpu")? + seconds("vmm")?;
            reading.backend_s += seconds("backend")?;
            reading.proc_s += procfs::cpu_time(vm.pid)?.as_secs_f64();
        }
        Ok(reading)
    }

    /// What was used from `self` to `later` (the probe's cost is NaN where run-time
    /// statistics were off).
    pub fn until(&self, later: &Self) -> CpuUse {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (probe_s, probe_runs) = match (self.cost, later.cost) {
            (Some(a), Some(b)) if b.runs > a.runs => {
                ((b.run_time.saturating_sub(a.run_time)).as_secs_f64(), b.runs - a.runs)
            }
            _ => (f64::NAN, 0),
        };
        CpuUse {
            vmm_s: later.vmm_s - self.vmm_s,
            backend_s: later.backend_s - self.backend_s,
            proc_s: later.proc_s - self.proc_s,
            probe_s,
            probe_runs,
            cpus_s: (later.at - self.at).as_secs_f64() * cpus,
        }
    }
}

/// What the probes saw of one flavour's VMs in `cargo xtask bench`.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Over the measured window.
    pub cpu: CpuUse,
    /// After it, once KSM settled.
    pub merged: Merged,
}

/// What KSM found.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Bytes of each VM merged (`nexus_vm_memory_merged_bytes`).
    pub per_vm: Vec<f64>,
    /// The node's duplicated bytes (`nexus_node_duplicated_memory_bytes`).
    pub node: f64,
    /// KSM's passes until its merging settled, ksmd's CPU time for them, and their wall time.
    pub passes: u64,
    pub ksmd_cpu: Option<Duration>,
    pub took: Duration,
}

impl Merged {
    /// ksmd's CPU time for the passes, as the notes show it.
    pub fn ksmd_cpu_shown(&self) -> String {
        self.ksmd_cpu.map_or("?".into(), |cpu| seconds(cpu.as_secs_f64()))
    }
}

/// Lets KSM scan (it runs while this waits, then goes back to its previous settings) until
/// its merging of the VMMs `pids` settles, then reads how many bytes of each it merged (their
/// `/proc/PID/ksm_stat`, what the backend exports as `nexus_vm_memory_merged_bytes` for its
/// own VMs, read directly so that VMs the backend does not run count alike) and, from the
/// backend's `/metrics`, the node's duplicated bytes.
pub fn merged_after_ksm(backend: &Backend, pids: &[u32]) -> Result<Merged> {
    let cpu_before = ksmd_cpu_time();
    let scanning = KsmScanning::start(KSM_PAGES_PER_WAKE, KSM_SLEEP_MS)?;
    println!("bench: waiting for KSM's merging to settle");
    let settled = scanning.settle(pids, KSM_MIN_PASSES, KSM_MAX_PASSES, KSM_PATIENCE)?;
    let merged = |&pid: &u32| procfs::ksm_merged_bytes(pid).map(|bytes| bytes as f64);
    Ok(Merged {
        per_vm: pids.iter().map(merged).collect::<Result<_, _>>()?,
        node: backend.metric("nexus_node_duplicated_memory_bytes", &[])?,
        passes: settled.passes,
        ksmd_cpu: ksmd_cpu_time().zip(cpu_before).map(|(after, before)| after - before),
        took: settled.took,
    })
}
