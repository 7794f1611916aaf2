//! `cargo xtask bench fabric`: the cost of the communication fabric, host-native (no VM).
//!
//! (a) round trip of an empty call through the channel; (b) whole-object get/put throughput
//! through the channel against an in-memory store (gets served from the backend's cache), so
//! only the channel is measured; (c) one Python function process doing the same puts and gets
//! through real boto3 → HTTP → Garage, and through the shim → channel → backend → the same
//! Garage: wall time, CPU time of every process involved, and the function's peak RSS; and the
//! backend's CPU while its regions sit idle. Write-back is off here: a put goes to the store
//! before it completes, as boto3's does, and no read is served from the spool
//! (`cargo xtask bench cold` measures write-back).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use nexus_tests::{Backend, Garage};
use serde_json::{json, Value};

use super::measure::{cpu_time, machine, run_measured, today, Usage};
use super::report::{mib, ratio, seconds, Row, Table};
use super::stack::build_release;
use crate::setup::Tools;
use crate::{setup, workspace_root};

/// Objects of (b): size and rounds.
const CHANNEL_SIZES: [(u64, u64); 3] = [(4 << 10, 2000), (1 << 20, 200), (64 << 20, 10)];
/// Objects of (c): size and rounds.
const FUNCTION_SIZES: [(u64, u64); 3] = [(4 << 10, 50), (1 << 20, 20), (16 << 20, 5)];
const PING_ROUNDS: u64 = 200_000;
const IDLE_REGIONS: usize = 8;
const IDLE_SECONDS: u64 = 10;
const REGION: &str = "size: 128MiB, buffer_size: 2MiB";

struct Release {
    nexus: PathBuf,
    probe: PathBuf,
    guest_lib: PathBuf,
}

/// The fabric's table and its key figures, for the side-by-side table of `cargo xtask bench`.
#[derive(Debug)]
pub struct Fabric {
    pub table: Table,
    /// (a): the empty call's round trip, p50, seconds.
    pub call_p50_s: f64,
    /// (b): a cached 64 MiB get through the channel, bytes per second.
    pub get_64mib_bytes_per_s: f64,
    /// (c), baseline then Nexus: CPU seconds of the function (+ the backend for Nexus).
    pub cpu_s: (f64, f64),
    /// (c), baseline then Nexus: the function process's peak RSS, bytes.
    pub rss_bytes: (f64, f64),
}

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let table = measure(&tools)?.table;
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Runs (a), (b), the idle cost and (c).
pub fn measure(tools: &Tools) -> Result<Fabric> {
    build_release(&["nexus-backend", "nexus-guest"])?;
    let target = workspace_root().join("target/release");
    let release = Release {
        nexus: target.join("nexus"),
        probe: target.join("nexus-probe"),
        guest_lib: target.join("libnexus_guest.so"),
    };
    let mut table = Table {
        name: "fabric",
        title: "Fabric, host-native (no VM): boto3 → HTTP → S3 vs shim → channel → backend".into(),
        command: "cargo xtask bench fabric".into(),
        ..Table::default()
    };
    let (call_p50_s, get_64mib_bytes_per_s) = channel_rows(&release, &mut table)?;
    let (cpu_s, rss_bytes) = function_rows(&release, &tools.python, &tools.garage, &mut table)?;
    table.notes.push(format!(
        "Machine: {}. One run, {}. Medians unless noted; (a) and (b) use an in-memory store so \
         only the channel is measured, (c) uses a real Garage S3 server on loopback for both \
         sides and leaves Garage's own CPU out of the totals.",
        machine(),
        today()
    ));
    Ok(Fabric { table, call_p50_s, get_64mib_bytes_per_s, cpu_s, rss_bytes })
}

