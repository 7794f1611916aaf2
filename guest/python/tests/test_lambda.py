"""``boto3.client("lambda").invoke`` through the channel, without VMs: the policy's answer,
Lambda's error codes and shapes, and what the shim refuses. (Calls that run functions are
tested with VMs in tests/tests/chain.rs.)"""

import io

import pytest

import boto3
from boto3.exceptions import NotOffloadedError
from botocore.exceptions import ClientError


@pytest.fixture
def lam(region):
    return boto3.client("lambda")


def test_a_dry_run_asks_the_policy(lam):
    response = lam.invoke(FunctionName="not-deployed", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204
    assert response["Payload"].read() == b""


def test_a_function_the_policy_does_not_list_is_access_denied(lam):
    with pytest.raises(lam.exceptions.AccessDeniedException) as error:
        lam.invoke(FunctionName="thumbnailer", Payload="{}")
    assert isinstance(error.value, ClientError)
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "may not invoke thumbnailer" in error.value.response["Error"]["Message"]
    assert error.value.operation_name == "Invoke"


def test_a_function_not_deployed_is_not_found(lam):
    arn = "arn:aws:lambda:us-east-1:000000000000:function:not-deployed"
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="not-deployed"):
        lam.invoke(FunctionName=arn, Payload=io.BytesIO(b'{"n": 1}'))
    with pytest.raises(lam.exceptions.InvalidRequestContentException, match="not JSON"):
        lam.invoke(FunctionName="not-deployed", Payload=b"{")


def test_what_the_shim_does_not_offload_names_itself(lam):
    with pytest.raises(NotOffloadedError, match="Qualifier '3'"):
        lam.invoke(FunctionName="f", Qualifier="3")
    with pytest.raises(NotOffloadedError, match="qualifier 'live'"):
        lam.invoke(FunctionName="f:live")
    with pytest.raises(NotOffloadedError, match="LogType"):
        lam.invoke(FunctionName="f", LogType="Tail")
    with pytest.raises(NotOffloadedError, match=r"Lambda\.list_functions"):
        lam.list_functions()
