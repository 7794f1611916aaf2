"""Benchmark workload written for real boto3: timed puts and gets of several object sizes.

Event: {"bucket": str, "sizes": [bytes, ...], "rounds": {"<size>": n, ...}}
Returns per size the median seconds of one put and of one get (whole body read).
"""

import statistics
import time

import boto3


def _body(size):
    pattern = bytes(range(256)) * 4096
    return (pattern * (size // len(pattern) + 1))[:size]


def handler(event, context):
    s3 = boto3.client("s3")
    bucket = event["bucket"]
    results = {}
    for size in event["sizes"]:
        rounds = event["rounds"][str(size)]
        body = _body(size)
        puts, gets = [], []
        for i in range(rounds):
            key = f"fabric/{size}/{i}"
            start = time.perf_counter()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            puts.append(time.perf_counter() - start)
            start = time.perf_counter()
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            gets.append(time.perf_counter() - start)
            if len(data) != size:
                raise RuntimeError(f"read {len(data)} of {size} bytes")
        results[str(size)] = {
            "put_median_s": statistics.median(puts),
            "get_median_s": statistics.median(gets),
        }
    return results
