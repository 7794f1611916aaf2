//! Per-VM CPU and memory as the host kernel sees it (eBPF probes and /proc), exported on
//! `/metrics` at each scrape.
//!
//! ```text
//!  functions: VM created ─► Backend::vm_started(region, pid) ─► Observer::track
//!  Backend::remove_region ─────────────────────────────────► Observer::forget
//!  scrape ─► Observer::encode: thread_cpu map (tid → ns) grouped per VM:
//!              VMM threads named like vCPUs ─► kind="vcpu", the VMM's others ─► kind="vmm",
//!              the region's serving thread in the backend ─► kind="backend";
//!            /proc/PID/status ─► memory by kind; /proc/PID/ksm_stat ─► merged;
//!            /sys/kernel/mm/ksm ─► node duplicated memory; kvm_exits map ─► exits by reason
//! ```
//! Series exist only for VMs that run: a VM that goes is gone from the next scrape. Labels are
//! bounded: one `vm` per running VM, `function` its function, `kind` a fixed set, `reason` the
//! kvm exit codes (fewer than a hundred). CPU is on-CPU time; cycles need a hardware PMU.
//! The backend's async storage I/O runs on shared workers and is not attributed to a VM.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use nexus_ebpf::{has_cycles_pmu, procfs, Ksm, Probes, Resident, ThreadKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use serde::Serialize;

use crate::config::ProbesConfig;

/// Whether the probes run, and what they can see on this host (`nexus status`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeStatus {
    /// `on` or `off`.
    pub state: &'static str,
    /// Why they are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the CPU series measure.
    pub cpu: &'static str,
    /// `attached`, or why KVM exits are not observed.
    pub kvm_exits: String,
}

#[derive(Debug)]
struct Vm {
    function: String,
    pid: u32,
    /// The backend thread serving the VM's region.
    serving_tid: Option<u32>,
    /// Its threads known to run vCPUs (a name read once is enough for those).
    vcpus: HashSet<u32>,
    /// On-CPU seconds of its threads that exited (their map entries are deleted), by kind.
    retired: BTreeMap<&'static str, f64>,
}

#[derive(Debug)]
struct State {
    probes: Probes,
    /// By region id (the `vm` label).
    vms: BTreeMap<String, Vm>,
}

/// The probes and the VMs they watch; a no-op when the probes are off.
#[derive(Debug)]
pub struct Observer {
    /// `None` when the probes are off.
    state: Option<Mutex<State>>,
    status: ProbeStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    vm: String,
    function: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    vm: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    reason: String,
}

/// The numbers of one scrape.
#[derive(Debug, Default)]
struct Sample {
    cpu: BTreeMap<(String, &'static str), f64>,
    memory: Vec<(KindLabels, u64)>,
    merged: Vec<(VmLabels, u64)>,
    functions: BTreeMap<String, String>,
    duplicated: Option<u64>,
    exits: Option<Vec<(String, u64)>>,
}

impl Observer {
    /// Loads the probes if `config` enables them (and the backend runs as root); otherwise an
    /// observer that says why it is off.
    pub fn start(config: &ProbesConfig) -> Self {
        let cpu = if has_cycles_pmu() {
            "on-CPU time (a cycles PMU exists; cycles are not collected yet)"
        } else {
            "on-CPU time (no hardware PMU on this host: no cycles)"
        };
        let off = |reason: String| Self {
            status: ProbeStatus {
                state: "off",
                reason: Some(reason),
                cpu,
                kvm_exits: "not observed: probes off".into(),
            },
            state: None,
        };
        if !config.enabled {
            return off("disabled in the config (probes.enabled: false)".into());
        }
        let probes = match Probes::load() {
            Ok(probes) => probes,
            Err(e) => {
                let reason = crate::storage::error_chain(&e);
                tracing::warn!("eBPF probes off: {reason}");
                return off(reason);
            }
        };
        let kvm_exits = match probes.kvm_exits() {
            Ok(_) => "attached".to_owned(),
            Err(why) => format!("not observed: {why}"),
        };
        tracing::info!(cpu, kvm_exits, "eBPF probes on");
        Self {
            status: ProbeStatus { state: "on", reason: None, cpu, kvm_exits },
            state: Some(Mutex::new(State { probes, vms: BTreeMap::new() })),
        }
    }

    /// What `nexus status` shows.
    pub fn status(&self) -> &ProbeStatus {
        &self.status
    }

