"""boto3.resource("s3"): Bucket and Object."""

import pytest

import boto3
from conftest import BUCKET, stored


def test_bucket_put_object_and_object_get(region, prefix):
    s3 = boto3.resource("s3")
    bucket = s3.Bucket(BUCKET)
    obj = bucket.put_object(Key=prefix + "k", Body=b"resource body", ContentType="text/plain")
    assert (obj.bucket_name, obj.key) == (BUCKET, prefix + "k")
    assert obj.content_length == 13
    assert obj.e_tag and obj.content_type == stored("text/plain", {})[0]
    again = s3.Object(BUCKET, prefix + "k")
    assert again.get()["Body"].read() == b"resource body"
    again.put(Body=b"replaced")
    assert bucket.Object(prefix + "k").get()["Body"].read() == b"replaced"
    again.delete()
    with pytest.raises(s3.meta.client.exceptions.NoSuchKey):
        again.get()


def test_bucket_file_transfers(region, prefix, tmp_path):
    bucket = boto3.resource("s3").Bucket(BUCKET)
    (tmp_path / "in").write_bytes(b"file body")
    bucket.upload_file(str(tmp_path / "in"), prefix + "f")
    bucket.download_file(prefix + "f", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == b"file body"
