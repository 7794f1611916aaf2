//! `cargo xtask bench cold [--storage remote|local] [--vmm qemu|cloud-hypervisor]`: cold
//! starts of a Nexus function whose input is a 1, 16, 32 or 64 MiB object: (a) booted from
//! scratch, (b) restored from a snapshot, then fetching its input, (c) restored with the input
//! prefetched while the VM restores. The overlap in (c) can hide at most the shorter of the
//! restore and the fetch, so each size also reports both alone and how much of that hideable
//! time (c) hid: `((b) − (c)) / min(restore, fetch)`. Medians of a few rounds each, one run;
//! (b) and (c) take turns so that they share the machine's noise, and (b) − (c) is the median
//! of each round's pair.
//!
//! The VMM and the guest that runs as the function: [`ColdVmm`] (`cold_vmm.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use nexus_plugin::cloud_hypervisor::{check_kvm, find_binary};
use object_store::ObjectStoreExt;
use serde_json::json;

use super::cold_vmm::{test_guest_image, ColdVmm};
use super::measure::machine;
use super::report::{ratio, seconds, Row, Table};
use super::stack::{Stack, Storage, BUCKET};
use super::stats::median;
use crate::image::Flavour;
use crate::{setup, workspace_root};

/// Input sizes, MiB: from a fetch much shorter than a restore to one much longer (at cloud
/// distance, 32 MiB takes about as long as a restore).
const INPUT_MIB: [usize; 4] = [1, 16, 32, 64];
/// Cold starts of each kind and size.
const ROUNDS: usize = 15;
/// Boots from scratch (slow, and only a reference point).
const BOOT_ROUNDS: usize = 3;
/// The output of the write-back rows.
const OUTPUT_MIB: usize = 64;
/// Room for the 64 MiB input in the staging area.
const REGION: &str = "size: 128MiB, buffer_size: 4MiB, staging_size: 80MiB";
/// The test guest has no doorbell driver: the backend's serving thread spins (2 s) so that a
/// call is answered at once, as a guest ringing its doorbell would be.
const REGION_POLLED: &str = ", spin_us: 2000000";

fn input_key(mib: usize) -> String {
    format!("in/{mib}mib")
}

