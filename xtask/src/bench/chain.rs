//! `cargo xtask bench chain`: a chain of three functions (a → b → c, each waiting for the
//! next), written for real boto3 (`guest/python/examples/chain/handler.py`), on each flavour:
//!
//! ```text
//!  nexus     backend ─ channel ─► a ── lambda.invoke: a channel call ─► backend ─ channel ─► b …
//!            (no NIC in any guest)
//!  baseline  HTTP ─ tap ─► a ── boto3 lambda.invoke: HTTP over a's tap ─► the platform's Lambda
//!            endpoint (LambdaFront) ─ HTTP over b's tap ─► b …   (conventional platforms, one
//!            per function, each in its own network namespace, no Nexus device)
//! ```

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use nexus_tests::LambdaFront;
use serde_json::{json, Value};

use super::measure::{accel_of, machine};
use super::report::{ratio, seconds, Row, Table};
use super::stack::{accel_note, ensure_root, Stack, Storage};
use super::stats::percentile;
use crate::image::Flavour;
use crate::{setup, workspace_root};

const CODE: &str = "guest/python/examples/chain";
const HANDLER: &str = "handler.py:handler";
const WARM_UP: usize = 3;
const ROUNDS: usize = 30;

/// What one flavour measured.
struct Measured {
    accel: String,
    cold_s: f64,
    warm: Vec<f64>,
}

pub fn run() -> Result<()> {
    ensure_root("cargo xtask bench chain (the baseline's network namespaces and taps)")?;
    let tools = setup::run()?;
    // The chain makes no storage calls: the store stays on loopback.
    let region = "size: 32MiB, buffer_size: 1MiB";
    let stack = Stack::start(&tools, &Flavour::ALL, Storage::Local, region, "")?;
    let baseline = measure_baseline(&stack)?;
    let nexus = measure_nexus(&stack)?;
    let table = chain_table(&baseline, &nexus);
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// The chain's functions in `flavour`, head first.
fn names(flavour: Flavour) -> [String; 3] {
    ["a", "b", "c"].map(|n| format!("chain-{}-{n}", flavour.name()))
}

/// The event that runs the whole chain from its head, and the answer it must give.
fn chain_event(names: &[String; 3]) -> (Value, Value) {
    (json!({ "next": &names[1..] }), json!({ "path": names }))
}

/// One conventional platform per function, all behind one Lambda endpoint; the cold chain is
/// the three VMs' boots, one after the other as the chain would reach them, then its first
/// invocation.
fn measure_baseline(stack: &Stack) -> Result<Measured> {
    let names = names(Flavour::Baseline);
    let front = LambdaFront::start()?;
    let code = workspace_root().join(CODE);
    println!("bench: chain (baseline): cold invocation (boots three VMs)");
    let started = Instant::now();
    let mut pid = None;
    for name in &names {
        let mut platform =
            stack.conventional_calling(name, &code, HANDLER, json!({}), Some(front.addr))?;
        pid = pid.or(Some(platform.add()?));
        front.serve(name, Arc::new(platform));
    }
    let head = front.platform(&names[0]).expect("the head was served above");
    let (event, expected) = chain_event(&names);
    let invoke = || -> Result<f64> {
        let started = Instant::now();
        let answer = head.invoke(&event)?;
        ensure!(answer == expected, "the chain answered {answer}");
        Ok(started.elapsed().as_secs_f64())
    };
    invoke()?;
    let cold_s = started.elapsed().as_secs_f64();
    let warm = warm_rounds("baseline", invoke)?;
    Ok(Measured { accel: accel_of(pid.unwrap_or_default()), cold_s, warm })
}

/// The chain deployed on the backend, each function allowed to invoke the next; the cold chain
/// starts the three VMs on the way.
fn measure_nexus(stack: &Stack) -> Result<Measured> {
    let names = names(Flavour::Nexus);
    for (i, name) in names.iter().enumerate() {
        let callees: Vec<&String> = names.get(i + 1).into_iter().collect();
        let extra = json!({ "policy": { "invoke": callees } });
        stack.deploy(name, &workspace_root().join(CODE), HANDLER, Flavour::Nexus, extra)?;
    }
    let (event, expected) = chain_event(&names);
    let invoke = || -> Result<f64> {
        let invocation = stack.invoke(&names[0], &event, &[])?;
        ensure!(invocation.result == expected, "the chain answered {}", invocation.result);
        Ok(invocation.seconds)
    };
    println!("bench: chain (nexus): cold invocation (starts three VMs)");
    let cold_s = invoke()?;
    let warm = warm_rounds("nexus", invoke)?;
    Ok(Measured { accel: stack.warm_vm(&names[0])?.accel, cold_s, warm })
}

/// `WARM_UP` + `ROUNDS` invocations of the chain's head; the latencies of the last `ROUNDS`.
fn warm_rounds(flavour: &str, invoke: impl Fn() -> Result<f64>) -> Result<Vec<f64>> {
    println!("bench: chain ({flavour}): {ROUNDS} warm invocations");
    let mut warm = Vec::new();
    for round in 0..WARM_UP + ROUNDS {
        let seconds = invoke()?;
        if round >= WARM_UP {
            warm.push(seconds);
        }
    }
    Ok(warm)
}

fn chain_table(baseline: &Measured, nexus: &Measured) -> Table {
    let accel = &nexus.accel;
    let row = |metric: &str, b: f64, n: f64| Row {
        metric: format!("{metric} [{accel}]"),
        baseline: seconds(b),
        nexus: seconds(n),
        ratio: ratio(n, b),
        ..Row::default()
    };
    let p = percentile;
    let rows = vec![
        row("warm chain a → b → c, end to end, p50", p(&baseline.warm, 50.0), p(&nexus.warm, 50.0)),
        row("warm chain, p99", p(&baseline.warm, 99.0), p(&nexus.warm, 99.0)),
        row("cold chain (three VMs boot on the way)", baseline.cold_s, nexus.cold_s),
    ];
    let mut notes = vec![format!(
        "Machine: {}. One run: {ROUNDS} warm invocations of the chain's head per flavour after \
         {WARM_UP} warm-up ones, timed where the caller sees them. Each function passes the \
         event to the next and returns its result (`guest/python/examples/chain`). Nexus: the \
         head is invoked at the backend's API; `lambda.invoke` is a channel call the backend \
         serves (no NIC in any guest). Baseline: each function runs on a conventional platform \
         of its own (`nexus_tests::Conventional`: a VM on a tap in a network namespace, no \
         Nexus device), invoked over HTTP; the real boto3 in each VM invokes the next function \
         over HTTP through its NIC at the platforms' Lambda endpoint \
         (`nexus_tests::LambdaFront`), which invokes that function's VM over its tap. The \
         baseline's cold chain is its three VMs' boots one after the other, then the first \
         invocation; Nexus's backend starts each VM when the chain reaches its function.",
        machine()
    )];
    notes.extend(accel_note(accel));
    Table {
        name: "chain",
        title: format!("Function-to-function calls: a chain of three, {accel}"),
        command: "cargo xtask bench chain".into(),
        notes,
        rows,
        ..Table::default()
    }
}
