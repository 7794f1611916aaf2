"""boto3's own exceptions, plus the one the shim raises for what Nexus does not offload."""


class Boto3Error(Exception):
    """Base class for all Boto3 errors."""


class S3UploadFailedError(Boto3Error):
    """upload_file failed; the message carries the ClientError's."""


class NotOffloadedError(Boto3Error, NotImplementedError):
    """A service, call or parameter the Nexus shim does not serve. The function must not run
    on Nexus until it stops using it (or Nexus learns it)."""

    def __init__(self, what, detail=""):
        super().__init__(f"nexus boto3 shim: {what} is not offloaded by Nexus{detail}")


class NotOffloadedAttributeError(NotOffloadedError, AttributeError):
    """An attribute the shim lacks. Also an AttributeError, so ``hasattr`` and
    ``getattr(obj, name, default)`` answer as they do for any object."""


def missing_attribute(owner, name, detail=""):
    """The error a shim ``__getattr__`` raises for ``owner.name``. Private names stay plain
    AttributeErrors: Python's own protocols (copy, pickle, ...) probe them."""
    if name.startswith("_"):
        return AttributeError(name)
    return NotOffloadedAttributeError(f"{owner}.{name}", detail)


def supported(names):
    """The detail of a NotOffloadedError listing what is supported instead."""
    return "; supported: " + ", ".join(names)
