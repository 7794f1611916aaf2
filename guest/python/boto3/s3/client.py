"""``boto3.client("s3")``: the S3 calls functions use, with boto3's parameters and responses."""

from boto3.exceptions import NotOffloadedError, missing_attribute, supported
from boto3.s3 import calls, transfer
from boto3.s3.errors import S3Exceptions
from boto3.s3.paginate import ListObjectsV2Paginator
from boto3.s3.params import BODY, operation
from boto3.s3.response import list_result, object_attributes, response_metadata
from botocore.response import StreamingBody
from nexus_shim import Op

SUPPORTED = (
    "get_object",
    "put_object",
    "head_object",
    "delete_object",
    "list_objects_v2",
    "get_paginator",
    "upload_file",
    "download_file",
    "upload_fileobj",
    "download_fileobj",
)

_STR = (str,)


class S3Client:
    """An S3 client whose calls go to the Nexus host; it holds no connection or credentials."""

    exceptions = S3Exceptions()

    @operation(Bucket=_STR, Key=_STR, Range=_STR)
    def get_object(self, Bucket, Key, Range=None):
        params = {"Range": Range} if Range is not None else None
        meta, stream = calls.get("GetObject", Bucket, Key, params)
        response = object_attributes(meta, 206 if Range is not None else 200)
        response["Body"] = StreamingBody(stream, meta.get("ContentLength"))
        return response

    @operation(Bucket=_STR, Key=_STR)
    def head_object(self, Bucket, Key):
        return object_attributes(calls.call(Op.HEAD, "HeadObject", Bucket, Key, head=True), 200)

    @operation(Bucket=_STR, Key=_STR, Body=BODY, ContentType=_STR, Metadata=(dict,))
    def put_object(self, Bucket, Key, Body=b"", ContentType=None, Metadata=None):
        meta = calls.put("PutObject", Bucket, Key, Body, ContentType, Metadata)
        return {"ResponseMetadata": response_metadata(200), **meta}

    @operation(Bucket=_STR, Key=_STR)
    def delete_object(self, Bucket, Key):
        calls.call(Op.DELETE, "DeleteObject", Bucket, Key)
        return {"ResponseMetadata": response_metadata(204)}

    @operation(
        Bucket=_STR,
        Prefix=_STR,
        Delimiter=_STR,
        MaxKeys=(int,),
        ContinuationToken=_STR,
        StartAfter=_STR,
    )
    def list_objects_v2(
        self,
        Bucket,
        Prefix=None,
        Delimiter=None,
        MaxKeys=None,
        ContinuationToken=None,
        StartAfter=None,
    ):
        given = {
            "Prefix": Prefix,
            "Delimiter": Delimiter,
            "MaxKeys": MaxKeys,
            "ContinuationToken": ContinuationToken,
            "StartAfter": StartAfter,
        }
        params = {name: value for name, value in given.items() if value is not None}
        return list_result(calls.call(Op.LIST, "ListObjectsV2", Bucket, params=params))

    def get_paginator(self, operation_name):
        if operation_name != "list_objects_v2":
            raise NotOffloadedError(
                f"the {operation_name} paginator", supported(["list_objects_v2"])
            )
        return ListObjectsV2Paginator(self)

    def upload_file(self, Filename, Bucket, Key, ExtraArgs=None, Callback=None, Config=None):
        transfer.upload_file(Filename, Bucket, Key, ExtraArgs, Callback)

    def upload_fileobj(self, Fileobj, Bucket, Key, ExtraArgs=None, Callback=None, Config=None):
        transfer.upload_fileobj(Fileobj, Bucket, Key, ExtraArgs, Callback)

    def download_file(self, Bucket, Key, Filename, ExtraArgs=None, Callback=None, Config=None):
        transfer.download_file(Bucket, Key, Filename, ExtraArgs, Callback)

    def download_fileobj(self, Bucket, Key, Fileobj, ExtraArgs=None, Callback=None, Config=None):
        transfer.download_fileobj(Bucket, Key, Fileobj, ExtraArgs, Callback)

    def __getattr__(self, name):
        raise missing_attribute("S3", name, supported(SUPPORTED))
