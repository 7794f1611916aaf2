//! `cargo xtask bench vm`: one boto3 function in a conventional baseline VM and in a Nexus VM,
//! one run: memory in the guest after warm-up, the VMM's RSS and CPU, warm latency p50/p99 and
//! the first invocation after a boot. Every figure is marked with the accelerator.
//!
//! ```text
//!  baseline  the conventional platform (`nexus_tests::Conventional`): a VM on a tap in a
//!            network namespace, no Nexus device; HTTP over the tap to its runtime; the real
//!            boto3 reaches Garage over the same NIC
//!  nexus     the backend's VM (no NIC): API → backend → channel → runtime; I/O through the shim
//! ```
//!
//! Both reach one Garage server through the same link model, at cloud distance unless
//! `--storage local`. As root the backend runs its eBPF probes and the table adds what they
//! saw of the Nexus VM (`probes.rs`); the baseline's VM is not the backend's, so its CPU is
//! /proc's alone.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};

use super::measure::{accel_of, cpu_time, machine, rss_kib};
use super::probes::{self, CpuReading, CpuUse, Merged};
use super::report::{mib, ratio, seconds, Row, Table};
use super::stack::{accel_note, ensure_root, Stack, Storage, BUCKET};
use super::stats::percentile;
use crate::image::Flavour;
use crate::{setup, workspace_root};

/// The function: `guest/python/examples/bench/handler.py`.
pub const CODE: &str = "guest/python/examples/bench";
pub const HANDLER: &str = "handler.py:handler";
/// The region of its VMs.
pub const REGION: &str = "size: 32MiB, buffer_size: 1MiB";
/// Its input object.
pub const INPUT_KEY: &str = "in/input.txt";
const INPUT_BYTES: usize = 256 << 10;
const WARM_UP: usize = 3;
const ROUNDS: usize = 40;
const BASELINE: &str = "bench-baseline";
const NEXUS: &str = "bench-nexus";

/// What one flavour measured.
struct Measured {
    accel: String,
    /// The first invocation, end to end, the VM's boot included.
    cold_s: f64,
    /// The VM's boot until its runtime was ready.
    boot_s: f64,
    warm: Vec<f64>,
    guest_used_kib: f64,
    runtime_rss_kib: f64,
    vmm_rss_kib: f64,
    vmm_pid: u32,
    /// The VMM's CPU time (/proc) over the warm-up and warm invocations.
    vmm_cpu_s: f64,
    /// What the probes saw over the same invocations (the Nexus VM, as root).
    probed: Option<CpuUse>,
}

/// The warm invocations: latencies, the last result, the VMM's CPU over all of them.
struct Warm {
    latencies: Vec<f64>,
    last: Value,
    vmm_cpu_s: f64,
}

