//! The table of `cargo xtask bench`: each measured figure of baseline and Nexus, their ratio,
//! and beside the headline figures the paper's claim, our goal and where we stand; the notes
//! under it (`full_notes.rs`) say how each row is measured.

use std::time::Duration;

use super::density::Density;
use super::density_table;
use super::fabric::Fabric;
use super::full::Options;
use super::full_notes::notes;
use super::measure::VmmMemory;
use super::phase::Phase;
use super::phase::Rep;
use super::probes::CpuUse;
use super::report::{change, mib, ratio, seconds, Row, Table};
use super::stats::{mean, median, percentile, Spread};

/// A claim about a metric: the paper's and our goal's change of Nexus against the baseline
/// (−0.44 is 44 % less).
#[derive(Debug, Clone, Copy)]
struct Claim {
    paper: f64,
    goal: f64,
    /// Density grows; everything else shrinks.
    more_is_better: bool,
}

const CPU: Claim = Claim { paper: -0.44, goal: -0.50, more_is_better: false };
const MEMORY: Claim = Claim { paper: -0.31, goal: -0.40, more_is_better: false };
const DENSITY: Claim = Claim { paper: 0.37, goal: 0.60, more_is_better: true };
const WARM: Claim = Claim { paper: -0.39, goal: -0.50, more_is_better: false };
const COLD: Claim = Claim { paper: -0.10, goal: -0.30, more_is_better: false };

const EXTRA_COLUMNS: [&str; 3] = ["paper", "our goal", "where we stand"];

impl Claim {
    /// Where a measured `nexus / baseline` ratio stands against the claim.
    fn standing(self, ratio: f64) -> &'static str {
        let gain = if self.more_is_better { ratio - 1.0 } else { 1.0 - ratio };
        let (paper, goal) =
            if self.more_is_better { (self.paper, self.goal) } else { (-self.paper, -self.goal) };
        match gain {
            g if !g.is_finite() => "—",
            g if g >= goal => "goal met",
            g if g >= paper => "paper's level, short of our goal",
            g if g > 0.0 => "better, short of the paper",
            _ => "no gain",
        }
    }

    fn cells(self, ratio: f64) -> Vec<String> {
        let percent = |c: f64| change(1.0 + c, 1.0);
        vec![percent(self.paper), percent(self.goal), self.standing(ratio).into()]
    }
}

/// Everything one run of `cargo xtask bench` measured.
#[derive(Debug)]
pub struct Run<'a> {
    pub options: &'a Options,
    /// (baseline, Nexus) of each function.
    pub pairs: &'a [(Phase, Phase)],
    /// The density found, both flavours.
    pub density: &'a Density,
    pub fabric: &'a Fabric,
    /// Paths of the plots, relative to `docs/`.
    pub plots: &'a [String],
    pub elapsed: Duration,
    /// `/proc/loadavg`'s first figure at the start and at the end.
    pub load_averages: (String, String),
    /// How Garage's CPU was counted.
    pub storage_accounting: String,
}

impl Run<'_> {
    /// The accelerator the VMs ran on.
    pub fn accel(&self) -> &str {
        self.pairs.first().map_or("?", |(_, n)| n.accel.as_str())
    }

    /// What the probes saw of each flavour over all its windows, if they ran.
    fn probe_totals(&self) -> Option<(CpuUse, CpuUse)> {
        self.pairs.iter().try_fold((CpuUse::default(), CpuUse::default()), |(tb, tn), (b, n)| {
            Some((tb.plus(&b.seen.as_ref()?.cpu), tn.plus(&n.seen.as_ref()?.cpu)))
        })
    }
}

/// How a row shows its figures.
type Show<'a> = &'a dyn Fn(f64) -> String;

/// Builds a row: metric, baseline and Nexus figures (one per repetition: the median is shown
/// with the range, and the ratio is of the medians), how to show them, the claim if any.
type MakeRow<'a> = dyn Fn(String, &[f64], &[f64], Show, Option<Claim>) -> Row + 'a;

