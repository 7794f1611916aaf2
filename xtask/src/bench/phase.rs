//! One flavour of one function under load, for `cargo xtask bench`: deploy the function with
//! `max_vms` N, boot its N VMs (N invocations at once), warm them up, then repeat a measured
//! window R times — a fixed rate for a fixed time with up to N invocations in flight (so the
//! backend spreads them over its VMs) while the node's CPU, every host process serving them and
//! (as root) the probes are counted, and the VMs' memory read after it — then (with the probes)
//! see what KSM finds duplicated, time cold starts from a snapshot, and remove the function.
//! The node's idle floors around the phase are measured by the caller, between phases.
//!
//! ```text
//!  floor │ deploy, boot N │ warm-up │ rep 1 │ rep 2 │ … rep R │ KSM │ cold × C │ remove │ floor
//!                                     └ CPU, latencies, memory, machine reference per rep ┘
//! ```

use std::time::Duration;

use anyhow::{Context, Result};

use super::load;
use super::measure::{accel_of, cpu_time, rss_kib, VmmMemory};
use super::node_cpu::{NodeCpu, NodeMeter, Span};
use super::platform::Vms;
use super::probes::{self, CpuReading, Seen};
use super::reference::Reference;
use super::stack::Stack;
use super::stats::mean;
use super::workload::Function;
use crate::image::Flavour;

/// How to load a phase.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub vms: usize,
    /// Invocations per second over all the VMs.
    pub rate: f64,
    pub warm_up: Duration,
    /// The length of each measured window, and how many there are.
    pub duration: Duration,
    pub reps: usize,
    pub cold_rounds: usize,
    pub seed: u64,
}

/// One measured window of a phase.
#[derive(Debug, Clone)]
pub struct Rep {
    /// Latencies of the measured invocations, seconds from their planned arrival.
    pub warm: Vec<f64>,
    /// The latest any measured invocation was sent (its VM still busy), seconds.
    pub max_lag: f64,
    /// The whole machine's CPU over the window (from the first measured arrival's start until
    /// the last answer and, for Nexus, until its writes were uploaded).
    pub node: Span,
    /// CPU seconds of the VMs' QEMU processes over the window.
    pub qemu_cpu: f64,
    /// CPU seconds of the backend over the window.
    pub backend_cpu: f64,
    /// Per VM, after the window: its VMM's memory, and the guest's own view.
    pub qemu_memory: Vec<VmmMemory>,
    pub guest_used_kib: Vec<f64>,
    /// The backend's RSS with these VMs running, after the window.
    pub backend_rss_kib: f64,
    /// The machine's speed over the window: mean CPU seconds of the reference work
    /// (`reference.rs`).
    pub reference: f64,
}

/// What one flavour of one function measured.
#[derive(Debug, Clone)]
pub struct Phase {
    pub function: Function,
    pub flavour: Flavour,
    pub accel: String,
    pub reps: Vec<Rep>,
    /// The node's idle floors without the VMs, just before the phase and just after it.
    pub floors: (Span, Span),
    /// Cold starts: restore + first invocation, end to end, and the VM start alone; seconds.
    pub cold: Vec<f64>,
    pub cold_start: Vec<f64>,
    /// Cold starts after which the VM's console shows that the guest's runtime exited and was
    /// restarted by the agent (so the start included a fresh runtime start).
    pub cold_runtime_restarts: usize,
    /// What the probes saw over all the windows, when they ran.
    pub seen: Option<Seen>,
}

impl Rep {
    /// Invocations in the window.
    pub fn invocations(&self) -> usize {
        self.warm.len()
    }

    /// `seconds` of CPU over the window, per invocation.
    pub fn per_invocation(&self, seconds: f64) -> f64 {
        seconds / self.invocations() as f64
    }

    /// The mean over the VMs of one figure of their VMM's memory, KiB.
    pub fn vmm_kib(&self, figure: fn(&VmmMemory) -> f64) -> f64 {
        mean(&self.qemu_memory.iter().map(figure).collect::<Vec<_>>())
    }
}

impl Phase {
    pub fn nexus(&self) -> bool {
        self.flavour == Flavour::Nexus
    }

    /// Invocations over all the windows.
    pub fn invocations(&self) -> usize {
        self.reps.iter().map(Rep::invocations).sum()
    }

    /// The latencies of all the windows together.
    pub fn warm(&self) -> Vec<f64> {
        self.reps.iter().flat_map(|r| r.warm.iter().copied()).collect()
    }

    /// `figure` of each window.
    pub fn per_rep(&self, figure: impl Fn(&Rep) -> f64) -> Vec<f64> {
        self.reps.iter().map(figure).collect()
    }

    /// The node's CPU over `rep` and the floors around the phase.
    pub fn node(&self, rep: &Rep) -> NodeCpu {
        NodeCpu { window: rep.node, before: self.floors.0, after: self.floors.1 }
    }

    /// The node's CPU per invocation in `rep`: the whole machine beyond its idle floor.
    pub fn node_cpu_per_invocation(&self, rep: &Rep) -> f64 {
        rep.per_invocation(self.node(rep).beyond_floor())
    }

    /// The CPU seconds of `rep` counted per process for the flavour: its QEMU processes, and
    /// the backend for Nexus.
    pub fn process_cpu(&self, rep: &Rep) -> f64 {
        rep.qemu_cpu + if self.nexus() { rep.backend_cpu } else { 0.0 }
    }

