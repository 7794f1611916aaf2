//! `cargo xtask demo`: the main job, end to end, on this machine.
//!
//! Starts the backend on a local-directory store (`target/demo/objects`), creates a region for
//! the example `compress` function, and runs its unmodified boto3 handler through the shim:
//! it reads an input object, gzips it and writes the output object. Then it checks the output
//! in the store and shows what crossed the channel.

use std::io::Read;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use nexus_tests::Backend;
use serde_json::{json, Value};

use crate::{cmd, setup, workspace_root};

const BUCKET: &str = "demo";
const INPUT_KEY: &str = "inputs/words.txt";
const OUTPUT_KEY: &str = "outputs/words.txt.gz";

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    let root = workspace_root();
    println!("demo: building the backend and the guest library");
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "-p",
        "nexus-backend",
        "-p",
        "nexus-guest",
    ]))?;
    let objects = root.join("target/demo/objects");
    let bucket_dir = objects.join(BUCKET);
    std::fs::create_dir_all(bucket_dir.join("inputs")).context("create the demo store")?;
    let input = sample_text();
    std::fs::write(bucket_dir.join(INPUT_KEY), &input).context("write the demo input")?;
    println!(
        "demo: input object s3://{BUCKET}/{INPUT_KEY} ({} bytes) in {}",
        input.len(),
        objects.display()
    );

    let settings = format!(
        "storage: {{ url: \"file://{}\" }}\n\
         functions:\n  compress:\n    policy:\n      grants: [{{ bucket: {BUCKET}, access: [read, write] }}]\n",
        objects.display()
    );
    let target = root.join("target/debug");
    let backend = Backend::start(&target.join("nexus"), &settings, &[])?;
    println!("demo: backend up, control socket {}", backend.socket.display());
    let region = backend.create_region("compress")?;
    println!("demo: region for function `compress`: {}", region.display());

    let event = json!({ "bucket": BUCKET, "key": INPUT_KEY, "output_key": OUTPUT_KEY });
    println!("demo: invoking guest/python/examples/compress/handler.py with {event}");
    let started = Instant::now();
    let mut child = Command::new(&tools.python)
        .args([
            "-m",
            "nexus_runtime",
            "--handler",
            "guest/python/examples/compress/handler.py:handler",
            "--event",
            "-",
        ])
        .current_dir(root)
        .env("PYTHONPATH", root.join("guest/python"))
        .env("NEXUS_REGION", &region)
        .env("NEXUS_GUEST_LIB", target.join("libnexus_guest.so"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start the function process")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        event.to_string().as_bytes(),
    )?;
    let mut output = String::new();
    child.stdout.take().context("stdout")?.read_to_string(&mut output)?;
    let status = child.wait()?;
    let took = started.elapsed();
    ensure!(status.success(), "the handler failed: {output}");
    let result: Value = serde_json::from_str(&output).context("handler result")?;
    println!("demo: result in {:.0} ms: {result}", took.as_secs_f64() * 1e3);

    let stored = std::fs::read(bucket_dir.join(OUTPUT_KEY)).context("read the output object")?;
    ensure!(
        result["output_bytes"] == json!(stored.len()),
        "output size differs from the handler's report"
    );
    let calls = backend.metric("nexus_calls_total", &["function=\"compress\"", "status=\"OK\""])?;
    let to_guest = backend
        .metric("nexus_bytes_total", &["function=\"compress\"", "direction=\"to_guest\""])?;
    let from_guest = backend
        .metric("nexus_bytes_total", &["function=\"compress\"", "direction=\"from_guest\""])?;
    println!(
        "demo: output object s3://{BUCKET}/{OUTPUT_KEY} ({} bytes) at {}",
        stored.len(),
        bucket_dir.join(OUTPUT_KEY).display()
    );
    println!("demo: the function made {calls} calls through the channel: {to_guest} bytes to it, {from_guest} from it");
    println!("demo: done — the handler used boto3 with no credentials and no network: the backend did the I/O");
    Ok(())
}

/// Some compressible text, the same every run.
fn sample_text() -> String {
    let words =
        ["nexus", "offloads", "the", "communication", "fabric", "of", "every", "function", "vm"];
    (0..20_000).map(|i| words[(i * 7 + i / 3) % words.len()]).collect::<Vec<_>>().join(" ")
}
