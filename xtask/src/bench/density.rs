//! Density found, not computed (issue 12, item 6): how many warm VMs of one flavour a fixed
//! memory budget holds while each gets a fixed invocation rate, found by starting them one by
//! one in a memory cgroup, for each flavour in the same run. Each flavour is a [`Fleet`]; the
//! search does not know how it works.
//!
//! ```text
//!  cgroup (memory_cgroup.rs) of its own per flavour; allowance = TCG's cache bound (0 on KVM)
//!  k = 1, 2, …   limit = budget + k × allowance; reset the peak; fleet.add (VM k)
//!                window: k × rate invocations/s, Poisson arrivals from a fixed seed (the same
//!                        plan for both flavours), open loop, up to k in flight, for WARM_UP
//!                        (left out) + W(k) s
//!                read the cgroup, then judge the step (first match):
//!                  the cgroup's OOM killer killed · VM k did not start · a VM exited
//!                  · an invocation failed · tail > slo_factor × the same tail at k = 1
//!                  (tail: p95 of the window, p99 once it has ≥ 1000 invocations)
//!                → stop: the figure is k − 1        k > --density-max → stop: the figure is k − 1
//! ```
//! W(k) is `--density-window`, longer while few VMs run so that a window expects at least
//! [`MIN_SAMPLES`] invocations. Table rows and notes: `density_table.rs`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use nexus_plugin::Accel;
use serde_json::Value;

use super::fleet::Fleet;
use super::load;
use super::memory_cgroup::{Charged, MemoryCgroup};
use super::report::{mib, seconds};
use super::stack::TCG_CACHE_MIB;
use super::stats::percentile;
use crate::image::Flavour;

/// Invocations a window expects at least: it is longer while few VMs run.
pub const MIN_SAMPLES: f64 = 20.0;
/// The start of each step's load, left out: a new VM's TCG translates its code afresh in its
/// first invocations (under KVM, warm-up of caches alone).
pub const WARM_UP: Duration = Duration::from_secs(4);
/// From this many invocations a window's tail is its p99, below it its p95 (the issue's rule).
const P99_SAMPLES: usize = 1000;
/// The seed of step k's arrivals is this + k: the same plan for both flavours.
const SEED: u64 = 1200;

/// The density search's options, flattened into `cargo xtask bench`'s and `bench density`'s.
#[derive(Debug, Clone, clap::Args)]
pub struct DensityArgs {
    /// The density search's memory budget per flavour, MiB: a node's reduced to what 2 cores
    /// under TCG can load (TCG's translation cache is allowed on top, per VM).
    #[arg(long, default_value_t = 1024)]
    pub density_budget_mib: u64,
    /// Invocations per second per VM during the density search (Poisson arrivals).
    #[arg(long, default_value_t = 0.5)]
    pub density_rate: f64,
    /// Seconds measured per step of the density search (longer while few VMs run, so that a
    /// window expects at least 20 invocations).
    #[arg(long, default_value_t = 10)]
    pub density_window: u64,
    /// The density search's SLO: a step holds while its tail latency is at most this many
    /// times the one-VM step's.
    #[arg(long, default_value_t = 3.0)]
    pub density_slo_factor: f64,
    /// The most VMs the density search starts per flavour.
    #[arg(long, default_value_t = 24)]
    pub density_max: usize,
}

impl DensityArgs {
    /// These options on a command line.
    pub fn command(&self) -> String {
        format!(
            "--density-budget-mib {} --density-rate {} --density-window {} --density-slo-factor \
             {} --density-max {}",
            self.density_budget_mib,
            self.density_rate,
            self.density_window,
            self.density_slo_factor,
            self.density_max
        )
    }

    pub fn check(&self) -> Result<()> {
        ensure!(
            self.density_budget_mib > 0
                && self.density_rate > 0.0
                && self.density_window > 0
                && self.density_slo_factor >= 1.0
                && self.density_max > 0,
            "--density-budget-mib, --density-rate, --density-window and --density-max must be \
             positive, --density-slo-factor at least 1"
        );
        Ok(())
    }

    /// How long step `vms` measures.
    fn window(&self, vms: usize) -> Duration {
        let expecting = MIN_SAMPLES / (vms as f64 * self.density_rate);
        Duration::from_secs_f64(expecting.max(self.density_window as f64))
    }
}

/// One step: `vms` VMs under load.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub vms: usize,
    /// How long the step's new VM took to start and answer its first invocation.
    pub add: Duration,
    /// The window's invocations' latencies, seconds from their planned arrival (none if the
    /// step failed before or during its window).
    pub latencies: Vec<f64>,
    /// The cgroup after the window (or the failure), its peak since the step began.
    pub charged: Charged,
}

