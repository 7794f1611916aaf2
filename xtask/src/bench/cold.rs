//! `cargo xtask bench cold`: cold starts of a Nexus function whose input is a 64 MiB object:
//! (a) booted from scratch, (b) restored from a snapshot then fetching its input, (c) restored
//! with the input prefetched while the VM restores. Medians of a few rounds each, one run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use nexus_backend::api::{COLD_START, FUNCTION_ERROR, PREFETCH};
use nexus_backend::client::exchange_with;
use nexus_tests::{Backend, Garage};
use serde_json::{json, Value};

use super::measure::machine;
use super::report::{ratio, seconds, Row, Table};
use crate::image::{self, Flavour};
use crate::{cmd, setup, workspace_root};

const INPUT_MIB: usize = 64;
const ROUNDS: usize = 3;

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let images = image::ensure(Flavour::Nexus, false)?;
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
default_policy: {{ grants: [{{ bucket: bench, access: [read, write] }}], max_object_size: 1GiB }}
functions:
  strict: {{ write_back: strict, policy: {{ grants: [{{ bucket: bench, access: [read, write] }}], max_object_size: 1GiB }} }}
vm: {{ images: {images}, state_dir: "{{dir}}", boot_timeout_secs: 240 }}
"#,
        endpoint = garage.endpoint,
        key = garage.access_key,
        secret = garage.secret_key,
        region = garage.region,
        images = images.dir.parent().context("images dir")?.display(),
    );
    let backend = Backend::start_with(
        &workspace_root().join("target/release/nexus"),
        "size: 128MiB, buffer_size: 4MiB",
        &settings,
        &[],
    )?;
    let code = workspace_root().join("guest/python/examples/bench");
    backend.api(
        "POST",
        "/v1/functions",
        Some(
            &json!({ "name": "cold", "code": code, "handler": "io.py:handler", "memory_mib": 512 }),
        ),
    )?;
    let hints = json!([{ "bucket": "bench", "key": "in/64mib" }]).to_string();

    println!("bench: (a) {ROUNDS} cold boots");
    let booted = rounds(&backend, None)?;
    backend.api("POST", "/v1/functions/cold/snapshot", None)?;
    println!("bench: (b) {ROUNDS} restores, the handler fetching its input");
    let sequential = rounds(&backend, None)?;
    println!("bench: (c) {ROUNDS} restores with the input prefetched meanwhile");
    let overlapped = rounds(&backend, Some(&hints))?;
    println!("bench: {ROUNDS} warm invocations writing {INPUT_MIB} MiB, write-back and strict");
    let written_back = warm_writes(&backend, &code, "async")?;
    let strict = warm_writes(&backend, &code, "strict")?;

    let accel = backend.api("GET", "/v1/functions", None)?[0]["warm"]["accel"]
        .as_str()
        .unwrap_or("?")
        .to_uppercase();
    let row = |metric: &str, (total, start): (f64, f64), base: f64, target: &str| Row {
        metric: format!("{metric} [{accel}]"),
        baseline: seconds(base),
        nexus: format!("{} (VM ready after {})", seconds(total), seconds(start)),
        ratio: ratio(total, base),
        target: target.into(),
    };
    let base = sequential.0;
    let table = Table {
        name: "cold",
        title: format!("Cold starts with a {INPUT_MIB} MiB input, {accel}"),
        command: "cargo xtask bench cold".into(),
        rows: vec![
            row("(a) boot from scratch, then the handler fetches its input", booted, base, ""),
            row("(b) restore the snapshot, then the handler fetches its input", sequential, base, ""),
            row("(c) restore with the input prefetched during the restore", overlapped, base, "(c) ≥ 25 % faster than (b)"),
            Row {
                metric: format!("warm invocation writing {INPUT_MIB} MiB: strict vs write-back [{accel}]"),
                baseline: seconds(strict),
                nexus: seconds(written_back),
                ratio: ratio(written_back, strict),
                target: "write-back ≥ 30 % faster".into(),
            },
        ],
        notes: vec![format!(
            "Machine: {}. One run, median of {ROUNDS} cold invocations each, end to end at the API \
             (the \"baseline\" column is (b) for the cold rows and strict for the write-back row, the spool drained between rounds). The function (`guest/python/examples/bench/io.py`) \
             reads a {INPUT_MIB} MiB object from a Garage S3 server through the backend (its cache off) and \
             computes its CRC-32. Measured under {accel}{}.",
            machine(),
            if accel == "TCG" { " (software emulation, ≈ 10× slower guest code than KVM)" } else { "" }
        )],
    };
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// `ROUNDS` cold invocations (the VM stopped before each); medians of the total and of the VM
/// start, in seconds.
fn rounds(backend: &Backend, hints: Option<&str>) -> Result<(f64, f64)> {
    let (mut totals, mut starts) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        backend.api("POST", "/v1/functions/cold/stop", None)?;
        let headers: Vec<(&str, &str)> = hints.map(|h| vec![(PREFETCH, h)]).unwrap_or_default();
        let event = json!({ "bucket": "bench", "key": "in/64mib" }).to_string();
        let started = Instant::now();
        let answer = exchange_with(
            &backend.socket,
            "POST",
            "/v1/functions/cold/invoke",
            &headers,
            event.as_bytes(),
        )
        .with_context(|| backend.log_tail())?;
        totals.push(started.elapsed().as_secs_f64());
        ensure!(answer.header(FUNCTION_ERROR).is_none(), "the function failed: {}", answer.body);
        let result: Value = serde_json::from_str(&answer.body)?;
        ensure!(result["input_bytes"] == json!(INPUT_MIB << 20), "short read: {result}");
        starts.push(
            answer.header(COLD_START).and_then(|ms| ms.parse::<f64>().ok()).unwrap_or(0.0) / 1e3,
        );
    }
    Ok((median(totals), median(starts)))
}

/// Median seconds of `ROUNDS` warm invocations of function `name` writing a 64 MiB output
/// (after one to warm it up); the spool drains between rounds.
fn warm_writes(backend: &Backend, code: &Path, name: &str) -> Result<f64> {
    let spec = json!({ "name": name, "code": code, "handler": "io.py:handler", "memory_mib": 512 });
    backend.api("POST", "/v1/functions", Some(&spec))?;
    let event = json!({ "bucket": "bench", "output_key": format!("out/{name}"), "output_bytes": INPUT_MIB << 20 });
    let mut took = Vec::new();
    for round in 0..=ROUNDS {
        let started = Instant::now();
        let path = format!("/v1/functions/{name}/invoke");
        let answer =
            exchange_with(&backend.socket, "POST", &path, &[], event.to_string().as_bytes())
                .with_context(|| backend.log_tail())?;
        ensure!(answer.header(FUNCTION_ERROR).is_none(), "{name} failed: {}", answer.body);
        if round > 0 {
            took.push(started.elapsed().as_secs_f64());
        }
        backend.wait_uploaded(std::time::Duration::from_secs(120))?;
    }
    Ok(median(took))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Puts the input object with the tests' real boto3, straight into Garage.
fn seed(python: &Path, garage: &Garage) -> Result<()> {
    let script = format!(
        "import boto3, os; boto3.client('s3').put_object(Bucket='bench', Key='in/64mib', Body=os.urandom({} << 20))",
        INPUT_MIB
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