pub fn run(storage: Storage, vmm: ColdVmm) -> Result<()> {
    let tools = setup::run()?;
    let strict = format!(
        "functions:\n  strict: {{ write_back: strict, policy: {{ grants: [{{ bucket: {BUCKET}, access: [read, write] }}], max_object_size: 1GiB }} }}\n"
    );
    let stack = match vmm {
        ColdVmm::Qemu => Stack::start(&tools, &[Flavour::Nexus], storage, REGION, &strict)?,
        ColdVmm::CloudHypervisor => {
            find_binary(None).ok_or_else(|| {
                anyhow!("no cloud-hypervisor: set NEXUS_CLOUD_HYPERVISOR or put it on PATH")
            })?;
            check_kvm().map_err(|e| anyhow!("KVM cannot run guests here: {e}"))?;
            let images = workspace_root().join("target/nexus-bench-cold/images");
            test_guest_image(&images.join(Flavour::Nexus.name()))?;
            let region = format!("{REGION}{REGION_POLLED}");
            Stack::start_on(&tools, &images, "vmm: cloud-hypervisor", storage, &region, "")?
        }
    };
    let puts: Vec<String> = INPUT_MIB
        .iter()
        .map(|mib| {
            format!(
                "s3.put_object(Bucket='{BUCKET}', Key='{}', Body=os.urandom({mib} << 20))",
                input_key(*mib)
            )
        })
        .collect();
    stack.seed(&tools.python, &format!("import os\n{}", puts.join("\n")))?;
    let (code, handler) = (workspace_root().join(vmm.code()), vmm.handler());
    let memory = json!({ "memory_mib": vmm.memory_mib() });
    stack.deploy("cold", &code, handler, Flavour::Nexus, memory.clone())?;

    let largest = INPUT_MIB[INPUT_MIB.len() - 1];
    println!("bench: (a) {BOOT_ROUNDS} cold boots, {largest} MiB input");
    let booted = Cold::median(&rounds(&stack, vmm, largest, &[false], BOOT_ROUNDS)?[0]);
    stack.backend.api("POST", "/v1/functions/cold/snapshot", None)?;
    let mut sizes = Vec::new();
    for mib in INPUT_MIB {
        println!("bench: {mib} MiB: fetch alone, then (b) and (c), {ROUNDS} restores each");
        let fetch = fetch_seconds(&stack, mib)?;
        let turns = rounds(&stack, vmm, mib, &[false, true], ROUNDS)?;
        let saved: Vec<f64> =
            turns[0].iter().zip(&turns[1]).map(|(b, c)| b.total - c.total).collect();
        sizes.push(Size {
            mib,
            fetch,
            sequential: Cold::median(&turns[0]),
            overlapped: Cold::median(&turns[1]),
            saved: median(&saved),
        });
    }
    let accel = stack.warm_vm("cold")?.accel;
    let mut rows = vec![Row {
        metric: format!(
            "(a) boot from scratch, then the handler fetches its {largest} MiB input [{accel}]"
        ),
        nexus: booted.describe(),
        ..Row::default()
    }];
    // The size whose fetch takes about as long as its restore, where the overlap gains most.
    let balanced = sizes.iter().map(Size::imbalance).min_by(f64::total_cmp).unwrap_or_default();
    for size in &sizes {
        rows.extend(size.rows(&accel, size.imbalance() == balanced));
    }
    if vmm == ColdVmm::Qemu {
        println!(
            "bench: {ROUNDS} warm invocations writing {OUTPUT_MIB} MiB, write-back and strict"
        );
        let written_back = warm_writes(&stack, &code, "async", &memory)?;
        let strict = warm_writes(&stack, &code, "strict", &memory)?;
        rows.push(Row {
            metric: format!(
                "warm invocation writing {OUTPUT_MIB} MiB: strict vs write-back [{accel}]"
            ),
            baseline: seconds(strict),
            nexus: seconds(written_back),
            ratio: ratio(written_back, strict),
            target: "write-back ≥ 30 % faster".into(),
            ..Row::default()
        });
    }
    let title = format!("Cold starts with a 1, 16, 32 and 64 MiB input, {}{accel}", vmm.guest());
    let command =
        format!("cargo xtask bench cold --storage {} --vmm {}", storage.name(), vmm.name());
    let table = Table {
        name: vmm.table(),
        title,
        command,
        rows,
        notes: vec![
            format!(
                "Machine: {}. One run, medians of {ROUNDS} cold invocations per size and kind ((b) and \
                 (c) taking turns; {BOOT_ROUNDS} for (a)), end to end at the API. {}",
                machine(),
                vmm.function_note()
            ),
            "Restore is (b)'s time until the restored VM was ready (the backend's \
             `x-nexus-cold-start-ms`); fetch is a GET of the input by the host over the same path \
             the backend uses, alone. The overlap can hide at most the shorter of the two; \
             \"hidden\" is ((b) − (c)) / min(restore, fetch), with (b) − (c) the median of the \
             differences of the rounds' pairs (a (b) and the (c) right after it share the \
             machine's state: the restore's own median moved between 320 and 450 ms from one \
             run of this bench to another on the same day)."
                .to_owned(),
            storage.note(),
            format!(
                "Measured under {accel}{}.",
                if accel == "TCG" {
                    " (software emulation: guest code ≈ 10× slower than KVM, so the restore and the \
                     handler's own work are longer than on a production node while the fetch is not)"
                } else {
                    ""
                }
            ),
        ],
        ..Table::default()
    };
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// A cold invocation, in seconds: end to end, until the VM was ready, and the handler's read
/// of its input (as the handler timed it, where it can).
#[derive(Clone, Copy)]
struct Cold {
    total: f64,
    start: f64,
    read: Option<f64>,
}

impl Cold {
    /// The median of each figure.
    fn median(samples: &[Cold]) -> Cold {
        let of = |figure: fn(&Cold) -> f64| median(&samples.iter().map(figure).collect::<Vec<_>>());
        let reads: Option<Vec<f64>> = samples.iter().map(|c| c.read).collect();
        Cold {
            total: of(|c| c.total),
            start: of(|c| c.start),
            read: reads.map(|reads| median(&reads)),
        }
    }

    fn describe(&self) -> String {
        let read = self.read.map(|read| format!(", input read in {}", seconds(read)));
        format!(
            "{} (VM ready after {}{})",
            seconds(self.total),
            seconds(self.start),
            read.unwrap_or_default()
        )
    }
}

/// One input size's medians.
struct Size {
    mib: usize,
    fetch: f64,
    sequential: Cold,
    overlapped: Cold,
    /// The median of (b) − (c) over the rounds, each pair run back to back.
    saved: f64,
}

impl Size {
    /// How far apart restore and fetch are: |ln(restore / fetch)|.
    fn imbalance(&self) -> f64 {
        (self.sequential.start / self.fetch).ln().abs()
    }

    /// The share of the hideable time that the overlap hid.
    fn hidden(&self) -> f64 {
        self.saved / self.sequential.start.min(self.fetch)
    }

    /// The size's rows; `balanced` when its restore and fetch take about as long.
    fn rows(&self, accel: &str, balanced: bool) -> [Row; 2] {
        let (b, c, mib) = (&self.sequential, &self.overlapped, self.mib);
        [
            Row {
                metric: format!(
                    "{mib} MiB: restore {} and fetch {} alone; (b) restore, then the handler \
                     fetches [{accel}]",
                    seconds(b.start),
                    seconds(self.fetch)
                ),
                nexus: b.describe(),
                ..Row::default()
            },
            Row {
                metric: format!(
                    "{mib} MiB: (c) restore with the input prefetched; hidden {:.0} % of \
                     min(restore, fetch) [{accel}]",
                    self.hidden() * 100.0
                ),
                baseline: seconds(b.total),
                nexus: c.describe(),
                ratio: ratio(c.total, b.total),
                target: match balanced {
                    true => "hidden ≥ 80 %; ≥ 25 % faster (restore ≈ fetch here)",
                    false => "hidden ≥ 80 %",
                }
                .into(),
                ..Row::default()
            },
        ]
    }
}

/// The median time of a host GET of the `mib` MiB input over the backend's path to storage.
fn fetch_seconds(stack: &Stack, mib: usize) -> Result<f64> {
    let store = stack.garage.client_at(&stack.storage_endpoint(), BUCKET);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut took = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let bytes =
            runtime.block_on(async { store.get(&input_key(mib).into()).await?.bytes().await })?;
        took.push(started.elapsed().as_secs_f64());
        ensure!(bytes.len() == mib << 20, "short fetch: {} bytes", bytes.len());
    }
    Ok(median(&took))
}

