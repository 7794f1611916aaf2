//! The notes under the table of `cargo xtask bench`: the machine and its load, how the load
//! was made, and how each row is measured (and what is computed rather than measured).

use super::density_table;
use super::fleet;
use super::full_table::{drifted, Run, REFERENCE_TOLERANCE};
use super::measure::{machine, today};
use super::phase::{Phase, Rep};
use super::report::{mib, seconds};
use super::stack::accel_note;
use super::stats::Spread;

/// Per function, `figure` of baseline and Nexus: `compress a / b, thumbnail c / d`.
fn each(pairs: &[(Phase, Phase)], figure: &dyn Fn(&Phase) -> String) -> String {
    let each: Vec<String> = pairs
        .iter()
        .map(|(b, n)| format!("{} {} / {}", b.function.name(), figure(b), figure(n)))
        .collect();
    each.join(", ")
}

pub fn notes(run: &Run) -> Vec<String> {
    let (options, pairs) = (run.options, run.pairs);
    let invocations = each(pairs, &|p| p.invocations().to_string());
    let windows =
        each(pairs, &|p| Spread::of(&p.per_rep(|r| r.node.wall)).show(&|s| format!("{s:.0} s")));
    let lags = each(pairs, &|p| seconds(p.per_rep(|r| r.max_lag).into_iter().fold(0.0, f64::max)));
    let backend_for_baseline: Vec<String> = pairs
        .iter()
        .map(|(b, _)| {
            let cpu = Spread::of(&b.per_rep(|r| r.per_invocation(r.backend_cpu))).median;
            let rss = Spread::of(&b.per_rep(|r| r.backend_rss_kib)).median;
            format!(
                "{} {} per invocation, RSS {}",
                b.function.name(),
                seconds(cpu),
                mib(rss * 1024.0)
            )
        })
        .collect();
    let percent = |share: f64| format!("{:.0} %", share * 100.0);
    let floors = each(pairs, &|p| {
        format!("{} then {}", percent(p.floors.0.busy_share()), percent(p.floors.1.busy_share()))
    });
    let busy = each(pairs, &|p| {
        percent(p.per_rep(|r| r.node.busy_share()).into_iter().fold(0.0, f64::max))
    });
    let left_out = each(pairs, &|p| {
        let part = |figure: fn(&Rep) -> f64| {
            seconds(Spread::of(&p.per_rep(|r| r.per_invocation(figure(r)))).median)
        };
        format!("{} + {}", part(|r| r.node.storage), part(|r| r.node.harness))
    });
    let elapsed = run.elapsed.as_secs();
    let (load_start, load_end) = &run.load_averages;
    let mut notes = vec![
        format!(
            "Machine: {}. One run, {}, {} min {} s in all (fabric included). Load average \
             {load_start} at the start and {load_end} at the end (other work on the machine \
             shows there); read ratios, not absolute figures.",
            machine(),
            today(),
            elapsed / 60,
            elapsed % 60
        ),
        format!(
            "Load: for each function and flavour in turn, {vms} warm VMs of the function get \
             {rate} invocations/s, Poisson arrivals (the same plans for both flavours), with up \
             to {vms} in flight: each takes an idle VM. {warm} s of warm-up load are left out, \
             then {reps} windows of {duration} s are measured, each with its own arrivals (seeds \
             {seed} + 2, + 3, …). Every cell shows the median of the {reps} windows and, in \
             brackets, their range (none where they agree as shown); the ratio is of the \
             medians. The tail is p99 where a cell has at least 1 000 invocations, p95 \
             otherwise, over all windows together. Invocations measured (baseline / Nexus): \
             {invocations}, in windows of {windows} (latest send behind the plan: {lags}). \
             Nexus: the function is deployed on the backend (e.g. `thumbnail-nexus`, `max_vms` \
             {vms}); an invocation goes to the backend's API and through the channel to the \
             VM's runtime, and the handler's I/O through the shim and the backend (its object \
             cache off). Baseline: a conventional, Lambda-style platform \
             (`nexus_tests::Conventional`) runs the baseline image's VMs, each with a virtio NIC \
             on a tap device in a network namespace this run creates and removes (private \
             addresses inside it only; vhost-net where KVM allows, not here) and no Nexus \
             device; an invocation is an HTTP request over the tap to the VM's runtime, and the \
             handler's real boto3 reaches the store over the same NIC. Latencies count from the \
             planned arrival until the answer (at the backend's API for Nexus, from the VM's \
             runtime for the baseline), so a VM that falls behind shows in them. Both flavours \
             read and write the same Garage S3 server. {storage}",
            vms = options.vms,
            rate = options.rate,
            seed = options.seed,
            reps = options.reps,
            warm = options.warm_up,
            duration = options.duration,
            storage = options.storage.note(),
        ),
        format!(
            "Node CPU, the whole machine (the row with the claim): the busy time of all CPUs \
             from `/proc/stat` (user + nice + system + irq + softirq) over the measured window, \
             so that kernel work done for a VM or the backend outside their processes (softirq \
             packet work, kworkers) counts; less Garage's CPU, counted in {accounting}, and this \
             process's (the load generator, the link to storage and, for the baseline, the \
             platform's HTTP client, as Nexus's client of the backend's API is left out too), \
             per invocation \
             (baseline / Nexus) {left_out}; less the idle floor: the same figure over {floor} s \
             just before the flavour's VMs were deployed and again once they were removed (one \
             floor between two phases serves both), its mean rate times the window's length. The VMs' idle time in the window is theirs. \
             The floors kept {floors} of the machine busy, the windows {busy}: the floors carry \
             the other work on the machine, so the figure is only as good as that work was \
             steady (the drift, half the difference of the two floors over the window, says how \
             steady), and the bench's work displaces that work rather than adds to it once the \
             machine is full. A window ≥ 95 % busy is marked saturated; a figure whose drift \
             exceeds a quarter of it, unsteady; then the claim is judged on the per-process \
             row. The window ends once Nexus's write-back spool has uploaded everything.",
            accounting = run.storage_accounting,
            floor = options.idle_floor,
        ),
        format!(
            "Node CPU per process (the second row): the user + system time (`/proc/<pid>/stat`) \
             over the same window of the flavour's QEMU processes and, for Nexus, of the \
             backend, divided by the invocations completed. The backend takes no part in the \
             baseline (counted in its whole-machine row only): {}.",
            backend_for_baseline.join("; ")
        ),
        "Memory after each window, per VM (mean of the VMs), from `/proc/<pid>/smaps`, split by \
         what QEMU holds: guest RAM (the mappings QEMU marks mergeable), TCG's translation cache \
         (its writable and executable anonymous mapping, bounded for both flavours) and the \
         rest of the VMM, each as PSS (shared pages divided among the processes mapping them). \
         The row with the claim is guest RAM + the rest of the VMM (+ the backend's whole RSS \
         divided by the Nexus VMs running, for Nexus): the memory a KVM host would spend on the \
         VM, since the translation cache exists only under TCG; the guest's RAM and the VMM's \
         own memory are otherwise what they are under KVM. The guest's own view is what the \
         handler reports; guest RAM on the host exceeds it by the guest's page cache and the \
         memory the guest touched and freed, which stays resident without a balloon or free \
         page reporting, under KVM too."
            .to_owned(),
        format!(
            "Cold: the first VM of each flavour is snapshotted warm (after the load), then {} \
             times stopped and invoked again: a restore into a new VMM and the first invocation \
             with its input, end to end; the median and range are shown. Nexus names the input in \
             `x-nexus-prefetch`, so the backend fetches it while the VM restores; the baseline \
             restores the same way without it and its boto3 fetches the input.",
            options.cold_rounds
        ),
    ];
    notes.push(reference_note(pairs));
    notes.extend(density_table::notes(run.density));
    notes.extend(fleet::notes());
    notes.extend(probe_note(pairs));
    notes.extend(restarts_note(pairs));
    notes.push(
        "The host-native rows are `cargo xtask bench fabric`'s (run first, its section below): \
         no VM, no emulation."
            .to_owned(),
    );
    notes.extend(accel_note(run.accel()));
    notes.extend(run.plots.iter().map(|p| format!("![{p}]({p})")));
    notes
}

