//! `cargo xtask bench cold`: cold starts of a Nexus function whose input is a 64 MiB object:
//! (a) booted from scratch, (b) restored from a snapshot then fetching its input, (c) restored
//! with the input prefetched while the VM restores. Medians of a few rounds each, one run.

use std::path::Path;

use anyhow::{ensure, Result};
use serde_json::json;

use super::measure::machine;
use super::report::{ratio, seconds, Row, Table};
use super::stack::{Stack, BUCKET};
use super::stats::median;
use crate::image::Flavour;
use crate::{setup, workspace_root};

const INPUT_MIB: usize = 64;
const INPUT_KEY: &str = "in/64mib";
const ROUNDS: usize = 7;

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let strict = format!(
        "functions:\n  strict: {{ write_back: strict, policy: {{ grants: [{{ bucket: {BUCKET}, access: [read, write] }}], max_object_size: 1GiB }} }}\n"
    );
    let stack = Stack::start(
        &tools,
        &[Flavour::Nexus],
        "size: 128MiB, buffer_size: 4MiB, staging_size: 80MiB",
        &strict,
    )?;
    stack.seed(
        &tools.python,
        &format!(
            "import os\ns3.put_object(Bucket='{BUCKET}', Key='{INPUT_KEY}', Body=os.urandom({INPUT_MIB} << 20))"
        ),
    )?;
    let code = workspace_root().join("guest/python/examples/bench");
    let function = json!({ "memory_mib": 512 });
    stack.deploy("cold", &code, "io.py:handler", Flavour::Nexus, function.clone())?;

    println!("bench: (a) {ROUNDS} cold boots");
    let booted = Cold::median(&rounds(&stack, &[false])?[0]);
    stack.backend.api("POST", "/v1/functions/cold/snapshot", None)?;
    println!("bench: (b) and (c) {ROUNDS} restores each, taking turns");
    let turns = rounds(&stack, &[false, true])?;
    let (sequential, overlapped) = (Cold::median(&turns[0]), Cold::median(&turns[1]));
    println!("bench: {ROUNDS} warm invocations writing {INPUT_MIB} MiB, write-back and strict");
    let written_back = warm_writes(&stack, &code, "async", &function)?;
    let strict = warm_writes(&stack, &code, "strict", &function)?;

    let accel = stack.warm_vm("cold")?.accel;
    let row = |metric: &str, cold: Cold, base: f64, target: &str| Row {
        metric: format!("{metric} [{accel}]"),
        baseline: seconds(base),
        nexus: format!(
            "{} (VM ready after {}, input read in {})",
            seconds(cold.total),
            seconds(cold.start),
            seconds(cold.read)
        ),
        ratio: ratio(cold.total, base),
        target: target.into(),
        ..Row::default()
    };
    let base = sequential.total;
    let table = Table {
        name: "cold",
        title: format!("Cold starts with a {INPUT_MIB} MiB input, {accel}"),
        command: "cargo xtask bench cold".into(),
        rows: vec![
            row("(a) boot from scratch, then the handler fetches its input", booted, base, ""),
            row("(b) restore the snapshot, then the handler fetches its input", sequential, base, ""),
            row("(c) restore with the input prefetched during the restore, read in place", overlapped, base, "(c) ≥ 25 % faster than (b)"),
            Row {
                metric: format!("warm invocation writing {INPUT_MIB} MiB: strict vs write-back [{accel}]"),
                baseline: seconds(strict),
                nexus: seconds(written_back),
                ratio: ratio(written_back, strict),
                target: "write-back ≥ 30 % faster".into(),
                ..Row::default()
            },
        ],
        notes: vec![format!(
            "Machine: {}. One run, median of {ROUNDS} cold invocations each ((b) and (c) taking turns), end to end at the API \
             (the \"baseline\" column is (b) for the cold rows and strict for the write-back row, the spool drained between rounds). The function (`guest/python/examples/bench/io.py`) \
             reads a {INPUT_MIB} MiB object from a Garage S3 server through the backend (its cache off) and \
             computes its CRC-32; \"input read\" is its own timing of `get_object(...)[\"Body\"].read()`. \
             In (c) the input is staged in the region's staging area and read in place, without a call. \
             Measured under {accel}{}.",
            machine(),
            if accel == "TCG" { " (software emulation, ≈ 10× slower guest code than KVM)" } else { "" }
        )],
        ..Table::default()
    };
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// A cold invocation, in seconds: end to end, until the VM was ready, and the handler's read
/// of its input (as the handler timed it).
#[derive(Clone, Copy)]
struct Cold {
    total: f64,
    start: f64,
    read: f64,
}

impl Cold {
    /// The median of each figure.
    fn median(samples: &[Cold]) -> Cold {
        let of = |figure: fn(&Cold) -> f64| median(&samples.iter().map(figure).collect::<Vec<_>>());
        Cold { total: of(|c| c.total), start: of(|c| c.start), read: of(|c| c.read) }
    }
}

/// `ROUNDS` cold invocations (the VM stopped before each) of each kind in `prefetch`, the kinds
/// taking turns so that they share the machine's noise; with `true` the input is prefetched
/// during the VM's start. Returns the samples of each kind.
fn rounds(stack: &Stack, prefetch: &[bool]) -> Result<Vec<Vec<Cold>>> {
    let mut samples = vec![Vec::new(); prefetch.len()];
    for _ in 0..ROUNDS {
        for (kind, &prefetch) in prefetch.iter().enumerate() {
            let hints: &[(&str, &str)] = if prefetch { &[(BUCKET, INPUT_KEY)] } else { &[] };
            stack.backend.api("POST", "/v1/functions/cold/stop", None)?;
            let invoked =
                stack.invoke("cold", &json!({ "bucket": BUCKET, "key": INPUT_KEY }), hints)?;
            let result = &invoked.result;
            ensure!(result["input_bytes"] == json!(INPUT_MIB << 20), "short read: {result}");
            samples[kind].push(Cold {
                total: invoked.seconds,
                start: invoked.start_seconds.unwrap_or(0.0),
                read: result["read_seconds"].as_f64().unwrap_or(0.0),
            });
        }
    }
    Ok(samples)
}

/// Median seconds of `ROUNDS` warm invocations of function `name` writing a 64 MiB output
/// (after one to warm it up); the spool drains between rounds.
fn warm_writes(
    stack: &Stack,
    code: &Path,
    name: &str,
    function: &serde_json::Value,
) -> Result<f64> {
    stack.deploy(name, code, "io.py:handler", Flavour::Nexus, function.clone())?;
    let event = json!({ "bucket": BUCKET, "output_key": format!("out/{name}"), "output_bytes": INPUT_MIB << 20 });
    let mut took = Vec::new();
    for round in 0..=ROUNDS {
        let invoked = stack.invoke(name, &event, &[])?;
        if round > 0 {
            took.push(invoked.seconds);
        }
        stack.backend.wait_uploaded(std::time::Duration::from_secs(120))?;
    }
    Ok(median(&took))
}