/// (a), (b) and the idle cost; returns the round trip's p50 and the 64 MiB get's rate.
fn channel_rows(release: &Release, table: &mut Table) -> Result<(f64, f64)> {
    let settings = r#"
storage: { url: "memory://" }
cache: { max_bytes: 256MiB, max_object_bytes: 64MiB }
writeback: { enabled: false }
default_policy: { grants: [{ bucket: bench, access: [read, write] }], max_object_size: 1GiB }
"#;
    let backend = Backend::start_with(&release.nexus, REGION, settings, &[])?;
    let region = backend.create_region("bench")?;
    println!("bench: (a) {PING_ROUNDS} empty calls");
    let ping = probe(release, &region, &["ping", &PING_ROUNDS.to_string()])?;
    let p50 = ping["p50_ns"].as_f64().unwrap_or(0.0) * 1e-9;
    let p99 = ping["p99_ns"].as_f64().unwrap_or(0.0) * 1e-9;
    table.rows.push(Row {
        metric: "(a) empty call round trip, p50 / p99".into(),
        nexus: format!("{} / {}", seconds(p50), seconds(p99)),
        target: "p50 < 2 µs".into(),
        ..Row::default()
    });
    let mut get_64mib = f64::NAN;
    for (size, rounds) in CHANNEL_SIZES {
        println!("bench: (b) {} × {rounds}", mib(size as f64));
        for op in ["get", "put"] {
            let result =
                probe(release, &region, &[op, "bench", &size.to_string(), &rounds.to_string()])?;
            let rate = result["bytes_per_s"].as_f64().unwrap_or(0.0);
            let median = result["median_s"].as_f64().unwrap_or(0.0);
            let cached = if op == "get" { " (cached by the backend)" } else { "" };
            if op == "get" && size == 64 << 20 {
                get_64mib = rate;
            }
            table.rows.push(Row {
                metric: format!("(b) {op} {}{cached}", size_label(size)),
                nexus: format!("{:.2} GB/s ({})", rate / 1e9, seconds(median)),
                target: if op == "get" && size == 64 << 20 {
                    "≥ 5 GB/s".into()
                } else {
                    String::new()
                },
                ..Row::default()
            });
        }
    }
    for i in 0..IDLE_REGIONS {
        backend.create_region(&format!("idle-{i}"))?;
    }
    let pid = backend.pid().context("backend pid")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time(pid)?;
    println!("bench: backend idle with {} regions for {IDLE_SECONDS} s", IDLE_REGIONS + 1);
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    let idle = (cpu_time(pid)? - before).as_secs_f64() / IDLE_SECONDS as f64;
    table.rows.push(Row {
        metric: format!("backend CPU while {} regions are idle", IDLE_REGIONS + 1),
        nexus: format!("{:.2} % of a core", idle * 100.0),
        target: "~0".into(),
        ..Row::default()
    });
    Ok((p50, get_64mib))
}

/// Baseline and Nexus figures of (c).
type Pair = (f64, f64);

/// (c): the same Python function through real boto3 and through the shim; returns the CPU
/// seconds and the peak RSS of each side.
fn function_rows(
    release: &Release,
    python: &Path,
    garage_bin: &Path,
    table: &mut Table,
) -> Result<(Pair, Pair)> {
    std::env::set_var("NEXUS_GARAGE", garage_bin);
    let garage = Garage::start()?;
    garage.create_bucket("fabric-boto3")?;
    garage.create_bucket("fabric-nexus")?;
    let settings = format!(
        "{}cache: {{ max_bytes: 0, max_object_bytes: 0 }}\nwriteback: {{ enabled: false }}\n\
         default_policy: {{ grants: [{{ bucket: fabric-nexus, access: [read, write] }}], max_object_size: 1GiB }}\n",
        garage.storage_settings()
    );
    let backend = Backend::start_with(&release.nexus, REGION, &settings, &[])?;
    let region = backend.create_region("fabric")?;
    let handler = workspace_root().join("guest/python/examples/fabric/handler.py");
    let event = |bucket: &str| {
        let sizes: Vec<u64> = FUNCTION_SIZES.iter().map(|(s, _)| *s).collect();
        let rounds: serde_json::Map<String, Value> =
            FUNCTION_SIZES.iter().map(|(s, r)| (s.to_string(), json!(r))).collect();
        json!({ "bucket": bucket, "sizes": sizes, "rounds": rounds }).to_string()
    };
    let garage_pid = garage.pid().context("garage pid")?;

    println!("bench: (c) Python function through real boto3 → HTTP → Garage");
    let garage_before = cpu_time(garage_pid)?;
    let runner = "import json,runpy,sys; h=runpy.run_path(sys.argv[1])['handler']; \
                  print(json.dumps(h(json.load(sys.stdin), None)))";
    let boto3 = run_measured(
        Command::new(python)
            .args(["-c", runner])
            .arg(&handler)
            .env_remove("PYTHONPATH")
            .env("AWS_ENDPOINT_URL", &garage.endpoint)
            .env("AWS_ACCESS_KEY_ID", &garage.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret_key)
            .env("AWS_DEFAULT_REGION", &garage.region)
            .env("AWS_EC2_METADATA_DISABLED", "true"),
        &event("fabric-boto3"),
    )?;
    let boto3_garage = cpu_time(garage_pid)? - garage_before;

    println!("bench: (c) the same function through the shim → channel → backend → Garage");
    let garage_before = cpu_time(garage_pid)?;
    let backend_pid = backend.pid().context("backend pid")?;
    let backend_before = cpu_time(backend_pid)?;
    let shim = run_measured(
        Command::new(python)
            .args(["-m", "nexus_runtime", "--handler"])
            .arg(format!("{}:handler", handler.display()))
            .args(["--event", "-"])
            .current_dir(workspace_root())
            .env("PYTHONPATH", workspace_root().join("guest/python"))
            .env("NEXUS_REGION", &region)
            .env("NEXUS_GUEST_LIB", &release.guest_lib),
        &event("fabric-nexus"),
    )?;
    let shim_backend = cpu_time(backend_pid)? - backend_before;
    let shim_garage = cpu_time(garage_pid)? - garage_before;
    function_table(table, &boto3, &shim, shim_backend, (boto3_garage, shim_garage))
}

