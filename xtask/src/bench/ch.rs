//! `cargo xtask bench ch`: Cloud Hypervisor next to QEMU, the same test guest
//! (`tests/ch-guest`), memory size and region, each through its adapter and the real backend:
//! create+boot until the guest's first call is answered, pause+snapshot, restore to running
//! (CH: Copy and OnDemand), and the cost of one call (a Ping the test guest makes and polls
//! for, the backend's serving thread spinning so that no sleep is measured).
//!
//! ```text
//!  per round, per VMM:  region ─ create ─ boot ─ "ping ok" ─ invoke {pings: 0} / {pings: N}
//!                       ─ pause ─ snapshot ─ stop ─ restore (each mode) into a new region ─ resume
//! ```
//! One call = (invoke with N pings − invoke with none) / N. Medians of `ROUNDS`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nexus_backend::client::exchange;
use nexus_plugin::cloud_hypervisor::{
    check_kvm, find_binary, ChOptions, CloudHypervisor, MemoryRestoreMode,
};
use nexus_plugin::qemu::Qemu;
use nexus_plugin::{
    detect_accel, wait_for_serial, RegionSpec, Snapshot, Vm, VmSpec, Vmm, VmmError,
};
use nexus_tests::{nexus_binary, test_guest, Backend};
use serde_json::json;

use super::measure::{load_average, machine};
use super::report::{ratio, seconds, Row, Table};
use super::stats::median;
use crate::workspace_root;

const ROUNDS: usize = 5;
const PINGS: u32 = 200;
const MEMORY_MIB: u32 = 64;
/// The backend's serving thread spins this long before it sleeps: the test guest polls and
/// has no doorbell, so a sleeping host would answer a call only at its next wake-up.
const REGION: &str = "size: 32MiB, buffer_size: 1MiB, spin_us: 2000000";
const REGION_SIZE: u64 = 32 << 20;
const SERIAL_TIMEOUT: Duration = Duration::from_secs(120);

/// One VMM's timings of one round, in seconds.
#[derive(Default)]
struct Round {
    boot: f64,
    call: f64,
    snapshot: f64,
    /// Restore + resume, per memory restore mode (QEMU has one).
    restore: Vec<f64>,
}

pub fn run() -> Result<()> {
    let binary = find_binary(None).ok_or_else(|| {
        anyhow!("no cloud-hypervisor: set NEXUS_CLOUD_HYPERVISOR or put it on PATH")
    })?;
    check_kvm().map_err(|e| anyhow!("KVM cannot run guests here: {e}"))?;
    let load = load_average();
    let guest = test_guest()?;
    let backend = Backend::start_with(&nexus_binary(), REGION, "", &[])?;
    let ch = CloudHypervisor::new(ChOptions { binary: Some(binary), ..ChOptions::default() })?;
    let qemu = Qemu::new()?;
    let work = tempfile_dir()?;
    let (mut qemu_rounds, mut ch_rounds) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        println!("bench: round {} of {ROUNDS}", round + 1);
        qemu_rounds.push(measure(
            &backend,
            &qemu,
            &guest,
            &work,
            &[&|spec, snapshot| qemu.restore(spec, snapshot)],
        )?);
        let ch = &ch;
        let in_mode = |mode| {
            move |spec: &VmSpec, snapshot: &Snapshot| -> Result<Box<dyn Vm>, VmmError> {
                Ok(Box::new(ch.restore_with(spec, snapshot, mode)?))
            }
        };
        let (copy, on_demand) =
            (in_mode(MemoryRestoreMode::Copy), in_mode(MemoryRestoreMode::OnDemand));
        ch_rounds.push(measure(&backend, ch, &guest, &work, &[&copy, &on_demand])?);
    }
    let _ = std::fs::remove_dir_all(&work);
    let table = ch_table(&qemu_rounds, &ch_rounds, &detect_accel().to_string(), &load);
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!("bench: wrote {}", file.display());
    Ok(())
}

/// Restores a snapshot into a new VM, left paused.
type Restore<'a> = &'a dyn Fn(&VmSpec, &Snapshot) -> Result<Box<dyn Vm>, VmmError>;

