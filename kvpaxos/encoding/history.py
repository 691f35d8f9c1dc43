"""
The history of writes in bytes (issue 14): the key an event is kept under
and the event itself (L{kvpaxos.kv.history.Event}), the same in the LMDB
C{history} sub-database, a snapshot, a transfer's history table and a
backup file::

    history_key := revision:u64 index:u32       (sorts as (revision, index))
    event       := kind:u8 key_len:u16 key [record] has_prev:u8 [record]

C{kind} is L{EventKind} (0 put, 1 delete; part of the format: never
renumber).  A put carries its new C{record}
(L{kvpaxos.encoding.records}); a delete does not: its C{kv} is rebuilt
from the key and the history key's revision (an empty value, version and
create revision 0, L{kvpaxos.kv.history.delete_event}).  C{has_prev} says
whether the key's previous record follows (always, for a delete).
Records are self-delimiting, so an event is too, and a snapshot lays
C{history_key event} pairs end to end.

Encoders from stored bytes (L{encode_put_event_of},
L{encode_delete_event_of}) are the LMDB provider's fast path: the new
record and the old one go into the event as they are stored, nothing
decoded; L{encode_event} gives the same bytes from an L{Event}.  Readers
treat their input as hostile (it may come from a peer or a damaged file)
and raise L{CorruptState} only.  No I/O.
"""

from __future__ import annotations

from struct import Struct
from typing import Optional

from kvpaxos.encoding.errors import CorruptState, EncodeError
from kvpaxos.encoding.reader import U16, Reader, as_bytes
from kvpaxos.encoding.records import RECORD_HEAD, encode_record, possible_record, read_record
from kvpaxos.kv.commands import MAX_KEY_BYTES, KeyValue
from kvpaxos.kv.history import Event, EventKind

#: revision, index within the revision.
HISTORY_KEY = Struct(">QI")
HISTORY_KEY_BYTES = HISTORY_KEY.size
#: The least an event takes: a 1-byte key and one empty record (a put
#: without a previous record, or a delete with one).
EVENT_MIN = 1 + U16.size + 1 + RECORD_HEAD.size + 1

_KINDS = {EventKind.PUT.value: EventKind.PUT, EventKind.DELETE.value: EventKind.DELETE}
_PUT = bytes([EventKind.PUT])
_DELETE = bytes([EventKind.DELETE])
_NO_PREV = b"\x00"
_PREV = b"\x01"
_u16 = U16.pack


def encode_history_key(revision: int, index: int) -> bytes:
    """Return the key of the C{index}th event of C{revision}."""
    return HISTORY_KEY.pack(revision, index)


def decode_history_key(data) -> tuple[int, int]:
    """
    Return C{(revision, index)} of a history key.

    @raise CorruptState: C{data} is not 12 bytes, or names revision 0 (no
        write has it).
    """
    if len(data) != HISTORY_KEY_BYTES:
        raise CorruptState(f"history key of {len(data)} bytes, not {HISTORY_KEY_BYTES}")
    revision, index = HISTORY_KEY.unpack(data)
    if revision < 1:
        raise CorruptState("history key of revision 0")
    return revision, index


def encode_put_event_of(key: bytes, record: bytes, prev_record: Optional[bytes]) -> bytes:
    """
    Return the event of a put that stored C{record} (stored bytes) under
    C{key}, replacing C{prev_record} (stored bytes, or None: none was there).
    """
    if prev_record is None:
        return b"".join((_PUT, _u16(len(key)), key, record, _NO_PREV))
    return b"".join((_PUT, _u16(len(key)), key, record, _PREV, prev_record))


def encode_delete_event_of(key: bytes, prev_record: bytes) -> bytes:
    """Return the event of deleting C{key}, whose record was C{prev_record} (stored bytes)."""
    return b"".join((_DELETE, _u16(len(key)), key, _PREV, prev_record))


def encode_event(event: Event) -> bytes:
    """
    Return the bytes of C{event} (the same as the stored-bytes encoders give).

    @raise EncodeError: a delete without its previous record, or a
        previous record of another key.
    """
    key, prev = event.kv.key, event.prev
    if prev is not None and prev.key != key:
        raise EncodeError(f"an event of {key!r} with a previous record of {prev.key!r}")
    prev_record = None if prev is None else encode_record(prev)
    if event.kind is EventKind.PUT:
        return encode_put_event_of(key, encode_record(event.kv), prev_record)
    if prev_record is None:
        raise EncodeError(f"the delete of {key!r} has no previous record")
    return encode_delete_event_of(key, prev_record)


def read_event(reader: Reader, revision: int) -> Event:
    """
    Read one event of C{revision} off C{reader}, checking it as hostile:
    a known kind, a key of 1 to C{MAX_KEY_BYTES} bytes, a put's record
    written at C{revision}, a previous record a store at C{revision} could
    have held, and a delete's previous record present.
    """
    kind = reader.code(_KINDS, "event kind")
    key = reader.u16_bytes()
    if not 0 < len(key) <= MAX_KEY_BYTES:
        reader.fail(f"event key of {len(key)} bytes")
    if kind is EventKind.PUT:
        kv = read_record(reader, key)
        if kv.mod_revision != revision or not possible_record(kv, revision):
            reader.fail(f"the put of {key!r} at revision {revision} has impossible revisions")
    else:
        kv = KeyValue(key, b"", 0, 0, revision)
    prev = None
    if reader.flag():
        prev = read_record(reader, key)
        if not possible_record(prev, revision):
            reader.fail(f"the previous record of {key!r} at revision {revision} has impossible revisions")
    elif kind is EventKind.DELETE:
        reader.fail(f"the delete of {key!r} has no previous record")
    return Event(kind, kv, prev)


def decode_event(revision: int, data) -> Event:
    """
    Return the L{Event} of C{revision} whose bytes are C{data}.

    @raise CorruptState: C{data} is not one such event (see L{read_event}).
    """
    reader = Reader(as_bytes(data, CorruptState), CorruptState, "event")
    event = read_event(reader, revision)
    reader.end()
    return event


def decode_history_item(key, data) -> tuple[int, int, Event]:
    """
    Return C{(revision, index, event)} of a stored history item.

    @raise CorruptState: C{key} is not a history key or C{data} not its event.
    """
    revision, index = decode_history_key(key)
    return revision, index, decode_event(revision, data)


__all__ = [
    "EVENT_MIN",
    "HISTORY_KEY",
    "HISTORY_KEY_BYTES",
    "decode_event",
    "decode_history_item",
    "decode_history_key",
    "encode_delete_event_of",
    "encode_event",
    "encode_history_key",
    "encode_put_event_of",
    "read_event",
]
