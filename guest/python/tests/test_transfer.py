"""upload_file / download_file / *_fileobj, and a 256 MiB object streamed end to end."""

import hashlib
import io
import os
import resource

import pytest

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from conftest import BUCKET, stored

MIB = 1 << 20


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def test_upload_and_download_file_bigger_than_a_buffer(s3, prefix, tmp_path):
    source, target = tmp_path / "source.bin", tmp_path / "target.bin"
    source.write_bytes(os.urandom(5 * MIB + 7))
    uploaded = []
    s3.upload_file(
        str(source),
        BUCKET,
        prefix + "file",
        ExtraArgs={"ContentType": "application/x-bin"},
        Callback=uploaded.append,
    )
    assert sum(uploaded) == source.stat().st_size
    assert (
        s3.head_object(Bucket=BUCKET, Key=prefix + "file").get("ContentType")
        == stored("application/x-bin", {})[0]
    )
    s3.download_file(BUCKET, prefix + "file", str(target))
    assert sha256_file(target) == sha256_file(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "source.bin",
        "target.bin",
    ]  # no partial file left


def test_upload_and_download_fileobj(s3, prefix):
    data = os.urandom(2 * MIB + 3)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, prefix + "obj", ExtraArgs={"Metadata": {"k": "v"}})
    out = io.BytesIO()
    s3.download_fileobj(BUCKET, prefix + "obj", out)
    assert out.getvalue() == data
    assert (
        s3.head_object(Bucket=BUCKET, Key=prefix + "obj")["Metadata"] == stored(None, {"k": "v"})[1]
    )


class ReadOnly:
    """A file-like body with read() only (no readinto)."""

    def __init__(self, data):
        self._file = io.BytesIO(data)

    def read(self, n=-1):
        return self._file.read(min(n, 1000) if n and n > 0 else n)  # short reads, as pipes do


def test_file_like_bodies_without_readinto(s3, prefix):
    data = os.urandom(MIB + 5)
    s3.put_object(Bucket=BUCKET, Key=prefix + "k", Body=ReadOnly(data))
    assert s3.get_object(Bucket=BUCKET, Key=prefix + "k")["Body"].read() == data


def test_transfer_errors_match_boto3(s3, prefix, tmp_path):
    with pytest.raises(ClientError) as error:
        s3.download_file(BUCKET, prefix + "missing", str(tmp_path / "x"))
    assert error.value.response["Error"]["Code"] == "404"
    assert error.value.operation_name == "HeadObject"
    assert not list(tmp_path.iterdir())
    source = tmp_path / "x"
    source.write_bytes(b"x")
    with pytest.raises(
        S3UploadFailedError, match=f"Failed to upload {source} to other/public/x: .*AccessDenied"
    ):
        s3.upload_file(str(source), "other", "public/x")


class RandomStream(io.RawIOBase):
    """`size` random bytes, hashed as they are produced, never held whole."""

    def __init__(self, size):
        self.left = size
        self.digest = hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left, 4 * MIB)
        chunk = os.urandom(n)
        b[:n] = chunk
        self.digest.update(chunk)
        self.left -= n
        return n


@pytest.mark.large
def test_256_mib_object_streams_without_being_held(s3, prefix):
    size = 256 * MIB
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = RandomStream(size)
    s3.put_object(Bucket=BUCKET, Key=prefix + "huge", Body=source)
    got = s3.get_object(Bucket=BUCKET, Key=prefix + "huge")
    assert got["ContentLength"] == size
    digest, total = hashlib.sha256(), 0
    for chunk in got["Body"].iter_chunks(MIB):
        digest.update(chunk)
        total += len(chunk)
    assert total == size
    assert digest.hexdigest() == source.digest.hexdigest()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