/// One round on `vmm`: boot, calls, snapshot, then one restore with each of `restores`.
fn measure(
    backend: &Backend,
    vmm: &dyn Vmm,
    guest: &Path,
    work: &Path,
    restores: &[Restore<'_>],
) -> Result<Round> {
    let name = vmm.name();
    let region = backend.create_region(&format!("bench-{name}"))?;
    let mut vm = vmm.create(&spec(name, guest, Some(&region), work))?;
    let _doorbell = vm.doorbell()?;
    let started = Instant::now();
    vm.boot()?;
    wait_for_serial(vm.as_ref(), "ping ok", SERIAL_TIMEOUT)?;
    let boot = started.elapsed().as_secs_f64();

    invoke(backend, &region, 0)?;
    let none = invoke(backend, &region, 0)?;
    let many = invoke(backend, &region, PINGS)?;
    let call = (many - none).max(0.0) / f64::from(PINGS);

    vm.pause()?;
    let started = Instant::now();
    let snapshot = vm.snapshot(&work.join(format!("{name}-snapshot")))?;
    let snapshot_s = started.elapsed().as_secs_f64();
    vm.stop()?;
    remove_region(backend, &region)?;

    let mut restore = Vec::new();
    for restore_vm in restores {
        let region = backend.create_region(&format!("bench-{name}-restored"))?;
        let spec = spec(&format!("{name}-restored"), guest, Some(&region), work);
        let started = Instant::now();
        let mut vm = restore_vm(&spec, &snapshot)?;
        let _doorbell = vm.doorbell()?;
        vm.resume()?;
        restore.push(started.elapsed().as_secs_f64());
        vm.stop()?;
        remove_region(backend, &region)?;
    }
    Ok(Round { boot, call, snapshot: snapshot_s, restore })
}

fn spec(name: &str, guest: &Path, region: Option<&Path>, work: &Path) -> VmSpec {
    VmSpec {
        memory_mib: MEMORY_MIB,
        region: region.map(|path| RegionSpec { path: path.to_owned(), size: REGION_SIZE }),
        doorbell: true,
        ..VmSpec::new(name, guest, work.join(name))
    }
}

/// Invokes the test guest on `region`; the seconds it took.
fn invoke(backend: &Backend, region: &Path, pings: u32) -> Result<f64> {
    let id = region.file_stem().context("a region file has a name")?.to_string_lossy();
    let event = json!({ "pings": pings }).to_string();
    let started = Instant::now();
    let answer =
        exchange(&backend.socket, "POST", &format!("/v1/regions/{id}/invoke"), event.as_bytes())
            .map_err(|e| anyhow!("invoke {id}: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    let result: serde_json::Value = serde_json::from_str(&answer.body)?;
    anyhow::ensure!(result["pings"] == pings, "the guest answered {result}");
    Ok(took)
}

fn remove_region(backend: &Backend, region: &Path) -> Result<()> {
    let id = region.file_stem().context("a region file has a name")?.to_string_lossy();
    backend.api("DELETE", &format!("/v1/regions/{id}"), None)?;
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("nexus-bench-ch-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn ch_table(qemu: &[Round], ch: &[Round], accel: &str, load: &str) -> Table {
    let med = |rounds: &[Round], f: &dyn Fn(&Round) -> f64| {
        median(&rounds.iter().map(f).collect::<Vec<_>>())
    };
    let row = |metric: &str, f: &dyn Fn(&Round) -> f64, g: &dyn Fn(&Round) -> f64| {
        let (q, c) = (med(qemu, f), med(ch, g));
        Row {
            metric: metric.into(),
            baseline: seconds(q),
            nexus: seconds(c),
            ratio: ratio(c, q),
            ..Row::default()
        }
    };
    Table {
        name: "ch",
        title: "Cloud Hypervisor next to QEMU, the test guest".into(),
        command: "NEXUS_CLOUD_HYPERVISOR=<cloud-hypervisor built with ivshmem> cargo xtask bench ch".into(),
        sides: Some(("QEMU", "Cloud Hypervisor")),
        rows: vec![
            row("create + boot to the first answered call", &|r| r.boot, &|r| r.boot),
            row("pause + snapshot", &|r| r.snapshot, &|r| r.snapshot),
            row("restore to running (CH: Copy)", &|r| r.restore[0], &|r| r.restore[0]),
            row("restore to running (CH: OnDemand)", &|r| r.restore[0], &|r| r.restore[1]),
            row("one call (Ping), guest polling, host spinning", &|r| r.call, &|r| r.call),
        ],
        notes: vec![format!(
            "Machine: {}, load average {load} at the start. Medians of {ROUNDS} rounds, one run. Both VMMs run the freestanding test \
             guest (`tests/ch-guest`, a PVH ELF) with {MEMORY_MIB} MiB of memory and a 32 MiB region \
             served by the real backend; QEMU on {accel} (this host's KVM has no VT-x/AMD-V, which \
             QEMU's accelerator detection requires), Cloud Hypervisor on KVM. A QEMU restore is always \
             one kind (its migration stream), so both restore rows compare against it. One call = \
             (an invocation in which the guest makes {PINGS} Pings − one with none) / {PINGS}.",
            machine()
        )],
        ..Table::default()
    }
}