    /// Starts watching the VM of region `region` (function `function`, VMM process `pid`,
    /// served by backend thread `serving_tid`).
    pub fn track(&self, region: &str, function: &str, pid: u32, serving_tid: Option<u32>) {
        let Some(state) = &self.state else { return };
        let mut state = lock(state);
        let tracked = state.probes.track(pid).and_then(|()| match serving_tid {
            Some(tid) => state.probes.track_thread(tid, std::process::id()),
            None => Ok(()),
        });
        if let Err(e) = tracked {
            tracing::warn!(region, pid, "Cannot track the VM's CPU: {e}");
        }
        let vm = Vm {
            function: function.to_owned(),
            pid,
            serving_tid,
            vcpus: HashSet::new(),
            retired: BTreeMap::new(),
        };
        state.vms.insert(region.to_owned(), vm);
    }

    /// Stops watching region `region`'s VM; its series are gone from the next scrape.
    pub fn forget(&self, region: &str) {
        let Some(state) = &self.state else { return };
        let mut state = lock(state);
        let Some(vm) = state.vms.remove(region) else { return };
        let forgotten = state.probes.untrack(vm.pid).and_then(|()| match vm.serving_tid {
            Some(tid) => state.probes.forget_thread(tid),
            None => Ok(()),
        });
        if let Err(e) = forgotten {
            tracing::warn!(region, "Cannot forget the VM's threads: {e}");
        }
    }