/// `rounds` cold invocations (the VM stopped before each) with the `mib` MiB input, of each
/// kind in `prefetch`, the kinds taking turns so that they share the machine's noise; with
/// `true` the input is prefetched during the VM's start. Returns the samples of each kind.
fn rounds(
    stack: &Stack,
    vmm: ColdVmm,
    mib: usize,
    prefetch: &[bool],
    rounds: usize,
) -> Result<Vec<Vec<Cold>>> {
    let key = input_key(mib);
    let mut samples: Vec<Vec<Cold>> = vec![Vec::new(); prefetch.len()];
    for round in 1..=rounds {
        for (kind, &prefetch) in prefetch.iter().enumerate() {
            let hints: &[(&str, &str)] = if prefetch { &[(BUCKET, &key)] } else { &[] };
            stack.backend.api("POST", "/v1/functions/cold/stop", None)?;
            let invoked = stack.invoke("cold", &vmm.event(&key), hints)?;
            let (bytes, read) = vmm.input_read(&invoked.result);
            let (result, log) = (&invoked.result, stack.backend.log_tail());
            ensure!(bytes == Some((mib << 20) as u64), "short read: {result}\nbackend: {log}");
            samples[kind].push(Cold {
                total: invoked.seconds,
                start: invoked.start_seconds.unwrap_or(0.0),
                read,
            });
        }
        let took: Vec<String> =
            samples.iter().filter_map(|s| s.last()).map(Cold::describe).collect();
        println!("bench:   {mib} MiB, round {round}: {}", took.join(" | "));
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
    let event = json!({ "bucket": BUCKET, "output_key": format!("out/{name}"), "output_bytes": OUTPUT_MIB << 20 });
    let mut took = Vec::new();
    for round in 0..=ROUNDS {
        let invoked = stack.invoke(name, &event, &[])?;
        if round > 0 {
            took.push(invoked.seconds);
        }
        stack.backend.wait_uploaded(Duration::from_secs(120))?;
    }
    Ok(median(&took))
}
