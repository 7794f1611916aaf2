//! `cargo xtask bench conventional`: the conventional baseline on its own, as a Lambda-style
//! platform runs it (`nexus_tests::Conventional`): `bench vm`'s function in a baseline VM on a
//! tap in a network namespace of its own, with no Nexus device, invoked over HTTP, its real
//! boto3 reaching Garage over the NIC through the same link model as the backend's. Prints
//! boot to ready, warm latency, QEMU's RSS, snapshot, and restore to ready plus the first
//! invocation after it. Measures only; the side-by-side tables compare it with Nexus.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::measure::{machine, rss_kib};
use super::stack::{ensure_root, Stack, Storage};
use super::stats::percentile;
use super::vm::{event, seed_input, CODE, HANDLER};
use crate::image::Flavour;
use crate::{setup, workspace_root};

const NAME: &str = "bench-conventional";
const WARM_UP: usize = 3;
const ROUNDS: usize = 20;

pub fn run(storage: Storage) -> Result<()> {
    ensure_root("cargo xtask bench conventional (a network namespace and taps)")?;
    let tools = setup::run()?;
    let stack =
        Stack::start(&tools, &[Flavour::Baseline], storage, "size: 32MiB, buffer_size: 1MiB", "")?;
    seed_input(&stack, &tools.python)?;
    let mut platform =
        stack.conventional(NAME, &workspace_root().join(CODE), HANDLER, json!({}))?;
    println!("bench: {NAME}: booting a VM in namespace {}", platform.netns());
    let started = Instant::now();
    let pid = platform.add()?;
    let boot_s = started.elapsed().as_secs_f64();

    println!("bench: {NAME}: {ROUNDS} warm invocations");
    let mut warm = Vec::new();
    for round in 0..WARM_UP + ROUNDS {
        let started = Instant::now();
        platform.invoke(&event(&format!("out/{NAME}-{round}.gz")))?;
        if round >= WARM_UP {
            warm.push(started.elapsed().as_secs_f64());
        }
    }
    let rss_mib = rss_kib(pid)? / 1024.0;

    let started = Instant::now();
    let saved = platform.snapshot(&stack.backend.dir.join("conventional-snapshot"))?;
    let snapshot_s = started.elapsed().as_secs_f64();
    let restored = platform.restore(&saved)?;
    let started = Instant::now();
    platform.invoke(&event(&format!("out/{NAME}-restored.gz")))?;
    let first_s = started.elapsed().as_secs_f64();

    println!("\nconventional baseline ({}, storage {}):", machine(), storage.name());
    for (what, value) in [
        ("boot until the runtime answers", format!("{boot_s:.2} s")),
        ("warm invocation p50", format!("{:.1} ms", percentile(&warm, 50.0) * 1e3)),
        ("warm invocation p99", format!("{:.1} ms", percentile(&warm, 99.0) * 1e3)),
        ("QEMU RSS after the warm invocations", format!("{rss_mib:.1} MiB")),
        ("snapshot (pause, save, stop)", format!("{snapshot_s:.2} s")),
        ("restore until the runtime answers", format!("{:.2} s", restored.ready_in.as_secs_f64())),
        ("first invocation after the restore", format!("{:.1} ms", first_s * 1e3)),
    ] {
        println!("  {what:<40} {value}");
    }
    Ok(())
}
