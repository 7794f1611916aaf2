"""Nexus stand-in for boto3: S3 calls go to the Nexus host through shared memory.

Handler code keeps using ``boto3.client("s3")``, ``boto3.resource("s3")`` and
``boto3.session.Session``; other services, calls and parameters fail loudly with
``boto3.exceptions.NotOffloadedError``.
"""

from boto3.exceptions import missing_attribute, supported
from boto3.session import Session

DEFAULT_SESSION = None


def setup_default_session(**kwargs):
    global DEFAULT_SESSION
    DEFAULT_SESSION = Session(**kwargs)


def _get_default_session():
    if DEFAULT_SESSION is None:
        setup_default_session()
    return DEFAULT_SESSION


def client(*args, **kwargs):
    return _get_default_session().client(*args, **kwargs)


def resource(*args, **kwargs):
    return _get_default_session().resource(*args, **kwargs)


def __getattr__(name):
    raise missing_attribute(
        "boto3", name, supported(["client", "resource", "Session", "setup_default_session"])
    )
