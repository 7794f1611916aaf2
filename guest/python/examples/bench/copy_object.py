"""Benchmark function, written for real boto3, the most I/O-bound of the set: a map step's
copy, reading an object and writing it unchanged under another key (staging a shuffle
partition), with no computation on the bytes.

Event: {"bucket", "key", "output_key"}. Returns the bytes copied and the guest's memory report.
"""

import boto3
from guest_memory import report

s3 = boto3.client("s3")


def handler(event, context):
    data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    s3.put_object(Bucket=event["bucket"], Key=event["output_key"], Body=data)
    return {"output_bytes": len(data), **report()}
