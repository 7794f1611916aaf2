//! `cargo xtask soak`: load and faults, held for minutes, with the figures that show the
//! backend survives them. It measures and reports; the table's `expected` column says what a
//! healthy backend shows, and the command fails if a phase breaks it.
//!
//! ```text
//!  phase        what runs                                           what must hold
//!  regions      N host-native regions, each a nexus-probe making    0 errors, 0 mismatches,
//!               mixed calls (put, get + check, list, delete)        backend RSS flat
//!  vms          one function over V VMs, each invoked back to back  0 errors, RSS flat
//!               (a boto3 handler: put, get + check, list, delete)
//!  kill -9      regions putting, backend killed mid-load, started   every acknowledged put
//!               again on the same spool                             in storage
//!  slow         storage behind a link adding latency under the      calls succeed, slower
//!               call timeout
//!  stuck        latency past the call timeout                       errors within the timeout
//!  down / back  the storage server stopped, then started again      errors within the
//!                                                                   timeout, then 0 errors
//! ```
//!
//! Storage is a real Garage server on loopback (behind a `nexus_tests::Link` for the fault
//! phases); the backend is the release build with write-back on.

mod faults;
mod native;
mod vms;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{ensure, Result};
use clap::Args;
use nexus_tests::Garage;

use crate::bench::measure::{machine, rss_kib, today};
use crate::bench::report::{mib, Row, Table};
use crate::bench::stack::build_release;
use crate::{setup, workspace_root};

/// The bucket every phase writes.
const BUCKET: &str = "soak";
/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// `cargo xtask soak [--minutes M] [--regions N] [--vms V]`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Minutes of each load phase (regions, vms).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Host-native regions of the regions phase.
    #[arg(long, default_value_t = 20)]
    regions: usize,
    /// VMs of the vms phase. The default, two per core, is what this machine holds with every
    /// VM busy under TCG: more only queue for the CPU.
    #[arg(long)]
    vms: Option<usize>,
}

/// A phase's outcome: its rows, and whether it held.
struct Outcome {
    rows: Vec<Row>,
    held: bool,
}

pub fn run(args: SoakArgs) -> Result<()> {
    let tools = setup::run()?;
    build_release(&["nexus-backend", "nexus-guest"])?;
    std::env::set_var("NEXUS_GARAGE", &tools.garage);
    let load = Duration::from_secs_f64(args.minutes * 60.0);
    let vms =
        args.vms.unwrap_or_else(|| 2 * thread::available_parallelism().map_or(1, |n| n.get()));
    let garage = Garage::start()?;
    garage.create_bucket(BUCKET)?;
    let mut table = Table {
        name: "soak",
        title: "Soak: load and faults held for minutes".into(),
        command: format!(
            "cargo xtask soak --minutes {} --regions {} --vms {vms}",
            args.minutes, args.regions
        ),
        sides: Some(("", "result")),
        ..Table::default()
    };
    let mut held = true;
    let phases: [&dyn Fn() -> Result<Outcome>; 4] = [
        &|| native::load(&garage, args.regions, load),
        &|| native::kill_under_load(&garage),
        &|| faults::run(&mut Garage::start()?),
        &|| vms::load(&tools, vms, load),
    ];
    for phase in phases {
        let outcome = phase()?;
        held &= outcome.held;
        table.rows.extend(outcome.rows);
    }
    table.notes.push(format!(
        "Machine: {}. One run, {}. Storage: Garage on loopback; the fault phases put a \
         `nexus_tests::Link` between the backend and a Garage of their own. p99 is over every \
         call of every client; RSS is sampled every {} s.",
        machine(),
        today(),
        SAMPLE_EVERY.as_secs()
    ));
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("soak: wrote {}", file.display());
    ensure!(held, "soak: a phase did not hold (see the table)");
    Ok(())
}

/// A row of the soak table: what was measured, the figure, what a healthy backend shows.
fn row(metric: impl Into<String>, result: impl Into<String>, expected: &str) -> Row {
    Row { metric: metric.into(), nexus: result.into(), target: expected.into(), ..Row::default() }
}

/// Samples a process's resident memory every [`SAMPLE_EVERY`] until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<f64>>,
}

impl RssSampler {
    fn start(pids: impl Fn() -> Vec<u32> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::Acquire) {
                let kib: f64 = pids().into_iter().filter_map(|pid| rss_kib(pid).ok()).sum();
                samples.push(kib * 1024.0);
                let wake = std::time::Instant::now() + SAMPLE_EVERY;
                while !stopping.load(Ordering::Acquire) && std::time::Instant::now() < wake {
                    thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        });
        Self { stop, thread }
    }

    /// The samples, in bytes.
    fn stop(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

/// "first → last (peak)" of memory samples, and whether the second half stayed within
/// `slack` of the first half's peak (memory bounded, not growing with the load's length).
fn memory_trend(samples: &[f64], slack: f64) -> (String, bool) {
    let (first, last) = (samples.first().copied(), samples.last().copied());
    let peak = samples.iter().copied().fold(0.0, f64::max);
    let half = samples.len() / 2;
    let early_peak = samples[..half.max(1).min(samples.len())].iter().copied().fold(0.0, f64::max);
    let late_peak = samples[half..].iter().copied().fold(0.0, f64::max);
    let bounded = late_peak <= early_peak * (1.0 + slack);
    let text = format!(
        "{} → {} (peak {})",
        mib(first.unwrap_or(0.0)),
        mib(last.unwrap_or(0.0)),
        mib(peak)
    );
    (text, bounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_when_the_second_half_stays_under_the_first_half_peak() {
        let mib = |m: f64| m * 1048576.0;
        let flat = [mib(40.0), mib(60.0), mib(55.0), mib(61.0)];
        assert!(memory_trend(&flat, 0.1).1);
        let growing = [mib(40.0), mib(60.0), mib(80.0), mib(100.0)];
        assert!(!memory_trend(&growing, 0.1).1);
        assert_eq!(memory_trend(&flat, 0.1).0, "40.0 MiB → 61.0 MiB (peak 61.0 MiB)");
    }
}
