//! The VM phase: one function over `vms` Nexus VMs, each kept busy back to back for minutes
//! by a client of its own, the handler making mixed boto3 calls through the shim.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::{memory_trend, row, span, Outcome, RssSampler};
use crate::bench::report::seconds;
use crate::bench::stack::{Stack, Storage, BUCKET};
use crate::bench::stats::percentile;
use crate::image::Flavour;
use crate::setup::Tools;
use crate::workspace_root;

const FUNCTION: &str = "soak";
const REGION: &str = "size: 32MiB, buffer_size: 1MiB";
/// VMM memory, guest RAM included, may grow this much from the first half to the second (the
/// guest's page cache fills) and still count as flat.
const MEMORY_SLACK: f64 = 0.25;
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

pub fn load(tools: &Tools, vms: usize, load: Duration) -> Result<Outcome> {
    println!(
        "soak: vms: {FUNCTION} over {vms} Nexus VMs, back-to-back invocations for {} s",
        load.as_secs()
    );
    let stack = Stack::start(tools, &[Flavour::Nexus], Storage::Local, REGION, "")?;
    let code = workspace_root().join("guest/python/examples/soak");
    let grant = json!({ "bucket": BUCKET, "access": ["read", "write", "list", "delete"] });
    let spec = json!({ "max_vms": vms, "timeout_secs": 60, "policy": { "grants": [grant] } });
    stack.deploy(FUNCTION, &code, "mixed.py:handler", Flavour::Nexus, spec)?;
    let n = AtomicU64::new(0);
    let invoke = |client: usize| {
        let n = n.fetch_add(1, Ordering::Relaxed);
        let event = json!({ "bucket": BUCKET, "prefix": format!("vms/c{client}"), "n": n });
        stack.invoke(FUNCTION, &event, &[])
    };
    println!("soak: vms: starting {vms} VMs (cold starts, not counted)");
    thread::scope(|scope| -> Result<()> {
        let starts: Vec<_> = (0..vms).map(|c| scope.spawn(move || invoke(c))).collect();
        for start in starts {
            start.join().map_err(|_| anyhow::anyhow!("a cold start panicked"))??;
        }
        Ok(())
    })?;
    let backend_pid = stack.backend.pid().context("backend pid")?;
    let warm = stack.warm_vms(FUNCTION)?;
    let accel = warm.first().map_or_else(String::new, |vm| vm.accel.clone());
    let vm_pids: Vec<u32> = warm.iter().map(|vm| vm.pid).collect();
    let backend_rss = RssSampler::start(move || vec![backend_pid]);
    let vms_rss = RssSampler::start(move || vm_pids.clone());
    let samples = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let started = Instant::now();
    let deadline = started + load;
    thread::scope(|scope| {
        for client in 0..vms {
            let (samples, errors, invoke) = (&samples, &errors, &invoke);
            scope.spawn(move || {
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let outcome = invoke(client);
                    let took = started.elapsed().as_secs_f64();
                    match outcome {
                        Ok(_) => samples.lock().unwrap_or_else(|e| e.into_inner()).push(took),
                        Err(e) => {
                            errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{e:#}"))
                        }
                    }
                }
            });
        }
        let mut next = PROGRESS_EVERY;
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(500));
            if started.elapsed() >= next {
                let done = samples.lock().map_or(0, |s| s.len());
                println!("soak: vms: {} min, {done} invocations", next.as_secs() / 60);
                next += PROGRESS_EVERY;
            }
        }
    });
    let (backend_memory, backend_flat) = memory_trend(&backend_rss.stop(), MEMORY_SLACK);
    let (vm_memory, vms_flat) = memory_trend(&vms_rss.stop(), MEMORY_SLACK);
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(first) = errors.first() {
        println!("soak: vms: {} failed invocations, the first: {first}", errors.len());
    }
    // p99 where there are enough samples for it to mean something, p95 otherwise.
    let (tail, q) = if samples.len() >= 1000 { ("p99", 0.99) } else { ("p95", 0.95) };
    Ok(Outcome {
        rows: vec![
            row(
                format!("vms: {vms} Nexus VMs ({accel}), {} back to back", span(load)),
                format!("{} invocations, {} errors", samples.len(), errors.len()),
                "0 errors",
            ),
            row(
                format!("vms: invocation p50 / {tail}"),
                format!(
                    "{} / {}",
                    seconds(percentile(&samples, 0.5)),
                    seconds(percentile(&samples, q))
                ),
                "",
            ),
            row(
                "vms: backend RSS, first → last sample",
                backend_memory,
                "second half ≤ 1.25 × first half's peak",
            ),
            row(
                format!("vms: the {vms} VMMs' RSS, first → last sample"),
                vm_memory,
                "second half ≤ 1.25 × first half's peak",
            ),
        ],
        held: errors.is_empty() && !samples.is_empty() && backend_flat && vms_flat,
    })
}