pub fn table(run: &Run) -> Table {
    let accel = run.accel().to_owned();
    let row = |metric: String, b: &[f64], n: &[f64], show: Show, claim: Option<Claim>| {
        let (b, n) = (Spread::of(b), Spread::of(n));
        Row {
            metric: format!("{metric} [{accel}]"),
            baseline: b.show(show),
            nexus: n.show(show),
            ratio: match claim {
                Some(_) => {
                    format!("{} ({})", ratio(n.median, b.median), change(n.median, b.median))
                }
                None => ratio(n.median, b.median),
            },
            extra: claim.map(|c| c.cells(n.median / b.median)).unwrap_or_default(),
            ..Row::default()
        }
    };
    let mut rows = Vec::new();
    for (b, n) in run.pairs {
        rows.extend(cpu_rows(b, n, &row));
    }
    if let Some((b, n)) = run.probe_totals() {
        let nanos = |ns: f64| format!("{ns:.0} ns");
        let percent = |share: f64| format!("{:.3} %", share * 100.0);
        rows.push(row(
            "probe cost: ns per sched_switch event (every switch on the node), all windows".into(),
            &[b.ns_per_event()],
            &[n.ns_per_event()],
            &nanos,
            None,
        ));
        rows.push(row(
            "probe cost: its share of all CPUs over the measured windows".into(),
            &[b.cpu_share()],
            &[n.cpu_share()],
            &percent,
            None,
        ));
    }
    for (b, n) in run.pairs {
        rows.extend(memory_rows(b, n, &row));
    }
    let mut density = density_table::rows(run.density);
    if let Some(count) = density.first_mut() {
        let (b, n) = (run.density.baseline.count(), run.density.nexus.count());
        count.ratio = format!("{} ({})", ratio(n as f64, b as f64), change(n as f64, b as f64));
        count.extra = DENSITY.cells(n as f64 / b as f64);
    }
    rows.extend(density);
    for (b, n) in run.pairs {
        rows.extend(latency_rows(b, n, &row));
    }
    rows.extend(fabric_rows(run.fabric));
    Table {
        name: "bench",
        title: format!(
            "Baseline vs Nexus, side by side: {} function VMs per flavour, {accel}",
            run.options.vms
        ),
        command: run.options.command(),
        notes: notes(run),
        rows,
        extra_columns: EXTRA_COLUMNS.map(String::from).to_vec(),
        sides: None,
    }
}