pub fn run(storage: Storage) -> Result<()> {
    ensure_root("cargo xtask bench vm (the baseline's network namespace and tap)")?;
    let tools = setup::run()?;
    let stack = Stack::start(&tools, &Flavour::ALL, storage, REGION, probes::SETTINGS)?;
    seed_input(&stack, &tools.python)?;
    let observe = probes::on(&stack.backend)?;
    let _cost_stats = observe.then(nexus_ebpf::Probes::cost_stats).transpose()?;
    let (baseline, _platform) = measure_baseline(&stack)?;
    let nexus = measure_nexus(&stack, observe)?;
    // Both VMs up: what KSM merges of each.
    let merged = match observe {
        true => Some(probes::merged_after_ksm(&stack.backend, &[baseline.vmm_pid, nexus.vmm_pid])?),
        false => None,
    };
    let table = vm_table(&baseline, &nexus, storage, merged.as_ref());
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Puts the function's input (`INPUT_BYTES` of text) into the bucket.
pub fn seed_input(stack: &Stack, python: &Path) -> Result<()> {
    stack.seed(
        python,
        &format!(
            "s3.put_object(Bucket='{BUCKET}', Key='{INPUT_KEY}', \
             Body=b''.join(b'line %d of the benchmark input\\n' % (i % 997) for i in range(100000))[:{INPUT_BYTES}])"
        ),
    )
}

/// The function's event: compress the input into `output_key`.
pub fn event(output_key: &str) -> Value {
    json!({ "bucket": BUCKET, "key": INPUT_KEY, "output_key": output_key })
}

/// The function's event for round `round` of `name`.
fn round_event(name: &str, round: usize) -> Value {
    event(&format!("out/{name}-{round}.gz"))
}

/// Boots a baseline VM on the conventional platform, invokes it, then times the warm
/// invocations over HTTP. The platform is returned so that its VM stays up.
fn measure_baseline(stack: &Stack) -> Result<(Measured, nexus_tests::Conventional)> {
    let code = workspace_root().join(CODE);
    let mut platform = stack.conventional(BASELINE, &code, HANDLER, json!({}))?;
    println!("bench: {BASELINE}: first invocation (boots a VM in namespace {})", platform.netns());
    let started = Instant::now();
    let pid = platform.add()?;
    let boot_s = started.elapsed().as_secs_f64();
    platform.invoke(&round_event(BASELINE, 0))?;
    let cold_s = started.elapsed().as_secs_f64();
    let warm = warm_rounds(BASELINE, pid, |round| {
        let started = Instant::now();
        let result = platform.invoke(&round_event(BASELINE, round))?;
        Ok((started.elapsed().as_secs_f64(), result))
    })?;
    let accel = accel_of(pid);
    Ok((measured(accel, cold_s, boot_s, warm, pid, None)?, platform))
}

/// Deploys the function on the backend, invokes it (which boots its VM), then times the warm
/// invocations at the API, with the probes' view of them if `observe`.
fn measure_nexus(stack: &Stack, observe: bool) -> Result<Measured> {
    stack.deploy(NEXUS, &workspace_root().join(CODE), HANDLER, Flavour::Nexus, json!({}))?;
    println!("bench: {NEXUS}: first invocation (boots the VM)");
    let cold = stack.invoke(NEXUS, &round_event(NEXUS, 0), &[])?;
    let vm = stack.warm_vm(NEXUS)?;
    let vms = [vm.clone()];
    let before = observe.then(|| CpuReading::take(&stack.backend, &vms)).transpose()?;
    let warm = warm_rounds(NEXUS, vm.pid, |round| {
        let invocation = stack.invoke(NEXUS, &round_event(NEXUS, round), &[])?;
        Ok((invocation.seconds, invocation.result))
    })?;
    let probed = match before {
        Some(before) => Some(before.until(&CpuReading::take(&stack.backend, &vms)?)),
        None => None,
    };
    let boot_s = cold.start_seconds.unwrap_or(f64::NAN);
    measured(vm.accel.clone(), cold.seconds, boot_s, warm, vm.pid, probed)
}

/// `WARM_UP` + `ROUNDS` invocations through `invoke` (which returns the latency and the
/// result of round `round`), the latencies of the last `ROUNDS`.
fn warm_rounds(
    name: &str,
    vmm_pid: u32,
    mut invoke: impl FnMut(usize) -> Result<(f64, Value)>,
) -> Result<Warm> {
    println!("bench: {name}: {ROUNDS} warm invocations");
    let cpu_before = cpu_time(vmm_pid)?;
    let mut latencies = Vec::new();
    let mut last = Value::Null;
    for round in 1..=WARM_UP + ROUNDS {
        let (seconds, result) = invoke(round)?;
        if round > WARM_UP {
            latencies.push(seconds);
        }
        last = result;
    }
    let vmm_cpu_s = (cpu_time(vmm_pid)? - cpu_before).as_secs_f64();
    Ok(Warm { latencies, last, vmm_cpu_s })
}

fn measured(
    accel: String,
    cold_s: f64,
    boot_s: f64,
    warm: Warm,
    vmm_pid: u32,
    probed: Option<CpuUse>,
) -> Result<Measured> {
    let figure = |name: &str| warm.last[name].as_f64().unwrap_or(f64::NAN);
    Ok(Measured {
        accel,
        cold_s,
        boot_s,
        guest_used_kib: figure("guest_used_kib"),
        runtime_rss_kib: figure("runtime_rss_kib"),
        vmm_rss_kib: rss_kib(vmm_pid)?,
        vmm_pid,
        vmm_cpu_s: warm.vmm_cpu_s,
        warm: warm.latencies,
        probed,
    })
}

fn vm_table(
    baseline: &Measured,
    nexus: &Measured,
    storage: Storage,
    merged: Option<&Merged>,
) -> Table {
    let accel = &nexus.accel;
    let mark = format!(" [{accel}]");
    let kib = |k: f64| mib(k * 1024.0);
    let row = |metric: &str, b: f64, n: f64, show: &dyn Fn(f64) -> String, target: &str| Row {
        metric: format!("{metric}{mark}"),
        baseline: show(b),
        nexus: show(n),
        ratio: ratio(n, b),
        target: target.into(),
        ..Row::default()
    };
    let p = percentile;
    let mut rows = vec![
        row(
            "guest memory in use after warm-up (MemTotal − MemAvailable)",
            baseline.guest_used_kib,
            nexus.guest_used_kib,
            &kib,
            "−40 % (memory per VM)",
        ),
        row(
            "function runtime process RSS in the guest",
            baseline.runtime_rss_kib,
            nexus.runtime_rss_kib,
            &kib,
            "",
        ),
        row("VMM (QEMU) RSS", baseline.vmm_rss_kib, nexus.vmm_rss_kib, &kib, ""),
        row(
            "VMM (QEMU) CPU per warm invocation, /proc",
            baseline.vmm_cpu_s,
            nexus.vmm_cpu_s,
            &per_call,
            "",
        ),
        row(
            "warm invocation p50",
            p(&baseline.warm, 50.0),
            p(&nexus.warm, 50.0),
            &seconds,
            "−50 %",
        ),
        row("warm invocation p99", p(&baseline.warm, 99.0), p(&nexus.warm, 99.0), &seconds, ""),
        row(
            "cold: VM boot until the runtime is ready",
            baseline.boot_s,
            nexus.boot_s,
            &seconds,
            "",
        ),
        row("cold: first invocation, end to end", baseline.cold_s, nexus.cold_s, &seconds, ""),
    ];
    if let Some(probed) = &nexus.probed {
        rows.extend(probe_rows(probed, &mark));
    }
    if let Some(merged) = merged {
        rows.push(row(
            "probe: memory KSM merged (duplicated with other memory)",
            merged.per_vm[0],
            merged.per_vm[1],
            &mib,
            "",
        ));
    }
    let mut notes = vec![format!(
        "Machine: {}. One run: {ROUNDS} warm invocations per flavour after {WARM_UP} warm-up ones, \
         medians/percentiles of those, timed where the caller sees them. The function \
         (`guest/python/examples/bench`) reads a {} KiB object, gzips it and writes the result. \
         Baseline: the conventional platform (`nexus_tests::Conventional`) boots its VM with a \
         virtio NIC on a tap in a network namespace this run creates and removes, and no Nexus \
         device; an invocation is an HTTP request over the tap to the VM's runtime, and the real \
         boto3 reaches Garage over the same NIC. Nexus: the backend's VM, without a NIC; an \
         invocation goes to the backend's API and through the channel, the I/O through the shim \
         and the backend (its object cache off). The VMM CPU row is utime + stime of each QEMU \
         (`/proc/PID/stat`) over the warm-up and warm invocations; Nexus's backend does part of \
         its VM's work, which the probe row beside it shows.",
        machine(),
        INPUT_BYTES >> 10
    )];
    notes.push(storage.note());
    notes.extend(accel_note(accel));
    if let Some(merged) = merged {
        notes.push(format!(
            "Probe rows (`probe:`): the backend's eBPF probes (`probes.enabled`, as root), read from \
             its /metrics before and after the Nexus VM's {} warm invocations; they attribute only \
             the backend's VMs, so the baseline's cells read \"—\". Memory KSM merged: each VM's \
             `ksm_merging_pages` once KSM's merging settled ({} passes) with both VMs up (node \
             duplicated memory then: {}; ksmd used {} of CPU over {:.1} s). The probe cost is the \
             kernel's run-time statistics of the sched_switch program, node-wide.",
            WARM_UP + ROUNDS,
            merged.passes,
            mib(merged.node),
            merged.ksmd_cpu_shown(),
            merged.took.as_secs_f64()
        ));
    }
    Table {
        name: "vm",
        title: format!(
            "Function VMs: conventional baseline (tap NIC, HTTP, boto3) vs Nexus (no NIC, shim), \
             {accel}"
        ),
        command: format!("cargo xtask bench vm --storage {}", storage.name()),
        notes,
        rows,
        ..Table::default()
    }
}

/// The rows of what the probes saw of the Nexus VM over its warm invocations: its CPU, the
/// backend's for it, and the probe's own cost (node-wide, over the same span).
fn probe_rows(probed: &CpuUse, mark: &str) -> Vec<Row> {
    let row = |metric: &str, baseline: &str, nexus: String| Row {
        metric: format!("{metric}{mark}"),
        baseline: baseline.into(),
        nexus,
        ..Row::default()
    };
    let not_ours = "— (not the backend's VM)";
    let nexus_rounds = "— (measured over Nexus's rounds)";
    vec![
        row(
            "probe: VMM CPU per warm invocation (vCPU + VMM threads)",
            not_ours,
            per_call(probed.vmm_s),
        ),
        row(
            "probe: backend CPU per warm invocation (serving thread)",
            not_ours,
            per_call(probed.backend_s),
        ),
        row(
            "probe cost: ns per sched_switch event",
            nexus_rounds,
            format!("{:.0} ns", probed.ns_per_event()),
        ),
        row(
            "probe cost: share of all CPUs during the rounds",
            nexus_rounds,
            format!("{:.3} %", probed.cpu_share() * 100.0),
        ),
    ]
}

/// Seconds spent over the warm-up and warm invocations, per invocation.
fn per_call(total_s: f64) -> String {
    seconds(total_s / (WARM_UP + ROUNDS) as f64)
}
