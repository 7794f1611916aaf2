//! `cargo xtask bench`: baseline and Nexus side by side, in one run and one table — node CPU per
//! invocation, memory per VM, warm latency under load (repeated windows) and cold starts for
//! each example function, the density found by filling a memory cgroup with each flavour's VMs
//! (`density.rs`), the host-native fabric's key rows, and next to them the paper's claims and
//! our goals (`full_table.rs`). As root, the backend runs its eBPF probes
//! and the table adds what they saw. Writes its section of `docs/BENCHMARKS.md` (and the
//! fabric's) and plots under `docs/plots/`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::density::{self, DensityArgs};
use super::fabric;
use super::fleet;
use super::full_table::{table, Run};
use super::measure::load_average;
use super::node_cpu::NodeMeter;
use super::phase::{self, Load, Meters, Phase, Rep};
use super::plot::{self, Series};
use super::probes;
use super::stack::{ensure_root, Stack, Storage};
use super::stats::{mean, median};
use super::vm;
use super::workload::Function;
use crate::image::Flavour;
use crate::{setup, workspace_root};

/// Where the plots go, under the workspace.
const PLOTS: &str = "docs/plots";

/// `cargo xtask bench` options; the defaults fit a 2-core machine in under 20 minutes, and
/// `--full` sets the longer windows that give every latency cell 1 000 invocations or more.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Function VMs per flavour: each function's max_vms, and invocations in flight.
    #[arg(long, default_value_t = 2)]
    pub vms: usize,
    /// Invocations per second per flavour and function, over its VMs (Poisson arrivals).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Measured windows per flavour and function (the tables show their median and range).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds of load before the first window, left out of every figure.
    #[arg(long, default_value_t = 5)]
    pub warm_up: u64,
    /// The functions, comma-separated, from the most I/O-bound to the most compute-bound.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "copy,compress,transform,thumbnail"
    )]
    pub functions: Vec<Function>,
    /// Cold starts per flavour and function.
    #[arg(long, default_value_t = 3)]
    pub cold_rounds: usize,
    /// Seed of the arrival times (the same plans for both flavours).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of the node's idle floor, measured before the first phase and after each.
    #[arg(long, default_value_t = 10)]
    pub idle_floor: u64,
    /// `remote`: storage behind a link with cloud object storage's latency and bandwidth;
    /// `local`: on loopback.
    #[arg(long, value_enum, default_value = "remote")]
    pub storage: Storage,
    #[command(flatten)]
    pub density: DensityArgs,
    /// The long run: 180 s windows, so that each cell has ≥ 1 000 invocations and shows p99
    /// (85 minutes here); overrides --duration and --warm-up.
    #[arg(long)]
    pub full: bool,
}

/// `--full`'s window and warm-up, seconds.
const FULL_WINDOW: u64 = 180;
const FULL_WARM_UP: u64 = 10;

impl Options {
    /// The options with `--full` applied.
    fn resolved(&self) -> Self {
        let mut options = self.clone();
        if options.full {
            options.duration = FULL_WINDOW;
            options.warm_up = FULL_WARM_UP;
        }
        options
    }

    /// The command line that repeats this run.
    pub fn command(&self) -> String {
        let functions: Vec<&str> = self.functions.iter().map(|f| f.name()).collect();
        format!(
            "cargo xtask bench --vms {} --rate {} --duration {} --reps {} --warm-up {} \
             --functions {} --cold-rounds {} --seed {} --idle-floor {} --storage {} {}",
            self.vms,
            self.rate,
            self.duration,
            self.reps,
            self.warm_up,
            functions.join(","),
            self.cold_rounds,
            self.seed,
            self.idle_floor,
            self.storage.name(),
            self.density.command()
        )
    }
}

