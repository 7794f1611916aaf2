"""Shapes reply meta into boto3 response dicts: metadata, datetimes."""

import re
from datetime import UTC, datetime, timedelta, timezone

from nexus_shim import ChannelError

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def response_metadata(status):
    return {"HTTPStatusCode": status, "HTTPHeaders": {}, "RetryAttempts": 0}


def timestamp(text):
    """An RFC 3339 timestamp as an aware UTC datetime, as boto3 returns them."""
    match = _RFC3339.match(text)
    if not match:
        raise ChannelError(f"Protocol error: {text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    offset = timedelta(0)
    if sign:
        offset = (1 if sign == "+" else -1) * timedelta(hours=int(off_h), minutes=int(off_m))
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        micros,
        tzinfo=timezone(offset),
    )
    return moment.astimezone(UTC)


def object_attributes(meta, status):
    """A Head/Get reply meta as a head_object response (get_object adds Body)."""
    response = {"ResponseMetadata": response_metadata(status), **meta}
    if "LastModified" in meta:
        response["LastModified"] = timestamp(meta["LastModified"])
    return response


def list_result(meta):
    """A List reply meta as a list_objects_v2 response."""
    response = {"ResponseMetadata": response_metadata(200), **meta}
    if "Contents" in meta:
        response["Contents"] = [
            {**item, "LastModified": timestamp(item["LastModified"])} for item in meta["Contents"]
        ]
    return response
