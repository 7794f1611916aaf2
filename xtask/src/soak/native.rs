//! The host-native phases: regions under mixed load for minutes, and a backend killed with
//! SIGKILL in the middle of such a load.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nexus_tests::{Backend, Garage};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use serde_json::Value;

use super::{memory_trend, row, span, Outcome, RssSampler, BUCKET};
use crate::bench::report::seconds;
use crate::workspace_root;

/// Each region: small, the objects are at most 16 KiB.
const REGION: &str = "size: 32MiB, buffer_size: 1MiB";
/// The backend's `storage.call_timeout_secs` under load.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Regions putting when the backend is killed, and how long they put before.
const KILL_REGIONS: usize = 4;
const KILL_AFTER: Duration = Duration::from_secs(20);
/// Growth of the backend's RSS, second half over first, that still counts as flat.
const MEMORY_SLACK: f64 = 0.25;
/// How often a long phase says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// The release backend on `garage` reached at `endpoint`, its cache small enough to fill
/// early, with `extra` settings.
pub fn backend(
    endpoint: &str,
    garage: &Garage,
    call_timeout: Duration,
    extra: &str,
) -> Result<Backend> {
    let settings = format!(
        "{storage}  call_timeout_secs: {}\n\
         cache: {{ max_bytes: 32MiB, max_object_bytes: 1MiB }}\n\
         default_policy: {{ grants: [{{ bucket: {BUCKET}, access: [read, write, list, delete] }}] }}\n{extra}",
        call_timeout.as_secs(),
        storage = garage.storage_settings_at(endpoint),
    );
    let binary = workspace_root().join("target/release/nexus");
    Ok(Backend::start_with(&binary, REGION, &settings, &[])?)
}

/// `nexus-probe soak` on `region`, for `seconds`, writing acknowledged puts to `acked`.
pub fn spawn_probe(
    region: &Path,
    prefix: &str,
    seconds: u64,
    acked: Option<&Path>,
) -> Result<Child> {
    let mut command = Command::new(workspace_root().join("target/release/nexus-probe"));
    command
        .args(["soak", BUCKET, prefix, &seconds.to_string()])
        .args(acked)
        .env("NEXUS_REGION", region)
        .stdout(Stdio::piped());
    command.spawn().context("start nexus-probe")
}

/// What every probe reported, summed: calls, errors by code, mismatches, p50 (median of the
/// probes'), p99 and the slowest call and error (the worst probe's).
#[derive(Debug, Default)]
pub struct Probed {
    pub calls: u64,
    pub errors: BTreeMap<String, u64>,
    pub mismatches: u64,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub slowest_error_s: f64,
}

impl Probed {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// "N calls, E errors (by code), M mismatches".
    pub fn summary(&self) -> String {
        let codes: Vec<String> = self.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let codes =
            if codes.is_empty() { String::new() } else { format!(" ({})", codes.join(", ")) };
        format!(
            "{} calls, {} errors{codes}, {} mismatches",
            self.calls,
            self.error_count(),
            self.mismatches
        )
    }

    /// "p50 / p99".
    pub fn latency(&self) -> String {
        format!("{} / {}", seconds(self.p50_s), seconds(self.p99_s))
    }
}

