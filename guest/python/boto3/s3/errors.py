"""S3 error replies as botocore ClientErrors, and the client's modeled exception classes."""

from http.client import responses

from boto3.s3.response import response_metadata
from botocore.exceptions import ClientError

# The codes boto3 (1.4x) models as ``client.exceptions.<Code>`` for S3.
MODELED_CODES = (
    "AccessDenied", "AnnotationLimitExceeded", "AnnotationNameTooLong", "BucketAlreadyExists",
    "BucketAlreadyOwnedByYou", "EncryptionTypeMismatch", "IdempotencyParameterMismatch",
    "InvalidAnnotationName", "InvalidObjectState", "InvalidPrefix", "InvalidRequest",
    "InvalidWriteOffset", "NoSuchAnnotation", "NoSuchBucket", "NoSuchKey", "NoSuchUpload",
    "ObjectAlreadyInActiveTierError", "ObjectNotInActiveTierError", "TooManyParts",
    "UnsupportedMediaType",
)  # fmt: skip
_MODELED = {code: type(code, (ClientError,), {"__module__": __name__}) for code in MODELED_CODES}


class S3Exceptions:
    """``client.exceptions``: ClientError and a subclass per modeled code, shared by all clients."""

    ClientError = ClientError

    def __getattr__(self, name):
        try:
            return _MODELED[name]
        except KeyError:
            raise AttributeError(name) from None

    def from_code(self, error_code):
        return _MODELED.get(error_code, ClientError)


def client_error(meta, operation, head=False):
    """The exception for an error reply's meta ``{"Code", "Message", "HTTPStatusCode"}``.

    A HEAD response has no body, so boto3 reports its HTTP status as the code ("404",
    "Not Found") rather than the S3 code; ``head`` reproduces that.
    """
    status = int(meta.get("HTTPStatusCode", 500))
    code, message = meta.get("Code", "InternalError"), meta.get("Message", "")
    if head:
        code, message = str(status), responses.get(status, "")
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": response_metadata(status),
    }
    return _MODELED.get(code, ClientError)(response, operation)
