//! `cargo xtask bench vm`: the same boto3 function in a Nexus VM and in a baseline VM, one run:
//! memory in the guest after warm-up, the VMM's RSS, warm latency p50/p99 and the cold start.
//! Both talk to one Garage server on loopback (the baseline through its NIC and QEMU's user
//! networking, Nexus through the backend). Every figure is marked with the accelerator.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use nexus_backend::api::{COLD_START, FUNCTION_ERROR};
use nexus_backend::client::exchange;
use nexus_tests::{Backend, Garage};
use serde_json::{json, Value};

use super::measure::machine;
use super::report::{mib, ratio, seconds, Row, Table};
use crate::image::{self, Flavour};
use crate::{cmd, setup, workspace_root};

const INPUT_BYTES: usize = 256 << 10;
const WARM_UP: usize = 3;
const ROUNDS: usize = 40;

/// What one flavour measured.
struct Measured {
    accel: String,
    cold_s: f64,
    boot_s: f64,
    warm: Vec<f64>,
    guest_used_kib: f64,
    runtime_rss_kib: f64,
    vmm_rss_kib: f64,
}

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let images = image::ensure(Flavour::Nexus, false)?;
    image::ensure(Flavour::Baseline, false)?;
    println!("bench: building the release backend");
    cmd::run(cmd::cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "nexus-backend",
    ]))?;
    std::env::set_var("NEXUS_GARAGE", &tools.garage);
    let garage = Garage::start()?;
    garage.create_bucket("bench")?;
    seed(&tools.python, &garage)?;
    let settings = format!(
        r#"
storage:
  url: "s3://"
  options: {{ aws_endpoint: "{endpoint}", aws_access_key_id: "{key}", aws_secret_access_key: "{secret}", aws_region: "{region}", aws_allow_http: "true", aws_virtual_hosted_style_request: "false" }}
cache: {{ max_bytes: 0, max_object_bytes: 0 }}
default_policy: {{ grants: [{{ bucket: bench, access: [read, write] }}] }}
vm: {{ images: {images}, state_dir: "{{dir}}", boot_timeout_secs: 240 }}
"#,
        endpoint = garage.endpoint,
        key = garage.access_key,
        secret = garage.secret_key,
        region = garage.region,
        images = images.dir.parent().context("images dir")?.display(),
    );
    let backend = Backend::start(&workspace_root().join("target/release/nexus"), &settings, &[])?;
    let code = workspace_root().join("guest/python/examples/bench");
    let environment = json!({
        "AWS_ENDPOINT_URL": garage.endpoint.replace("127.0.0.1", "10.0.2.2"),
        "AWS_ACCESS_KEY_ID": garage.access_key, "AWS_SECRET_ACCESS_KEY": garage.secret_key,
        "AWS_DEFAULT_REGION": garage.region, "AWS_EC2_METADATA_DISABLED": "true",
    });
    let baseline = measure(
        &backend,
        json!({
            "name": "bench-baseline", "code": code, "handler": "handler.py:handler",
            "flavour": "baseline", "environment": environment,
        }),
    )?;
    let nexus = measure(
        &backend,
        json!({ "name": "bench-nexus", "code": code, "handler": "handler.py:handler" }),
    )?;
    let table = vm_table(&baseline, &nexus);
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Deploys `spec`, invokes it cold, warms it up, times `ROUNDS` warm invocations, and reads
/// the memory figures.
fn measure(backend: &Backend, spec: Value) -> Result<Measured> {
    let name = spec["name"].as_str().context("name")?.to_owned();
    backend.api("POST", "/v1/functions", Some(&spec))?;
    println!("bench: {name}: cold invocation (boots the VM)");
    let (_, cold_s, boot_ms) = invoke(backend, &name, 0)?;
    println!("bench: {name}: {ROUNDS} warm invocations");
    let mut warm = Vec::new();
    let mut last = Value::Null;
    for round in 1..=WARM_UP + ROUNDS {
        let (result, took, _) = invoke(backend, &name, round)?;
        if round > WARM_UP {
            warm.push(took);
        }
        last = result;
    }
    warm.sort_by(f64::total_cmp);
    let listed = backend.api("GET", "/v1/functions", None)?;
    let function =
        listed.as_array().into_iter().flatten().find(|f| f["spec"]["name"] == name.as_str());
    let warm_vm = &function.context("function listed")?["warm"];
    let pid = warm_vm["pid"].as_u64().context("VM pid")?;
    Ok(Measured {
        accel: warm_vm["accel"].as_str().unwrap_or("?").to_owned(),
        cold_s,
        boot_s: boot_ms.unwrap_or(0.0) / 1e3,
        warm,
        guest_used_kib: last["guest_used_kib"].as_f64().unwrap_or(f64::NAN),
        runtime_rss_kib: last["runtime_rss_kib"].as_f64().unwrap_or(f64::NAN),
        vmm_rss_kib: vm_rss_kib(pid)?,
    })
}

