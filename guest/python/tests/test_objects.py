"""get/put/head/delete through the real backend."""

import gc
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from conftest import BUCKET, stored
from nexus_shim import ChannelError

MIB = 1 << 20


def test_put_get_round_trip(s3, prefix):
    put = s3.put_object(
        Bucket=BUCKET,
        Key=prefix + "hello.txt",
        Body="hello, nexus",
        ContentType="text/plain",
        Metadata={"owner": "tests"},
    )
    assert put["ETag"] and put["ResponseMetadata"]["HTTPStatusCode"] == 200
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "hello.txt")
    assert isinstance(got["Body"], StreamingBody)
    assert got["Body"].read() == b"hello, nexus"
    assert got["ContentLength"] == 12
    assert (got.get("ContentType"), got["Metadata"]) == stored("text/plain", {"owner": "tests"})
    assert got["ETag"] == put["ETag"]
    assert got["AcceptRanges"] == "bytes"
    assert got["LastModified"].tzinfo is not None
    assert abs(got["LastModified"] - datetime.now(UTC)).total_seconds() < 300
    assert got["ResponseMetadata"] == {"HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0}


@pytest.mark.parametrize("body", [b"", bytearray(b"bytes"), memoryview(b"view")])
def test_bytes_like_bodies(s3, prefix, body):
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=body)
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "k")["Body"].read() == bytes(body)


def test_body_bigger_than_a_buffer_streams_both_ways(s3, prefix):
    data = os.urandom(3 * MIB + 12345)
    s3.put_object(Bucket=BUCKET, Key=prefix + "big", Body=data)
    body = s3.get_object(Bucket=BUCKET, Key=prefix + "big")["Body"]
    assert body.read(10) == data[:10]
    assert body.read(2 * MIB) == data[10 : 2 * MIB + 10]  # spans chunks
    rest = bytearray(len(data))
    n = body.readinto(rest)
    assert bytes(rest[:n]) == data[2 * MIB + 10 :]
    assert body.read() == b""
    chunks = s3.get_object(Bucket=BUCKET, Key=prefix + "big")["Body"].iter_chunks(MIB // 3)
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    "range_, expected, content_range",
    [
        ("bytes=2-5", b"2345", "bytes 2-5/10"),
        ("bytes=-3", b"789", "bytes 7-9/10"),
        ("bytes=7-", b"789", "bytes 7-9/10"),
    ],
)
def test_ranged_get(s3, prefix, range_, expected, content_range):
    s3.put_object(Bucket=BUCKET, Key=prefix + "digits", Body=b"0123456789")
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "digits", Range=range_)
    assert got["Body"].read() == expected
    assert got["ContentLength"] == len(expected)
    assert got["ContentRange"] == content_range
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206


def test_ranged_get_across_chunks(s3, prefix):
    data = os.urandom(3 * MIB)
    s3.put_object(Bucket=BUCKET, Key=prefix + "big", Body=data)
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "big", Range=f"bytes=1000-{2 * MIB + 500}")
    assert got["Body"].read() == data[1000 : 2 * MIB + 501]


def test_head(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=b"abc", ContentType="application/x-test")
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "k")
    assert head["ContentLength"] == 3
    assert head.get("ContentType") == stored("application/x-test", {})[0]
    assert isinstance(head["LastModified"], datetime)
    assert "Body" not in head


def test_delete_then_missing(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=b"x")
    assert (
        s3.delete_object(Bucket=BUCKET, Key=prefix + "k")["ResponseMetadata"]["HTTPStatusCode"]
        == 204
    )
    with pytest.raises(s3.exceptions.NoSuchKey) as modeled:
        s3.get_object(Bucket=BUCKET, Key=prefix + "k")
    assert str(modeled.value).startswith(
        "An error occurred (NoSuchKey) when calling the GetObject operation: "
    )
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=BUCKET, Key=prefix + "k")
    assert error.value.response["Error"]["Code"] == "NoSuchKey"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_head_of_missing_key_is_404(s3, prefix):
    with pytest.raises(ClientError) as error:
        s3.head_object(Bucket=BUCKET, Key=prefix + "missing")
    assert type(error.value) is ClientError
    assert error.value.response["Error"] == {"Code": "404", "Message": "Not Found"}
    assert (
        str(error.value)
        == "An error occurred (404) when calling the HeadObject operation: Not Found"
    )