/// Node CPU per invocation: the whole machine, per process, and the probes'. The claim is
/// judged on the whole machine where every window of both flavours is usable, else per
/// process.
fn cpu_rows(b: &Phase, n: &Phase, row: &MakeRow) -> Vec<Row> {
    let f = b.function.name();
    let usable = |p: &Phase| p.reps.iter().all(|r| p.node(r).usable());
    let on_node = usable(b) && usable(n);
    let node_cpu = |p: &Phase| p.per_rep(|r| p.node_cpu_per_invocation(r));
    let mut node = row(
        format!("node CPU per invocation, {f}: the whole machine beyond its idle floor"),
        &node_cpu(b),
        &node_cpu(n),
        &seconds,
        on_node.then_some(CPU),
    );
    for (cell, p) in [(&mut node.baseline, b), (&mut node.nexus, n)] {
        let busiest = p.per_rep(|r| r.node.busy_share()).into_iter().fold(0.0, f64::max);
        *cell = if p.reps.iter().any(|r| p.node(r).saturated()) {
            format!("saturated ({:.0} % busy)", busiest * 100.0)
        } else if Spread::of(&node_cpu(p)).median <= 0.0 {
            "not above the floor".into()
        } else {
            let drift = Spread::of(&p.per_rep(|r| r.per_invocation(p.node(r).drift()))).median;
            let unsteady = if usable(p) { "" } else { ", unsteady" };
            format!("{cell}, floor drift ± {}{unsteady}", seconds(drift))
        };
    }
    if !on_node {
        node.ratio = "—".into();
        node.extra = CPU.cells(f64::NAN);
        node.extra[2] = "— (no room or no steady floor: judged on the next row)".into();
    }
    let process_cpu = |p: &Phase| p.per_rep(|r| r.per_invocation(p.process_cpu(r)));
    let mut process = row(
        format!("node CPU per invocation, {f}, per process: QEMU (+ backend for Nexus)"),
        &process_cpu(b),
        &process_cpu(n),
        &seconds,
        (!on_node).then_some(CPU),
    );
    let part =
        |cpu: fn(&Rep) -> f64| seconds(Spread::of(&n.per_rep(|r| r.per_invocation(cpu(r)))).median);
    process.nexus += &format!(", medians {} + {}", part(|r| r.qemu_cpu), part(|r| r.backend_cpu));
    let mut rows = vec![node, process];
    if let (Some(bs), Some(ns)) = (&b.seen, &n.seen) {
        let all = |p: &Phase, s: f64| [s / p.invocations() as f64];
        let mut vmm = row(
            format!("probe: VMM CPU per invocation, {f}: QEMU's vCPU and other threads"),
            &all(b, bs.cpu.vmm_s),
            &all(n, ns.cpu.vmm_s),
            &seconds,
            None,
        );
        for (cell, p, s) in [(&mut vmm.baseline, b, bs), (&mut vmm.nexus, n, ns)] {
            *cell += &format!(" (/proc {})", seconds(all(p, s.cpu.proc_s)[0]));
        }
        let mut serving = row(
            format!("probe: backend CPU per invocation, {f}: the threads serving the VMs' regions"),
            &all(b, bs.cpu.backend_s),
            &all(n, ns.cpu.backend_s),
            &seconds,
            None,
        );
        // The probes attribute the backend's VMs; the conventional platform's are not.
        if !b.nexus() {
            vmm.baseline = "— (not the backend's VMs)".into();
            serving.baseline = "— (no region)".into();
            (vmm.ratio, serving.ratio) = ("—".into(), "—".into());
        }
        rows.extend([vmm, serving]);
    }
    rows.push(reference_row(b, n, row));
    rows
}

/// How far the two flavours' machine references may differ before a pair is flagged.
pub const REFERENCE_TOLERANCE: f64 = 0.10;

/// Whether the machine ran at another speed during Nexus's windows than during the
/// baseline's, by more than the tolerance (`reference.rs`).
pub fn drifted(b: &Phase, n: &Phase) -> bool {
    let reference = |p: &Phase| Spread::of(&p.per_rep(|r| r.reference)).median;
    (reference(n) / reference(b) - 1.0).abs() > REFERENCE_TOLERANCE
}

/// The machine's own speed over each flavour's windows; a flagged pair's other ratios carry
/// the machine's drift as well as the flavours' difference.
fn reference_row(b: &Phase, n: &Phase, row: &MakeRow) -> Row {
    let f = b.function.name();
    let reference = |p: &Phase| p.per_rep(|r| r.reference);
    let mut reference_row = row(
        format!("machine reference, {f}: CPU time of a fixed host work during the windows"),
        &reference(b),
        &reference(n),
        &seconds,
        None,
    );
    if drifted(b, n) {
        reference_row.ratio +=
            ", the machine ran at another speed: read this function's ratios with care";
    }
    reference_row
}

