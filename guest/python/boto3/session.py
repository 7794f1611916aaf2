"""``boto3.session.Session``: makes S3 clients and resources. Credentials, regions, endpoints
and configs are accepted and ignored: they live on the Nexus host, which makes the real calls."""

import os

from boto3.awslambda.client import LambdaClient
from boto3.exceptions import NotOffloadedError, missing_attribute, supported
from boto3.s3.client import S3Client
from boto3.s3.resource import S3Resource


class Session:
    def __init__(
        self,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        aws_session_token=None,
        region_name=None,
        botocore_session=None,
        profile_name=None,
        aws_account_id=None,
    ):
        self.region_name = (
            region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        )

    def client(
        self,
        service_name,
        region_name=None,
        api_version=None,
        use_ssl=True,
        verify=None,
        endpoint_url=None,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        aws_session_token=None,
        config=None,
        aws_account_id=None,
    ):
        if service_name == "lambda":
            return LambdaClient()
        _check_service(service_name)
        return S3Client()

    def resource(
        self,
        service_name,
        region_name=None,
        api_version=None,
        use_ssl=True,
        verify=None,
        endpoint_url=None,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        aws_session_token=None,
        config=None,
    ):
        _check_service(service_name)
        return S3Resource(S3Client())

    def __getattr__(self, name):
        raise missing_attribute("Session", name, supported(["client", "resource", "region_name"]))


def _check_service(service_name):
    if service_name != "s3":
        raise NotOffloadedError(f"service {service_name!r}", " (only 's3'; 'lambda' clients)")
