"""Object bodies over the channel: reading a Get stream, and sources that fill a Put stream.

A Get reply holds the first chunk after its meta; while the reply says MORE, ``Read`` calls
refill the same leased buffer from offset 0. An object the host staged for the invocation is
one chunk in the region's staging area. Reads copy straight out of the mapped region, once.
"""

import ctypes

from boto3.s3.errors import client_error
from nexus_shim import Op

# A bytes object is filled in place before anyone else sees it, the documented way to build
# one in C (PyBytes_FromStringAndSize with NULL), so a read spanning chunks copies each byte once.
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_new_bytes.restype = ctypes.py_object
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.argtypes = [ctypes.py_object]
_bytes_address.restype = ctypes.c_void_p

# A large body is copied into memory nobody has touched yet: asking for transparent huge pages
# first makes that one page fault per 2 MiB instead of one per 4 KiB. Advice only; a kernel
# without THP (or not in "madvise" mode) ignores it.
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = ctypes.CDLL(None, use_errno=True).madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _advise_huge_pages(address, n):
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + n) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _madvise(start, end - start, _MADV_HUGEPAGE)


class ObjectStream:
    """The raw stream under a get_object Body. A streamed object owns one leased buffer, given
    back when the stream is exhausted or closed (or collected); a staged one is a single chunk
    in the region's staging area and needs neither a buffer nor calls."""

    def __init__(self, channel, lease, reply):
        self._channel = channel
        self._lease = lease
        self._size = reply.object_size
        self._position = 0
        self._take(reply)

    @classmethod
    def staged(cls, address, size):
        """The stream over ``size`` bytes the host staged at ``address`` (read in place)."""
        stream = cls.__new__(cls)
        stream._channel, stream._lease, stream._size, stream._position = None, None, size, 0
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        stream._chunk, stream._chunk_address, stream._offset, stream._stream = view, address, 0, 0
        return stream

    def _take(self, reply):
        self._chunk, self._offset = reply.body, 0
        self._chunk_address = self._lease.address + reply.body_start
        self._stream = reply.stream if reply.more else 0
        self._release_if_done()

    def _release_if_done(self):
        if self._offset == len(self._chunk) and not self._stream and self._lease:
            self._chunk, self._offset = memoryview(b""), 0
            self._channel.release(self._lease)
            self._lease = None

    def _available(self):
        """Bytes left in the current chunk, fetching the next chunk if this one is used up."""
        if self._offset == len(self._chunk) and self._stream:
            reply = self._channel.call(self._lease, Op.READ, stream=self._stream)
            if reply.status:
                self._stream = 0  # an error ends the stream on the host
                self._offset = len(self._chunk)
                self._release_if_done()
                raise client_error(reply.meta, "GetObject")
            self._take(reply)
        return len(self._chunk) - self._offset

    def _consume(self, n):
        self._offset += n
        self._position += n
        self._release_if_done()

    def read(self, amt=None):
        """Up to ``amt`` bytes (all that is left when None); fewer only at the end."""
        left = self._size - self._position
        n = left if amt is None or amt < 0 else min(amt, left)
        if n <= 0 or not self._available():
            return b""
        if n <= len(self._chunk) - self._offset and n < _HUGE_PAGE:
            data = self._chunk[self._offset : self._offset + n].tobytes()
            self._consume(n)
            return data
        data = _new_bytes(None, n)
        address = _bytes_address(data)
        _advise_huge_pages(address, n)
        filled = self._copy_to_address(address, n)
        return data if filled == n else data[:filled]

    def _copy_to_address(self, address, n):
        filled = 0
        while filled < n:
            k = min(self._available(), n - filled)
            if not k:
                break
            ctypes.memmove(address + filled, self._chunk_address + self._offset, k)
            filled += k
            self._consume(k)
        return filled

    def readinto(self, b):
        target = memoryview(b).cast("B")
        filled = 0
        while filled < len(target):
            k = min(self._available(), len(target) - filled)
            if not k:
                break
            target[filled : filled + k] = self._chunk[self._offset : self._offset + k]
            filled += k
            self._consume(k)
        return filled

    def write_to(self, fileobj, callback=None):
        """Writes the rest of the object to ``fileobj``, chunk views straight from the buffer."""
        while k := self._available():
            fileobj.write(self._chunk[self._offset : self._offset + k])
            self._consume(k)
            if callback:
                callback(k)

    def tell(self):
        return self._position

    def close(self):
        """Abandons the rest of the stream and gives the buffer back."""
        if not self._lease:
            return
        stream, self._stream = self._stream, 0
        self._offset = len(self._chunk)
        try:
            if stream:
                self._channel.call(self._lease, Op.CLOSE, stream=stream)
        finally:
            self._release_if_done()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown or a dead backend: nothing left to tell
            pass


class BytesSource:
    """A bytes-like or str body, cut into chunks."""

    def __init__(self, body):
        self._view = memoryview(body.encode("utf-8") if isinstance(body, str) else body).cast("B")
        self._offset = 0

    def fill(self, target):
        """Copies the next chunk into ``target``; returns (length, whether it is the last)."""
        n = min(len(target), len(self._view) - self._offset)
        target[:n] = self._view[self._offset : self._offset + n]
        self._offset += n
        return n, self._offset == len(self._view)


class FileSource:
    """A binary file-like body, read straight into the buffer when it has ``readinto``."""

    def __init__(self, fileobj):
        self._file = fileobj
        self._peeked = b""

    def _read_into(self, target):
        if hasattr(self._file, "readinto"):
            return self._file.readinto(target) or 0
        data = self._file.read(len(target))
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"Upload bodies must be binary; read() returned {type(data).__name__}")
        target[: len(data)] = data
        return len(data)

    def fill(self, target):
        """Fills ``target`` from the file; returns (length, whether the file is exhausted).
        A full chunk peeks one byte ahead so that the last chunk is known to be the last."""
        n = len(self._peeked)
        target[:n], self._peeked = self._peeked, b""
        while n < len(target):
            k = self._read_into(target[n:])
            if not k:
                return n, True
            n += k
        self._peeked = self._file.read(1)
        return n, not self._peeked


def body_source(body):
    return FileSource(body) if hasattr(body, "read") else BytesSource(body)
