"""The shim's surface without a backend: imports, errors, validation, StreamingBody."""

import io
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime

import pytest

import boto3
import botocore
from boto3.exceptions import NotOffloadedError
from boto3.s3.response import timestamp
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
)
from botocore.response import StreamingBody
from conftest import PYTHON_DIR


def test_shim_shadows_an_installed_boto3():
    assert boto3.__file__.startswith(str(PYTHON_DIR))
    assert botocore.__file__.startswith(str(PYTHON_DIR))


def test_client_error_reads_like_botocore():
    response = {
        "Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."},
        "ResponseMetadata": {"HTTPStatusCode": 404},
    }
    error = ClientError(response, "GetObject")
    assert str(error) == (
        "An error occurred (NoSuchKey) when calling the GetObject operation: "
        "The specified key does not exist."
    )
    assert error.response is response and error.operation_name == "GetObject"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(NoCredentialsError()) == "Unable to locate credentials"


def test_modeled_exceptions_are_client_errors():
    s3 = boto3.client("s3")
    assert issubclass(s3.exceptions.NoSuchKey, ClientError)
    assert issubclass(s3.exceptions.NoSuchBucket, ClientError)
    assert s3.exceptions.ClientError is ClientError
    assert s3.exceptions.from_code("NoSuchKey") is s3.exceptions.NoSuchKey
    assert boto3.client("s3").exceptions.NoSuchKey is s3.exceptions.NoSuchKey
    assert issubclass(s3.exceptions.AccessDenied, ClientError)
    with pytest.raises(AttributeError):
        _ = s3.exceptions.NoSuchThing


def test_clients_accept_and_ignore_connection_settings():
    boto3.client(
        "s3",
        region_name="eu-west-1",
        endpoint_url="http://localhost:9000",
        aws_access_key_id="AKIA",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 3}),
    )
    boto3.session.Session(region_name="us-east-1").client("s3")
    assert boto3.Session(region_name="us-east-1").region_name == "us-east-1"
    boto3.resource("s3", region_name="eu-west-1")
    TransferConfig(multipart_threshold=8 * 1024 * 1024)


def test_other_services_fail_loudly():
    with pytest.raises(NotImplementedError) as error:
        boto3.client("dynamodb")
    assert (
        str(error.value) == "nexus boto3 shim: service 'dynamodb' is not offloaded by Nexus "
        "(only 's3'; 'lambda' clients)"
    )
    with pytest.raises(NotOffloadedError):
        boto3.resource("sqs")


def test_unsupported_calls_name_themselves():
    s3 = boto3.client("s3")
    with pytest.raises(
        NotImplementedError,
        match=r"S3\.copy_object is not offloaded by Nexus; supported: get_object, put_object",
    ):
        s3.copy_object(Bucket="b", Key="k", CopySource="b/j")
    with pytest.raises(NotOffloadedError, match="generate_presigned_url"):
        s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    with pytest.raises(NotOffloadedError, match="list_objects paginator"):
        s3.get_paginator("list_objects")
    with pytest.raises(NotOffloadedError, match=r"s3\.Bucket\.delete_objects"):
        _ = boto3.resource("s3").Bucket("b").delete_objects
    assert not hasattr(s3, "_private")


def test_unsupported_parameters_are_not_dropped():
    s3 = boto3.client("s3")
    with pytest.raises(
        NotOffloadedError,
        match=r"S3\.get_object parameter 'VersionId' .*supported: Bucket, Key, Range",
    ):
        s3.get_object(Bucket="b", Key="k", VersionId="3")
    with pytest.raises(NotOffloadedError, match="'SSECustomerKey'"):
        s3.put_object(Bucket="b", Key="k", Body=b"", SSECustomerKey="x")
    with pytest.raises(NotOffloadedError, match="'ACL'"):
        s3.upload_fileobj(io.BytesIO(b""), "b", "k", ExtraArgs={"ACL": "public-read"})
    with pytest.raises(NotOffloadedError, match="'MaxItemz'"):
        s3.get_paginator("list_objects_v2").paginate(Bucket="b", PaginationConfig={"MaxItemz": 1})


def test_parameters_are_validated_like_boto3():
    s3 = boto3.client("s3")
    with pytest.raises(ParamValidationError, match='Missing required parameter in input: "Key"'):
        s3.get_object(Bucket="b")
    with pytest.raises(ParamValidationError, match="Invalid type for parameter Key"):
        s3.get_object(Bucket="b", Key=1)
    with pytest.raises(ParamValidationError, match="Invalid type for parameter MaxKeys"):
        s3.list_objects_v2(Bucket="b", MaxKeys=True)
    with pytest.raises(TypeError, match="only accepts keyword arguments"):
        s3.get_object("b", "k")


def test_streaming_body_wraps_any_raw_stream():
    body = StreamingBody(io.BytesIO(b"one\ntwo\nthree"), 13)
    assert list(body.iter_lines()) == [b"one", b"two", b"three"]
    body = StreamingBody(io.BytesIO(b"abc"), 4)
    with pytest.raises(IncompleteReadError, match="3 read, but total bytes expected is 4"):
        body.read()
    assert isinstance(StreamingBody(io.BytesIO(), 0), io.IOBase)


def test_timestamps_are_aware_utc():
    assert timestamp("2024-05-01T12:30:00Z") == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert timestamp("2024-05-01T14:30:00.123456789+02:00") == datetime(
        2024, 5, 1, 12, 30, 0, 123456, tzinfo=UTC
    )


def run_python(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("NEXUS_REGION", "NEXUS_GUEST_LIB")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(PYTHON_DIR), **env},
    )


GET = "import boto3; boto3.client('s3').get_object(Bucket='b', Key='k')"


def test_missing_region_says_what_to_do():
    done = run_python(GET)
    assert (
        "ChannelError: No Nexus region: set NEXUS_REGION or attach an ivshmem device" in done.stderr
    )


def test_missing_library_says_what_to_do():
    done = run_python(GET, NEXUS_GUEST_LIB="/nonexistent/libnexus_guest.so")
    assert (
        "Cannot find the Nexus guest library; looked at /nonexistent/libnexus_guest.so"
        in done.stderr
    )


def test_forked_children_cannot_use_the_channel():
    done = run_python(
        "import os, sys\n"
        "from nexus_shim import ChannelError, default_channel\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        default_channel()\n"
        "    except ChannelError as e:\n"
        "        print(e)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    assert "a forked child cannot make S3 calls" in done.stdout