/// Memory per VM after each window: the claim's figure, then its parts, the guest's own
/// view, and what KSM found duplicated.
fn memory_rows(b: &Phase, n: &Phase, row: &MakeRow) -> Vec<Row> {
    let f = b.function.name();
    let kib = |k: f64| mib(k * 1024.0);
    let host = |p: &Phase| p.per_rep(|r| p.host_memory_per_vm_kib(r));
    let mut host_row = row(
        format!(
            "memory per VM on the host, {f}: QEMU PSS without TCG's cache (+ backend RSS / VMs \
             for Nexus)"
        ),
        &host(b),
        &host(n),
        &kib,
        Some(MEMORY),
    );
    let share = Spread::of(&n.per_rep(|r| n.backend_share_kib(r))).median;
    host_row.nexus += &format!(", backend's share {}", kib(share));
    let vmm = |p: &Phase, figure: fn(&VmmMemory) -> f64| p.per_rep(|r| r.vmm_kib(figure));
    let guest_view = |p: &Phase| p.per_rep(|r| mean(&r.guest_used_kib));
    let mut rows = vec![
        host_row,
        row(
            format!("guest RAM resident on the host, {f}: QEMU's guest-RAM mappings, PSS"),
            &vmm(b, |m| m.guest.pss_kib),
            &vmm(n, |m| m.guest.pss_kib),
            &kib,
            None,
        ),
        row(
            format!("QEMU beyond guest RAM, {f}: the VMM's own memory, PSS, TCG's cache left out"),
            &vmm(b, |m| m.rest.pss_kib),
            &vmm(n, |m| m.rest.pss_kib),
            &kib,
            None,
        ),
        row(
            format!("TCG's translation cache, {f}: RSS (none under KVM; left out above)"),
            &vmm(b, |m| m.translation_cache.rss_kib),
            &vmm(n, |m| m.translation_cache.rss_kib),
            &kib,
            None,
        ),
        row(
            format!("guest memory in use, {f}: the guest's own view (MemTotal − MemAvailable)"),
            &guest_view(b),
            &guest_view(n),
            &kib,
            None,
        ),
    ];
    if let (Some(bs), Some(ns)) = (&b.seen, &n.seen) {
        rows.push(row(
            format!("probe: duplicated memory per VM, {f}: what KSM merged of it"),
            &[mean(&bs.merged.per_vm)],
            &[mean(&ns.merged.per_vm)],
            &mib,
            None,
        ));
    }
    rows
}

/// The tail percentile a cell of `samples` invocations supports: p99 from 1 000, else p95.
pub fn tail(samples: usize) -> f64 {
    if samples >= 1000 {
        99.0
    } else {
        95.0
    }
}

/// Warm latency under load (p50 with the claim, the tail) and the cold start.
fn latency_rows(b: &Phase, n: &Phase, row: &MakeRow) -> Vec<Row> {
    let f = b.function.name();
    let p50 = |p: &Phase| p.per_rep(|r| percentile(&r.warm, 50.0));
    let q = tail(b.invocations().min(n.invocations()));
    // The tail of all the windows together, beside each window's own.
    let tail_row = |p: &Phase| percentile(&p.warm(), q);
    let mut tail = row(
        format!("warm latency p{q:.0} under load, {f}, all windows together"),
        &[tail_row(b)],
        &[tail_row(n)],
        &seconds,
        None,
    );
    for (cell, p) in [(&mut tail.baseline, b), (&mut tail.nexus, n)] {
        let each = Spread::of(&p.per_rep(|r| percentile(&r.warm, q)));
        *cell += &format!(" (windows {}–{})", seconds(each.min), seconds(each.max));
    }
    let mut cold = row(
        format!("cold: restore + first invocation with its input, {f}"),
        &b.cold,
        &n.cold,
        &seconds,
        Some(COLD),
    );
    for (cell, p) in [(&mut cold.baseline, b), (&mut cold.nexus, n)] {
        *cell += &format!(", VM ready in {}", seconds(median(&p.cold_start)));
        if p.cold_runtime_restarts > 0 {
            *cell += &format!("; runtime restarted {}/{}", p.cold_runtime_restarts, p.cold.len());
        }
    }
    if b.cold_runtime_restarts + n.cold_runtime_restarts > 0 {
        if let Some(stand) = cold.extra.last_mut() {
            *stand += " (with runtime restarts, see the notes)";
        }
    }
    vec![
        row(format!("warm latency p50 under load, {f}"), &p50(b), &p50(n), &seconds, Some(WARM)),
        tail,
        cold,
    ]
}

