"""``botocore.response.StreamingBody``: the ``Body`` of a get_object response.

As in botocore it wraps a raw stream (here a Nexus object stream reading chunks straight from
the mapped channel buffer) and checks that exactly ``content_length`` bytes arrive.
"""

from io import IOBase

from botocore.exceptions import IncompleteReadError


class StreamingBody(IOBase):
    _DEFAULT_CHUNK_SIZE = 1024

    def __init__(self, raw_stream, content_length):
        self._raw_stream = raw_stream
        self._content_length = content_length
        self._amount_read = 0

    def __del__(self):
        # IOBase's destructor would close the raw stream; the raw stream cleans up itself.
        pass

    def readable(self):
        return True

    def read(self, amt=None):
        """Reads at most ``amt`` bytes, or everything left when ``amt`` is None."""
        chunk = self._raw_stream.read(amt)
        self._amount_read += len(chunk)
        if amt is None or (not chunk and amt > 0):
            self._verify_content_length()
        return chunk

    def readinto(self, b):
        """Reads into a writable bytes-like object; returns the number of bytes read."""
        amount = self._raw_stream.readinto(b)
        self._amount_read += amount
        if amount == 0 and len(b) > 0:
            self._verify_content_length()
        return amount

    def readlines(self):
        return list(self.iter_lines(keepends=True))

    def __iter__(self):
        return self.iter_chunks(self._DEFAULT_CHUNK_SIZE)

    def __next__(self):
        chunk = self.read(self._DEFAULT_CHUNK_SIZE)
        if chunk:
            return chunk
        raise StopIteration()

    next = __next__

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def iter_lines(self, chunk_size=_DEFAULT_CHUNK_SIZE, keepends=False):
        pending = b""
        for chunk in self.iter_chunks(chunk_size):
            lines = (pending + chunk).splitlines(True)
            for line in lines[:-1]:
                yield line.splitlines(keepends)[0]
            pending = lines[-1]
        if pending:
            yield pending.splitlines(keepends)[0]

    def iter_chunks(self, chunk_size=_DEFAULT_CHUNK_SIZE):
        while True:
            chunk = self.read(chunk_size)
            if chunk == b"":
                break
            yield chunk

    def _verify_content_length(self):
        if self._content_length is not None and self._amount_read != int(self._content_length):
            raise IncompleteReadError(
                actual_bytes=self._amount_read, expected_bytes=int(self._content_length)
            )

    def tell(self):
        return self._raw_stream.tell()

    def close(self):
        """Closes the stream; a Nexus stream gives its channel buffer back."""
        self._raw_stream.close()