impl Step {
    /// The window's tail: (percentile, seconds).
    pub fn tail(&self) -> (f64, f64) {
        let quantile = tail_quantile(self.latencies.len());
        (quantile, percentile(&self.latencies, quantile))
    }

    /// The tail and its count, e.g. `p95 120.00 ms of 20 invocations`; `no window` if it had
    /// none.
    pub fn describe_tail(&self) -> String {
        if self.latencies.is_empty() {
            return "no window".into();
        }
        let (quantile, tail) = self.tail();
        format!("p{quantile:.0} {} of {} invocations", seconds(tail), self.latencies.len())
    }
}

/// The percentile a window of `samples` invocations is judged by: p99 from 1000 on, else p95.
pub fn tail_quantile(samples: usize) -> f64 {
    if samples >= P99_SAMPLES {
        99.0
    } else {
        95.0
    }
}

/// Why the search added no more VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// `--density-max` VMs held.
    Cap,
    /// The cgroup's OOM killer killed this many processes during the step.
    OomKill(u64),
    /// The step's VM did not start.
    NoStart(String),
    /// A VM's process exited during the step, without an OOM kill.
    VmExited(u32),
    /// An invocation failed.
    InvocationFailed(String),
    /// The window's tail exceeded the SLO's bound.
    Slo { quantile: f64, tail: f64, bound: f64 },
}

impl Stop {
    /// A short sentence for the table and the progress lines.
    pub fn describe(&self) -> String {
        let first_line = |e: &str| -> String {
            e.lines().next().unwrap_or_default().chars().take(100).collect()
        };
        match self {
            Stop::Cap => "--density-max reached".into(),
            Stop::OomKill(kills) => format!("the cgroup's OOM killer killed {kills}"),
            Stop::NoStart(e) => format!("did not start: {}", first_line(e)),
            Stop::VmExited(pid) => format!("VM process {pid} exited"),
            Stop::InvocationFailed(e) => {
                format!("an invocation failed: {}", first_line(e))
            }
            Stop::Slo { quantile, tail, bound } => {
                format!("p{quantile:.0} {} > SLO {}", seconds(*tail), seconds(*bound))
            }
        }
    }
}

/// One flavour's search.
#[derive(Debug, Clone)]
pub struct Search {
    pub flavour: Flavour,
    /// The steps that held, one more VM each.
    pub held: Vec<Step>,
    /// The step that did not hold; `None` when `--density-max` stopped the search.
    pub broken: Option<Step>,
    pub stop: Stop,
    pub took: Duration,
}

impl Search {
    /// The figure: the largest number of VMs that held.
    pub fn count(&self) -> usize {
        self.held.last().map_or(0, |s| s.vms)
    }
}

/// Both flavours' searches, in one run.
#[derive(Debug, Clone)]
pub struct Density {
    pub args: DensityArgs,
    pub accel: Accel,
    /// What the limit grows by per VM beyond the budget: TCG's cache bound under TCG.
    pub allowance_bytes: u64,
    pub baseline: Search,
    pub nexus: Search,
}

/// Runs the search for the baseline, then for Nexus, each with a fleet from `start` (made
/// before its cgroup, dropped before it is removed) invoked with `event`; see the module doc.
pub fn run<'a>(
    args: &DensityArgs,
    event: &Value,
    start: &mut dyn FnMut(Flavour) -> Result<Box<dyn Fleet + 'a>>,
) -> Result<Density> {
    args.check()?;
    let accel = nexus_plugin::detect_accel();
    let allowance_bytes = match accel {
        Accel::Tcg => u64::from(TCG_CACHE_MIB) << 20,
        Accel::Kvm => 0,
    };
    let mut searches = Vec::new();
    for flavour in [Flavour::Baseline, Flavour::Nexus] {
        let mut fleet = start(flavour)?;
        let cgroup = MemoryCgroup::create(flavour.name())?;
        let found = search(args, flavour, allowance_bytes, &mut *fleet, &cgroup, event);
        drop(fleet);
        drop(cgroup);
        searches.push(found?);
    }
    let nexus = searches.pop().expect("two searches");
    let baseline = searches.pop().expect("two searches");
    Ok(Density { args: args.clone(), accel, allowance_bytes, baseline, nexus })
}