/// The key rows of the host-native fabric benchmark (no VM, no emulation).
fn fabric_rows(fabric: &Fabric) -> Vec<Row> {
    let goal = |goal: &str, met: bool| {
        vec!["—".into(), goal.into(), if met { "goal met" } else { "goal missed" }.into()]
    };
    let (b_cpu, n_cpu) = fabric.cpu_s;
    let (b_rss, n_rss) = fabric.rss_bytes;
    vec![
        Row {
            metric: "host-native fabric: empty call round trip p50 (no VM)".into(),
            nexus: seconds(fabric.call_p50_s),
            extra: goal("p50 < 2 µs", fabric.call_p50_s < 2e-6),
            ..Row::default()
        },
        Row {
            metric: "host-native fabric: 64 MiB get through the channel (no VM)".into(),
            nexus: format!("{:.2} GB/s", fabric.get_64mib_bytes_per_s / 1e9),
            extra: goal("≥ 5 GB/s", fabric.get_64mib_bytes_per_s >= 5e9),
            ..Row::default()
        },
        Row {
            metric: "host-native: CPU of a Python function's S3 calls (+ backend for Nexus)".into(),
            baseline: seconds(b_cpu),
            nexus: seconds(n_cpu),
            ratio: format!("{} ({})", ratio(n_cpu, b_cpu), change(n_cpu, b_cpu)),
            extra: vec!["—".into(), "—".into(), String::new()],
            ..Row::default()
        },
        Row {
            metric: "host-native: that function process's peak RSS".into(),
            baseline: mib(b_rss),
            nexus: mib(n_rss),
            ratio: format!("{} ({})", ratio(n_rss, b_rss), mib(n_rss - b_rss)),
            extra: goal("≥ 30 MB smaller", b_rss - n_rss >= 30e6),
            ..Row::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::density::{DensityArgs, Search, Step, Stop};
    use crate::bench::measure::{Held, VmmMemory};
    use crate::bench::memory_cgroup::Charged;
    use crate::bench::node_cpu::Span;
    use crate::bench::phase::Rep;
    use crate::bench::probes::{Merged, Seen};
    use crate::bench::stack::Storage;
    use crate::bench::workload::Function;
    use crate::image::Flavour;
    use nexus_plugin::Accel;

    fn phase(flavour: Flavour, cpu: f64, pss_mib: f64, warm_ms: f64) -> Phase {
        let held = |mib: f64| Held { rss_kib: mib * 1024.0, pss_kib: mib * 1024.0 };
        let memory = VmmMemory {
            guest: held(pss_mib - 20.0),
            translation_cache: held(64.0),
            rest: held(20.0),
        };
        let span = |busy: f64, wall: f64| Span {
            wall,
            busy,
            capacity: 2.0 * wall,
            storage: 1.0,
            harness: 1.0,
        };
        // Three windows a tenth apart: the middle one is the median.
        let rep = |scale: f64| Rep {
            warm: (0..100).map(|i| scale * (warm_ms + f64::from(i) / 10.0) / 1e3).collect(),
            max_lag: 0.0,
            // The floors' 12 s over 20 s are 36 s over the 60 s window.
            node: span(scale * cpu + 38.0, 60.0),
            qemu_cpu: scale * cpu,
            backend_cpu: scale * 2.0,
            qemu_memory: vec![memory; 2],
            guest_used_kib: vec![50.0 * 1024.0; 2],
            backend_rss_kib: 40.0 * 1024.0,
            reference: 0.008,
        };
        Phase {
            function: Function::Thumbnail,
            flavour,
            accel: "TCG".into(),
            reps: vec![rep(1.1), rep(1.0), rep(0.9)],
            floors: (span(14.0, 20.0), span(14.0, 20.0)),
            cold: vec![2.5, 2.0, 3.0],
            cold_start: vec![1.5, 1.5, 1.5],
            cold_runtime_restarts: if flavour == Flavour::Nexus { 1 } else { 0 },
            seen: None,
        }
    }

    fn options() -> Options {
        Options {
            vms: 2,
            rate: 2.0,
            duration: 60,
            reps: 3,
            warm_up: 10,
            functions: vec![Function::Thumbnail],
            cold_rounds: 3,
            seed: 1,
            idle_floor: 20,
            storage: Storage::Remote,
            density: density_args(),
            full: false,
        }
    }

    fn density_args() -> DensityArgs {
        DensityArgs {
            density_budget_mib: 1024,
            density_rate: 0.5,
            density_window: 10,
            density_slo_factor: 3.0,
            density_max: 24,
        }
    }

    /// A search that held `count` VMs, then stopped at an OOM kill.
    fn search(flavour: Flavour, count: usize) -> Search {
        let step = |vms: usize| Step {
            vms,
            add: Duration::from_secs(1),
            latencies: vec![0.2; 20],
            charged: Charged { resident: vms as u64 * (164 << 20), ..Charged::default() },
        };
        Search {
            flavour,
            held: (1..=count).map(step).collect(),
            broken: Some(step(count + 1)),
            stop: Stop::OomKill(1),
            took: Duration::from_secs(120),
        }
    }

    fn fabric() -> Fabric {
        Fabric {
            table: Table::default(),
            call_p50_s: 5e-7,
            get_64mib_bytes_per_s: 9e9,
            cpu_s: (1.0, 0.5),
            rss_bytes: (110e6, 75e6),
        }
    }

    fn markdown(options: &Options, pairs: &[(Phase, Phase)]) -> String {
        let density = Density {
            args: density_args(),
            accel: Accel::Tcg,
            allowance_bytes: 64 << 20,
            baseline: search(Flavour::Baseline, 6),
            nexus: search(Flavour::Nexus, 9),
        };
        let run = Run {
            options,
            pairs,
            density: &density,
            fabric: &fabric(),
            plots: &["plots/x.svg".into()],
            elapsed: Duration::from_secs(600),
            load_averages: ("3.5".into(), "4.0".into()),
            storage_accounting: "a cgroup of its own (cgroup v1 `cpuacct.usage`)".into(),
        };
        table(&run).markdown()
    }

    #[test]
    fn claims_say_where_a_ratio_stands() {
        assert_eq!(CPU.standing(0.45), "goal met");
        assert_eq!(CPU.standing(0.50), "goal met");
        assert_eq!(CPU.standing(0.52), "paper's level, short of our goal");
        assert_eq!(CPU.standing(0.80), "better, short of the paper");
        assert_eq!(CPU.standing(1.10), "no gain");
        assert_eq!(DENSITY.standing(1.70), "goal met");
        assert_eq!(DENSITY.standing(1.40), "paper's level, short of our goal");
        assert_eq!(DENSITY.standing(1.10), "better, short of the paper");
        assert_eq!(DENSITY.standing(0.90), "no gain");
        assert_eq!(COLD.cells(f64::NAN), ["−10 %", "−30 %", "—"]);
        assert_eq!(DENSITY.cells(1.0)[..2], ["+37 %", "+60 %"]);
    }

    #[test]
    fn per_window_figures() {
        let (b, n) =
            (phase(Flavour::Baseline, 30.0, 300.0, 80.0), phase(Flavour::Nexus, 20.0, 200.0, 50.0));
        let (rb, rn) = (&b.reps[1], &n.reps[1]);
        // The backend counts for Nexus only: its CPU and its RSS shared by the two VMs.
        assert_eq!(rb.per_invocation(b.process_cpu(rb)), 0.3);
        assert_eq!(rn.per_invocation(n.process_cpu(rn)), 0.22);
        // The machine's 68 s less Garage's and the harness's 2 s, less the floor's 36 s.
        assert!((b.node_cpu_per_invocation(rb) - 0.30).abs() < 1e-9);
        assert!((n.node_cpu_per_invocation(rn) - 0.20).abs() < 1e-9);
        // TCG's cache is left out; guest RAM and the rest of QEMU count.
        assert_eq!(b.host_memory_per_vm_kib(rb), 300.0 * 1024.0);
        assert_eq!(n.host_memory_per_vm_kib(rn), 220.0 * 1024.0);
        assert_eq!(b.invocations(), 300);
        assert_eq!(tail(b.invocations()), 95.0);
        assert_eq!(tail(1000), 99.0);
    }

    #[test]
    fn a_pair_whose_machine_reference_differs_is_flagged() {
        let b = phase(Flavour::Baseline, 30.0, 300.0, 80.0);
        let mut n = phase(Flavour::Nexus, 20.0, 200.0, 50.0);
        assert!(!drifted(&b, &n));
        let make = |metric, b: &[f64], n: &[f64], show: Show, _| Row {
            metric,
            baseline: Spread::of(b).show(show),
            nexus: Spread::of(n).show(show),
            ratio: ratio(Spread::of(n).median, Spread::of(b).median),
            ..Row::default()
        };
        assert_eq!(reference_row(&b, &n, &make).ratio, "1.00×");
        // Nexus's windows ran while the machine was a fifth slower.
        for rep in &mut n.reps {
            rep.reference *= 1.2;
        }
        assert!(drifted(&b, &n));
        let flagged = reference_row(&b, &n, &make);
        assert!(
            flagged.ratio.starts_with("1.20×, the machine ran at another"),
            "{}",
            flagged.ratio
        );
    }

    #[test]
    fn one_table_with_claims_beside_the_figures() {
        let options = options();
        let pairs = vec![(
            phase(Flavour::Baseline, 30.0, 300.0, 80.0),
            phase(Flavour::Nexus, 20.0, 200.0, 50.0),
        )];
        let markdown = markdown(&options, &pairs);
        assert!(markdown.contains(
            "| metric | baseline | nexus | nexus / baseline | paper | our goal | where we stand |"
        ));
        assert!(markdown.contains(
            "| node CPU per invocation, thumbnail: the whole machine beyond its idle floor [TCG] \
             | 300.00 ms (270.00 ms–330.00 ms), floor drift ± 0 ns | 200.00 ms (180.00 ms–220.00 \
             ms), floor drift ± 0 ns | 0.67× (−33 %) | −44 % | −50 % | better, short of the paper |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| node CPU per invocation, thumbnail, per process: QEMU (+ backend for Nexus) [TCG] \
             | 300.00 ms (270.00 ms–330.00 ms) | 220.00 ms (198.00 ms–242.00 ms), medians 200.00 ms \
             + 20.00 ms | 0.73× |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| memory per VM on the host, thumbnail: QEMU PSS without TCG's cache (+ backend RSS \
             / VMs for Nexus) [TCG] | 300.0 MiB | 220.0 MiB, backend's share 20.0 MiB | 0.73× (−27 %) |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| TCG's translation cache, thumbnail: RSS (none under KVM; left out above) [TCG] | \
             64.0 MiB | 64.0 MiB | 1.00× |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| warm latency p50 under load, thumbnail [TCG] | 84.90 ms (76.41 ms–93.39 ms) | \
             54.90 ms (49.41 ms–60.39 ms) | 0.65× (−35 %) |"
        ));
        // 300 invocations per flavour: p95, not p99.
        assert!(markdown.contains(
            "| warm latency p95 under load, thumbnail, all windows together [TCG] | 97.24 ms \
             (windows 80.46 ms–98.34 ms) |"
        ));
        assert!(markdown.contains(
            "| 2.50 s (2.00 s–3.00 s), VM ready in 1.50 s | 2.50 s (2.00 s–3.00 s), VM ready in \
             1.50 s; runtime restarted 1/3 | 1.00× (+0 %) | −10 % | −30 % | no gain (with runtime \
             restarts, see the notes) |"
        ), "{markdown}");
        assert!(markdown.contains("then 3 windows of 60 s are measured"));
        // Found by filling a cgroup: 9 against 6, the claim beside it.
        assert!(markdown.contains(
            "| VMs that held in 1024 MiB, found: started one by one at 0.5/s each until the next \
             did not fit or broke the SLO [TCG] | 6 | 9 | 1.50× (+50 %) | +37 % | +60 % | \
             paper's level, short of our goal |"
        ), "{markdown}");
        assert!(markdown.contains("| resident per VM at the count that held"));
        assert!(markdown.contains("in thumbnail 0/3 (baseline) and 1/3 (Nexus) cold starts"));
        assert!(markdown.contains("| host-native fabric: empty call round trip p50 (no VM) |  | 500 ns |  | — | p50 < 2 µs | goal met |"));
        assert!(markdown.contains(
            "The floors kept thumbnail 35 % then 35 % / 35 % then 35 % of the machine busy"
        ));
        assert!(markdown.contains("Load average 3.5 at the start and 4.0 at the end"));
        assert!(markdown.contains("![plots/x.svg](plots/x.svg)"));
        assert!(!markdown.contains("probe"), "no probe rows without the probes");
        assert!(options
            .command()
            .starts_with("cargo xtask bench --vms 2 --rate 2 --duration 60 --reps 3"));
    }

    #[test]
    fn saturated_windows_and_probe_rows() {
        let (mut b, mut n) =
            (phase(Flavour::Baseline, 30.0, 300.0, 80.0), phase(Flavour::Nexus, 20.0, 200.0, 50.0));
        b.reps[0].node.busy = b.reps[0].node.capacity * 0.97;
        // Nexus's floor rose from 12 s to 18 s per 20 s: 45 s over the window at the mean rate,
        // 11 s beyond it, 9 s of drift.
        n.floors.1.busy = 20.0;
        let cpu = |vmm_s: f64, backend_s: f64| CpuUse {
            vmm_s,
            backend_s,
            proc_s: vmm_s * 0.99,
            probe_s: 0.12,
            probe_runs: 400_000,
            cpus_s: 120.0,
        };
        let merged = |mib: f64| Merged {
            per_vm: vec![mib * 1024.0 * 1024.0; 2],
            node: 4.0 * mib * 1024.0 * 1024.0,
            passes: 4,
            ksmd_cpu: Some(Duration::from_millis(1500)),
            took: Duration::from_secs(20),
        };
        // Over the 300 invocations of the three windows.
        b.seen = Some(Seen { cpu: cpu(87.0, 3.0), merged: merged(60.0) });
        n.seen = Some(Seen { cpu: cpu(57.0, 4.5), merged: merged(30.0) });
        let markdown = markdown(&options(), &[(b, n)]);
        // One of the baseline's windows kept the machine 97 % busy: the claim moves to the next
        // row.
        assert!(markdown.contains(
            "| node CPU per invocation, thumbnail: the whole machine beyond its idle floor [TCG] \
             | saturated (97 % busy) | 110.00 ms (90.00 ms–130.00 ms), floor drift ± 90.00 ms, \
             unsteady | — | −44 % | −50 % | — (no room or no steady floor: judged on the next row) |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| node CPU per invocation, thumbnail, per process: QEMU (+ backend for Nexus) [TCG] \
             | 300.00 ms (270.00 ms–330.00 ms) | 220.00 ms (198.00 ms–242.00 ms), medians 200.00 ms \
             + 20.00 ms | 0.73× (−27 %) | −44 % | −50 % | better, short of the paper |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| probe: VMM CPU per invocation, thumbnail: QEMU's vCPU and other threads [TCG] | \
             — (not the backend's VMs) | 190.00 ms (/proc 188.10 ms) | — |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| probe: backend CPU per invocation, thumbnail: the threads serving the VMs' regions \
             [TCG] | — (no region) | 15.00 ms | — |"
        ), "{markdown}");
        assert!(markdown.contains(
            "| probe: duplicated memory per VM, thumbnail: what KSM merged of it [TCG] | 60.0 MiB \
             | 30.0 MiB | 0.50× |"
        ), "{markdown}");
        // 0.12 s over 400,000 runs; 0.12 s of 120 s of all CPUs' time.
        assert!(markdown.contains("| 300 ns | 300 ns | 1.00× |"), "{markdown}");
        assert!(markdown.contains("| 0.100 % | 0.100 % | 1.00× |"), "{markdown}");
        assert!(markdown.contains("(baseline / Nexus) thumbnail 240.0 MiB / 120.0 MiB."));
    }
}
