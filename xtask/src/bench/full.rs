//! `cargo xtask bench`: baseline and Nexus side by side, in one run and one table — node CPU per
//! invocation, memory per VM, density at a memory budget, warm latency under load and cold
//! starts for each example function, the host-native fabric's key rows, and next to them the
//! paper's claims and our goals. Writes its section of `docs/BENCHMARKS.md` (and the fabric's)
//! and plots under `docs/plots/`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fabric::{self, Fabric};
use super::measure::{machine, today};
use super::phase::{self, Function, Load, Phase};
use super::plot::{self, Series};
use super::report::{change, mib, ratio, seconds, Row, Table};
use super::stack::{accel_note, Stack, Storage};
use super::stats::{mean, median, percentile};
use crate::image::Flavour;
use crate::{setup, workspace_root};

/// The region of every function VM.
const REGION: &str = "size: 32MiB, buffer_size: 1MiB";
/// Where the plots go, under the workspace.
const PLOTS: &str = "docs/plots";

/// `cargo xtask bench` options; the defaults fit a 2-core machine in under 15 minutes.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Function VMs per flavour: each function's max_vms, and invocations in flight.
    #[arg(long, default_value_t = 2)]
    pub vms: usize,
    /// Invocations per second per flavour and function, over its VMs (Poisson arrivals).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of measured load per flavour and function.
    #[arg(long, default_value_t = 90)]
    pub duration: u64,
    /// Seconds of load before that, left out of every figure.
    #[arg(long, default_value_t = 10)]
    pub warm_up: u64,
    /// The functions, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "compress,thumbnail")]
    pub functions: Vec<Function>,
    /// The memory budget of the density row, GiB.
    #[arg(long, default_value_t = 16.0)]
    pub budget_gib: f64,
    /// Cold starts per flavour and function (their median is shown).
    #[arg(long, default_value_t = 3)]
    pub cold_rounds: usize,
    /// Seed of the arrival times (the same plan for both flavours).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `remote`: storage behind a link with cloud object storage's latency and bandwidth;
    /// `local`: on loopback.
    #[arg(long, value_enum, default_value = "remote")]
    pub storage: Storage,
}

impl Options {
    /// The command line that repeats this run.
    fn command(&self) -> String {
        let functions: Vec<&str> = self.functions.iter().map(|f| f.name()).collect();
        format!(
            "cargo xtask bench --vms {} --rate {} --duration {} --warm-up {} --functions {} \
             --budget-gib {} --cold-rounds {} --seed {} --storage {}",
            self.vms,
            self.rate,
            self.duration,
            self.warm_up,
            functions.join(","),
            self.budget_gib,
            self.cold_rounds,
            self.seed,
            self.storage.name()
        )
    }
}

pub fn run(options: &Options) -> Result<()> {
    anyhow::ensure!(options.vms > 0 && options.rate > 0.0, "--vms and --rate must be positive");
    let started = Instant::now();
    let mut functions = options.functions.clone();
    functions.dedup();
    let tools = setup::run()?;
    let file = workspace_root().join("docs/BENCHMARKS.md");
    println!("bench: the host-native fabric (`cargo xtask bench fabric`)");
    let fabric = fabric::measure(&tools)?;
    fabric.table.write_section(&file)?;

    let stack = Stack::start(&tools, &Flavour::ALL, options.storage, REGION, "")?;
    for function in &functions {
        function.seed(&stack, &tools.python)?;
    }
    let load = Load {
        vms: options.vms,
        rate: options.rate,
        warm_up: Duration::from_secs(options.warm_up),
        duration: Duration::from_secs(options.duration),
        cold_rounds: options.cold_rounds.max(1),
        seed: options.seed,
    };
    let mut pairs = Vec::new();
    for (i, &function) in functions.iter().enumerate() {
        // Alternate which flavour goes first, so a drift of the machine favours neither.
        let run = |flavour| phase::run(&stack, function, flavour, &load);
        let pair = if i % 2 == 0 {
            let baseline = run(Flavour::Baseline)?;
            (baseline, run(Flavour::Nexus)?)
        } else {
            let nexus = run(Flavour::Nexus)?;
            (run(Flavour::Baseline)?, nexus)
        };
        pairs.push(pair);
    }
    drop(stack);

    let plots = write_plots(&pairs)?;
    let table = table(options, &pairs, &fabric, &plots, started.elapsed());
    print!("\n{}", table.text());
    table.write_section(&file)?;
    println!("bench: wrote {} and {} plots under {PLOTS}", file.display(), plots.len());
    let elapsed = started.elapsed().as_secs();
    println!("bench: took {} min {} s", elapsed / 60, elapsed % 60);
    Ok(())
}

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

