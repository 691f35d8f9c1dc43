"""
The flow rules of one peer connection: how a large message or forward is
cut into calls (L{chunks}, L{forward_calls}), reassembly of chunk streams
with their bounds (L{ChunkStreams}), the bound on what is queued behind a
full send buffer (L{SendGate}), and complaints logged once
(L{Complaints}).

Plain objects, told what happened; no AMP command, no logging, no timer.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from kvpaxos.node.peer_commands import (
    CHUNK_BYTES,
    FORWARD_LIST_BYTES,
    ChunkError,
    Forward,
    ForwardChunk,
)

#: How many distinct handshake refusals one network logs; later ones are
#: only counted (a hostile peer must not be able to grow the set forever).
_COMPLAINTS_MAX = 64


class ChunkStreams:
    """Chunk streams being reassembled on one connection."""

    def __init__(self, bytes_max: int, streams_max: int) -> None:
        self._bytes_max = bytes_max
        self._streams_max = streams_max
        self._parts: dict[int, list[bytes]] = {}
        self._bytes = 0

    def add(self, stream: int, index: int, last: bool, data: bytes):
        """
        Add one piece; return the whole once C{last} arrives, else None.
        @raise ChunkError: out of order, too large or too many streams.
        """
        parts = self._parts.get(stream)
        if parts is None:
            if index != 0:
                raise ChunkError(f"stream {stream} starts at piece {index}")
            if len(self._parts) >= self._streams_max:
                raise ChunkError(f"more than {self._streams_max} open streams")
            parts = self._parts[stream] = []
        elif index != len(parts):
            raise ChunkError(f"stream {stream}: piece {index}, not {len(parts)}")
        self._bytes += len(data)
        if self._bytes > self._bytes_max:
            raise ChunkError(f"streams exceed {self._bytes_max} bytes")
        parts.append(data)
        if not last:
            return None
        del self._parts[stream]
        whole = b"".join(parts)
        self._bytes -= len(whole)
        return whole


@implementer(IPushProducer)
class SendGate:
    """
    Registered with the transport to learn when its send buffer is full;
    while it is, at most C{bytes_max} more are queued.
    """

    def __init__(self, transport, bytes_max: int) -> None:
        self._transport = transport
        self._bytes_max = bytes_max
        self.paused = False
        self._queued = 0

    def admit(self, size: int) -> bool:
        """Return whether C{size} more bytes may be written now."""
        if not self.paused:
            return True
        if self._queued + size > self._bytes_max:
            return False
        self._queued += size
        return True

    def pauseProducing(self) -> None:
        # Called on every write while the buffer is full: count from the first.
        if not self.paused:
            self.paused = True
            self._queued = 0

    def resumeProducing(self) -> None:
        self.paused = False
        # A registered producer keeps a closing transport open: let go.
        if getattr(self._transport, "disconnecting", False):
            self._transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True


class Complaints:
    """
    Which complaints were logged already: each is logged the first time,
    then only counted, and at most C{limit} distinct ones are remembered.
    """

    def __init__(self, limit: int = _COMPLAINTS_MAX) -> None:
        self._limit = limit
        self._seen: set = set()

    def first(self, key) -> bool:
        """Return whether C{key} is new (and remember it, if there is room)."""
        if key in self._seen:
            return False
        if len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True

    def clear(self) -> None:
        """Forget every complaint (the trouble is over: log the next one)."""
        self._seen.clear()


def chunks(data: bytes, stream: int) -> list[dict]:
    """
    Return the arguments of the chunk commands (L{PaxosChunk} or
    L{ForwardChunk}) that carry C{data} as stream C{stream}, in order.
    """
    last = (len(data) - 1) // CHUNK_BYTES
    return [
        dict(
            stream=stream,
            index=index,
            last=index == last,
            data=data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES],
        )
        for index in range(last + 1)
    ]


def forward_calls(commands: list, stream_ids) -> list[tuple]:
    """
    Return the calls that forward C{commands}, in order, each as
    C{(command class, arguments, decides)}: L{Forward} lists kept below
    AMP's value cap, and a command too large for one as L{ForwardChunk}s
    (streams numbered from the iterator C{stream_ids}).  C{decides} lists
    the commands whose fate the call's answer decides: for a chunked
    command, only the last chunk's call (the peer proposes it only then).
    """
    calls: list[tuple] = []
    group: list = []
    size = 0
    for command in commands:
        if len(command) + 2 > FORWARD_LIST_BYTES:
            if group:
                calls.append((Forward, dict(commands=group), group))
                group, size = [], 0
            pieces = chunks(command, next(stream_ids))
            for n, piece in enumerate(pieces, 1):
                calls.append((ForwardChunk, piece, [command] if n == len(pieces) else []))
            continue
        if size + len(command) + 2 > FORWARD_LIST_BYTES:
            calls.append((Forward, dict(commands=group), group))
            group, size = [], 0
        group.append(command)
        size += len(command) + 2
    if group:
        calls.append((Forward, dict(commands=group), group))
    return calls
