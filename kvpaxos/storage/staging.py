"""
The provider-independent halves of a snapshot transfer in chunks (issue
11), shared by both store providers:

  - L{ChunkCutter}: the sender's side.  Cuts the stored C{(table, key,
    value)} triples of one consistent read (in key order, records, then
    sessions, then the auth table) into chunks' records of at most a given size
    (L{kvpaxos.encoding.transfer.encode_records}), splitting a value larger
    than a chunk into pieces.  It holds at most one value beyond the chunk
    it builds.
  - L{StagingCheck}: the receiver's side.  Takes chunks' records in order,
    checks every record as L{kvpaxos.encoding.state.decode_snapshot} would
    (keys in order and in bounds, records and sessions that decode, revisions
    and client ids possible, auth entries within the auth table's bounds)
    and returns the complete ones to stage.  It holds at most one value's
    pieces.
  - L{StagedState}: the C{Snapshot.data} of a staged transfer, the handle
    the core passes through to C{Ready.install_snapshot}.

No LMDB, no thread, no I/O here: the providers read and write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from kvpaxos.encoding import state
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.reader import U64
from kvpaxos.encoding.transfer import (
    RECORDS_HEAD_BYTES,
    TABLE_AUTH,
    TABLE_RECORDS,
    TABLE_SESSIONS,
    decode_records,
    encode_records,
    item_bytes,
)
from kvpaxos.kv.commands import MAX_KEY_BYTES


@dataclass(frozen=True)
class StagedState:
    """
    The data of a L{kvpaxos.paxos.messages.Snapshot} whose state a store
    staged from transfer C{transfer} (a C{(peer, transfer id)}): installing
    that snapshot replaces the store's state with the staged one.  Never
    sent, never stored: a store that installed it is its own snapshot.
    """

    transfer: tuple
    revision: int
    next_client_id: int


class StreamInterrupted(Exception):
    """
    A snapshot stream's read transaction is gone (the store's map grew, or
    the store closed): the transfer must start over from a new one.
    """


class ChunkCutter:
    """
    Cuts C{triples} (an iterator of C{(table, key, value)}, in the order
    the receiver checks) into chunks' records.
    """

    def __init__(self, triples: Iterator) -> None:
        self._triples = triples
        #: (table, key, value, offset): the value not wholly cut yet.
        self._pending: Optional[tuple] = None
        self.done = False

    def next_chunk(self, max_bytes: int) -> Optional[bytes]:
        """
        Return the next chunk's records, at most C{max_bytes} (more than a
        key's room), or None once everything was cut.
        """
        if self.done:
            return None
        room = max_bytes - RECORDS_HEAD_BYTES
        items: list = []
        table = None
        while True:
            pending = self._pending
            if pending is None:
                pending = next(self._triples, None)
                if pending is None:
                    self.done = True
                    break
                pending = pending + (0,)
            kind, key, value, offset = pending
            if table is not None and kind != table:
                self._pending = pending
                break  # one table per chunk
            left = len(value) - offset
            whole = item_bytes(key, left)
            if whole <= room:
                items.append((key, value[offset:], False))
                room -= whole
                table = kind
                self._pending = None
                continue
            piece = room - item_bytes(key, 0)
            if piece <= 0 or (items and piece < 1024):
                self._pending = pending
                break  # full: the value starts the next chunk
            items.append((key, value[offset:offset + piece], True))
            table = kind
            self._pending = (kind, key, value, offset + piece)
            break
        if not items:
            if self.done:
                return None
            raise ValueError(f"a chunk of {max_bytes} bytes cannot hold a key")
        return encode_records(table, items)


class StagingCheck:
    """
    The receiver's check of one transfer's chunks, in order, for a state at
    C{revision} whose next client id is C{next_client_id}.
    """

    def __init__(self, revision: int, next_client_id: int) -> None:
        self.revision = revision
        self.next_client_id = next_client_id
        self._table = TABLE_RECORDS
        self._last_key = b""
        self._last_client = 0
        #: (table, key, pieces) of a value that continues, and their bytes.
        self._partial: Optional[tuple] = None
        self._partial_bytes = 0

    def take(self, records: bytes) -> list:
        """
        Check one chunk's records; return its complete C{(table, key,
        value, decoded)} (a L{KeyValue}, a C{(client id, Session)}, or an
        auth entry's C{(key, value)}).

        @raise MalformedMessage: the records are not laid out as a chunk's.
        @raise CorruptState: a record is unsound or out of order.
        """
        table, items = decode_records(records)
        out = []
        for key, value, more in items:
            partial = self._partial
            if partial is not None:
                if partial[0] != table or partial[1] != key:
                    raise CorruptState(f"the value of {partial[1]!r} is cut short")
                partial[2].append(value)
                self._piece_bytes(table, key, len(value))
                if more:
                    continue
                value = b"".join(partial[2])
                self._partial = None
            elif more:
                self._partial = (table, key, [value])
                self._partial_bytes = 0
                self._piece_bytes(table, key, len(value))
                continue
            out.append((table, key, value, self._check(table, key, value)))
        return out

    def _piece_bytes(self, table: int, key: bytes, size: int) -> None:
        # An auth value is bounded: refuse its pieces as soon as they exceed it.
        self._partial_bytes += size
        if table == TABLE_AUTH:
            fault = state.auth_entry_fault(len(key), self._partial_bytes)
            if fault is not None:
                raise CorruptState(fault)

    def _check(self, table: int, key: bytes, value: bytes):
        if table < self._table:
            raise CorruptState(f"table {table} after table {self._table}")
        if table != self._table:
            self._last_key = b""
        self._table = table
        if table == TABLE_RECORDS:
            if not 0 < len(key) <= MAX_KEY_BYTES:
                raise CorruptState(f"key of {len(key)} bytes")
            if key <= self._last_key:
                raise CorruptState("keys out of order")
            kv = state.decode_record(key, value)
            if not (kv.version >= 1 and 1 <= kv.create_revision <= kv.mod_revision <= self.revision):
                raise CorruptState(f"record of {key!r} has impossible revisions")
            self._last_key = key
            return kv
        if table == TABLE_AUTH:
            fault = state.auth_entry_fault(len(key), len(value))
            if fault is not None:
                raise CorruptState(fault)
            if key <= self._last_key:
                raise CorruptState("auth keys out of order")
            self._last_key = key
            return key, value
        assert table == TABLE_SESSIONS
        if len(key) != U64.size:
            raise CorruptState(f"session key of {len(key)} bytes")
        client_id = U64.unpack(key)[0]
        if not self._last_client < client_id < self.next_client_id:
            raise CorruptState(f"session {client_id} out of order or unassigned")
        self._last_client = client_id
        return client_id, state.decode_session(value)

    def finish(self) -> None:
        """
        @raise CorruptState: the last value was cut short.
        """
        if self._partial is not None:
            raise CorruptState(f"the value of {self._partial[1]!r} is cut short")


def memory_triples(copy: tuple) -> Iterator:
    """
    The C{(table, key, value)} triples of a
    L{kvpaxos.storage.memory.MemoryState.snapshot_copy}, encoded one at a
    time as they are cut.
    """
    _, _, keys, records, sessions, auth_keys, auth = copy
    for key in keys:
        yield TABLE_RECORDS, key, state.encode_record(records[key])
    for client_id in sorted(sessions):
        yield TABLE_SESSIONS, U64.pack(client_id), state.encode_session(sessions[client_id])
    for key in auth_keys:
        yield TABLE_AUTH, key, auth[key]


__all__ = [
    "ChunkCutter",
    "StagingCheck",
    "StagedState",
    "StreamInterrupted",
    "TABLE_AUTH",
    "TABLE_RECORDS",
    "TABLE_SESSIONS",
    "memory_triples",
]
