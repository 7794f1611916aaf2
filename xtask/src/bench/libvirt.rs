//! `cargo xtask bench libvirt`: the same Nexus function through the direct QEMU adapter and
//! through the libvirt adapter, one run: cold start (boot), snapshot then cold start from it
//! (restore), warm latency p50, and the memory libvirt's daemons add for one VM; and for the
//! libvirt adapter alone, an operator's `virsh save` of the warm VM and `virsh restore` to its
//! next answer (served again at a new epoch).
//!
//! Needs libvirtd (`virtlogd -d; libvirtd -d` as root, started here if absent). The "baseline"
//! column is the QEMU adapter, the "nexus" column the libvirt adapter.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use super::measure::{machine, rss_kib};
use super::report::{mib, ratio, seconds, Row, Table};
use super::stack::{accel_note, Stack, Storage};
use super::stats::{median, percentile};
use super::vm::{event, seed_input, CODE, HANDLER};
use crate::image::Flavour;
use crate::{setup, workspace_root};

const COLD_ROUNDS: usize = 3;
const WARM_UP: usize = 3;
const WARM_ROUNDS: usize = 30;
/// The libvirt daemons whose memory a libvirt VM adds to.
const DAEMONS: [&str; 2] = ["libvirtd", "virtlogd"];

/// What one adapter measured, in seconds (memory in KiB).
struct Measured {
    accel: String,
    boot: f64,
    snapshot: f64,
    restore: f64,
    warm_p50: f64,
    vmm_rss_kib: f64,
}

