"""``boto3.client("lambda").invoke``: the named deployed function runs through the backend
(channel/src/wire.rs, ``Invoke``), so a chain of functions needs no NIC in any guest.

``InvocationType`` ``RequestResponse`` waits for the result, ``Event`` returns at once (202),
``DryRun`` only asks the policy (204). ``FunctionName`` may be a name or a function ARN. The
backend's policy of the calling function lists what it may invoke; a refusal is Lambda's
``AccessDeniedException``.
"""

import io

from boto3.exceptions import NotOffloadedError, missing_attribute, supported
from boto3.s3.response import response_metadata
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from nexus_shim import Op, default_channel

SUPPORTED = ("invoke",)
_TYPES = ("RequestResponse", "Event", "DryRun")
# The backend's S3-style status codes as Lambda's error codes and HTTP statuses.
_ERRORS = {
    "NoSuchKey": ("ResourceNotFoundException", 404),
    "AccessDenied": ("AccessDeniedException", 403),
    "EntityTooLarge": ("RequestTooLargeException", 413),
    "InvalidArgument": ("InvalidRequestContentException", 400),
    "InvalidRequest": ("InvalidParameterValueException", 400),
    "SlowDown": ("TooManyRequestsException", 429),
}
MODELED_CODES = tuple(code for code, _ in _ERRORS.values()) + ("ServiceException",)
_MODELED = {code: type(code, (ClientError,), {"__module__": __name__}) for code in MODELED_CODES}


class LambdaExceptions:
    """``client.exceptions``: ClientError and the modeled Lambda errors the shim raises."""

    ClientError = ClientError

    def __getattr__(self, name):
        try:
            return _MODELED[name]
        except KeyError:
            raise AttributeError(name) from None


class LambdaClient:
    """A Lambda client whose calls go to the Nexus host; it holds no connection or credentials."""

    exceptions = LambdaExceptions()

    def invoke(
        self,
        FunctionName,
        InvocationType="RequestResponse",
        LogType="None",
        ClientContext=None,
        Payload=b"",
        Qualifier=None,
    ):
        if InvocationType not in _TYPES:
            raise NotOffloadedError(f"Lambda.invoke InvocationType {InvocationType!r}")
        if LogType != "None":
            raise NotOffloadedError("Lambda.invoke LogType 'Tail'", " (logs stay on the host)")
        if ClientContext is not None:
            raise NotOffloadedError("Lambda.invoke parameter 'ClientContext'")
        if Qualifier not in (None, "$LATEST"):
            raise NotOffloadedError(f"Lambda.invoke Qualifier {Qualifier!r}", " (only $LATEST)")
        name = function_name(FunctionName)
        meta, result = _call(name, InvocationType, payload_bytes(Payload))
        response = {
            "ResponseMetadata": response_metadata(meta["StatusCode"]),
            "StatusCode": meta["StatusCode"],
            "Payload": StreamingBody(io.BytesIO(result), len(result)),
        }
        if InvocationType == "RequestResponse":
            response["ExecutedVersion"] = "$LATEST"
        if "FunctionError" in meta:
            response["FunctionError"] = meta["FunctionError"]
        return response

    def __getattr__(self, name):
        raise missing_attribute("Lambda", name, supported(SUPPORTED))


def function_name(given):
    """The function's name in a name, ``name:$LATEST`` or a function ARN."""
    parts = given.split(":")
    if given.startswith("arn:"):
        parts = parts[6:]  # arn:aws:lambda:region:account:function:NAME[:qualifier]
    if len(parts) > 1 and parts[1] != "$LATEST":
        raise NotOffloadedError(f"Lambda.invoke qualifier {parts[1]!r}", " (only $LATEST)")
    return parts[0] if parts else given


def payload_bytes(payload):
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if hasattr(payload, "read"):
        payload = payload.read()
    return bytes(payload)


def _call(name, invocation_type, payload):
    """One Invoke call; returns the reply meta and the result bytes."""
    channel = default_channel()
    lease = channel.lease()
    try:
        params = {"InvocationType": invocation_type}
        args = channel.write_args(lease, "", name, params)
        room = len(lease.view) - args.end
        if len(payload) > room:
            raise _MODELED["RequestTooLargeException"](
                _error("RequestTooLargeException", f"The payload is over {room} bytes", 413),
                "Invoke",
            )
        lease.view[args.end : args.end + len(payload)] = payload
        reply = channel.call(lease, Op.INVOKE, args, body_len=len(payload))
        if reply.status:
            code, status = _ERRORS.get(reply.meta.get("Code"), ("ServiceException", 500))
            raise _MODELED[code](_error(code, reply.meta.get("Message", ""), status), "Invoke")
        return reply.meta, bytes(reply.body)
    finally:
        channel.release(lease)


def _error(code, message, status):
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": response_metadata(status),
    }
