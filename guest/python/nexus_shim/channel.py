"""The guest end of a Nexus region: leased buffers and blocking calls (channel/src/wire.rs).

A call writes ``[bucket][key][params JSON][body]`` at the start of a leased buffer and gets
``[meta JSON][body]`` back in the same buffer. Reply bodies are exposed as memoryviews over the
mapped buffer, so nothing is copied until the caller decides to. One ``Channel`` serves a whole
process (``default_channel()``); the Rust client serialises calls, so threads may share it.
"""

import ctypes
import gc
import json
import os
import threading
import time
from typing import NamedTuple

from nexus_shim._native import (
    MORE,
    ChannelError,
    NexusInvocation,
    NexusReply,
    NexusStaged,
    last_error,
    library,
)

_U16 = 0xFFFF
#: Room for a staged object's meta (its Get reply meta; S3 caps user metadata at 2 KiB).
_STAGED_META_BYTES = 16 << 10
#: How long a lease waits for another thread to give a buffer back before failing.
LEASE_WAIT_S = 10.0


class Lease:
    """A leased buffer: its index, its address and a writable byte view of all of it."""

    __slots__ = ("index", "address", "view")

    def __init__(self, index, address, size):
        self.index = index
        self.address = address
        self.view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")


class Args(NamedTuple):
    """Lengths of the bucket, key and params written at the start of a buffer."""

    bucket_len: int = 0
    key_len: int = 0
    params_len: int = 0

    @property
    def end(self):
        """Offset of the body."""
        return self.bucket_len + self.key_len + self.params_len


#: Stream calls (Read, Write, Close) carry no bucket, key or params.
NO_ARGS = Args()


class Reply:
    """A completion: status, parsed meta, and the body as a view into the leased buffer."""

    __slots__ = ("status", "more", "meta", "body", "body_start", "object_size", "stream")

    def __init__(self, raw, lease):
        self.status = raw.status
        self.more = bool(raw.flags & MORE)
        self.object_size = raw.object_size
        self.stream = raw.stream
        self.body_start = raw.meta_len
        self.body = lease.view[raw.meta_len : raw.meta_len + raw.body_len]
        try:
            self.meta = json.loads(lease.view[: raw.meta_len].tobytes()) if raw.meta_len else {}
        except ValueError as e:
            raise ChannelError(f"Protocol error: reply meta is not JSON ({e})") from None


