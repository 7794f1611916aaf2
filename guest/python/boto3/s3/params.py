"""Parameter checks for client methods, with boto3's messages where boto3 has one.

A parameter boto3 knows but Nexus does not serve (VersionId, SSECustomerKey, ...) must not be
dropped silently: it raises NotOffloadedError naming it.
"""

import abc
import functools
import inspect

from boto3.exceptions import NotOffloadedError, supported
from botocore.exceptions import ParamValidationError


class Readable(abc.ABC):  # noqa: B024 (an ABC only for its subclass hook)
    """Anything with ``read()``: a file-like body."""

    @classmethod
    def __subclasshook__(cls, subclass):
        return True if hasattr(subclass, "read") else NotImplemented


BODY = (bytes, bytearray, memoryview, str, Readable)


def operation(**types):
    """Checks a keyword-only call against the method's signature and ``types`` (name -> tuple
    of types; no parameter takes a bool): required parameters are those without a default."""

    def decorate(method):
        parameters = list(inspect.signature(method).parameters.values())[1:]
        names = [p.name for p in parameters]
        required = [p.name for p in parameters if p.default is p.empty]

        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            if args:
                raise TypeError(f"{method.__name__}() only accepts keyword arguments.")
            for name in kwargs:
                if name not in names:
                    raise NotOffloadedError(
                        f"S3.{method.__name__} parameter {name!r}", supported(names)
                    )
            report = [
                f'Missing required parameter in input: "{n}"' for n in required if n not in kwargs
            ]
            report += [
                f"Invalid type for parameter {name}, value: {value!r}, type: {type(value)}, "
                f"valid types: {', '.join(map(str, types[name]))}"
                for name, value in kwargs.items()
                if isinstance(value, bool) or not isinstance(value, types[name])
            ]
            if report:
                raise ParamValidationError(report="\n".join(report))
            return method(self, **kwargs)

        return checked

    return decorate