/// VMs that fit in `budget_kib` at `per_vm_kib` each (0 for an unknown size).
fn density(budget_kib: f64, per_vm_kib: f64) -> f64 {
    if per_vm_kib > 0.0 {
        (budget_kib / per_vm_kib).floor()
    } else {
        0.0
    }
}

impl Phase {
    fn nexus(&self) -> bool {
        self.flavour == Flavour::Nexus
    }

    /// The CPU seconds counted for the flavour: its QEMU processes, and the backend for Nexus.
    fn counted_cpu(&self) -> f64 {
        self.qemu_cpu + if self.nexus() { self.backend_cpu } else { 0.0 }
    }

    fn cpu_per_invocation(&self) -> f64 {
        self.counted_cpu() / self.invocations() as f64
    }

    /// The backend's memory charged to each VM: its RSS over the Nexus VMs (none for the
    /// baseline, whose I/O does not go through it).
    fn backend_share_kib(&self) -> f64 {
        if self.nexus() {
            self.backend_rss_kib / self.qemu_pss_kib.len() as f64
        } else {
            0.0
        }
    }

    fn host_memory_per_vm_kib(&self) -> f64 {
        mean(&self.qemu_pss_kib) + self.backend_share_kib()
    }
}

fn table(
    options: &Options,
    pairs: &[(Phase, Phase)],
    fabric: &Fabric,
    plots: &[String],
    elapsed: Duration,
) -> Table {
    let accel = pairs.first().map_or("?", |(_, n)| n.accel.as_str()).to_owned();
    let budget_kib = options.budget_gib * 1024.0 * 1024.0;
    let kib = |k: f64| mib(k * 1024.0);
    let count = |v: f64| format!("{v:.0}");
    let row =
        |metric: String, b: f64, n: f64, show: &dyn Fn(f64) -> String, claim: Option<Claim>| {
            let r = n / b;
            Row {
                metric: format!("{metric} [{accel}]"),
                baseline: show(b),
                nexus: show(n),
                ratio: match claim {
                    Some(_) => format!("{} ({})", ratio(n, b), change(n, b)),
                    None => ratio(n, b),
                },
                extra: claim.map(|c| c.cells(r)).unwrap_or_default(),
                ..Row::default()
            }
        };
    let mut rows = Vec::new();
    for (b, n) in pairs {
        let f = b.function.name();
        let mut cpu = row(
            format!("node CPU per invocation, {f}: QEMU (+ backend for Nexus)"),
            b.cpu_per_invocation(),
            n.cpu_per_invocation(),
            &seconds,
            Some(CPU),
        );
        let per = |cpu: f64| seconds(cpu / n.invocations() as f64);
        cpu.nexus = format!("{} ({} + {})", cpu.nexus, per(n.qemu_cpu), per(n.backend_cpu));
        rows.push(cpu);
    }
    for (b, n) in pairs {
        let f = b.function.name();
        let mut memory = row(
            format!("memory per VM on the host, {f}: QEMU PSS (+ backend RSS / VMs for Nexus)"),
            b.host_memory_per_vm_kib(),
            n.host_memory_per_vm_kib(),
            &kib,
            Some(MEMORY),
        );
        memory.nexus = format!(
            "{} ({} + {})",
            memory.nexus,
            kib(mean(&n.qemu_pss_kib)),
            kib(n.backend_share_kib())
        );
        rows.push(memory);
        let (b_rss, n_rss) = (mean(&b.qemu_rss_kib), mean(&n.qemu_rss_kib));
        rows.push(row(format!("QEMU RSS per VM, {f}"), b_rss, n_rss, &kib, None));
        let (b_guest, n_guest) = (mean(&b.guest_used_kib), mean(&n.guest_used_kib));
        rows.push(row(
            format!("guest memory in use (MemTotal − MemAvailable), {f}"),
            b_guest,
            n_guest,
            &kib,
            None,
        ));
    }
    for (b, n) in pairs {
        rows.push(row(
            format!(
                "VMs in {} GiB, {}: computed from memory per VM",
                options.budget_gib,
                b.function.name()
            ),
            density(budget_kib, b.host_memory_per_vm_kib()),
            density(budget_kib, n.host_memory_per_vm_kib()),
            &count,
            Some(DENSITY),
        ));
    }
    for (b, n) in pairs {
        let f = b.function.name();
        let (p50, p99) =
            (|p: &Phase| percentile(&p.warm, 50.0), |p: &Phase| percentile(&p.warm, 99.0));
        rows.push(row(
            format!("warm latency p50 under load, {f}"),
            p50(b),
            p50(n),
            &seconds,
            Some(WARM),
        ));
        rows.push(row(format!("warm latency p99 under load, {f}"), p99(b), p99(n), &seconds, None));
    }
    for (b, n) in pairs {
        let mut cold = row(
            format!("cold: restore + first invocation with its input, p50, {}", b.function.name()),
            median(&b.cold),
            median(&n.cold),
            &seconds,
            Some(COLD),
        );
        for (cell, p) in [(&mut cold.baseline, b), (&mut cold.nexus, n)] {
            *cell += &format!(" (VM ready in {}", seconds(median(&p.cold_start)));
            if p.cold_runtime_restarts > 0 {
                *cell +=
                    &format!("; runtime restarted {}/{}", p.cold_runtime_restarts, p.cold.len());
            }
            *cell += ")";
        }
        if b.cold_runtime_restarts + n.cold_runtime_restarts > 0 {
            if let Some(stand) = cold.extra.last_mut() {
                *stand += " (with runtime restarts, see the notes)";
            }
        }
        rows.push(cold);
    }
    rows.extend(fabric_rows(fabric));
    Table {
        name: "bench",
        title: format!(
            "Baseline vs Nexus, side by side: {} function VMs per flavour, {accel}",
            options.vms
        ),
        command: options.command(),
        notes: notes(options, pairs, plots, elapsed, &accel),
        rows,
        extra_columns: EXTRA_COLUMNS.map(String::from).to_vec(),
        sides: None,
    }
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

fn notes(
    options: &Options,
    pairs: &[(Phase, Phase)],
    plots: &[String],
    elapsed: Duration,
    accel: &str,
) -> Vec<String> {
    let invocations: Vec<String> = pairs
        .iter()
        .map(|(b, n)| {
            format!(
                "{} {} + {} in windows of {:.0} / {:.0} s (latest send {} / {} behind the plan)",
                b.function.name(),
                b.invocations(),
                n.invocations(),
                b.window,
                n.window,
                seconds(b.max_lag),
                seconds(n.max_lag)
            )
        })
        .collect();
    let backend_for_baseline: Vec<String> = pairs
        .iter()
        .map(|(b, _)| {
            format!(
                "{} {} per invocation, RSS {}",
                b.function.name(),
                seconds(b.backend_cpu / b.invocations() as f64),
                mib(b.backend_rss_kib * 1024.0)
            )
        })
        .collect();
    let elapsed = elapsed.as_secs();
    let mut notes = vec![
        format!(
            "Machine: {}. One run, {}, {} min {} s in all (fabric included).",
            machine(),
            today(),
            elapsed / 60,
            elapsed % 60
        ),
        format!(
            "Load: for each function and flavour in turn, one function (deployed as e.g. \
             `thumbnail-nexus`, `max_vms` {vms}, its {vms} VMs started first) gets {rate} \
             invocations/s, Poisson arrivals from seed {seed} (the same plan for both flavours), \
             with up to {vms} in flight: each takes an idle VM of the function; {warm} s of \
             warm-up load are left out, then {duration} s are measured. \
             Invocations measured (baseline + Nexus): {inv}. Latencies are end to end at the \
             backend's API and count from the planned arrival, so a VM that falls behind shows \
             in them. Both flavours read and write the same Garage S3 server: the baseline with \
             the real boto3 through its virtio NIC and QEMU user networking, Nexus through the \
             shim, the channel and the backend (its object cache off). {storage}",
            vms = options.vms,
            rate = options.rate,
            seed = options.seed,
            warm = options.warm_up,
            duration = options.duration,
            inv = invocations.join(", "),
            storage = options.storage.note(),
        ),
        "Measured: node CPU is the user + system time (`/proc/<pid>/stat`) over the measured \
         window of the flavour's QEMU processes and, for Nexus, of the backend, divided by the \
         invocations completed; the window ends once Nexus's write-back spool has uploaded \
         everything. Garage's CPU is left out for both."
            .to_owned()
            + &format!(
                " The backend also delivers the baseline's invocations (not counted for it): {}.",
                backend_for_baseline.join("; ")
            ),
        "Memory after the load, per VM (mean of the VMs): QEMU's RSS and PSS \
         (`/proc/<pid>/smaps_rollup`, shared pages divided among the processes mapping them) and \
         the guest's own memory in use as the handler reports it. For Nexus the backend's whole \
         RSS, divided by the Nexus VMs running, is added to each VM's PSS."
            .to_owned(),
        format!(
            "Computed, not measured: the density row divides the {} GiB budget by the memory per \
             VM above; no VMs were started until the budget ran out.",
            options.budget_gib
        ),
        format!(
            "Cold: the first VM of each flavour is snapshotted warm (after the load), then {} times \
             stopped and invoked again: a restore into a new VMM and the first invocation with \
             its input, end to end; the median is shown. Nexus names the input in \
             `x-nexus-prefetch`, so the backend fetches it while the VM restores; the baseline \
             restores the same way without it and its boto3 fetches the input.",
            options.cold_rounds
        ),
    ];
    let restarts: Vec<String> = pairs
        .iter()
        .filter(|(b, n)| b.cold_runtime_restarts + n.cold_runtime_restarts > 0)
        .map(|(b, n)| {
            format!(
                "{} {}/{} (baseline) and {}/{} (Nexus)",
                b.function.name(),
                b.cold_runtime_restarts,
                b.cold.len(),
                n.cold_runtime_restarts,
                n.cold.len()
            )
        })
        .collect();
    if !restarts.is_empty() {
        notes.push(format!(
            "After a restore the guest's runtime exited and the agent started it again (the VM's \
             console says so) in {} cold starts: those cold rows include a fresh runtime start \
             (Python, the handler and its boto3 imported again) that a restore exists to avoid, \
             which costs the baseline's real boto3 more than the shim.",
            restarts.join(", ")
        ));
    }
    notes.extend([
        "The host-native rows are `cargo xtask bench fabric`'s (run first, its section below): \
         no VM, no emulation."
            .to_owned(),
    ]);
    notes.extend(accel_note(accel));
    notes.extend(plots.iter().map(|p| format!("![{p}]({p})")));
    notes
}

/// One figure of a phase, for a plot.
type Figure = fn(&Phase) -> f64;

/// Writes the plots; returns their paths relative to `docs/`.
fn write_plots(pairs: &[(Phase, Phase)]) -> Result<Vec<String>> {
    let dir = workspace_root().join(PLOTS);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, svg: String| -> Result<()> {
        let path = dir.join(&name);
        std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))?;
        written.push(Path::new("plots").join(name).display().to_string());
        Ok(())
    };
    for (b, n) in pairs {
        let f = b.function.name();
        let ms = |p: &Phase| p.warm.iter().map(|s| s * 1e3).collect::<Vec<_>>();
        let (b_ms, n_ms) = (ms(b), ms(n));
        let svg = plot::cdf(
            &format!("Warm latency under load, {f} [{}]", n.accel),
            "milliseconds, end to end at the API",
            &[Series { name: "baseline", values: &b_ms }, Series { name: "nexus", values: &n_ms }],
        );
        write(format!("bench-latency-{f}.svg"), svg)?;
    }
    let mut groups = Vec::new();
    let (mut b_mib, mut n_mib) = (Vec::new(), Vec::new());
    for (b, n) in pairs {
        let f = b.function.name();
        let figures: [(&str, Figure); 3] = [
            ("host memory per VM", Phase::host_memory_per_vm_kib),
            ("QEMU RSS", |p| mean(&p.qemu_rss_kib)),
            ("guest memory in use", |p| mean(&p.guest_used_kib)),
        ];
        for (label, figure) in figures {
            groups.push(format!("{f}: {label}"));
            b_mib.push(figure(b) / 1024.0);
            n_mib.push(figure(n) / 1024.0);
        }
    }
    let accel = pairs.first().map_or("?", |(_, n)| n.accel.as_str());
    let labels: Vec<&str> = groups.iter().map(String::as_str).collect();
    let svg = plot::bars(
        &format!("Memory per function VM after the load [{accel}]"),
        "MiB",
        &labels,
        &[Series { name: "baseline", values: &b_mib }, Series { name: "nexus", values: &n_mib }],
    );
    write("bench-memory.svg".into(), svg)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(flavour: Flavour, cpu: f64, pss_mib: f64, warm_ms: f64) -> Phase {
        Phase {
            function: Function::Thumbnail,
            flavour,
            accel: "TCG".into(),
            warm: (0..100).map(|i| (warm_ms + f64::from(i) / 10.0) / 1e3).collect(),
            max_lag: 0.0,
            window: 60.0,
            qemu_cpu: cpu,
            backend_cpu: 2.0,
            qemu_rss_kib: vec![pss_mib * 1200.0; 2],
            qemu_pss_kib: vec![pss_mib * 1024.0; 2],
            guest_used_kib: vec![50.0 * 1024.0; 2],
            backend_rss_kib: 40.0 * 1024.0,
            cold: vec![2.5, 2.0, 3.0],
            cold_start: vec![1.5, 1.5, 1.5],
            cold_runtime_restarts: if flavour == Flavour::Nexus { 1 } else { 0 },
        }
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
    fn density_and_per_vm_figures() {
        assert_eq!(density(16.0 * 1024.0 * 1024.0, 300.0 * 1024.0), 54.0);
        assert_eq!(density(1000.0, 0.0), 0.0);
        let (b, n) =
            (phase(Flavour::Baseline, 30.0, 300.0, 80.0), phase(Flavour::Nexus, 20.0, 200.0, 50.0));
        // The backend counts for Nexus only: its CPU and its RSS shared by the two VMs.
        assert_eq!(b.cpu_per_invocation(), 0.3);
        assert_eq!(n.cpu_per_invocation(), 0.22);
        assert_eq!(b.host_memory_per_vm_kib(), 300.0 * 1024.0);
        assert_eq!(n.host_memory_per_vm_kib(), 220.0 * 1024.0);
    }

    #[test]
    fn one_table_with_claims_beside_the_figures() {
        let options = Options {
            vms: 2,
            rate: 2.0,
            duration: 60,
            warm_up: 10,
            functions: vec![Function::Thumbnail],
            budget_gib: 16.0,
            cold_rounds: 3,
            seed: 1,
            storage: Storage::Remote,
        };
        let pairs = vec![(
            phase(Flavour::Baseline, 30.0, 300.0, 80.0),
            phase(Flavour::Nexus, 20.0, 200.0, 50.0),
        )];
        let fabric = Fabric {
            table: Table::default(),
            call_p50_s: 5e-7,
            get_64mib_bytes_per_s: 9e9,
            cpu_s: (1.0, 0.5),
            rss_bytes: (110e6, 75e6),
        };
        let table =
            table(&options, &pairs, &fabric, &["plots/x.svg".into()], Duration::from_secs(600));
        let markdown = table.markdown();
        assert!(markdown.contains(
            "| metric | baseline | nexus | nexus / baseline | paper | our goal | where we stand |"
        ));
        assert!(markdown.contains(
            "| node CPU per invocation, thumbnail: QEMU (+ backend for Nexus) [TCG] | 300.00 ms | \
             220.00 ms (200.00 ms + 20.00 ms) | 0.73× (−27 %) | −44 % | −50 % | better, short of the paper |"
        ), "{markdown}");
        assert!(markdown.contains("| VMs in 16 GiB, thumbnail: computed from memory per VM [TCG] | 54 | 74 | 1.37× (+37 %) | +37 % | +60 % | paper's level, short of our goal |"), "{markdown}");
        assert!(markdown
            .contains("| warm latency p50 under load, thumbnail [TCG] | 84.90 ms | 54.90 ms |"));
        assert!(markdown.contains(
            "| 2.50 s (VM ready in 1.50 s) | 2.50 s (VM ready in 1.50 s; runtime restarted 1/3) | \
             1.00× (+0 %) | −10 % | −30 % | no gain (with runtime restarts, see the notes) |"
        ), "{markdown}");
        assert!(markdown.contains("in thumbnail 0/3 (baseline) and 1/3 (Nexus) cold starts"));
        assert!(markdown.contains("| host-native fabric: empty call round trip p50 (no VM) |  | 500 ns |  | — | p50 < 2 µs | goal met |"));
        assert!(markdown.contains("![plots/x.svg](plots/x.svg)"));
        assert!(options.command().starts_with("cargo xtask bench --vms 2 --rate 2 --duration 60"));
    }
}
