"""Compatibility probe: a fixed sequence of S3 calls whose every result is recorded.

Written for the real boto3 SDK and run twice by tests/tests/compat.rs: once with boto3 against
an S3 server, once unchanged with the Nexus shim against a backend on that same server. The two
returned records (and the objects left in the buckets) must be identical.

Event: {"bucket", "prefix"}. Every key is under the prefix; the data is deterministic. Only
values that legitimately differ between runs are left out: timestamps (LastModified), request
metadata but the HTTP status (ids, headers, retries), continuation token values (opaque; only
whether one is present is recorded) and error messages written by the server.
"""

import hashlib
import io

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3")

# A period of 251 (a prime) differs at every offset from a shifted or truncated copy.
_PATTERN = bytes(range(251))
# Below boto3's 8 MiB multipart threshold and S3's 5 MiB minimum part: a single PUT on any
# client, so its ETag is the MD5 of the bytes.
BLOB_BYTES = 3 * 1024 * 1024 + 17
FILEOBJ_BYTES = 1024 * 1024 + 3
CHUNK = 64 * 1024


def pattern(length, shift=0):
    """``length`` deterministic bytes; ``shift`` gives another object the same length."""
    repeated = _PATTERN * (length // len(_PATTERN) + 2)
    return repeated[shift % len(_PATTERN) :][:length]


def digest(data):
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def status(response):
    return response["ResponseMetadata"]["HTTPStatusCode"]


def attributes(response):
    """What a head_object or get_object response says about the object."""
    fields = ("ContentLength", "ContentRange", "ContentType", "ETag", "Metadata", "AcceptRanges")
    return {"status": status(response), **{f: response.get(f) for f in fields}}


def fetch(bucket, key, **kwargs):
    response = s3.get_object(Bucket=bucket, Key=key, **kwargs)
    body = response["Body"].read()
    return {**attributes(response), "body": digest(body)}


def listing(response):
    """A list_objects_v2 page without timestamps and without the token values."""
    return {
        "status": status(response),
        **{
            f: response.get(f)
            for f in ("Name", "Prefix", "Delimiter", "MaxKeys", "KeyCount", "IsTruncated")
        },
        "Contents": [
            {f: item.get(f) for f in ("Key", "Size", "ETag", "StorageClass")}
            for item in response.get("Contents", [])
        ],
        "CommonPrefixes": [p["Prefix"] for p in response.get("CommonPrefixes", [])],
        "has_NextContinuationToken": "NextContinuationToken" in response,
    }


def list_all(bucket, **kwargs):
    """Follows NextContinuationToken by hand; every page."""
    pages = []
    while True:
        response = s3.list_objects_v2(Bucket=bucket, **kwargs)
        pages.append(listing(response))
        if not response.get("IsTruncated"):
            return pages
        kwargs["ContinuationToken"] = response["NextContinuationToken"]


def failure(call):
    """Runs ``call``, which must fail; what a handler can see of the error."""
    try:
        call()
    except ClientError as e:
        error = e.response.get("Error", {})
        return {
            "raised": type(e).__name__,
            "Code": error.get("Code"),
            "status": status(e.response),
            "operation": e.operation_name,
        }
    return {"raised": None}


def handler(event, context):
    bucket, prefix = event["bucket"], event["prefix"]
    result = {}

    def key(name):
        return prefix + name

    text = "Hello from the compatibility probe.\nSecond line: ünïcödé.\n".encode()
    # Metadata names are case-insensitive HTTP headers: S3 hands them back in lower case.
    text_args = {
        "ContentType": "text/plain; charset=utf-8",
        "Metadata": {"Author": "probe", "run": "compat"},
    }
    objects = [
        # (name, body, extra put_object arguments)
        ("a.txt", text, text_args),
        ("docs/read me.txt", pattern(4096, 7), {"ContentType": "text/plain"}),
        ("docs/b.json", b'{"answer": 42}', {"ContentType": "application/json"}),
        ("data/blob.bin", pattern(BLOB_BYTES), {}),
        ("empty", b"", {"Metadata": {"kind": "empty"}}),
        ("logs/2024/01.log", pattern(300, 3), {"ContentType": "text/plain"}),
    ]
    result["put"] = {}
    for name, body, extra in objects:
        response = s3.put_object(Bucket=bucket, Key=key(name), Body=body, **extra)
        result["put"][name] = {"status": status(response), "ETag": response.get("ETag")}

    result["get"] = {name: fetch(bucket, key(name)) for name, _, _ in objects}
    blob = key("data/blob.bin")
    result["get_range"] = {
        spec: fetch(bucket, blob, Range=spec)
        for spec in ("bytes=10-99", "bytes=-100", "bytes=3000000-", "bytes=0-0")
    }
    result["get_range_past_end"] = fetch(bucket, key("docs/b.json"), Range="bytes=5-1000")

    chunks = s3.get_object(Bucket=bucket, Key=blob)["Body"]
    sizes, hasher = set(), hashlib.sha256()
    for chunk in chunks.iter_chunks(CHUNK):
        sizes.add(len(chunk))
        hasher.update(chunk)
    result["get_chunks"] = {"sha256": hasher.hexdigest(), "max_chunk": max(sizes)}

    result["head"] = {
        name: attributes(s3.head_object(Bucket=bucket, Key=key(name))) for name, _, _ in objects
    }

    result["list_prefix"] = list_all(bucket, Prefix=prefix)
    result["list_docs"] = list_all(bucket, Prefix=key("docs/"))
    result["list_partial_name"] = list_all(bucket, Prefix=key("d"))
    result["list_delimiter"] = list_all(bucket, Prefix=prefix, Delimiter="/")
    result["list_max_keys_2"] = list_all(bucket, Prefix=prefix, MaxKeys=2)
    result["list_delimiter_max_keys_2"] = list_all(bucket, Prefix=prefix, Delimiter="/", MaxKeys=2)
    result["list_nothing"] = list_all(bucket, Prefix=key("nothing-here/"))

    paginator = s3.get_paginator("list_objects_v2")
    result["paginator"] = [
        listing(page)
        for page in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 3}
        )
    ]

    upload = pattern(FILEOBJ_BYTES, 11)
    s3.upload_fileobj(
        io.BytesIO(upload),
        bucket,
        key("up/fileobj.bin"),
        ExtraArgs={"ContentType": "application/x-probe", "Metadata": {"source": "bytesio"}},
    )
    result["upload_fileobj"] = attributes(s3.head_object(Bucket=bucket, Key=key("up/fileobj.bin")))
    downloads = {}
    for name in ("up/fileobj.bin", "data/blob.bin", "empty"):
        sink = io.BytesIO()
        s3.download_fileobj(bucket, key(name), sink)
        downloads[name] = digest(sink.getvalue())
    result["download_fileobj"] = downloads

    overwritten = s3.put_object(Bucket=bucket, Key=key("docs/b.json"), Body=b'{"answer": 43}')
    result["overwrite"] = {
        "put": {"status": status(overwritten), "ETag": overwritten.get("ETag")},
        "get": fetch(bucket, key("docs/b.json")),
    }

    result["delete"] = {
        name: status(s3.delete_object(Bucket=bucket, Key=key(name)))
        for name in ("a.txt", "logs/2024/01.log", "never-existed")
    }
    result["list_after_delete"] = list_all(bucket, Prefix=prefix)

    try:
        s3.get_object(Bucket=bucket, Key=key("a.txt"))
    except s3.exceptions.NoSuchKey as e:
        result["get_missing"] = {
            "caught": "NoSuchKey",
            "Code": e.response["Error"]["Code"],
            "status": status(e.response),
        }
    result["get_missing_as_client_error"] = failure(
        lambda: s3.get_object(Bucket=bucket, Key=key("missing/nothing.txt"))
    )
    result["head_missing"] = failure(lambda: s3.head_object(Bucket=bucket, Key=key("a.txt")))
    result["download_missing"] = failure(
        lambda: s3.download_fileobj(bucket, key("missing.bin"), io.BytesIO())
    )
    result["get_invalid_range"] = failure(
        lambda: s3.get_object(Bucket=bucket, Key=key("docs/b.json"), Range="bytes=1000-2000")
    )
    return result