pub fn run(options: &Options) -> Result<()> {
    let options = &options.resolved();
    anyhow::ensure!(
        options.vms > 0 && options.rate > 0.0 && options.idle_floor > 0 && options.reps > 0,
        "--vms, --rate, --reps and --idle-floor must be positive"
    );
    options.density.check()?;
    ensure_root(
        "cargo xtask bench (the baseline's network namespace and taps, the density search's \
         memory cgroups)",
    )?;
    let started = Instant::now();
    let load_at_start = load_average();
    let mut functions = options.functions.clone();
    functions.dedup();
    let tools = setup::run()?;
    let file = workspace_root().join("docs/BENCHMARKS.md");
    println!("bench: the host-native fabric (`cargo xtask bench fabric`)");
    let fabric = fabric::measure(&tools)?;
    fabric.table.write_section(&file)?;

    let settings = if probes::available() { probes::SETTINGS } else { "" };
    let stack = Stack::start(&tools, &Flavour::ALL, options.storage, vm::REGION, settings)?;
    for function in &functions {
        function.seed(&stack, &tools.python)?;
    }
    let node = NodeMeter::start(stack.garage.pid().context("Garage is not running")?);
    let observe = probes::available() && probes::on(&stack.backend)?;
    let _cost_stats = observe.then(nexus_ebpf::Probes::cost_stats).transpose()?;
    let meters = Meters { stack: &stack, node: &node, probes: observe };
    let load = Load {
        vms: options.vms,
        rate: options.rate,
        warm_up: Duration::from_secs(options.warm_up),
        duration: Duration::from_secs(options.duration),
        reps: options.reps,
        cold_rounds: options.cold_rounds.max(1),
        seed: options.seed,
    };
    let floor_length = Duration::from_secs(options.idle_floor);
    let floor = || {
        println!("bench: the node's idle floor for {} s", options.idle_floor);
        node.floor(floor_length)
    };
    let mut before = floor()?;
    let mut pairs = Vec::new();
    for (i, &function) in functions.iter().enumerate() {
        // Alternate which flavour goes first, so a drift of the machine favours neither. Each
        // floor between two phases is the one after the first and the one before the second.
        let mut run = |flavour| -> Result<Phase> {
            let mut phase = phase::run(meters, function, flavour, &load, before)?;
            before = floor()?;
            phase.floors.1 = before;
            Ok(phase)
        };
        let pair = if i % 2 == 0 {
            let baseline = run(Flavour::Baseline)?;
            (baseline, run(Flavour::Nexus)?)
        } else {
            let nexus = run(Flavour::Nexus)?;
            (run(Flavour::Baseline)?, nexus)
        };
        pairs.push(pair);
    }
    // Last, with the compress function's input already in place: it fills the memory.
    if !functions.contains(&Function::Compress) {
        Function::Compress.seed(&stack, &tools.python)?;
    }
    println!("bench: density, found by filling a memory cgroup with each flavour's VMs");
    let density = density::run(&options.density, &vm::event("out/density.gz"), &mut |flavour| {
        fleet::start(&stack, flavour)
    })?;
    let storage_accounting = node.storage_accounting();
    drop(node);
    drop(stack);

    let plots = write_plots(&pairs)?;
    let run = Run {
        options,
        pairs: &pairs,
        density: &density,
        fabric: &fabric,
        plots: &plots,
        elapsed: started.elapsed(),
        load_averages: (load_at_start, load_average()),
        storage_accounting,
    };
    let table = table(&run);
    print!("\n{}", table.text());
    table.write_section(&file)?;
    println!("bench: wrote {} and {} plots under {PLOTS}", file.display(), plots.len());
    let elapsed = started.elapsed().as_secs();
    println!("bench: took {} min {} s", elapsed / 60, elapsed % 60);
    Ok(())
}

/// One figure of a phase's window, for a plot.
type Figure = fn(&Phase, &Rep) -> f64;

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
        let ms = |p: &Phase| p.warm().iter().map(|s| s * 1e3).collect::<Vec<_>>();
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
        let figures: [(&str, Figure); 5] = [
            ("host memory per VM", Phase::host_memory_per_vm_kib),
            ("guest RAM on the host", |_, r| r.vmm_kib(|m| m.guest.pss_kib)),
            ("QEMU beyond guest RAM", |_, r| r.vmm_kib(|m| m.rest.pss_kib)),
            ("TCG's cache (KVM: none)", |_, r| r.vmm_kib(|m| m.translation_cache.rss_kib)),
            ("guest's own view", |_, r| mean(&r.guest_used_kib)),
        ];
        // The median over the windows.
        let mib = |p: &Phase, figure: Figure| median(&p.per_rep(|r| figure(p, r))) / 1024.0;
        for (label, figure) in figures {
            groups.push(format!("{f}: {label}"));
            b_mib.push(mib(b, figure));
            n_mib.push(mib(n, figure));
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
