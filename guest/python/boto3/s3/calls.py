"""S3 operations as Nexus calls (channel/src/wire.rs): one-shot calls, Get streams, chunked Puts.

Error replies become ClientErrors named after the boto3 operation; ``head`` reports them the
way boto3 does for HEAD requests (see ``errors.client_error``).
"""

from boto3.s3.errors import client_error
from boto3.s3.stream import ObjectStream, body_source
from nexus_shim import MORE, NO_ARGS, ChannelError, Op, default_channel


def call(op, operation, bucket, key="", params=None, head=False):
    """A call without bodies; returns the reply meta."""
    channel = default_channel()
    lease = channel.lease()
    try:
        reply = channel.call(lease, op, channel.write_args(lease, bucket, key, params))
        if reply.status:
            raise client_error(reply.meta, operation, head)
        return reply.meta
    finally:
        channel.release(lease)


def get(operation, bucket, key, params=None, head=False):
    """Starts a Get; returns the reply meta and an ObjectStream over the body. A whole object
    the host staged for this invocation is read in place, without a call."""
    channel = default_channel()
    if not params:
        staged = channel.staged(bucket, key)
        if staged:
            meta, address, size = staged
            return meta, ObjectStream.staged(address, size)
    lease = channel.lease()
    try:
        reply = channel.call(lease, Op.GET, channel.write_args(lease, bucket, key, params))
        if reply.status:
            raise client_error(reply.meta, operation, head)
    except BaseException:
        channel.release(lease)
        raise
    return reply.meta, ObjectStream(channel, lease, reply)


def put(operation, bucket, key, body, content_type=None, metadata=None, callback=None):
    """Uploads ``body`` (bytes-like, str or binary file-like): one Put, then Write chunks while
    more follow. Returns the final reply meta (``{"ETag"}``). Any failure abandons the upload."""
    given = {"ContentType": content_type, "Metadata": metadata}
    params = {name: value for name, value in given.items() if value is not None}
    channel = default_channel()
    source = body_source(body)
    lease = channel.lease()
    stream = 0
    try:
        args = channel.write_args(lease, bucket, key, params)
        op, start = Op.PUT, args.end
        while True:
            length, last = source.fill(lease.view[start:])
            reply = channel.call(
                lease, op, args, body_len=length, flags=0 if last else MORE, stream=stream
            )
            if reply.status:
                stream = 0  # an error ends the stream on the host
                raise client_error(reply.meta, operation)
            if callback:
                callback(length)
            if last:
                return reply.meta
            if not reply.stream:
                raise ChannelError("Protocol error: a Put with MORE was answered without a stream")
            stream, op, start, args = reply.stream, Op.WRITE, 0, NO_ARGS
    except BaseException:
        if stream:
            _abandon(channel, lease, stream)
        raise
    finally:
        channel.release(lease)


def _abandon(channel, lease, stream):
    try:
        channel.call(lease, Op.CLOSE, stream=stream)
    except ChannelError:
        pass  # the original failure is the one to report
