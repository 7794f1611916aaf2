//! The density search's rows and notes (`density.rs`), for its own table (`bench density`) and
//! for `cargo xtask bench`'s: the count that held per flavour, why the next VM did not, the
//! tail at one VM and at that count, and the cgroup's memory there; the notes say how.

use super::density::{Density, Search, Step, MIN_SAMPLES, WARM_UP};
use super::report::{mib, ratio, seconds, Row};
use super::stack::TCG_CACHE_MIB;

/// The rows, each metric marked with the accelerator.
pub fn rows(density: &Density) -> Vec<Row> {
    let (args, b, n) = (&density.args, &density.baseline, &density.nexus);
    let accel = density.accel.as_str().to_uppercase();
    let row = |metric: String, show: &dyn Fn(&Search) -> String| Row {
        metric: format!("{metric} [{accel}]"),
        baseline: show(b),
        nexus: show(n),
        ..Row::default()
    };
    let per_vm = |step: &Step| {
        let beyond_cache =
            step.charged.resident.saturating_sub(step.vms as u64 * density.allowance_bytes);
        mib(beyond_cache as f64 / step.vms as f64)
    };
    let mut count = row(
        format!(
            "VMs that held in {} MiB, found: started one by one at {}/s each until the next did \
             not fit or broke the SLO",
            args.density_budget_mib, args.density_rate
        ),
        &|s| s.count().to_string(),
    );
    count.ratio = ratio(n.count() as f64, b.count() as f64);
    vec![
        count,
        row("why the next VM did not hold".into(), &|s| {
            format!("VM {}: {}", s.count() + 1, s.stop.describe())
        }),
        row(
            "tail latency at 1 VM → at the count that held (p95; p99 from 1000 samples)".into(),
            &|s| {
                let tail = |step: &Step| {
                    let (quantile, tail) = step.tail();
                    format!("p{quantile:.0} {}", seconds(tail))
                };

                match (s.held.first(), s.held.last()) {
                    (Some(one), Some(last)) => format!("{} → {}", tail(one), tail(last)),
                    _ => "—".into(),
                }
            },
        ),
        row(
            "cgroup peak at the count that held, of its limit (page cache included)".into(),
            &|s| {
                at_count(s, &|step| {
                    let charged = &step.charged;
                    format!("{} of {}", mib(charged.peak as f64), mib(charged.limit as f64))
                })
            },
        ),
        row(
            format!(
                "resident per VM at the count that held: cgroup anon + shmem / VMs, less {} MiB of \
                 TCG's cache bound each",
                density.allowance_bytes >> 20
            ),
            &|s| at_count(s, &per_vm),
        ),
    ]
}

/// `show` of the step at the count that held, or "—".
fn at_count(search: &Search, show: &dyn Fn(&Step) -> String) -> String {
    search.held.last().map_or("—".into(), show)
}

/// The notes: how the search ran, its SLO, what the cgroup charged, and every step.
pub fn notes(density: &Density) -> Vec<String> {
    let args = &density.args;
    let steps = |s: &Search| {
        let step = |step: &Step| {
            format!(
                "{}: {}, peak {}, resident {} ({} in huge pages), start {}",
                step.vms,
                step.describe_tail(),
                mib(step.charged.peak as f64),
                mib(step.charged.resident as f64),
                mib(step.charged.huge as f64),
                seconds(step.add.as_secs_f64())
            )
        };
        let broken = s.broken.as_ref().map(|b| format!("; {} (did not hold)", step(b)));
        format!(
            "{} ({:.0} s): {}{}",
            s.flavour.name(),
            s.took.as_secs_f64(),
            s.held.iter().map(step).collect::<Vec<_>>().join("; "),
            broken.unwrap_or_default()
        )
    };
    let mut notes = vec![
        format!(
            "Density, found (issue 12 item 6): for each flavour in turn, the compress function's \
             VMs were started one at a time in a memory cgroup of the flavour's own (cgroup v1, \
             `memory.limit_in_bytes`), with a budget of {budget} MiB, reduced from a node's: on \
             these 2 cores under TCG, a dozen loaded VMs would fill the CPU before a larger \
             budget filled. \
             After each VM started, all of them were loaded at {rate} invocations/s each \
             (Poisson arrivals over the fleet from a fixed seed, the same plan for both \
             flavours; open loop, latency from the planned arrival; up to one in flight per VM, \
             the platform choosing the idle VM) for {warm_up} s left out, then {window} s measured \
             (longer while few VMs ran, so that a window expected at least {min_samples:.0} \
             invocations). The search stopped at the \
             first step in which the cgroup's OOM killer killed (`memory.oom_control`), a VM did \
             not start, a VM's process exited, an invocation failed, or the tail broke the SLO \
             (or at {max} VMs); the figure is the largest count that held.",
            budget = args.density_budget_mib,
            rate = args.density_rate,
            window = args.density_window,
            min_samples = MIN_SAMPLES,
            warm_up = WARM_UP.as_secs(),
            max = args.density_max,
        ),
        format!(
            "SLO: the window's p95 (p99 once a window has ≥ 1000 invocations, never here at \
             these rates) at most {factor}× the same percentile of the flavour's one-VM step. \
             Relative, because absolute latencies under TCG on a shared 2-core machine say \
             little, and each flavour is judged against its own unloaded service; {factor}×, \
             because the tail of a window of a few dozen invocations moves by up to 2–2.5× \
             between steps from noise alone here (the machine is shared), while a node that has run out of CPU drifts \
             past any fixed multiple.",
            factor = args.density_slo_factor
        ),
        "What the cgroup charges: every page first touched by a process in it, page cache \
         included (reclaimed under the limit before anything is killed). This kernel no longer \
         moves a process's charges when it moves (`memory.move_charge_at_immigrate` is gone), \
         so each flavour's VMMs are born inside. Peak is `memory.max_usage_in_bytes` over the \
         step (from just before its VM started); resident is `total_rss` + `total_shmem` of \
         `memory.stat` after it (there is no swap), of which `total_rss_huge` in transparent \
         huge pages: QEMU asks for them for guest RAM (`madvise`), so wherever the guest \
         touched a page, a whole 2 MiB page is resident."
            .to_owned(),
        format!(
            "Steps (VMs: tail of the window, cgroup peak, resident, how long the VM's start \
             took): {}. {}.",
            steps(&density.baseline),
            steps(&density.nexus)
        ),
    ];
    if density.allowance_bytes > 0 {
        notes.push(format!(
            "TCG's translation cache (≤ {TCG_CACHE_MIB} MiB per VM, `vm.tcg_cache_mib`) does not \
             exist under KVM: the cgroup's limit was the budget + {TCG_CACHE_MIB} MiB per VM \
             running, so that the budget holds everything else (the cache fills to its bound \
             under load)."
        ));
    }
    notes
}