class Channel:
    """A client on one region; ``path`` None lets the library find it ($NEXUS_REGION or ivshmem)."""

    def __init__(self, path=None):
        self._lib = library()
        self._client = self._lib.nexus_open(os.fsencode(path) if path is not None else None)
        if not self._client:
            raise last_error(self._lib)
        self.buffer_size = self._lib.nexus_buffer_size(self._client)
        self._freed = threading.Condition(threading.RLock())
        self._per_thread = threading.local()

    def lease(self):
        """Leases a buffer. When all are taken, unreachable response bodies (e.g. caught in
        reference cycles) are collected, then the call waits up to LEASE_WAIT_S for another
        thread to give one back."""
        lease = self._try_lease()
        if lease:
            return lease
        with self._freed:
            deadline = time.monotonic() + LEASE_WAIT_S
            while True:
                gc.collect()
                lease = self._try_lease()
                if lease:
                    return lease
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise last_error(self._lib)
                self._freed.wait(remaining)

    def _try_lease(self):
        index = ctypes.c_uint32()
        address = ctypes.POINTER(ctypes.c_uint8)()
        if self._lib.nexus_lease(self._client, ctypes.byref(index), ctypes.byref(address)) != 0:
            return None
        return Lease(index.value, ctypes.addressof(address.contents), self.buffer_size)

    def release(self, lease):
        """Returns a leased buffer; its view must not be used afterwards."""
        with self._freed:
            if self._lib.nexus_release(self._client, lease.index) != 0:
                raise last_error(self._lib)
            self._freed.notify()

    def write_args(self, lease, bucket, key="", params=None):
        """Writes bucket, key and params JSON at the start of the buffer; the body goes at
        ``Args.end``."""
        parts = [
            bucket.encode("utf-8"),
            key.encode("utf-8"),
            json.dumps(params, separators=(",", ":")).encode("utf-8") if params else b"",
        ]
        args = Args(*map(len, parts))
        if args.bucket_len > _U16 or args.key_len > _U16 or args.end > self.buffer_size:
            raise ChannelError(
                f"Bucket, key and parameters take {args.end} bytes; "
                f"they must fit one {self.buffer_size}-byte channel buffer"
            )
        offset = 0
        for part in parts:
            ctypes.memmove(lease.address + offset, part, len(part))
            offset += len(part)
        return args

    def call(self, lease, op, args=NO_ARGS, body_len=0, flags=0, stream=0):
        """Sends a call whose request already sits in ``lease`` and waits for its reply."""
        raw = NexusReply()
        rc = self._lib.nexus_call(
            self._client,
            op,
            flags,
            lease.index,
            args.bucket_len,
            args.key_len,
            args.params_len,
            body_len,
            stream,
            ctypes.byref(raw),
        )
        if rc != 0:
            raise last_error(self._lib)
        return Reply(raw, lease)

    def staged(self, bucket, key):
        """``(meta, address, size)`` of ``bucket/key`` if the host staged it for the running
        invocation (channel/src/staging.rs), else None. No call is made."""
        bucket, key = bucket.encode("utf-8"), key.encode("utf-8")
        # Every get asks, so the meta buffer is made once per thread, not per call.
        meta = getattr(self._per_thread, "staged_meta", None)
        if meta is None:
            meta = self._per_thread.staged_meta = ctypes.create_string_buffer(_STAGED_META_BYTES)
        out = NexusStaged()
        rc = self._lib.nexus_staged(
            self._client, bucket, len(bucket), key, len(key), meta, len(meta), ctypes.byref(out)
        )
        if rc < 0:
            raise last_error(self._lib)
        if rc == 0:
            return None
        return json.loads(ctypes.string_at(meta, out.meta_len)), out.ptr or 0, out.len

    def ready(self):
        """Tells the host this process is ready for invocations."""
        if self._lib.nexus_ready(self._client) != 0:
            raise last_error(self._lib)

    def next_invocation(self, timeout_s):
        """Waits for an invocation; returns ``(invocation, event bytes)`` or None on timeout."""
        invocation = NexusInvocation()
        rc = self._lib.nexus_next_invocation(
            self._client, int(timeout_s * 1000), ctypes.byref(invocation)
        )
        if rc < 0:
            raise last_error(self._lib)
        if rc == 0:
            return None
        return invocation, ctypes.string_at(invocation.ptr, invocation.len)

    def finish_invocation(self, invocation, ok, result):
        """Writes ``result`` (bytes) into the invocation's buffer and hands it to the host; a
        result too large for the buffer becomes an error result."""
        if len(result) > invocation.capacity:
            ok, result = False, json.dumps(
                {
                    "errorType": "Runtime.ResultTooLarge",
                    "errorMessage": f"Result of {len(result)} bytes exceeds the "
                    f"{invocation.capacity}-byte invocation buffer",
                    "stackTrace": [],
                }
            ).encode()
        ctypes.memmove(invocation.ptr, result, len(result))
        status = 0 if ok else 1
        rc = self._lib.nexus_finish_invocation(
            self._client, ctypes.byref(invocation), status, len(result)
        )
        if rc != 0:
            raise last_error(self._lib)


_default = None
_default_lock = threading.Lock()
_forked = False


def _forget_after_fork():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_forget_after_fork)


def default_channel():
    """The process's channel, opened on first use."""
    global _default
    if _forked:
        raise ChannelError(
            "The Nexus channel belongs to the parent process; "
            "a forked child cannot make S3 calls (make them in the parent)"
        )
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Channel()
    return _default
