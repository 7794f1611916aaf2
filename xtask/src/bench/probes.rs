//! What the eBPF probes see during `bench vm` when it runs as root (the backend then runs with
//! `probes.enabled`): each VM's CPU by kind beside /proc's figure for its VMM (the cross-check),
//! the sched_switch probe's own cost per event and its share of the CPUs, and the memory of
//! each VM that KSM finds duplicated.

use std::time::{Duration, Instant};

use anyhow::Result;
use nexus_ebpf::{ksmd_cpu_time, loaded_sched_cost, procfs, Ksm, KsmScanning, ProgramCost};
use nexus_tests::Backend;

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
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One VM's CPU counters at one moment.
#[derive(Debug, Clone)]
pub struct CpuReading {
    /// vCPU and other VMM threads, from the probe (s).
    vmm_s: f64,
    /// The backend thread serving the VM's region, from the probe (s).
    backend_s: f64,
    /// The VMM process, from /proc/PID/stat (s).
    proc_s: f64,
    cost: Option<ProgramCost>,
    at: Instant,
}

/// What one VM used between two readings.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub vmm_s: f64,
    pub backend_s: f64,
    pub proc_s: f64,
    /// The sched_switch probe's mean cost per event (ns), across the node.
    pub ns_per_event: f64,
    /// The probe's share of all CPUs' time.
    pub cpu_share: f64,
}

impl CpuReading {
    /// Reads the VM of `region` (VMM `pid`) from the backend's `/metrics` and from /proc.
    pub fn take(backend: &Backend, region: &str, pid: u32) -> Result<Self> {
        let vm = format!("vm=\"{region}\"");
        let seconds = |kind: &str| {
            backend.metric("nexus_vm_cpu_seconds_total", &[&vm, &format!("kind=\"{kind}\"")])
        };
        Ok(Self {
            vmm_s: seconds("vcpu")? + seconds("vmm")?,
            backend_s: seconds("backend")?,
            proc_s: procfs::cpu_time(pid)?.as_secs_f64(),
            cost: loaded_sched_cost()?,
            at: Instant::now(),
        })
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Self) -> CpuUse {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = (later.at - self.at).as_secs_f64();
        let (ns_per_event, cpu_share) = match (self.cost, later.cost) {
            (Some(a), Some(b)) if b.runs > a.runs => {
                let spent = (b.run_time - a.run_time).as_secs_f64();
                (spent * 1e9 / (b.runs - a.runs) as f64, spent / (wall * cpus))
            }
            _ => (f64::NAN, f64::NAN),
        };
        CpuUse {
            vmm_s: later.vmm_s - self.vmm_s,
            backend_s: later.backend_s - self.backend_s,
            proc_s: later.proc_s - self.proc_s,
            ns_per_event,
            cpu_share,
        }
    }
}

/// What KSM found.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Bytes of each VM merged (`ksm_merging_pages`).
    pub per_vm: Vec<u64>,
    /// The node's duplicated bytes.
    pub node: u64,
    /// KSM's passes until its merging settled, ksmd's CPU time for them, and their wall time.
    pub passes: u64,
    pub ksmd_cpu: Option<Duration>,
    pub took: Duration,
}

/// Lets KSM scan until its merging of `pids` settles, then reads how many bytes of each it
/// merged, and the node's duplicated bytes.
pub fn merged_after_ksm(pids: &[u32]) -> Result<Merged> {
    let cpu_before = ksmd_cpu_time();
    let scanning = KsmScanning::start(KSM_PAGES_PER_WAKE, KSM_SLEEP_MS)?;
    println!("bench: waiting for KSM's merging to settle");
    let settled = scanning.settle(pids, KSM_MIN_PASSES, KSM_MAX_PASSES, KSM_PATIENCE)?;
    Ok(Merged {
        per_vm: settled.merged,
        node: Ksm::read()?.duplicated_bytes(),
        passes: settled.passes,
        ksmd_cpu: ksmd_cpu_time().zip(cpu_before).map(|(after, before)| after - before),
        took: settled.took,
    })
}
