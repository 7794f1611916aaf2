"""Example function: gzip one S3 object into another.

Written for the real boto3 SDK; on Nexus the same file runs unchanged against the shim.
Event: {"bucket", "key", "output_key"}. Returns sizes, the compressed/original ratio and the
output's ETag.
"""

import gzip

import boto3

s3 = boto3.client("s3")


def handler(event, context):
    bucket, key, output_key = event["bucket"], event["key"], event["output_key"]
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    compressed = gzip.compress(data, compresslevel=6, mtime=0)
    response = s3.put_object(
        Bucket=bucket,
        Key=output_key,
        Body=compressed,
        ContentType="application/gzip",
        Metadata={"source": key},
    )
    return {
        "input_bytes": len(data),
        "output_bytes": len(compressed),
        "ratio": round(len(compressed) / len(data), 4) if data else 0.0,
        "output_key": output_key,
        "etag": response["ETag"],
    }
