"""Soak function, written for real boto3: a mix of small calls per invocation. Puts
`prefix/n` (1-16 KiB), reads it back and checks it, lists `prefix` (one page of 50), and
deletes the object again when `n` is odd.

Event: {"bucket", "prefix", "n"}. Returns the number of calls made; raises if the object read
back differs from the one written.
"""

import boto3

s3 = boto3.client("s3")


def handler(event, context):
    bucket, n = event["bucket"], event["n"]
    key = f"{event['prefix']}/{n}"
    body = bytes((n + i) % 251 for i in range(1024 + (n * 2_654_435_761) % (15 * 1024)))
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != body:
        raise ValueError(f"{key} read back differs from what was written")
    s3.list_objects_v2(Bucket=bucket, Prefix=event["prefix"], MaxKeys=50)
    calls = 3
    if n % 2:
        s3.delete_object(Bucket=bucket, Key=key)
        calls += 1
    return {"calls": calls}