/// Waits for every probe and sums their reports; prints progress while they run.
pub fn collect(probes: Vec<Child>, phase: &str) -> Result<Probed> {
    let started = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    let mut probes: Vec<Option<Child>> = probes.into_iter().map(Some).collect();
    let mut outputs = Vec::new();
    while outputs.len() < probes.len() {
        for slot in &mut probes {
            let done = match slot.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => false,
            };
            if done {
                let output = slot.take().context("a probe")?.wait_with_output()?;
                let text = String::from_utf8_lossy(&output.stdout);
                let report: Value = serde_json::from_str(text.trim())
                    .with_context(|| format!("nexus-probe said {text:?} ({})", output.status))?;
                outputs.push(report);
            }
        }
        if started.elapsed() >= next_progress {
            println!(
                "soak: {phase}: {} min, {} of {} clients done",
                next_progress.as_secs() / 60,
                outputs.len(),
                probes.len()
            );
            next_progress += PROGRESS_EVERY;
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(sum(&outputs))
}

fn sum(reports: &[Value]) -> Probed {
    let secs = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0) * 1e-9;
    let mut probed = Probed::default();
    let mut p50s = Vec::new();
    for report in reports {
        probed.calls += report["calls"].as_u64().unwrap_or(0);
        probed.mismatches += report["mismatches"].as_u64().unwrap_or(0);
        for (code, n) in report["errors"].as_object().into_iter().flatten() {
            *probed.errors.entry(code.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
        p50s.push(secs(report, "p50_ns"));
        probed.p99_s = probed.p99_s.max(secs(report, "p99_ns"));
        probed.max_s = probed.max_s.max(secs(report, "max_ns"));
        probed.slowest_error_s = probed.slowest_error_s.max(secs(report, "slowest_error_ns"));
    }
    probed.p50_s = crate::bench::stats::median(&p50s);
    probed
}

/// `regions` regions making mixed calls for `load`.
pub fn load(garage: &Garage, regions: usize, load: Duration) -> Result<Outcome> {
    println!("soak: regions: {regions} host-native regions, mixed calls for {} s", load.as_secs());
    let backend = backend(&garage.endpoint, garage, CALL_TIMEOUT, "")?;
    let pid = backend.pid().context("backend pid")?;
    let sampler = RssSampler::start(move || vec![pid]);
    let mut probes = Vec::new();
    for i in 0..regions {
        let region = backend.create_region("soak")?;
        probes.push(spawn_probe(&region, &format!("regions/r{i}"), load.as_secs(), None)?);
    }
    let probed = collect(probes, "regions")?;
    let (memory, bounded) = memory_trend(&sampler.stop(), MEMORY_SLACK);
    let faults = backend.metric("nexus_regions_faulted_total", &[])?;
    let clean = probed.error_count() == 0 && probed.mismatches == 0 && faults == 0.0;
    Ok(Outcome {
        rows: vec![
            row(
                format!("regions: {regions} host-native, {} of mixed calls", span(load)),
                probed.summary(),
                "0 errors, 0 mismatches",
            ),
            row("regions: call latency p50 / p99", probed.latency(), ""),
            row(
                "regions: backend RSS, first → last sample",
                memory,
                "second half ≤ 1.25 × first half's peak",
            ),
        ],
        held: clean && bounded,
    })
}

/// Regions putting objects, the backend killed with SIGKILL after [`KILL_AFTER`] and started
/// again on the same spool: every put a probe saw acknowledged must reach storage intact.
pub fn kill_under_load(garage: &Garage) -> Result<Outcome> {
    println!(
        "soak: kill -9: {KILL_REGIONS} regions putting, the backend killed after {} s",
        KILL_AFTER.as_secs()
    );
    let mut backend = backend(&garage.endpoint, garage, CALL_TIMEOUT, "")?;
    let scratch = scratch_dir()?;
    let mut probes = Vec::new();
    let mut logs = Vec::new();
    for i in 0..KILL_REGIONS {
        let region = backend.create_region("soak")?;
        let log = scratch.join(format!("acked-{i}"));
        probes.push(spawn_probe(&region, &format!("kill/r{i}"), 3600, Some(&log))?);
        logs.push(log);
    }
    thread::sleep(KILL_AFTER);
    backend.kill();
    for probe in &mut probes {
        // The probes wait on a backend that is gone; their logs hold what was acknowledged.
        let _ = probe.kill();
        let _ = probe.wait();
    }
    let restarted = Instant::now();
    backend.restart()?;
    backend.wait_uploaded(Duration::from_secs(300))?;
    let drained = restarted.elapsed();
    let (acked, intact) = check_acknowledged(garage, &logs)?;
    fs::remove_dir_all(&scratch).ok();
    Ok(Outcome {
        rows: vec![row(
            "kill -9 under load: acknowledged puts in storage after the restart",
            format!(
                "{intact} of {acked} (spool drained {} after restart)",
                seconds(drained.as_secs_f64())
            ),
            "all",
        )],
        held: acked > 0 && intact == acked,
    })
}

/// Reads each "KEY SIZE ETAG" line of `logs` and checks the object in storage: (lines, objects
/// present with that size and ETag).
fn check_acknowledged(garage: &Garage, logs: &[PathBuf]) -> Result<(usize, usize)> {
    let store = garage.client(BUCKET);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut acked, mut intact) = (0, 0);
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_default();
        // Each line is one write; an unterminated one was cut short by the kill.
        for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
            let mut fields = line.split(' ');
            let (Some(key), Some(size), Some(etag)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            acked += 1;
            let head = runtime.block_on(store.head(&ObjectPath::from(key)));
            if let Ok(meta) = head {
                if meta.size.to_string() == size && meta.e_tag.as_deref() == Some(etag) {
                    intact += 1;
                    continue;
                }
                println!(
                    "soak: {key}: stored {} bytes, ETag {:?}; acknowledged {size}, {etag}",
                    meta.size, meta.e_tag
                );
            } else {
                println!("soak: {key}: acknowledged but not in storage ({head:?})");
            }
        }
    }
    Ok((acked, intact))
}

/// A scratch directory under the target dir.
fn scratch_dir() -> Result<PathBuf> {
    let dir = workspace_root().join("target/soak");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
