//! `cargo xtask bench vm`: the same boto3 function in a Nexus VM and in a baseline VM, one run:
//! memory in the guest after warm-up, the VMM's RSS, warm latency p50/p99 and the cold start.
//! Both talk to one Garage server (the baseline through its NIC and QEMU's user networking,
//! Nexus through the backend), at cloud distance unless `--storage local`. Every figure is
//! marked with the accelerator. As root, the backend runs its eBPF probes and the table adds
//! what they saw (`probes.rs`).

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::measure::{machine, rss_kib};
use super::probes::{self, CpuReading, CpuUse, Merged};
use super::report::{mib, ratio, seconds, Row, Table};
use super::stack::{accel_note, Stack, Storage, WarmVm, BUCKET};
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

/// What one flavour measured.
struct Measured {
    accel: String,
    cold_s: f64,
    boot_s: f64,
    warm: Vec<f64>,
    guest_used_kib: f64,
    runtime_rss_kib: f64,
    vmm_rss_kib: f64,
    vm: WarmVm,
    /// What the probes saw over the warm invocations (as root).
    cpu: Option<CpuUse>,
}

/// What the probes saw of both VMs (as root).
struct Observed {
    baseline: CpuUse,
    nexus: CpuUse,
    /// What KSM merged of each VM (baseline, Nexus) and on the node.
    merged: Merged,
}

