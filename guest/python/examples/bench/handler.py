"""Benchmark function, written for real boto3: the compress example's work (read an object,
gzip it, write the result), and a report of the memory in use inside the guest.

Event: {"bucket", "key", "output_key"}. Returns the compressed size and, from /proc, the
guest's memory in use (MemTotal - MemAvailable) and this runtime process's resident set.
"""

import gzip

import boto3
from guest_memory import report

s3 = boto3.client("s3")


def handler(event, context):
    data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    compressed = gzip.compress(data, compresslevel=6, mtime=0)
    s3.put_object(Bucket=event["bucket"], Key=event["output_key"], Body=compressed)
    return {"output_bytes": len(compressed), **report()}