    /// Reads the probes' maps and /proc for every watched VM.
    fn sample(&self) -> Option<Sample> {
        let state = self.state.as_ref()?;
        let mut state = lock(state);
        let mut sample = Sample::default();
        let threads = match state.probes.threads() {
            Ok(threads) => threads,
            Err(e) => {
                tracing::warn!("Cannot read the probes' thread map: {e}");
                Vec::new()
            }
        };
        let serving: HashMap<u32, String> = state
            .vms
            .iter()
            .filter_map(|(region, vm)| Some((vm.serving_tid?, region.clone())))
            .collect();
        let mut exited = Vec::new();
        for (tid, thread) in &threads {
            let seconds = thread.oncpu_ns as f64 / 1e9;
            if let Some(region) = serving.get(tid) {
                *sample.cpu.entry((region.clone(), "backend")).or_default() += seconds;
                continue;
            }
            let Some((region, vm)) = state.vms.iter_mut().find(|(_, vm)| vm.pid == thread.tgid)
            else {
                continue;
            };
            let named = procfs::thread_kind(vm.pid, *tid);
            // Once named as a vCPU, always one (its name cannot be read after it exits).
            if named == Some(ThreadKind::Vcpu) {
                vm.vcpus.insert(*tid);
            }
            let kind = if vm.vcpus.contains(tid) { ThreadKind::Vcpu } else { ThreadKind::Vmm };
            if named.is_none() {
                // Exited: its time moves to the VM's retired sum and its entry goes, so that
                // a VMM that starts and ends worker threads does not fill the map.
                *vm.retired.entry(kind.name()).or_default() += seconds;
                vm.vcpus.remove(tid);
                exited.push(*tid);
            } else {
                *sample.cpu.entry((region.clone(), kind.name())).or_default() += seconds;
            }
        }
        for tid in exited {
            if let Err(e) = state.probes.forget_thread(tid) {
                tracing::warn!(tid, "Cannot forget an exited thread: {e}");
            }
        }
        for (region, vm) in &state.vms {
            sample.functions.insert(region.clone(), vm.function.clone());
            for kind in ["vcpu", "vmm", "backend"] {
                let retired = vm.retired.get(kind).copied().unwrap_or_default();
                *sample.cpu.entry((region.clone(), kind)).or_default() += retired;
            }
            if let Ok(resident) = Resident::of(vm.pid) {
                for (kind, bytes) in
                    [("anon", resident.anon), ("file", resident.file), ("shmem", resident.shmem)]
                {
                    let labels =
                        KindLabels { vm: region.clone(), function: vm.function.clone(), kind };
                    sample.memory.push((labels, bytes));
                }
            }
            if let Ok(merged) = procfs::ksm_merged_bytes(vm.pid) {
                let labels = VmLabels { vm: region.clone(), function: vm.function.clone() };
                sample.merged.push((labels, merged));
            }
        }
        sample.duplicated = Ksm::read().ok().map(|ksm| ksm.duplicated_bytes());
        sample.exits = state.probes.kvm_exits().ok().map(|exits| {
            let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
            for (key, count) in exits {
                *by_label.entry(key.label()).or_default() += count;
            }
            by_label.into_iter().collect()
        });
        Some(sample)
    }
}

impl Collector for Observer {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = self.sample() else { return Ok(()) };
        let mut family = encoder.encode_descriptor(
            "vm_cpu",
            "On-CPU time of each VM, by kind: its VMM's vCPU threads, its VMM's other threads, \
             the backend thread serving its region (sched_switch probe)",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for ((vm, kind), seconds) in &sample.cpu {
            let function = sample.functions.get(vm).cloned().unwrap_or_default();
            let labels = KindLabels { vm: vm.clone(), function, kind };
            ConstCounter::new(*seconds).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vm_memory",
            "Resident memory of each VM's VMM process, by kind (anon, file, shmem: they sum to its RSS)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (labels, bytes) in &sample.memory {
            ConstGauge::new(*bytes).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vm_memory_merged",
            "Memory of each VM that KSM merged with identical pages (/proc/PID/ksm_stat)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (labels, bytes) in &sample.merged {
            ConstGauge::new(*bytes).encode(family.encode_family(labels)?)?;
        }
        if let Some(bytes) = sample.duplicated {
            let metric = encoder.encode_descriptor(
                "node_duplicated_memory",
                "Memory on this node that duplicated other memory and that KSM merged \
                 (pages_sharing + ksm_zero_pages; 0 while KSM does not run)",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(bytes).encode(metric)?;
        }
        if let Some(exits) = &sample.exits {
            let mut family = encoder.encode_descriptor(
                "kvm_exits",
                "KVM exits on this node by reason, vmx_N or svm_0xN (kvm:kvm_exit probe)",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in exits {
                let labels = ExitLabels { reason: reason.clone() };
                ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

    fn exposition(observer: &Arc<Observer>) -> String {
        let metrics = Metrics::new();
        metrics.register_collector(observer.clone());
        metrics.encode()
    }

    #[test]
    fn off_unless_enabled() {
        let observer = Arc::new(Observer::start(&ProbesConfig { enabled: false }));
        let status = observer.status();
        assert_eq!(status.state, "off");
        assert!(status.reason.as_deref().unwrap().contains("probes.enabled"), "{status:?}");
        observer.track("r-1", "f", std::process::id(), None);
        assert!(!exposition(&observer).contains("nexus_vm_"));
    }

    /// Root only: a process tracked as a VM has CPU and memory series until it is forgotten.
    #[test]
    fn a_tracked_process_has_series_until_forgotten() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading eBPF probes needs root");
            return;
        }
        let observer = Arc::new(Observer::start(&ProbesConfig { enabled: true }));
        assert_eq!(observer.status().state, "on", "{:?}", observer.status());
        let mut busy = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        observer.track("fn-1", "fn", busy.id(), None);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let text = exposition(&observer);
        let _ = busy.kill();
        let _ = busy.wait();
        for series in [
            "nexus_vm_cpu_seconds_total{vm=\"fn-1\",function=\"fn\",kind=\"vmm\"} ",
            "nexus_vm_cpu_seconds_total{vm=\"fn-1\",function=\"fn\",kind=\"vcpu\"} 0.0",
            "nexus_vm_memory_bytes{vm=\"fn-1\",function=\"fn\",kind=\"anon\"} ",
            "# UNIT nexus_vm_cpu_seconds seconds",
            "# TYPE nexus_node_duplicated_memory_bytes gauge",
        ] {
            assert!(text.contains(series), "missing {series:?} in\n{text}");
        }
        let vmm = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "nexus_vm_cpu_seconds_total{vm=\"fn-1\",function=\"fn\",kind=\"vmm\"} ",
                )
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(vmm > 0.0, "no CPU seen for the busy loop:\n{text}");
        observer.forget("fn-1");
        assert!(!exposition(&observer).contains("vm=\"fn-1\""));
    }

    /// Root only: a thread that exits keeps its time in its VM's series, and leaves the map.
    #[test]
    fn exited_threads_keep_their_time_and_leave_the_map() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading eBPF probes needs root");
            return;
        }
        let observer = Arc::new(Observer::start(&ProbesConfig { enabled: true }));
        observer.track("self-1", "self", std::process::id(), None);
        let worker = std::thread::spawn(|| {
            // 300 ms of this thread's own CPU time, however busy the machine is.
            let mut cpu = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            while cpu.tv_nsec < 300_000_000 && cpu.tv_sec == 0 {
                // SAFETY: `cpu` is a valid timespec to write.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut cpu) };
            }
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() as u32 }
        });
        let tid = worker.join().unwrap();
        // Its task is released shortly after it is joined.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = exposition(&observer);
        let vmm: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "nexus_vm_cpu_seconds_total{vm=\"self-1\",function=\"self\",kind=\"vmm\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(vmm >= 0.29, "the exited thread's time is kept: {vmm}\n{text}");
        let state = lock(observer.state.as_ref().unwrap());
        assert!(state.probes.threads().unwrap().iter().all(|(t, _)| *t != tid));
        assert!(state.vms["self-1"].retired["vmm"] >= 0.29);
    }
}
