"""Nexus guest channel for Python: a ctypes binding of libnexus_guest.so.

``default_channel()`` opens the process's channel on first use; the boto3 shim speaks the call
protocol of channel/src/wire.rs over it.
"""

from nexus_shim._native import MORE, ChannelError, Op
from nexus_shim.channel import NO_ARGS, Channel, default_channel

__all__ = ["MORE", "NO_ARGS", "Channel", "ChannelError", "Op", "default_channel"]
