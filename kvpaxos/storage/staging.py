"""
The provider-independent halves of a snapshot transfer in chunks (issue
11), shared by both store providers:

  - L{ChunkCutter}: the sender's side.  Cuts the stored C{(table, key,
    value)} triples of one consistent read (in key order, records, then
    sessions, then the auth table, then the history's compacted revision
    and its events, then the lease table and the attached keys) into
    chunks' records of at most a given size
    (L{kvpaxos.encoding.transfer.encode_records}), splitting a value larger
    than a chunk into pieces.  It holds at most one value beyond the chunk
    it builds.
  - L{StagingCheck}: the receiver's side.  Takes chunks' records in order,
    checks every record as L{kvpaxos.encoding.state.decode_snapshot} would
    (keys in order and in bounds, records and sessions that decode, revisions
    and client ids possible, auth entries within the auth table's bounds,
    events in order, decoding, from the compacted revision to the state's,
    leases in id order and bounds, each attached key a record of the
    transfer and its lease one of the transfer's) and returns the complete
    ones to stage.  It holds at most one value's pieces and the lease ids
    (and, unless its provider looks records up for it, the record keys).
    A transfer without a compacted revision (from a member that keeps no
    history) stages none and installs the compacted revision
    C{revision + 1}; one without lease tables installs no leases.
  - L{StagedState}: the C{Snapshot.data} of a staged transfer, the handle
    the core passes through to C{Ready.install_snapshot}.
  - L{snapshot_of_chunks}: the snapshot bytes a transfer's (or a backup
    file's) chunks stand for, checked as staging checks them.

No LMDB, no thread, no I/O here: the providers read and write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from kvpaxos.encoding import state
from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.history import decode_history_item
from kvpaxos.encoding.leases import attachment_fault, lease_fault
from kvpaxos.encoding.reader import U64
from kvpaxos.encoding.transfer import (
    RECORDS_HEAD_BYTES,
    TABLE_AUTH,
    TABLE_COMPACTED,
    TABLE_HISTORY,
    TABLE_LEASE_KEYS,
    TABLE_LEASES,
    TABLE_RECORDS,
    TABLE_SESSIONS,
    decode_records,
    encode_records,
    item_bytes,
)
from kvpaxos.kv.commands import MAX_KEY_BYTES
from kvpaxos.kv.history import compacted_without_history


@dataclass(frozen=True)
class StagedState:
    """
    The data of a L{kvpaxos.paxos.messages.Snapshot} whose state a store
    staged from transfer C{transfer} (a C{(peer, transfer id)}): installing
    that snapshot replaces the store's state with the staged one.  Never
    sent, never stored: a store that installed it is its own snapshot.
    C{compacted} is the history's compacted revision the transfer carried
    (None: it carried none, see L{compacted_revision}).
    """

    transfer: tuple
    revision: int
    next_client_id: int
    compacted: Optional[int] = None

    @property
    def compacted_revision(self) -> int:
        """The compacted revision to install: the transfer's, or C{revision + 1} if it carried none."""
        if self.compacted is None:
            return compacted_without_history(self.revision)
        return self.compacted


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

    @param has_record: C{(key) -> bool}, whether the records staged so far
        hold C{key} (the provider looks in what it staged: every record
        comes before the attached keys); None: the check keeps the keys of
        the records it took, and asks them.
    """

    def __init__(self, revision: int, next_client_id: int,
                 has_record: Optional[Callable[[bytes], bool]] = None) -> None:
        self.revision = revision
        self.next_client_id = next_client_id
        #: The keys of the records taken (when no has_record was given).
        self._record_keys: Optional[set] = None
        if has_record is None:
            self._record_keys = set()
            has_record = self._record_keys.__contains__
        self._has_record = has_record
        #: The lease table's ids, to check the attachments against.
        self._leases: set = set()
        self._last_lease = 0
        self._table = TABLE_RECORDS
        self._last_key = b""
        self._last_client = 0
        #: The history's compacted revision (None: no TABLE_COMPACTED yet).
        self.compacted: Optional[int] = None
        self._last_event = b""
        #: (table, key, pieces) of a value that continues, and their bytes.
        self._partial: Optional[tuple] = None
        self._partial_bytes = 0

    def take(self, records: bytes) -> list:
        """
        Check one chunk's records; return its complete C{(table, key,
        value, decoded)} (a L{KeyValue}, a C{(client id, Session)}, an
        auth entry's C{(key, value)}, the compacted revision, an event's
        C{(revision, index, Event)}, a lease's C{(id, ttl)} or an attached
        key's C{(key, lease)}).

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
            if table >= TABLE_LEASES:
                check = self._check_leases
            elif table >= TABLE_COMPACTED:
                check = self._check_history
            else:
                check = self._check
            out.append((table, key, value, check(table, key, value)))
        return out

    def _piece_bytes(self, table: int, key: bytes, size: int) -> None:
        # An auth value is bounded: refuse its pieces as soon as they exceed it.
        self._partial_bytes += size
        if table == TABLE_AUTH:
            fault = state.auth_entry_fault(len(key), self._partial_bytes)
            if fault is not None:
                raise CorruptState(fault)
        elif table in (TABLE_COMPACTED, TABLE_LEASES, TABLE_LEASE_KEYS) and self._partial_bytes > U64.size:
            raise CorruptState(f"a value of table {table} of {self._partial_bytes} bytes (8 at most)")

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
            if self._record_keys is not None:
                self._record_keys.add(key)
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

    def _check_history(self, table: int, key: bytes, value: bytes):
        if table < self._table:
            raise CorruptState(f"table {table} after table {self._table}")
        self._table = table
        if table == TABLE_COMPACTED:
            if self.compacted is not None:
                raise CorruptState("a second compacted revision")
            if key or len(value) != U64.size:
                raise CorruptState(f"a compacted revision of {len(key)}-byte key and {len(value)}-byte value")
            compacted = U64.unpack(value)[0]
            if compacted > self.revision + 1:
                raise CorruptState(f"compacted revision {compacted} past the revision {self.revision} + 1")
            self.compacted = compacted
            return compacted
        assert table == TABLE_HISTORY
        if self.compacted is None:
            raise CorruptState("events without a compacted revision")
        revision, index, event = decode_history_item(key, value)
        if key <= self._last_event:  # history keys are 12 bytes: byte order is (revision, index) order
            raise CorruptState("events out of order")
        if not max(self.compacted, 1) <= revision <= self.revision:
            raise CorruptState(f"an event of revision {revision}, outside {self.compacted}..{self.revision}")
        self._last_event = key
        return revision, index, event

    def _check_leases(self, table: int, key: bytes, value: bytes) -> tuple:
        if table < self._table:
            raise CorruptState(f"table {table} after table {self._table}")
        if table != self._table:
            self._last_key = b""
        self._table = table
        if len(value) != U64.size:
            raise CorruptState(f"a value of table {table} of {len(value)} bytes (8)")
        (number,) = U64.unpack(value)
        if table == TABLE_LEASES:
            if len(key) != U64.size:
                raise CorruptState(f"a lease id of {len(key)} bytes")
            (lease,) = U64.unpack(key)
            fault = lease_fault(lease, number, self._last_lease)
            if fault is not None:
                raise CorruptState(fault)
            self._last_lease = lease
            self._leases.add(lease)
            return lease, number
        assert table == TABLE_LEASE_KEYS
        fault = attachment_fault(key, self._last_key)
        if fault is not None:
            raise CorruptState(fault)
        if number not in self._leases:
            raise CorruptState(f"key {key!r} is attached to lease {number}, which is not in the lease table")
        if not self._has_record(key):
            raise CorruptState(f"key {key!r} is attached to lease {number} but has no record")
        self._last_key = key
        return key, number

    def staged(self, transfer: tuple) -> StagedState:
        """The L{StagedState} of C{transfer}, whose chunks this checked (after L{finish})."""
        return StagedState(transfer, self.revision, self.next_client_id, self.compacted)

    def finish(self) -> None:
        """
        @raise CorruptState: the last value was cut short.
        """
        if self._partial is not None:
            raise CorruptState(f"the value of {self._partial[1]!r} is cut short")


def memory_triples(copy: tuple) -> Iterator:
    """
    The C{(table, key, value)} triples of a
    L{kvpaxos.storage.memory_state.MemoryState.snapshot_copy}, encoded one at a
    time as they are cut.
    """
    _, _, keys, records, sessions, auth_keys, auth, compacted, history, leases, key_leases = copy
    for key in keys:
        yield TABLE_RECORDS, key, state.encode_record(records[key])
    for client_id in sorted(sessions):
        yield TABLE_SESSIONS, U64.pack(client_id), state.encode_session(sessions[client_id])
    for key in auth_keys:
        yield TABLE_AUTH, key, auth[key]
    yield from history_triples(compacted, history)
    pack = U64.pack
    for lease, ttl in sorted(leases.items()):
        yield TABLE_LEASES, pack(lease), pack(ttl)
    for key, lease in sorted(key_leases.items()):
        yield TABLE_LEASE_KEYS, key, pack(lease)


def history_triples(compacted: int, history) -> Iterator:
    """
    The triples of the history: its compacted revision (always sent, so a
    receiver can tell it from a sender that keeps no history), then the
    C{(history_key, event)} pairs of C{history}, in order.
    """
    yield TABLE_COMPACTED, b"", U64.pack(compacted)
    for key, event, *_ in history:
        yield TABLE_HISTORY, key, event


def snapshot_of_chunks(revision: int, next_client_id: int, chunks) -> bytes:
    """
    Return the snapshot bytes (L{kvpaxos.encoding.state.encode_snapshot})
    of the state that C{chunks}, a transfer's chunks' records in order
    (or a backup file's), hold at C{revision} with C{next_client_id},
    each checked as L{StagingCheck} checks it.

    @raise MalformedMessage, CorruptState: a chunk is unsound (as staging
        would refuse it).
    """
    check = StagingCheck(revision, next_client_id)
    tables: dict = {TABLE_RECORDS: [], TABLE_SESSIONS: [], TABLE_AUTH: [], TABLE_HISTORY: [],
                    TABLE_LEASES: [], TABLE_LEASE_KEYS: []}
    for chunk in chunks:
        for table, key, value, decoded in check.take(chunk):
            if table == TABLE_SESSIONS:
                tables[table].append((U64.unpack(key)[0], value))
            elif table in (TABLE_LEASES, TABLE_LEASE_KEYS):
                tables[table].append(decoded)
            elif table != TABLE_COMPACTED:
                tables[table].append((key, value))
    check.finish()
    staged = check.staged(None)
    return state.encode_snapshot(
        revision, next_client_id, tables[TABLE_RECORDS], tables[TABLE_SESSIONS], tables[TABLE_AUTH],
        staged.compacted_revision, tables[TABLE_HISTORY], tables[TABLE_LEASES], tables[TABLE_LEASE_KEYS],
    )


__all__ = [
    "ChunkCutter",
    "StagingCheck",
    "StagedState",
    "StreamInterrupted",
    "TABLE_AUTH",
    "TABLE_COMPACTED",
    "TABLE_HISTORY",
    "TABLE_LEASE_KEYS",
    "TABLE_LEASES",
    "TABLE_RECORDS",
    "TABLE_SESSIONS",
    "history_triples",
    "memory_triples",
    "snapshot_of_chunks",
]
