//! Measuring processes from the kernel's own accounting: CPU time from `/proc/<pid>/stat` and
//! `wait4`'s rusage, peak RSS from rusage.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// CPU time (user + system) a live process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at state; utime and
    // stime are fields 14 and 15 of the whole line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((ticks(11)? + ticks(12)?) * 1_000_000_000 / hz))
}

/// What a finished child process used.
#[derive(Debug, Clone)]
pub struct Usage {
    pub stdout: String,
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_bytes: u64,
}

/// Runs `command` to completion, feeding it `stdin`; returns its output and resource usage.
pub fn run_measured(command: &mut Command, stdin: &str) -> Result<Usage> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {command:?}"))?;
    {
        use std::io::Write;
        let mut input = child.stdin.take().context("child stdin")?;
        input.write_all(stdin.as_bytes())?;
    }
    let mut stdout = String::new();
    child.stdout.take().context("child stdout")?.read_to_string(&mut stdout)?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: we reap our own child exactly once; `status` and `usage` are valid out-pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if reaped != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status}); output:\n{stdout}");
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Usage {
        stdout,
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
    })
}

/// A short description of this machine for reports.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / (1024 * 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {mem_gib} GiB, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child_and_this_process() {
        let usage = run_measured(
            Command::new("sh")
                .args(["-c", "cat; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"]),
            "hi",
        )
        .unwrap();
        assert_eq!(usage.stdout, "hi");
        assert!(usage.cpu > Duration::ZERO && usage.cpu <= usage.wall + Duration::from_millis(20));
        assert!(usage.peak_rss_bytes > 100 * 1024);
        assert!(cpu_time(std::process::id()).is_ok());
        assert!(run_measured(&mut Command::new("false"), "").is_err());
    }
}
