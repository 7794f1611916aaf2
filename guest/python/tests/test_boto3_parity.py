"""The shim next to the real boto3 (the venv's, run in a process without the shim): the modes of
downloaded files, and what a missing attribute raises."""

import os
import subprocess
import sys

import pytest

import boto3
from boto3.exceptions import NotOffloadedError
from boto3.s3.transfer import TransferConfig
from conftest import BUCKET

# Downloads with the real boto3, its client stubbed (botocore's Stubber: no server), under the
# umask given; prints the file's mode.
REAL_DOWNLOAD = """
import io, os, sys
import boto3
from botocore.response import StreamingBody
from botocore.stub import Stubber

os.umask(int(sys.argv[2], 8))
s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
body = b"the same bytes"
with Stubber(s3) as stub:
    stub.add_response("head_object", {"ContentLength": len(body)})
    stream = StreamingBody(io.BytesIO(body), len(body))
    stub.add_response("get_object", {"Body": stream, "ContentLength": len(body)})
    s3.download_file("bucket", "key", sys.argv[1])
print(oct(os.stat(sys.argv[1]).st_mode & 0o777))
"""

# What the real boto3 answers for Session attributes: one it has, one nobody has.
REAL_ATTRIBUTES = """
import boto3
session = boto3.session.Session(region_name="us-east-1")
print(hasattr(session, "events"), hasattr(session, "no_such_attribute"))
"""


def real_boto3(script, *args, cwd):
    """Runs `script` with the real boto3; skips (saying why) when the venv has none."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NEXUS_REGION")}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    if "No module named 'boto3'" in done.stderr:
        pytest.skip(f"no real boto3 for {sys.executable} (run the tests with the venv's Python)")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_downloaded_files_get_the_modes_boto3_gives(s3, prefix, tmp_path, umask):
    real = tmp_path / "real.txt"
    [real_mode] = real_boto3(REAL_DOWNLOAD, str(real), oct(umask), cwd=tmp_path)
    assert real_mode == oct(0o666 & ~umask), "what the real boto3 does"

    s3.put_object(Bucket=BUCKET, Key=prefix + "f", Body=b"the same bytes")
    shim = tmp_path / "shim.txt"
    previous = os.umask(umask)
    try:
        s3.download_file(BUCKET, prefix + "f", str(shim))
        boto3.resource("s3").Bucket(BUCKET).download_file(prefix + "f", str(tmp_path / "r.txt"))
    finally:
        os.umask(previous)
    assert oct(shim.stat().st_mode & 0o777) == real_mode
    assert oct((tmp_path / "r.txt").stat().st_mode & 0o777) == real_mode
    assert shim.read_bytes() == real.read_bytes()


def test_a_missing_attribute_raises_the_shims_error_naming_it(tmp_path):
    real_has_events, real_has_nonsense = real_boto3(REAL_ATTRIBUTES, cwd=tmp_path)
    assert (real_has_events, real_has_nonsense) == ("True", "False")

    session = boto3.session.Session(region_name="us-east-1")
    with pytest.raises(NotOffloadedError, match=r"Session\.events is not offloaded") as error:
        _ = session.events
    # Also an AttributeError, as the real boto3's would be for a name it lacks: hasattr and
    # getattr with a default answer the same way.
    assert isinstance(error.value, AttributeError)
    assert not hasattr(session, "no_such_attribute")
    assert getattr(session, "no_such_attribute", "default") == "default"
    s3 = boto3.client("s3")
    missing = [
        (lambda: boto3.set_stream_logger, r"boto3\.set_stream_logger"),
        (lambda: s3.meta, r"S3\.meta"),
        (lambda: s3.get_paginator("list_objects_v2").build_full_result, r"build_full_result"),
        (lambda: boto3.resource("s3").Bucket("b").object_versions, r"Bucket\.object_versions"),
        (lambda: TransferConfig().max_concurrency, r"TransferConfig\.max_concurrency"),
    ]
    for get, name in missing:
        with pytest.raises(NotOffloadedError, match=name) as error:
            get()
        assert isinstance(error.value, AttributeError)
