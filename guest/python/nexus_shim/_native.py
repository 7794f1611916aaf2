"""ctypes binding of libnexus_guest.so, the guest client's C ABI (guest/client/src/ffi.rs).

The library is looked up in order: ``$NEXUS_GUEST_LIB``, ``/usr/lib/nexus/libnexus_guest.so``
(the guest image), then ``target/release`` and ``target/debug`` of the repository this file
lives in (a development checkout). It is loaded on first use, so importing the shim never fails.
"""

import ctypes
import enum
import functools
import os
from pathlib import Path

_IMAGE_PATH = Path("/usr/lib/nexus/libnexus_guest.so")
_REPO = Path(__file__).resolve().parents[3]
_LIB_NAME = "libnexus_guest.so"


# Op codes and flags mirror channel/src/wire.rs, which is the source of truth.
class Op(enum.IntEnum):
    PING = 1
    HEAD = 2
    GET = 3
    READ = 4
    PUT = 5
    WRITE = 6
    CLOSE = 7
    DELETE = 8
    LIST = 9
    INVOKE = 10


#: Put/Write: more chunks follow. Reply: the stream has more to read.
MORE = 1


class ChannelError(RuntimeError):
    """The guest library failed: no region, no backend, no free buffer, or a protocol fault."""


class NexusReply(ctypes.Structure):
    """The answer to a call (``Reply`` in guest/client/src/client.rs)."""

    _fields_ = [
        ("status", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("meta_len", ctypes.c_uint64),
        ("body_len", ctypes.c_uint64),
        ("object_size", ctypes.c_uint64),
        ("stream", ctypes.c_uint64),
    ]


class NexusInvocation(ctypes.Structure):
    """An invocation taken from the host (``Invocation`` in guest/client/src/invocations.rs)."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("buffer", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("ptr", ctypes.c_void_p),
        ("len", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
    ]


class NexusStaged(ctypes.Structure):
    """Where a staged object lies (``NexusStaged`` in guest/client/src/ffi.rs)."""

    _fields_ = [
        ("ptr", ctypes.c_void_p),
        ("len", ctypes.c_uint64),
        ("meta_len", ctypes.c_uint64),
    ]


def _candidates():
    explicit = os.environ.get("NEXUS_GUEST_LIB")
    if explicit:
        return [Path(explicit)]
    return [_IMAGE_PATH] + [
        _REPO / "target" / profile / _LIB_NAME for profile in ("release", "debug")
    ]


@functools.cache
def library():
    """The loaded library with every function's signature declared."""
    tried = _candidates()
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise ChannelError(
            "Cannot find the Nexus guest library; looked at "
            + ", ".join(map(str, tried))
            + ". Set NEXUS_GUEST_LIB or build it with `cargo build -p nexus-guest`."
        )
    lib = ctypes.CDLL(str(path))
    client = ctypes.c_void_p
    lib.nexus_open.argtypes = [ctypes.c_char_p]
    lib.nexus_open.restype = client
    lib.nexus_close.argtypes = [client]
    lib.nexus_close.restype = None
    lib.nexus_last_error.argtypes = []
    lib.nexus_last_error.restype = ctypes.c_char_p
    lib.nexus_buffer_size.argtypes = [client]
    lib.nexus_buffer_size.restype = ctypes.c_uint64
    lib.nexus_lease.argtypes = [
        client,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.POINTER(ctypes.c_uint8)),
    ]
    lib.nexus_lease.restype = ctypes.c_int
    lib.nexus_release.argtypes = [client, ctypes.c_uint32]
    lib.nexus_release.restype = ctypes.c_int
    lib.nexus_call.argtypes = [
        client,
        ctypes.c_uint16,  # op
        ctypes.c_uint16,  # flags
        ctypes.c_uint32,  # buffer
        ctypes.c_uint16,  # bucket_len
        ctypes.c_uint16,  # key_len
        ctypes.c_uint32,  # params_len
        ctypes.c_uint64,  # body_len
        ctypes.c_uint64,  # stream
        ctypes.POINTER(NexusReply),
    ]
    lib.nexus_call.restype = ctypes.c_int
    lib.nexus_staged.argtypes = [
        client,
        ctypes.c_char_p,  # bucket
        ctypes.c_uint64,
        ctypes.c_char_p,  # key
        ctypes.c_uint64,
        ctypes.c_char_p,  # meta out
        ctypes.c_uint64,  # its capacity
        ctypes.POINTER(NexusStaged),
    ]
    lib.nexus_staged.restype = ctypes.c_int
    lib.nexus_ready.argtypes = [client]
    lib.nexus_ready.restype = ctypes.c_int
    lib.nexus_next_invocation.argtypes = [client, ctypes.c_uint64, ctypes.POINTER(NexusInvocation)]
    lib.nexus_next_invocation.restype = ctypes.c_int
    lib.nexus_finish_invocation.argtypes = [
        client,
        ctypes.POINTER(NexusInvocation),
        ctypes.c_uint32,  # status: 0 result, 1 handler error
        ctypes.c_uint64,  # result length
    ]
    lib.nexus_finish_invocation.restype = ctypes.c_int
    return lib


def last_error(lib):
    """The library's last error message on this thread, as a ChannelError."""
    message = lib.nexus_last_error() or b""
    return ChannelError(message.decode("utf-8", "replace") or "Nexus guest library call failed")