/// One flavour's search in `cgroup`.
fn search(
    args: &DensityArgs,
    flavour: Flavour,
    allowance_bytes: u64,
    fleet: &mut dyn Fleet,
    cgroup: &MemoryCgroup,
    event: &Value,
) -> Result<Search> {
    let started = Instant::now();
    let say = |what: String| println!("bench: density {}: {what}", flavour.name());
    let mut held: Vec<Step> = Vec::new();
    let (stop, broken) = loop {
        let vms = held.len() + 1;
        if vms > args.density_max {
            break (Stop::Cap, None);
        }
        cgroup.set_limit((args.density_budget_mib << 20) + vms as u64 * allowance_bytes)?;
        cgroup.reset_peak()?;
        let kills_before = cgroup.read()?.oom_kills;
        let adding = Instant::now();
        let added = fleet.add(cgroup);
        let mut step = Step { vms, add: adding.elapsed(), ..Step::default() };
        let failure = match added {
            Err(e) => Some(Failure::NoStart(format!("{e:#}"))),
            Ok(_) => {
                let rate = vms as f64 * args.density_rate;
                let plan = load::plan(rate, WARM_UP + args.window(vms), vms, SEED + vms as u64);
                let fleet: &dyn Fleet = fleet;
                match load::run(&plan, vms, |_| fleet.invoke(event)) {
                    Ok(done) => {
                        let measured = done.iter().filter(|d| d.planned.at >= WARM_UP);
                        step.latencies = measured.map(|d| d.latency.as_secs_f64()).collect();
                        None
                    }
                    Err(e) => Some(Failure::Invocation(format!("{e:#}"))),
                }
            }
        };
        step.charged = cgroup.read()?;
        let seen = Seen {
            oom_kills: step.charged.oom_kills.saturating_sub(kills_before),
            failure,
            exited: fleet.pids().into_iter().find(|&pid| !alive(pid)),
        };
        let reference = held.first().map(|s| s.latencies.as_slice());
        let verdict = judge(seen, &step.latencies, reference, args.density_slo_factor);
        say(progress(&step, verdict.as_ref()));
        if let Some(Stop::NoStart(e) | Stop::InvocationFailed(e)) = &verdict {
            say(format!("the error in full: {e}"));
        }
        match verdict {
            None => held.push(step),
            Some(stop) => break (stop, Some(step)),
        }
    };
    say(format!("{} VMs held ({})", held.len(), stop.describe()));
    Ok(Search { flavour, held, broken, stop, took: started.elapsed() })
}

/// A step's progress line.
fn progress(step: &Step, verdict: Option<&Stop>) -> String {
    let charged = &step.charged;
    format!(
        "{} VMs {}: {}; cgroup peak {} of {} (resident {}, {} in huge pages; limit hit {} \
         times); the VM's start took {}",
        step.vms,
        verdict.map_or("held".into(), |stop| format!("did not hold ({})", stop.describe())),
        step.describe_tail(),
        mib(charged.peak as f64),
        mib(charged.limit as f64),
        mib(charged.resident as f64),
        mib(charged.huge as f64),
        charged.failcnt,
        seconds(step.add.as_secs_f64()),
    )
}

/// How a step failed before its latencies could be judged.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    NoStart(String),
    Invocation(String),
}

/// What a step saw besides its latencies.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// Processes the cgroup's OOM killer killed during the step.
    oom_kills: u64,
    failure: Option<Failure>,
    /// A VM whose process is gone.
    exited: Option<u32>,
}

/// The stop rule: `None` if the step held. An OOM kill explains whatever else failed, and a
/// VM that exited explains a failed invocation. `reference` is the one-VM step's latencies
/// (`None` while judging that step: it holds unless something failed).
fn judge(
    seen: Seen,
    latencies: &[f64],
    reference: Option<&[f64]>,
    slo_factor: f64,
) -> Option<Stop> {
    if seen.oom_kills > 0 {
        return Some(Stop::OomKill(seen.oom_kills));
    }
    match (seen.failure, seen.exited) {
        (Some(Failure::NoStart(e)), _) => return Some(Stop::NoStart(e)),
        (_, Some(pid)) => return Some(Stop::VmExited(pid)),
        (Some(Failure::Invocation(e)), None) => return Some(Stop::InvocationFailed(e)),
        (None, None) => {}
    }
    let quantile = tail_quantile(latencies.len());
    let tail = percentile(latencies, quantile);
    let bound = slo_factor * percentile(reference?, quantile);
    (tail > bound).then_some(Stop::Slo { quantile, tail, bound })
}

