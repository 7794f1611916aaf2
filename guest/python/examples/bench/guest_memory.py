"""What the benchmark functions report of the guest's memory, from /proc: the guest's memory in
use (MemTotal - MemAvailable) and this runtime process's resident set, in KiB."""


def _proc_kib(path, field):
    with open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def report():
    """``{"guest_used_kib", "runtime_rss_kib"}`` now."""
    return {
        "guest_used_kib": _proc_kib("/proc/meminfo", "MemTotal")
        - _proc_kib("/proc/meminfo", "MemAvailable"),
        "runtime_rss_kib": _proc_kib("/proc/self/status", "VmRSS"),
    }
