//! `cargo xtask bench`: baseline and Nexus side by side, in one run and one table — node CPU per
//! invocation, memory per VM, density at a memory budget, warm latency under load and cold
//! starts for each example function, the host-native fabric's key rows, and next to them the
//! paper's claims and our goals (`full_table.rs`). As root, the backend runs its eBPF probes
//! and the table adds what they saw. Writes its section of `docs/BENCHMARKS.md` (and the
//! fabric's) and plots under `docs/plots/`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fabric;
use super::full_table::{table, Run};
use super::measure::load_average;
use super::node_cpu::NodeMeter;
use super::phase::{self, Function, Load, Meters, Phase};
use super::plot::{self, Series};
use super::probes;
use super::stack::{Stack, Storage};
use super::stats::mean;
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
    /// Seconds of the node's idle floor, measured before each flavour's VMs start and again
    /// once they are gone.
    #[arg(long, default_value_t = 20)]
    pub idle_floor: u64,
    /// `remote`: storage behind a link with cloud object storage's latency and bandwidth;
    /// `local`: on loopback.
    #[arg(long, value_enum, default_value = "remote")]
    pub storage: Storage,
}

impl Options {
    /// The command line that repeats this run.
    pub fn command(&self) -> String {
        let functions: Vec<&str> = self.functions.iter().map(|f| f.name()).collect();
        format!(
            "cargo xtask bench --vms {} --rate {} --duration {} --warm-up {} --functions {} \
             --budget-gib {} --cold-rounds {} --seed {} --idle-floor {} --storage {}",
            self.vms,
            self.rate,
            self.duration,
            self.warm_up,
            functions.join(","),
            self.budget_gib,
            self.cold_rounds,
            self.seed,
            self.idle_floor,
            self.storage.name()
        )
    }
}

pub fn run(options: &Options) -> Result<()> {
    anyhow::ensure!(
        options.vms > 0 && options.rate > 0.0 && options.idle_floor > 0,
        "--vms, --rate and --idle-floor must be positive"
    );
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
    let stack = Stack::start(&tools, &Flavour::ALL, options.storage, REGION, settings)?;
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
        cold_rounds: options.cold_rounds.max(1),
        seed: options.seed,
        floor: Duration::from_secs(options.idle_floor),
    };
    let mut pairs = Vec::new();
    for (i, &function) in functions.iter().enumerate() {
        // Alternate which flavour goes first, so a drift of the machine favours neither.
        let run = |flavour| phase::run(meters, function, flavour, &load);
        let pair = if i % 2 == 0 {
            let baseline = run(Flavour::Baseline)?;
            (baseline, run(Flavour::Nexus)?)
        } else {
            let nexus = run(Flavour::Nexus)?;
            (run(Flavour::Baseline)?, nexus)
        };
        pairs.push(pair);
    }
    let storage_accounting = node.storage_accounting();
    drop(node);
    drop(stack);

    let plots = write_plots(&pairs)?;
    let run = Run {
        options,
        pairs: &pairs,
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
        let figures: [(&str, Figure); 5] = [
            ("host memory per VM", Phase::host_memory_per_vm_kib),
            ("guest RAM on the host", |p| p.vmm_kib(|m| m.guest.pss_kib)),
            ("QEMU beyond guest RAM", |p| p.vmm_kib(|m| m.rest.pss_kib)),
            ("TCG's cache (KVM: none)", |p| p.vmm_kib(|m| m.translation_cache.rss_kib)),
            ("guest's own view", |p| mean(&p.guest_used_kib)),
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