def test_writing_outside_the_grant_is_denied(s3):
    with pytest.raises(ClientError) as error:
        s3.put_object(Bucket="other", Key="public/x", Body=b"x")
    assert error.value.response["Error"]["Code"] == "AccessDenied"
    assert error.value.operation_name == "PutObject"


def test_early_close_keeps_the_channel_usable(s3, prefix):
    data = os.urandom(3 * MIB)
    s3.put_object(Bucket=BUCKET, Key=prefix + "big", Body=data)
    s3.put_object(Bucket=BUCKET, Key=prefix + "small", Body=b"small")
    for _ in range(5):
        body = s3.get_object(Bucket=BUCKET, Key=prefix + "big")["Body"]
        assert body.read(100) == data[:100]
        body.close()
    with s3.get_object(Bucket=BUCKET, Key=prefix + "big")["Body"] as body:
        body.read(MIB + 1)  # mid-stream, second chunk
    for _ in range(200):  # far more than the region's buffers: each get gives its buffer back
        assert s3.get_object(Bucket=BUCKET, Key=prefix + "small")["Body"].read() == b"small"
    for _ in range(50):  # unread bodies give theirs back when dropped
        s3.get_object(Bucket=BUCKET, Key=prefix + "big")
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "big")["Body"].read() == data


def test_head_errors_use_the_http_status(s3):
    with pytest.raises(ClientError) as error:
        s3.head_object(Bucket="other", Key="private/x")
    assert error.value.response["Error"] == {"Code": "403", "Message": "Forbidden"}


def test_unicode_keys(s3, prefix):
    key = prefix + "ünïcode/ключ 1.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"u")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"u"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]] == [key]


class FailingBody:
    """Yields 1.5 MiB, then fails like a broken pipe."""

    def __init__(self):
        self.sent = 0

    def readinto(self, b):
        if self.sent >= 3 * MIB // 2:
            raise OSError("source went away")
        n = min(len(b), 3 * MIB // 2 - self.sent)
        b[:n] = bytes(n)
        self.sent += n
        return n

    def read(self, n=-1):
        chunk = bytearray(n)
        return bytes(chunk[: self.readinto(chunk)])


def test_failed_upload_is_abandoned(s3, prefix):
    body = FailingBody()
    with pytest.raises(OSError, match="source went away"):
        s3.put_object(Bucket=BUCKET, Key=prefix + "partial", Body=body)
    with pytest.raises(ClientError, match=r"\(404\)"):
        s3.head_object(Bucket=BUCKET, Key=prefix + "partial")
    s3.put_object(Bucket=BUCKET, Key=prefix + "after", Body=b"still works")


def test_bodies_lost_in_cycles_are_collected_when_buffers_run_out(s3, prefix):
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=b"cycle")
    gc.disable()
    try:
        for _ in range(100):
            response = s3.get_object(Bucket=BUCKET, Key=prefix + "k")
            response["self"] = response  # unreachable after the next iteration, but not freed
    finally:
        gc.enable()


def test_threads_share_the_channel(s3, prefix):
    def work(n):
        for i in range(20):
            key = f"{prefix}{n}/{i}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode() * 1000)
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == key.encode() * 1000

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))


def test_running_out_of_buffers_says_what_to_do(s3, prefix, monkeypatch):
    monkeypatch.setattr("nexus_shim.channel.LEASE_WAIT_S", 0.05)
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=b"held")
    held = []
    with pytest.raises(ChannelError, match="channel buffers are in use; close response bodies"):
        for _ in range(100):
            held.append(s3.get_object(Bucket=BUCKET, Key=prefix + "k")["Body"])
    for body in held:
        body.close()
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "k")["Body"].read() == b"held"