    /// The backend's memory charged to each VM after `rep`: its RSS over the Nexus VMs (none
    /// for the baseline, whose I/O does not go through it).
    pub fn backend_share_kib(&self, rep: &Rep) -> f64 {
        if self.nexus() {
            rep.backend_rss_kib / rep.qemu_memory.len() as f64
        } else {
            0.0
        }
    }

    /// The memory a VM costs the host after `rep`: its QEMU's PSS without TCG's translation
    /// cache (memory a KVM host does not spend), and for Nexus its share of the backend.
    pub fn host_memory_per_vm_kib(&self, rep: &Rep) -> f64 {
        rep.vmm_kib(|m| m.without_translation_cache().pss_kib) + self.backend_share_kib(rep)
    }
}

/// The node and its counters, for [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    pub stack: &'a Stack,
    pub node: &'a NodeMeter,
    /// The backend's probes are on.
    pub probes: bool,
}

/// Runs `function` in `load.vms` VMs of `flavour` after the idle floor `before`; see the
/// module doc. The floor after it is the caller's to fill in.
pub fn run(
    meters: Meters,
    function: Function,
    flavour: Flavour,
    load: &Load,
    before: Span,
) -> Result<Phase> {
    let stack = meters.stack;
    let name = format!("{}-{}", function.name(), flavour.name());
    let say = |what: &str| println!("bench: {} {}: {what}", function.name(), flavour.name());
    say(&format!("starting {} VMs", load.vms));
    let mut vms = Vms::start(stack, function, flavour, &name, load.vms)?;
    let invoke = |seq: &str| vms.invoke(&function.event(&name, seq));
    say(&format!("warming up for {} s at {}/s", load.warm_up.as_secs(), load.rate));
    let warm_up = load::plan(load.rate, load.warm_up, load.vms, load.seed.wrapping_add(1));
    load::run(&warm_up, load.vms, |p| invoke(&format!("w{}", p.seq)).map(drop))?;

    let qemu = vms.pids()?;
    anyhow::ensure!(qemu.len() == load.vms, "{name} has {} VMs, not {}", qemu.len(), load.vms);
    let backend = stack.backend.pid().context("backend pid")?;
    let cpu = |pids: &[u32]| -> Result<f64> {
        pids.iter().map(|&pid| Ok(cpu_time(pid)?.as_secs_f64())).sum()
    };
    // The probes attribute the backend's VMs: Nexus's (the baseline's are not the backend's;
    // the probe's own cost is read for both).
    let attributed = vms.backend_vms()?;
    let probe = || CpuReading::take(&stack.backend, &attributed);
    let probed = meters.probes.then(probe).transpose()?;
    let mut reps = Vec::new();
    for rep in 0..load.reps {
        // Each window its own arrivals: a repetition, not a replay.
        let seed = load.seed.wrapping_add(2 + rep as u64);
        let plan = load::plan(load.rate, load.duration, load.vms, seed);
        say(&format!(
            "window {}/{}: {} invocations over {} s",
            rep + 1,
            load.reps,
            plan.len(),
            load.duration.as_secs()
        ));
        let before = (cpu(&qemu)?, cpu(&[backend])?, meters.node.read()?);
        let reference = Reference::start();
        let done = load::run(&plan, load.vms, |p| invoke(&format!("r{rep}-{}", p.seq)))?;
        vms.settle()?;
        let window = meters.node.since(&before.2)?;
        let reference = reference.stop()?;
        let after = (cpu(&qemu)?, cpu(&[backend])?);
        // The last invocations' reports, one per VM when the load spread them evenly.
        let guest_used_kib = done
            .iter()
            .rev()
            .take(load.vms)
            .map(|d| d.output["guest_used_kib"].as_f64().unwrap_or(f64::NAN))
            .collect();
        reps.push(Rep {
            warm: done.iter().map(|d| d.latency.as_secs_f64()).collect(),
            max_lag: done.iter().map(|d| d.lag.as_secs_f64()).fold(0.0, f64::max),
            node: window,
            qemu_cpu: after.0 - before.0,
            backend_cpu: after.1 - before.1,
            qemu_memory: qemu.iter().map(|&pid| VmmMemory::of(pid)).collect::<Result<_>>()?,
            guest_used_kib,
            backend_rss_kib: rss_kib(backend)?,
            reference,
        });
    }
    let probe_cpu = probed.map(|from| Ok::<_, anyhow::Error>(from.until(&probe()?))).transpose()?;
    // After the memory is read: KSM's merging would change it.
    let seen = match probe_cpu {
        Some(cpu) => Some(Seen { cpu, merged: probes::merged_after_ksm(&stack.backend, &qemu)? }),
        None => None,
    };
    let mut phase = Phase {
        function,
        flavour,
        accel: accel_of(qemu[0]),
        reps,
        floors: (before, Span::default()),
        cold: Vec::new(),
        cold_start: Vec::new(),
        cold_runtime_restarts: 0,
        seen,
    };
    say(&format!("{} cold starts from a snapshot", load.cold_rounds));
    for round in 0..load.cold_rounds {
        let cold = vms.cold(function, &function.event(&name, &format!("cold-{round}")))?;
        phase.cold.push(cold.seconds);
        phase.cold_start.push(cold.start_seconds);
        phase.cold_runtime_restarts += usize::from(cold.runtime_restarted);
    }
    Ok(phase)
}
