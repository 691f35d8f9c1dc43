"""
The one reader of hostile bytes (L{Reader}) and the fixed-width layouts
every format of L{kvpaxos.encoding} is built from.

All integers are big-endian and unsigned (network order; keys built from
them sort as the numbers do, which LMDB relies on).  A L{Reader} checks
every read against the bytes that remain, every count against the least
room its items take, before anything is allocated, and raises the error
class its caller chose (whose fault the bytes are: see
L{kvpaxos.encoding.errors}), never C{struct.error} or C{IndexError}.

Nothing here knows what a value means; no I/O.
"""

from __future__ import annotations

import struct
from struct import Struct

U8 = Struct(">B")
U16 = Struct(">H")
U32 = Struct(">I")
U64 = Struct(">Q")


def as_bytes(data, error) -> bytes:
    """
    Return C{data} (bytes, bytearray or memoryview) as C{bytes}.

    @raise error: C{data} is not bytes-like.
    """
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise error(f"not bytes: {type(data).__name__}") from None


class Reader:
    """
    Reads fields off C{data} from C{offset} on.  Running past the end, a
    count the data cannot hold, a bad flag or trailing bytes raise
    C{error(message)}, the message starting with C{what}.

    C{data} should be C{bytes} (slices are then copies, never views of a
    buffer that may change); L{as_bytes} makes it so.
    """

    __slots__ = ("data", "offset", "error", "what")

    def __init__(self, data, error, what: str, offset: int = 0) -> None:
        self.data = data
        self.offset = offset
        self.error = error
        self.what = what

    def fail(self, message: str):
        """Raise the reader's error about its input."""
        raise self.error(f"{self.what}: {message}")

    def left(self) -> int:
        """Return how many bytes remain."""
        return len(self.data) - self.offset

    def need(self, size: int) -> None:
        """Refuse unless C{size} more bytes remain."""
        if size > len(self.data) - self.offset:
            self.fail(f"truncated: needs {self.offset + size} bytes, has {len(self.data)}")

    def unpack(self, layout: Struct) -> tuple:
        """Read the fields of C{layout}."""
        offset = self.offset
        end = offset + layout.size
        if end > len(self.data):
            self.fail(f"truncated: needs {end} bytes, has {len(self.data)}")
        self.offset = end
        return layout.unpack_from(self.data, offset)

    def u8(self) -> int:
        return self.unpack(U8)[0]

    def u16(self) -> int:
        return self.unpack(U16)[0]

    def u32(self) -> int:
        return self.unpack(U32)[0]

    def u64(self) -> int:
        return self.unpack(U64)[0]

    def flag(self) -> bool:
        """Read a boolean byte: 0 or 1, nothing else."""
        value = self.u8()
        if value > 1:
            self.fail(f"flag byte {value}")
        return value == 1

    def take(self, size: int) -> bytes:
        """Read C{size} bytes."""
        offset = self.offset
        end = offset + size
        if end > len(self.data):
            self.fail(f"truncated: needs {end} bytes, has {len(self.data)}")
        self.offset = end
        return bytes(self.data[offset:end])

    def u16_bytes(self) -> bytes:
        """Read bytes prefixed by their u16 length."""
        return self.take(self.u16())

    def u32_bytes(self) -> bytes:
        """Read bytes prefixed by their u32 length."""
        return self.take(self.u32())

    def u64_bytes(self) -> bytes:
        """Read bytes prefixed by their u64 length."""
        return self.take(self.u64())

    def count(self, layout: Struct, item_bytes: int) -> int:
        """
        Read a count with C{layout}, refusing one whose items, each at
        least C{item_bytes} long, cannot fit in what remains.
        """
        (count,) = self.unpack(layout)
        if count * item_bytes > len(self.data) - self.offset:
            self.fail(f"{count} items exceed the data")
        return count

    def u32s(self, count: int) -> tuple:
        """Read C{count} u32s (the caller checked C{count} with L{count})."""
        return self.unpack(Struct(f">{count}I"))

    def code(self, table: dict, what: str):
        """Read a u8 code and return what C{table} maps it to."""
        code = self.u8()
        found = table.get(code)
        if found is None:
            self.fail(f"unknown {what} {code}")
        return found

    def end(self) -> None:
        """Refuse trailing bytes."""
        if self.offset != len(self.data):
            self.fail(f"{len(self.data) - self.offset} trailing bytes")


def pack_u32s(values) -> bytes:
    """Return C{len(values)} as a u32 followed by each value as a u32."""
    return struct.pack(f">I{len(values)}I", len(values), *values)