pub fn run() -> Result<()> {
    let tools = setup::run()?;
    nexus_tests::libvirtd::ensure_libvirtd()?;
    let stack = Stack::start(
        &tools,
        &[Flavour::Nexus],
        Storage::Local,
        "size: 32MiB, buffer_size: 1MiB",
        "",
    )?;
    seed_input(&stack, &tools.python)?;
    let qemu = measure(&stack, "bench-qemu", "qemu")?;
    let idle_daemons = daemons_rss_kib()?;
    let libvirt = measure(&stack, "bench-libvirt", "libvirt")?;
    // bench-libvirt still has its warm VM; the daemons' growth over the idle run is its cost.
    let added = daemons_rss_kib()? - idle_daemons;
    let virsh = virsh_save_restore(&stack, "bench-libvirt")?;
    let table = libvirt_table(&qemu, &libvirt, added, virsh);
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Cold boots, a snapshot, cold restores and warm invocations of function `name` on `vmm`;
/// leaves one warm VM.
fn measure(stack: &Stack, name: &str, vmm: &str) -> Result<Measured> {
    let code = workspace_root().join(CODE);
    stack.deploy(name, &code, HANDLER, Flavour::Nexus, json!({ "vmm": vmm }))?;
    let event = event(&format!("out/{name}"));
    let stop = format!("/v1/functions/{name}/stop");
    println!("bench: {name}: {COLD_ROUNDS} cold boots");
    let mut boots = Vec::new();
    for _ in 0..COLD_ROUNDS {
        stack.backend.api("POST", &stop, None)?;
        boots.push(stack.invoke(name, &event, &[])?.seconds);
    }
    let started = std::time::Instant::now();
    stack.backend.api("POST", &format!("/v1/functions/{name}/snapshot"), None)?;
    let snapshot = started.elapsed().as_secs_f64();
    println!("bench: {name}: {COLD_ROUNDS} cold restores");
    let mut restores = Vec::new();
    for _ in 0..COLD_ROUNDS {
        stack.backend.api("POST", &stop, None)?;
        restores.push(stack.invoke(name, &event, &[])?.seconds);
    }
    println!("bench: {name}: {WARM_ROUNDS} warm invocations");
    let mut warm = Vec::new();
    for round in 0..WARM_UP + WARM_ROUNDS {
        let took = stack.invoke(name, &event, &[])?.seconds;
        if round >= WARM_UP {
            warm.push(took);
        }
    }
    let vm = stack.warm_vm(name)?;
    Ok(Measured {
        accel: vm.accel,
        boot: median(&boots),
        snapshot,
        restore: median(&restores),
        warm_p50: percentile(&warm, 0.5),
        vmm_rss_kib: rss_kib(vm.pid)?,
    })
}

/// Seconds of `virsh save` of `name`'s warm VM, and of `virsh restore` to its next answer.
fn virsh_save_restore(stack: &Stack, name: &str) -> Result<(f64, f64)> {
    let domains = nexus_tests::libvirtd::domains(&format!("{name}-"))?;
    let domain = domains.first().context(format!("{name} has no domain"))?;
    let image = std::env::temp_dir().join(format!("{domain}.save"));
    let path = image.to_string_lossy().into_owned();
    println!("bench: {name}: virsh save, virsh restore");
    let started = std::time::Instant::now();
    nexus_tests::libvirtd::virsh(&["save", domain, &path])?;
    let saved = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    nexus_tests::libvirtd::virsh(&["restore", &path])?;
    let _ = std::fs::remove_file(&image);
    // The backend serves it again within its next follow-up (each second).
    let event = event(&format!("out/{name}"));
    let deadline = started + std::time::Duration::from_secs(120);
    loop {
        let listed = stack.backend.api("GET", "/v1/functions", None)?;
        let function = listed.as_array().into_iter().flatten().find(|f| f["spec"]["name"] == name);
        let vms = function.and_then(|f| f["vms"].as_array()).cloned().unwrap_or_default();
        if vms.iter().any(|vm| vm["state"] == "running") {
            let invoked = stack.invoke(name, &event, &[])?;
            anyhow::ensure!(invoked.start_seconds.is_none(), "the restored VM did not serve");
            return Ok((saved, started.elapsed().as_secs_f64()));
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the restored VM was not served");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The summed RSS of the libvirt daemons, in KiB.
fn daemons_rss_kib() -> Result<f64> {
    let mut total = 0.0;
    for daemon in DAEMONS {
        let output = Command::new("pidof").arg(daemon).output().context("run pidof")?;
        let pids = String::from_utf8_lossy(&output.stdout).into_owned();
        let pid: u32 =
            pids.split_whitespace().next().context(format!("{daemon} is not running"))?.parse()?;
        total += rss_kib(pid)?;
    }
    Ok(total)
}

fn libvirt_table(
    qemu: &Measured,
    libvirt: &Measured,
    daemons_added_kib: f64,
    (virsh_save, virsh_restore): (f64, f64),
) -> Table {
    let accel = &libvirt.accel;
    let time_row = |metric: &str, of: fn(&Measured) -> f64| Row {
        metric: format!("{metric} [{accel}]"),
        baseline: seconds(of(qemu)),
        nexus: seconds(of(libvirt)),
        ratio: ratio(of(libvirt), of(qemu)),
        ..Row::default()
    };
    let mut notes = vec![format!(
        "Machine: {}. One run: the bench function (`{CODE}`, compressing a 256 KiB object read through the \
         backend) deployed twice in the Nexus flavour, once with `vmm: qemu` (baseline column) \
         and once with `vmm: libvirt` (nexus column, a libvirt domain under qemu:///system); \
         cold figures are medians of {COLD_ROUNDS} invocations after `fn stop`, end to end at \
         the API; the snapshot is `POST /v1/functions/NAME/snapshot` (libvirt: virDomainSave \
         then virDomainRestore of the same domain, which a save ends). \"libvirt daemons\" is \
         the growth of libvirtd + virtlogd RSS with one libvirt VM warm over none. The virsh \
         rows are an operator's `virsh save` of the warm VM and `virsh restore` of its image, up \
         to the function's next (warm) answer: the backend serves the restored VM's region afresh.",
        machine()
    )];
    notes.extend(accel_note(accel));
    Table {
        name: "libvirt",
        title: format!("The QEMU adapter vs the libvirt adapter, {accel}"),
        command: "cargo xtask bench libvirt".into(),
        rows: vec![
            time_row("cold start: boot to the first answer", |m| m.boot),
            time_row("snapshot of a warm VM", |m| m.snapshot),
            time_row("cold start: restore to the first answer", |m| m.restore),
            time_row("warm invocation p50", |m| m.warm_p50),
            Row {
                metric: format!("VMM (QEMU) RSS, one warm VM [{accel}]"),
                baseline: mib(qemu.vmm_rss_kib * 1024.0),
                nexus: mib(libvirt.vmm_rss_kib * 1024.0),
                ratio: ratio(libvirt.vmm_rss_kib, qemu.vmm_rss_kib),
                ..Row::default()
            },
            Row {
                metric: format!("virsh save of a warm VM [{accel}]"),
                baseline: "—".into(),
                nexus: seconds(virsh_save),
                ..Row::default()
            },
            Row {
                metric: format!("virsh restore to the next answer [{accel}]"),
                baseline: "—".into(),
                nexus: seconds(virsh_restore),
                ..Row::default()
            },
            Row {
                metric: "libvirt daemons (libvirtd + virtlogd) RSS added by one VM".into(),
                baseline: "0".into(),
                nexus: mib(daemons_added_kib * 1024.0),
                ..Row::default()
            },
        ],
        notes,
        ..Table::default()
    }
}