/// One invocation: its result, its seconds and (cold) the VM's boot milliseconds.
fn invoke(backend: &Backend, name: &str, round: usize) -> Result<(Value, f64, Option<f64>)> {
    let event = json!({ "bucket": "bench", "key": "in/input.txt", "output_key": format!("out/{name}-{round}.gz") });
    let started = Instant::now();
    let answer = exchange(
        &backend.socket,
        "POST",
        &format!("/v1/functions/{name}/invoke"),
        event.to_string().as_bytes(),
    )
    .with_context(|| format!("invoke {name}\n{}", backend.log_tail()))?;
    let took = started.elapsed().as_secs_f64();
    ensure!(answer.header(FUNCTION_ERROR).is_none(), "{name} failed: {}", answer.body);
    let boot = answer.header(COLD_START).and_then(|ms| ms.parse().ok());
    Ok((serde_json::from_str(&answer.body)?, took, boot))
}

fn vm_rss_kib(pid: u64) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).context("VmRSS")?;
    Ok(rss.split_whitespace().next().context("VmRSS value")?.parse()?)
}

/// Puts the input object with the tests' real boto3, straight into Garage.
fn seed(python: &Path, garage: &Garage) -> Result<()> {
    let script = format!(
        "import boto3; boto3.client('s3').put_object(Bucket='bench', Key='in/input.txt', \
         Body=b''.join(b'line %d of the benchmark input\\n' % (i % 997) for i in range(100000))[:{INPUT_BYTES}])"
    );
    cmd::run(
        Command::new(python)
            .args(["-c", &script])
            .env("AWS_ENDPOINT_URL", &garage.endpoint)
            .env("AWS_ACCESS_KEY_ID", &garage.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret_key)
            .env("AWS_DEFAULT_REGION", &garage.region),
    )
}

fn vm_table(baseline: &Measured, nexus: &Measured) -> Table {
    let accel = |m: &Measured| m.accel.to_uppercase();
    let mark = format!(" [{}]", accel(nexus));
    let kib = |k: f64| mib(k * 1024.0);
    let row = |metric: &str, b: f64, n: f64, show: &dyn Fn(f64) -> String, target: &str| Row {
        metric: format!("{metric}{mark}"),
        baseline: show(b),
        nexus: show(n),
        ratio: ratio(n, b),
        target: target.into(),
    };
    let p = |v: &[f64], q: usize| {
        v.get(v.len().saturating_sub(1) * q / 100).copied().unwrap_or(f64::NAN)
    };
    let rows = vec![
        row(
            "guest memory in use after warm-up (MemTotal − MemAvailable)",
            baseline.guest_used_kib,
            nexus.guest_used_kib,
            &kib,
            "−40 % (memory per VM)",
        ),
        row(
            "function runtime process RSS in the guest",
            baseline.runtime_rss_kib,
            nexus.runtime_rss_kib,
            &kib,
            "",
        ),
        row("VMM (QEMU) RSS", baseline.vmm_rss_kib, nexus.vmm_rss_kib, &kib, ""),
        row("warm invocation p50", p(&baseline.warm, 50), p(&nexus.warm, 50), &seconds, "−50 %"),
        row("warm invocation p99", p(&baseline.warm, 99), p(&nexus.warm, 99), &seconds, ""),
        row(
            "cold: VM boot until the runtime is ready",
            baseline.boot_s,
            nexus.boot_s,
            &seconds,
            "",
        ),
        row("cold: first invocation, end to end", baseline.cold_s, nexus.cold_s, &seconds, ""),
    ];
    let mut notes = vec![format!(
        "Machine: {}. One run: {ROUNDS} warm invocations per flavour after {WARM_UP} warm-up ones, \
         medians/percentiles of those; the function (`guest/python/examples/bench`) reads a {} KiB \
         object, gzips it and writes the result, through the backend (Nexus, no NIC) or through \
         the VM's virtio NIC and QEMU user networking to the same Garage server (baseline, real boto3).",
        machine(),
        INPUT_BYTES >> 10
    )];
    if accel(nexus) == "TCG" {
        notes.push(
            "Every VM figure here was measured under TCG (QEMU software emulation: this host has no \
             hardware virtualization); guest code runs ≈ 10× slower than under KVM, so latencies are \
             inflated and dominated by emulated CPU work. QEMU's RSS includes TCG's translation cache."
                .into(),
        );
    }
    Table {
        name: "vm",
        title: format!(
            "Function VMs: baseline (NIC + boto3) vs Nexus (no NIC, shim), {}",
            accel(nexus)
        ),
        command: "cargo xtask bench vm".into(),
        notes,
        rows,
    }
}
