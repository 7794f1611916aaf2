"""Example function: a thumbnail of an image object.

Written for the real boto3 SDK; on Nexus the same file runs unchanged against the shim.
Event: {"bucket", "key", "output_key"}. Reads the image, shrinks it to fit in 128x128 with
Pillow (`Image.thumbnail`, aspect ratio kept) and writes it as a JPEG. Returns the sizes and,
from /proc, the guest's memory in use (MemTotal - MemAvailable) and this runtime process's
resident set, for the benchmarks.
"""

import io

from PIL import Image

import boto3

s3 = boto3.client("s3")

THUMBNAIL = (128, 128)


def _proc_kib(path, field):
    with open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def handler(event, context):
    data = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
    with Image.open(io.BytesIO(data)) as image:
        source = image.size
        image.thumbnail(THUMBNAIL)
        output = io.BytesIO()
        image.convert("RGB").save(output, "JPEG", quality=85)
        thumbnail = image.size
    s3.put_object(
        Bucket=event["bucket"],
        Key=event["output_key"],
        Body=output.getvalue(),
        ContentType="image/jpeg",
    )
    return {
        "input_bytes": len(data),
        "source_size": list(source),
        "thumbnail_size": list(thumbnail),
        "output_bytes": output.tell(),
        "guest_used_kib": _proc_kib("/proc/meminfo", "MemTotal")
        - _proc_kib("/proc/meminfo", "MemAvailable"),
        "runtime_rss_kib": _proc_kib("/proc/self/status", "VmRSS"),
    }