fn function_table(
    table: &mut Table,
    boto3: &Usage,
    shim: &Usage,
    backend_cpu: Duration,
    garage_cpu: (Duration, Duration),
) -> Result<(Pair, Pair)> {
    let row = |metric: &str, b: f64, n: f64, show: fn(f64) -> String, target: &str| Row {
        metric: metric.into(),
        baseline: show(b),
        nexus: show(n),
        ratio: ratio(n, b),
        target: target.into(),
        ..Row::default()
    };
    let results: (Value, Value) = (
        serde_json::from_str(&boto3.stdout).context("boto3 run output")?,
        serde_json::from_str(&shim.stdout).context("shim run output")?,
    );
    table.rows.push(row(
        "(c) function process wall time",
        boto3.wall.as_secs_f64(),
        shim.wall.as_secs_f64(),
        seconds,
        "",
    ));
    let (b_cpu, n_cpu) = (boto3.cpu.as_secs_f64(), (shim.cpu + backend_cpu).as_secs_f64());
    let mut cpu = row("(c) CPU time: function (+ backend for Nexus)", b_cpu, n_cpu, seconds, "");
    cpu.nexus = format!(
        "{} ({} + {})",
        seconds(n_cpu),
        seconds(shim.cpu.as_secs_f64()),
        seconds(backend_cpu.as_secs_f64())
    );
    table.rows.push(cpu);
    table.rows.push(row(
        "(c) Garage CPU (left out above)",
        garage_cpu.0.as_secs_f64(),
        garage_cpu.1.as_secs_f64(),
        seconds,
        "",
    ));
    let (b_rss, n_rss) = (boto3.peak_rss_bytes as f64, shim.peak_rss_bytes as f64);
    let mut rss = row("(c) function process peak RSS", b_rss, n_rss, mib, "≥ 30 MB smaller");
    rss.ratio = format!("{} ({})", ratio(n_rss, b_rss), mib(n_rss - b_rss));
    table.rows.push(rss);
    for (size, _) in FUNCTION_SIZES {
        for op in ["get", "put"] {
            let field = format!("{op}_median_s");
            let b = results.0[size.to_string()][&field].as_f64().unwrap_or(f64::NAN);
            let n = results.1[size.to_string()][&field].as_f64().unwrap_or(f64::NAN);
            table.rows.push(row(
                &format!("(c) {op} {} from Python", size_label(size)),
                b,
                n,
                seconds,
                "",
            ));
        }
    }
    Ok(((b_cpu, n_cpu), (b_rss, n_rss)))
}

fn probe(release: &Release, region: &Path, args: &[&str]) -> Result<Value> {
    let output = Command::new(&release.probe)
        .args(args)
        .env("NEXUS_REGION", region)
        .output()
        .with_context(|| format!("run {}", release.probe.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "nexus-probe {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn size_label(size: u64) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}
