"""upload_file, download_file, upload_fileobj and download_fileobj: streamed one channel buffer
at a time, never holding a whole file in memory.

Errors follow boto3: a failed upload_file raises S3UploadFailedError; a download of a missing
object fails like the HeadObject boto3 sends first ("404", "Not Found").
"""

import os
import secrets

from boto3.exceptions import (
    NotOffloadedError,
    S3UploadFailedError,
    missing_attribute,
    supported,
)
from boto3.s3 import calls
from botocore.exceptions import ClientError, IncompleteReadError

_UPLOAD_ARGS = ("ContentType", "Metadata")


class TransferConfig:
    """Accepted so code constructs unchanged. Its thresholds and thread counts tune HTTP
    transfers, which Nexus replaces; they are kept as attributes and otherwise ignored."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __getattr__(self, name):
        raise missing_attribute("TransferConfig", name)


def upload_fileobj(fileobj, bucket, key, extra_args=None, callback=None):
    extra_args = extra_args or {}
    for name in extra_args:
        if name not in _UPLOAD_ARGS:
            raise NotOffloadedError(f"upload ExtraArgs key {name!r}", supported(_UPLOAD_ARGS))
    calls.put(
        "PutObject",
        bucket,
        key,
        fileobj,
        extra_args.get("ContentType"),
        extra_args.get("Metadata"),
        callback,
    )


def upload_file(filename, bucket, key, extra_args=None, callback=None):
    with open(filename, "rb") as fileobj:
        try:
            upload_fileobj(fileobj, bucket, key, extra_args, callback)
        except ClientError as e:
            raise S3UploadFailedError(f"Failed to upload {filename} to {bucket}/{key}: {e}") from e


def download_fileobj(bucket, key, fileobj, extra_args=None, callback=None):
    if extra_args:
        raise NotOffloadedError(f"download ExtraArgs key {next(iter(extra_args))!r}")
    meta, stream = calls.get("HeadObject", bucket, key, head=True)
    try:
        stream.write_to(fileobj, callback)
    finally:
        stream.close()
    expected = meta.get("ContentLength")
    if expected is not None and stream.tell() != expected:
        raise IncompleteReadError(actual_bytes=stream.tell(), expected_bytes=expected)


def download_file(bucket, key, filename, extra_args=None, callback=None):
    """Downloads into a temporary file next to ``filename``, renamed over it once complete.
    The file is created with mode 0666 less the umask, as boto3's is (not mkstemp's 0600)."""
    partial = f"{filename}.{secrets.token_hex(4)}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            download_fileobj(bucket, key, fileobj, extra_args, callback)
        os.replace(partial, filename)
    except BaseException:
        os.unlink(partial)
        raise
