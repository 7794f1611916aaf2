//! `cargo xtask demo [--native]`: the main job, end to end, on this machine.
//!
//! Starts the backend on a local-directory store (`target/demo/objects`) and runs the example
//! `compress` function — an unmodified boto3 handler that reads an input object, gzips it and
//! writes the output object. By default the function runs in a Nexus VM (no NIC; its boto3
//! is the shim, served by the backend through the shared-memory region): the first invocation
//! boots the VM, the second finds it warm. `--native` runs the same handler as a plain host
//! process on a region instead, without a VM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use nexus_backend::api::{COLD_START, FUNCTION_ERROR};
use nexus_backend::client::exchange;
use nexus_tests::Backend;
use serde_json::{json, Value};

use crate::image::{self, Flavour};
use crate::{cmd, setup, workspace_root};

const BUCKET: &str = "demo";
const INPUT_KEY: &str = "inputs/words.txt";
const HANDLER: &str = "guest/python/examples/compress";

pub fn run(native: bool) -> Result<()> {
    let tools = setup::run()?;
    let images = if native { None } else { Some(image::ensure(Flavour::Nexus, false)?) };
    let root = workspace_root();
    println!("demo: building the backend and the guest library");
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "-p",
        "nexus-backend",
        "-p",
        "nexus-guest",
    ]))?;
    let demo = root.join("target/demo");
    let bucket_dir = demo.join("objects").join(BUCKET);
    std::fs::create_dir_all(bucket_dir.join("inputs")).context("create the demo store")?;
    let input = sample_text();
    std::fs::write(bucket_dir.join(INPUT_KEY), &input).context("write the demo input")?;
    println!(
        "demo: input object s3://{BUCKET}/{INPUT_KEY} ({} bytes) in {}",
        input.len(),
        demo.join("objects").display()
    );

    let mut settings = format!(
        "storage: {{ url: \"file://{}/objects\" }}\n\
         functions:\n  compress:\n    policy:\n      grants: [{{ bucket: {BUCKET}, access: [read, write] }}]\n",
        demo.display()
    );
    if let Some(images) = &images {
        let dir = images.dir.parent().context("images dir")?;
        settings +=
            &format!("vm: {{ images: {}, state_dir: {} }}\n", dir.display(), demo.display());
    }
    let backend = Backend::start(&root.join("target/debug/nexus"), &settings, &[])?;
    println!("demo: backend up, control socket {}", backend.socket.display());
    let outputs = if native { run_native(&backend, &tools.python)? } else { run_in_vm(&backend)? };

    for (key, result) in outputs {
        let stored = std::fs::read(bucket_dir.join(&key)).context("read the output object")?;
        ensure!(
            result["output_bytes"] == json!(stored.len()),
            "output size differs from the handler's report"
        );
        println!(
            "demo: output object s3://{BUCKET}/{key}: {} bytes at {}",
            stored.len(),
            bucket_dir.join(&key).display()
        );
    }
    let calls = backend.metric("nexus_calls_total", &["function=\"compress\"", "status=\"OK\""])?;
    let to_guest = backend
        .metric("nexus_bytes_total", &["function=\"compress\"", "direction=\"to_guest\""])?;
    let from_guest = backend
        .metric("nexus_bytes_total", &["function=\"compress\"", "direction=\"from_guest\""])?;
    println!("demo: the function made {calls} calls through the channel: {to_guest} bytes to it, {from_guest} from it");
    println!("demo: done — the handler used boto3 with no credentials and no network: the backend did the I/O");
    Ok(())
}

/// Deploys `compress` and invokes it twice in its VM; returns (output key, result) pairs.
fn run_in_vm(backend: &Backend) -> Result<Vec<(String, Value)>> {
    let code = workspace_root().join(HANDLER);
    let spec = json!({ "name": "compress", "code": code, "handler": "handler.py:handler" });
    backend.api("POST", "/v1/functions", Some(&spec))?;
    println!("demo: deployed `compress` ({HANDLER}/handler.py) on the Nexus image: no NIC, boto3 is the shim");
    let mut outputs = Vec::new();
    for (round, key) in [(1, "outputs/words-1.txt.gz"), (2, "outputs/words-2.txt.gz")] {
        let event = json!({ "bucket": BUCKET, "key": INPUT_KEY, "output_key": key });
        let started = Instant::now();
        let answer = exchange(
            &backend.socket,
            "POST",
            "/v1/functions/compress/invoke",
            event.to_string().as_bytes(),
        )
        .with_context(|| format!("invoke compress\n--- backend log ---\n{}", backend.log_tail()))?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        ensure!(answer.header(FUNCTION_ERROR).is_none(), "the handler failed: {}", answer.body);
        let result: Value = serde_json::from_str(&answer.body)?;
        match answer.header(COLD_START) {
            Some(boot) => println!("demo: invocation {round} (cold: VM ready in {boot} ms) took {took:.0} ms: {result}"),
            None => println!("demo: invocation {round} (warm) took {took:.0} ms: {result}"),
        }
        outputs.push((key.to_owned(), result));
    }
    let functions = backend.api("GET", "/v1/functions", None)?;
    let warm = &functions[0]["vms"][0];
    let accel = warm["accel"].as_str().unwrap_or("?");
    let note =
        if accel == "tcg" { " (TCG: software emulation, ≈ 10× slower than KVM)" } else { "" };
    println!(
        "demo: VM pid {} on {} with {accel}{note}; console log {}",
        warm["pid"], warm["vmm"], warm["serial_log"]
    );
    Ok(outputs)
}

/// Runs the handler once as a host process on a region; returns (output key, result).
fn run_native(backend: &Backend, python: &std::path::Path) -> Result<Vec<(String, Value)>> {
    let root = workspace_root();
    let region = backend.create_region("compress")?;
    println!("demo: region for function `compress`: {}", region.display());
    let key = "outputs/words.txt.gz";
    let event = json!({ "bucket": BUCKET, "key": INPUT_KEY, "output_key": key });
    let started = Instant::now();
    let mut child = Command::new(python)
        .args([
            "-m",
            "nexus_runtime",
            "--handler",
            &format!("{HANDLER}/handler.py:handler"),
            "--event",
            "-",
        ])
        .current_dir(root)
        .env("PYTHONPATH", root.join("guest/python"))
        .env("NEXUS_REGION", &region)
        .env("NEXUS_GUEST_LIB", root.join("target/debug/libnexus_guest.so"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the function process")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        event.to_string().as_bytes(),
    )?;
    let mut output = String::new();
    child.stdout.take().context("stdout")?.read_to_string(&mut output)?;
    ensure!(child.wait()?.success(), "the handler failed: {output}");
    let result: Value = serde_json::from_str(&output).context("handler result")?;
    println!(
        "demo: host-native invocation took {:.0} ms: {result}",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(vec![(key.to_owned(), result)])
}

/// Some compressible text, the same every run.
fn sample_text() -> String {
    let words =
        ["nexus", "offloads", "the", "communication", "fabric", "of", "every", "function", "vm"];
    (0..20_000).map(|i| words[(i * 7 + i / 3) % words.len()]).collect::<Vec<_>>().join(" ")
}