pub fn run(storage: Storage) -> Result<()> {
    let tools = setup::run()?;
    let observe = probes::available();
    let settings = if observe { probes::SETTINGS } else { "" };
    let stack = Stack::start(&tools, &Flavour::ALL, storage, REGION, settings)?;
    seed_input(&stack, &tools.python)?;
    let observe = observe && probes::on(&stack.backend)?;
    let _cost_stats = observe.then(nexus_ebpf::Probes::cost_stats).transpose()?;
    let baseline = measure(&stack, "bench-baseline", Flavour::Baseline, observe)?;
    let nexus = measure(&stack, "bench-nexus", Flavour::Nexus, observe)?;
    let observed = match (baseline.cpu, nexus.cpu) {
        (Some(b), Some(n)) => {
            let merged =
                probes::merged_after_ksm(&stack.backend, &[baseline.vm.pid, nexus.vm.pid])?;
            Some(Observed { baseline: b, nexus: n, merged })
        }
        _ => {
            println!("bench: no eBPF probe figures (they need root and the probes on)");
            None
        }
    };
    let table = vm_table(&baseline, &nexus, storage, observed.as_ref());
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

/// Deploys the function as `name`, invokes it cold, warms it up, times `ROUNDS` warm
/// invocations (with the probes' view of them if `observe`), and reads the memory figures.
fn measure(stack: &Stack, name: &str, flavour: Flavour, observe: bool) -> Result<Measured> {
    stack.deploy(name, &workspace_root().join(CODE), HANDLER, flavour, json!({}))?;
    let invoke = |round: usize| stack.invoke(name, &event(&format!("out/{name}-{round}.gz")), &[]);
    println!("bench: {name}: cold invocation (boots the VM)");
    let cold = invoke(0)?;
    let vm = stack.warm_vm(name)?;
    let vms = [vm.clone()];
    let before = observe.then(|| CpuReading::take(&stack.backend, &vms)).transpose()?;
    println!("bench: {name}: {ROUNDS} warm invocations");
    let mut warm = Vec::new();
    let mut last = Value::Null;
    for round in 1..=WARM_UP + ROUNDS {
        let invocation = invoke(round)?;
        if round > WARM_UP {
            warm.push(invocation.seconds);
        }
        last = invocation.result;
    }
    let cpu = match before {
        Some(before) => Some(before.until(&CpuReading::take(&stack.backend, &vms)?)),
        None => None,
    };
    Ok(Measured {
        accel: vm.accel.clone(),
        cold_s: cold.seconds,
        boot_s: cold.start_seconds.unwrap_or(0.0),
        warm,
        guest_used_kib: last["guest_used_kib"].as_f64().unwrap_or(f64::NAN),
        runtime_rss_kib: last["runtime_rss_kib"].as_f64().unwrap_or(f64::NAN),
        vmm_rss_kib: rss_kib(vm.pid)?,
        vm,
        cpu,
    })
}

fn vm_table(
    baseline: &Measured,
    nexus: &Measured,
    storage: Storage,
    observed: Option<&Observed>,
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
    if let Some(seen) = observed {
        rows.extend(probe_rows(seen, &mark));
    }
    let mut notes = vec![format!(
        "Machine: {}. One run: {ROUNDS} warm invocations per flavour after {WARM_UP} warm-up ones, \
         medians/percentiles of those; the function (`guest/python/examples/bench`) reads a {} KiB \
         object, gzips it and writes the result, through the backend (Nexus, no NIC) or through \
         the VM's virtio NIC and QEMU user networking to the same Garage server (baseline, real boto3).",
        machine(),
        INPUT_BYTES >> 10
    )];
    notes.push(storage.note());
    notes.extend(accel_note(accel));
    if let Some(seen) = observed {
        notes.push(format!(
            "Probe rows (`probe:`): the backend's eBPF probes (`probes.enabled`, as root), read from \
             its /metrics before and after the {} warm invocations; `/proc` is the VMM's \
             utime + stime over the same span. Memory KSM merged: each VM's \
             `nexus_vm_memory_merged_bytes` (its `ksm_merging_pages`) once KSM's merging \
             settled ({} passes) with both VMs up (node duplicated memory then: {}; ksmd used \
             {} of CPU over {:.1} s). The probe cost is the kernel's run-time statistics of \
             the sched_switch program, node-wide.",
            WARM_UP + ROUNDS,
            seen.merged.passes,
            mib(seen.merged.node),
            seen.merged.ksmd_cpu_shown(),
            seen.merged.took.as_secs_f64()
        ));
    }
    Table {
        name: "vm",
        title: format!("Function VMs: baseline (NIC + boto3) vs Nexus (no NIC, shim), {accel}"),
        command: format!("cargo xtask bench vm --storage {}", storage.name()),
        notes,
        rows,
        ..Table::default()
    }
}

/// The rows of what the probes saw: CPU per warm invocation (probe, and /proc as a
/// cross-check), the probe's own cost, and the memory KSM found duplicated.
fn probe_rows(seen: &Observed, mark: &str) -> Vec<Row> {
    let invocations = (WARM_UP + ROUNDS) as f64;
    let row = |metric: &str, b: f64, n: f64, show: &dyn Fn(f64) -> String| Row {
        metric: format!("{metric}{mark}"),
        baseline: show(b),
        nexus: show(n),
        ratio: ratio(n, b),
        ..Row::default()
    };
    let per_call = |s: f64| seconds(s / invocations);
    let (b, n) = (&seen.baseline, &seen.nexus);
    let bytes = |v: f64| mib(v);
    let percent = |share: f64| format!("{:.3} %", share * 100.0);
    let nanos = |ns: f64| format!("{ns:.0} ns");
    vec![
        row("probe: VMM CPU per warm invocation (vCPU + VMM threads)", b.vmm_s, n.vmm_s, &per_call),
        row("/proc: VMM CPU per warm invocation (cross-check)", b.proc_s, n.proc_s, &per_call),
        row(
            "probe: backend CPU per warm invocation (serving thread)",
            b.backend_s,
            n.backend_s,
            &per_call,
        ),
        row(
            "probe: memory KSM merged (duplicated with other memory)",
            seen.merged.per_vm[0],
            seen.merged.per_vm[1],
            &bytes,
        ),
        row("probe cost: ns per sched_switch event", b.ns_per_event(), n.ns_per_event(), &nanos),
        row(
            "probe cost: share of all CPUs during the rounds",
            b.cpu_share(),
            n.cpu_share(),
            &percent,
        ),
    ]
}
