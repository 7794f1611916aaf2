//! The sched_switch probe against the kernel's own accounting: a process running a known busy
//! loop, its on-CPU time as the probe sums it vs /proc/PID/stat and /proc/PID/schedstat.
//! Root only (loading probes); skipped, saying so, otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_ebpf::{procfs, Probes};

/// Allowed difference from /proc/PID/stat (clock ticks of 10 ms; the first milliseconds of
/// the process, before it was tracked, are not in the probe's sum).
const STAT_TOLERANCE: f64 = 0.02;
const STAT_SLACK: Duration = Duration::from_millis(30);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// sum_exec_runtime, ns, the first field of /proc/PID/schedstat.
fn schedstat(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).unwrap_or('?')
}

#[test]
fn busy_loop_cpu_matches_proc() {
    if !is_root() {
        eprintln!("skipped: loading eBPF probes needs root");
        return;
    }
    let mut probes = Probes::load().unwrap_or_else(|e| panic!("{e}"));
    let mut busy = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = busy.id();
    probes.track(pid).unwrap();
    // A second of CPU, however long a shared machine takes to give it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while schedstat(pid) < Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "the busy loop got no second of CPU in a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no memory preconditions; `pid` is our unreaped child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // A zombie has done its last switch and still has its /proc entry until reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(pid) != 'Z' {
        assert!(Instant::now() < deadline, "the busy loop did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stat = procfs::cpu_time(pid).unwrap();
    let exact = schedstat(pid);
    let threads = probes.threads().unwrap();
    let probe: Duration = threads
        .iter()
        .filter(|(_, t)| t.tgid == pid)
        .map(|(_, t)| Duration::from_nanos(t.oncpu_ns))
        .sum();
    busy.wait().unwrap();
    eprintln!("busy loop: probe {probe:?}, /proc/PID/stat {stat:?}, schedstat {exact:?}");
    let allowed = stat.mul_f64(STAT_TOLERANCE) + STAT_SLACK;
    assert!(probe.abs_diff(stat) <= allowed, "probe {probe:?} vs stat {stat:?} (±{allowed:?})");
    let allowed = exact.mul_f64(0.01) + Duration::from_millis(5);
    assert!(probe.abs_diff(exact) <= allowed, "probe {probe:?} vs schedstat {exact:?}");
    probes.untrack(pid).unwrap();
    assert!(probes.threads().unwrap().iter().all(|(_, t)| t.tgid != pid));
}

#[test]
fn probe_cost_is_measured_per_switch() {
    if !is_root() {
        eprintln!("skipped: loading eBPF probes needs root");
        return;
    }
    let probes = Probes::load().unwrap_or_else(|e| panic!("{e}"));
    let _stats = Probes::cost_stats().unwrap();
    let before = probes.sched_cost().unwrap();
    // Context switches: a thread that sleeps a thousand times.
    std::thread::spawn(|| (0..1000).for_each(|_| std::thread::sleep(Duration::from_micros(50))))
        .join()
        .unwrap();
    let after = probes.sched_cost().unwrap();
    // Other processes (a backend) find it among the loaded programs.
    assert!(nexus_ebpf::loaded_sched_cost().unwrap().is_some());
    let runs = after.runs - before.runs;
    assert!(runs >= 1000, "only {runs} switches seen");
    let per_event = (after.run_time - before.run_time).as_nanos() as u64 / runs;
    eprintln!("sched_switch probe: {runs} events, {per_event} ns per event");
    match probes.kvm_exits() {
        Ok(exits) => eprintln!("kvm_exit attached: {} reasons seen", exits.len()),
        Err(why) => eprintln!("kvm_exit not observed: {why}"),
    }
}
