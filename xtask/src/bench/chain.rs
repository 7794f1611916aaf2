//! `cargo xtask bench chain`: a chain of three functions (a → b → c, each waiting for the
//! next) in Nexus VMs, whose `lambda.invoke` goes through the channel and the backend (no NIC),
//! against the same chain in baseline VMs, whose real boto3 invokes over HTTP through the VM's
//! NIC and QEMU's user network to the backend's Lambda Invoke route on `api.listen`. The
//! handler is `guest/python/examples/chain/handler.py` in both.

use anyhow::{Context, Result};
use serde_json::json;

use super::measure::machine;
use super::report::{ratio, seconds, Row, Table};
use super::stack::{accel_note, Stack, Storage};
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
    let tools = setup::run()?;
    let port = free_port()?;
    let api = format!(
        "api: {{ socket: \"{{dir}}/nexus.sock\", listen: \"127.0.0.1:{port}\", \
         token_file: \"{{dir}}/api.token\", code_root: {} }}\n",
        workspace_root().join(CODE).display()
    );
    // The chain makes no storage calls: the store stays on loopback.
    let region = "size: 32MiB, buffer_size: 1MiB";
    let stack = Stack::start(&tools, &Flavour::ALL, Storage::Local, region, &api)?;
    let baseline = measure(&stack, Flavour::Baseline, port)?;
    let nexus = measure(&stack, Flavour::Nexus, port)?;
    let table = chain_table(&baseline, &nexus);
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Deploys the chain in `flavour`, invokes it cold (three VMs start), warms it up and times
/// `ROUNDS` warm invocations of its head.
fn measure(stack: &Stack, flavour: Flavour, port: u16) -> Result<Measured> {
    let names = ["a", "b", "c"].map(|n| format!("chain-{}-{n}", flavour.name()));
    for (i, name) in names.iter().enumerate() {
        let callees: Vec<&String> = names.get(i + 1).into_iter().collect();
        let mut extra = json!({ "policy": { "invoke": callees } });
        if flavour == Flavour::Baseline {
            // The real boto3 signs its Lambda calls with the API token as its secret key; the
            // chain makes no storage calls, so the store's keys are not needed.
            extra["environment"] = json!({
                "AWS_ENDPOINT_URL": stack.storage_endpoint().replace("127.0.0.1", "10.0.2.2"),
                "AWS_ENDPOINT_URL_LAMBDA": format!("http://10.0.2.2:{port}"),
                "AWS_ACCESS_KEY_ID": "nexus", "AWS_SECRET_ACCESS_KEY": stack.backend.token,
                "AWS_DEFAULT_REGION": stack.garage.region, "AWS_EC2_METADATA_DISABLED": "true",
            });
        }
        stack.deploy(name, &workspace_root().join(CODE), HANDLER, flavour, extra)?;
    }
    let event = json!({ "next": &names[1..] });
    let expected = json!({ "path": names });
    let invoke = || -> Result<f64> {
        let invocation = stack.invoke(&names[0], &event, &[])?;
        anyhow::ensure!(invocation.result == expected, "the chain answered {}", invocation.result);
        Ok(invocation.seconds)
    };
    println!("bench: chain ({}): cold invocation (starts three VMs)", flavour.name());
    let cold_s = invoke()?;
    println!("bench: chain ({}): {ROUNDS} warm invocations", flavour.name());
    let mut warm = Vec::new();
    for round in 0..WARM_UP + ROUNDS {
        let seconds = invoke()?;
        if round >= WARM_UP {
            warm.push(seconds);
        }
    }
    Ok(Measured { accel: stack.warm_vm(&names[0])?.accel, cold_s, warm })
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
         {WARM_UP} warm-up ones. Each function passes the event to the next and returns its \
         result (`guest/python/examples/chain`). Nexus: `lambda.invoke` is a channel call the \
         backend serves (no NIC in any guest). Baseline: the real boto3 in each VM invokes over \
         HTTP (SigV4-signed, through the VM's virtio NIC and QEMU's user network) to the \
         backend's Lambda Invoke route on loopback TCP, which checks the signature and runs the \
         same deployed functions.",
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