/// Whether process `pid` runs: it exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Seen {
        Seen { oom_kills: 0, failure: None, exited: None }
    }

    #[test]
    fn p99_only_from_a_thousand_samples() {
        assert_eq!(tail_quantile(0), 95.0);
        assert_eq!(tail_quantile(999), 95.0);
        assert_eq!(tail_quantile(1000), 99.0);
        let step = Step { latencies: (1..=100).map(f64::from).collect(), ..Step::default() };
        assert_eq!(step.tail(), (95.0, 95.0));
        let many = Step { latencies: (1..=1000).map(f64::from).collect(), ..Step::default() };
        assert_eq!(many.tail(), (99.0, 990.0));
        assert_eq!(many.describe_tail(), "p99 990.00 s of 1000 invocations");
        assert_eq!(Step::default().describe_tail(), "no window");
    }

    #[test]
    fn the_slo_is_a_multiple_of_the_one_vm_tail() {
        let reference: Vec<f64> = (1..=20).map(|i| f64::from(i) / 10.0).collect();
        // p95 of 20 is the 19th: 1.9 s; the bound 3× that.
        assert_eq!(judge(seen(), &reference, None, 3.0), None, "the first step is the reference");
        let within: Vec<f64> = reference.iter().map(|l| l * 2.9).collect();
        assert_eq!(judge(seen(), &within, Some(&reference), 3.0), None);
        let beyond: Vec<f64> = reference.iter().map(|l| l * 3.1).collect();
        let Some(Stop::Slo { quantile, tail, bound }) =
            judge(seen(), &beyond, Some(&reference), 3.0)
        else {
            panic!("3.1× the reference holds");
        };
        assert_eq!(quantile, 95.0);
        assert!((tail - 1.9 * 3.1).abs() < 1e-9 && (bound - 1.9 * 3.0).abs() < 1e-9);
        // p99 against p99: a thousand samples with one slow outlier in a hundred.
        let many: Vec<f64> = (0..1000).map(|i| if i % 100 == 0 { 9.0 } else { 1.0 }).collect();
        assert_eq!(judge(seen(), &many, Some(&reference), 3.0), None, "p99 1 s ≤ 3 × 2 s");
    }

    #[test]
    fn failures_stop_before_latency_and_oom_kills_explain_them() {
        let fast = [0.1; 20];
        let failed = |failure| Seen { failure: Some(failure), ..seen() };
        let no_start = failed(Failure::NoStart("boot timed out".into()));
        assert_eq!(
            judge(no_start.clone(), &[], Some(&fast), 3.0),
            Some(Stop::NoStart("boot timed out".into()))
        );
        let killed = Seen { oom_kills: 1, exited: Some(7), ..no_start };
        assert_eq!(judge(killed, &[], Some(&fast), 3.0), Some(Stop::OomKill(1)));
        let invocation = failed(Failure::Invocation("reset".into()));
        assert_eq!(
            judge(invocation.clone(), &[], Some(&fast), 3.0),
            Some(Stop::InvocationFailed("reset".into()))
        );
        let exited = Seen { exited: Some(7), ..invocation };
        assert_eq!(judge(exited, &[], Some(&fast), 3.0), Some(Stop::VmExited(7)));
        // A VM gone after a window whose invocations all succeeded.
        let gone = Seen { exited: Some(8), ..seen() };
        assert_eq!(judge(gone, &fast, Some(&fast), 3.0), Some(Stop::VmExited(8)));
        assert_eq!(judge(seen(), &fast, Some(&fast), 3.0), None);
    }

    #[test]
    fn windows_expect_enough_invocations_and_stops_read_short() {
        let args = DensityArgs {
            density_budget_mib: 1024,
            density_rate: 0.5,
            density_window: 10,
            density_slo_factor: 3.0,
            density_max: 24,
        };
        assert_eq!(args.window(1), Duration::from_secs(40));
        assert_eq!(args.window(2), Duration::from_secs(20));
        assert_eq!(args.window(8), Duration::from_secs(10));
        assert!(args.check().is_ok());
        assert!(DensityArgs { density_slo_factor: 0.5, ..args.clone() }.check().is_err());
        assert_eq!(
            args.command(),
            "--density-budget-mib 1024 --density-rate 0.5 --density-window 10 \
             --density-slo-factor 3 --density-max 24"
        );
        let long = format!("invoke x\n{}", "log line\n".repeat(50));
        assert_eq!(Stop::NoStart(long).describe(), "did not start: invoke x");
        let slo = Stop::Slo { quantile: 95.0, tail: 1.5, bound: 0.9 };
        assert_eq!(slo.describe(), "p95 1.50 s > SLO 900.00 ms");
        assert!(alive(std::process::id()) && !alive(u32::MAX));
    }
}