/// How the machine reference is measured, and which pairs it flagged.
fn reference_note(pairs: &[(Phase, Phase)]) -> String {
    let flagged: Vec<&str> =
        pairs.iter().filter(|(b, n)| drifted(b, n)).map(|(b, _)| b.function.name()).collect();
    let verdict = if flagged.is_empty() {
        "No pair drifted that far in this run.".to_owned()
    } else {
        format!(
            "Flagged in this run: {}. The flavours of a function run one after the other, so \
             the machine's drift can fall between them; the flavour's own load can also slow the \
             reference (the CPUs and their caches are shared), so a flag says the two ratios \
             came from different machine conditions, not which side they favour.",
            flagged.join(", ")
        )
    };
    format!(
        "Machine reference: this machine shares its physical CPUs, and its speed drifts (the \
         same work takes 1× to 2× as long from one second to the next, and can stay slow for \
         minutes). While each window runs, a thread of this process sorts the same 2^11 \
         numbers four times a second and times it in its own CPU time, so that waiting for a \
         CPU does not count; a window's figure is the mean, the row shows the median of the \
         windows. A pair whose two medians differ by more than {:.0} % is flagged. {verdict}",
        REFERENCE_TOLERANCE * 100.0
    )
}

/// How the probe rows were measured, if the probes ran.
fn probe_note(pairs: &[(Phase, Phase)]) -> Option<String> {
    if pairs.iter().any(|(b, n)| b.seen.is_none() || n.seen.is_none()) {
        return None;
    }
    let node = each(pairs, &|p| p.seen.as_ref().map_or(String::new(), |s| mib(s.merged.node)));
    let ksm = each(pairs, &|p| {
        p.seen.as_ref().map_or(String::new(), |s| {
            let cpu = s.merged.ksmd_cpu_shown();
            format!(
                "{} passes in {:.0} s, ksmd {cpu}",
                s.merged.passes,
                s.merged.took.as_secs_f64()
            )
        })
    });
    Some(format!(
        "Probe rows (`probe:`, as root): the backend ran its eBPF probes (`probes.enabled`) and \
         the bench read its `/metrics` before the first window and after the last: \
         `nexus_vm_cpu_seconds_total` of the Nexus VMs (the baseline's are not the backend's, \
         so the probes do not attribute them), kinds `vcpu` + `vmm` (QEMU's \
         threads; beside it `/proc`'s figure for the same processes, the cross-check) and \
         `backend` (the backend threads serving their regions; its storage I/O on shared \
         workers is not attributed to a VM). The probe's cost is the kernel's run-time \
         statistics of the sched_switch program (`kernel.bpf_stats_enabled`, on during the \
         run) over all windows: its run time per run, and its run time over all CPUs' time \
         (it runs at every context switch on the node, the other work's too). Duplicated \
         memory: after the memory rows were read, KSM ran (`/sys/kernel/mm/ksm/run` 1, at \
         4000 pages per 10 ms; set back afterwards) until its merging of the VMs settled \
         ({ksm}), then each VM's `nexus_vm_memory_merged_bytes` (its `ksm_merging_pages`: \
         pages identical to other pages on the node, the other VM's or any other process's \
         marked mergeable); the node's `nexus_node_duplicated_memory_bytes` was then \
         (baseline / Nexus) {node}."
    ))
}

/// The cold starts after which the guest's runtime restarted, if any.
fn restarts_note(pairs: &[(Phase, Phase)]) -> Option<String> {
    let restarts: Vec<String> = pairs
        .iter()
        .filter(|(b, n)| b.cold_runtime_restarts + n.cold_runtime_restarts > 0)
        .map(|(b, n)| {
            format!(
                "{} {}/{} (baseline) and {}/{} (Nexus)",
                b.function.name(),
                b.cold_runtime_restarts,
                b.cold.len(),
                n.cold_runtime_restarts,
                n.cold.len()
            )
        })
        .collect();
    (!restarts.is_empty()).then(|| {
        format!(
            "After a restore the guest's runtime exited and the agent started it again (the VM's \
             console says so) in {} cold starts: those cold rows include a fresh runtime start \
             (Python, the handler and its boto3 imported again) that a restore exists to avoid, \
             which costs the baseline's real boto3 more than the shim.",
            restarts.join(", ")
        )
    })
}
