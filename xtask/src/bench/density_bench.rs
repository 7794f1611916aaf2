//! `cargo xtask bench density [--storage …] [--density-…]`: the density search alone
//! (`density.rs`), both flavours of the compress function (Nexus's on the bench's backend, the
//! baseline's on the conventional platform), in a table of its own in `docs/BENCHMARKS.md`.

use std::time::Instant;

use anyhow::Result;

use super::density::{self, DensityArgs};
use super::density_table::{notes, rows};
use super::fleet;
use super::measure::{load_average, machine, today};
use super::report::Table;
use super::stack::{accel_note, ensure_root, Stack, Storage};
use super::vm;
use crate::image::Flavour;
use crate::{setup, workspace_root};

pub fn run(storage: Storage, args: &DensityArgs) -> Result<()> {
    args.check()?;
    ensure_root(
        "cargo xtask bench density (memory cgroups, the baseline's network namespace and taps)",
    )?;
    let tools = setup::run()?;
    let stack = Stack::start(&tools, &Flavour::ALL, storage, vm::REGION, "")?;
    vm::seed_input(&stack, &tools.python)?;
    let (started, load_at_start) = (Instant::now(), load_average());
    let density =
        density::run(args, &vm::event("out/density.gz"), &mut |f| fleet::start(&stack, f))?;
    let elapsed = started.elapsed().as_secs();
    drop(stack);

    let accel = density.accel.as_str().to_uppercase();
    let mut all_notes = vec![format!(
        "Machine: {}. One run, {}, {} min {} s for both flavours. The machine is shared: other work ran beside this one, load average \
         {load_at_start} at the start and {} at the end.",
        machine(),
        today(),
        elapsed / 60,
        elapsed % 60,
        load_average()
    )];
    all_notes.extend(notes(&density));
    all_notes.extend(fleet::notes());
    all_notes.push(storage.note());
    all_notes.extend(accel_note(&accel));
    let table = Table {
        name: "density",
        title: format!(
            "Density, found: VMs started until the next did not fit in {} MiB or broke the SLO, \
             {accel}",
            args.density_budget_mib
        ),
        command: format!(
            "cargo xtask bench density --storage {} {}",
            storage.name(),
            args.command()
        ),
        rows: rows(&density),
        notes: all_notes,
        ..Table::default()
    };
    print!("\n{}", table.text());
    let file = workspace_root().join("docs/BENCHMARKS.md");
    table.write_section(&file)?;
    println!(
        "bench: wrote {}; the density search took {} min {} s",
        file.display(),
        elapsed / 60,
        elapsed % 60
    );
    Ok(())
}
