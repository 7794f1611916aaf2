"""Benchmark function, written for real boto3: the compress example's work (read an object,
gzip it, write the result), and a report of the memory in use inside the guest.

Event: {"bucket", "key", "output_key"}. Returns the compressed size and, from /proc, the
guest's memory in use (MemTotal - MemAvailable) and this runtime process's resident set.
"""

import gzip

import boto3

s3 = boto3.client("s3")


def _meminfo_kib(field):
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def handler(event, context):
    data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    compressed = gzip.compress(data, compresslevel=6, mtime=0)
    s3.put_object(Bucket=event["bucket"], Key=event["output_key"], Body=compressed)
    return {
        "output_bytes": len(compressed),
        "guest_used_kib": _meminfo_kib("MemTotal") - _meminfo_kib("MemAvailable"),
        "runtime_rss_kib": _rss_kib(),
    }
