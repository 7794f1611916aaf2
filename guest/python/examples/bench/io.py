"""Benchmark function, written for real boto3: moves bytes with little computation, so the
figures show I/O. Reads `key` whole (if given) and writes `output_bytes` bytes to
`output_key` (if given).

Event: {"bucket", "key"?, "output_key"?, "output_bytes"?}. Returns the sizes, a CRC-32 of
the input and how long reading the input took, in seconds.
"""

import time
import zlib

import boto3

s3 = boto3.client("s3")


def handler(event, context):
    result = {}
    if event.get("key"):
        started = time.perf_counter()
        data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
        read_seconds = time.perf_counter() - started
        result.update(input_bytes=len(data), input_crc32=zlib.crc32(data), read_seconds=read_seconds)
    if event.get("output_key"):
        body = bytes(range(256)) * (event["output_bytes"] // 256)
        s3.put_object(Bucket=event["bucket"], Key=event["output_key"], Body=body)
        result.update(output_bytes=len(body))
    return result
