"""
The exactly-once session table: which requests of a client were applied,
and what they returned.  Replicated state, like the data: it changes only
when a chosen command applies, lives in the store (LMDB sub-databases, the
in-memory store's dicts) and in snapshots, so every replica holds the same
table at the same slot.

A client opens a session (an C{OPEN_SESSION} command; the table assigns
the next client id) and then numbers its requests 1, 2, 3, ... with one
request in flight at a time.  Applying a request of session C{c} with
sequence C{s}, where the session's last applied sequence is C{last}:

  - C{s == last}: a retry; return the result saved for C{last}, change
    nothing;
  - C{s < last}: L{StaleSequence}, change nothing;
  - C{s > last}: apply it, save (C{s}, its result, the slot) as the
    session's entry;
  - no session C{c} (never opened, evicted, expired): L{SessionExpired},
    change nothing.  The client cannot know whether its unanswered
    requests applied, and is told so, rather than have a retry applied a
    second time.  (Creating a session on sight of an unknown id would let a
    retry whose session was evicted meanwhile apply twice; assigning ids at
    OPEN_SESSION is Raft's RegisterClient, dissertation section 6.3.)

Bounds, both in log time (slots), never wall-clock time, so every replica
evicts the same sessions at the same slot (L{SessionLimits}):
  - before each chosen batch applies, sessions unused for more than
    C{ttl_slots} slots (last used before C{slot - ttl_slots}) expire;
  - opening a session when C{max_sessions} are open evicts the least
    recently used first, ordered by (last-used slot, client id).

A provider's transaction view offers: C{session(client_id)},
C{put_session(client_id, session)}, C{delete_session(client_id)},
C{session_count()}, C{sessions_by_use()} (an iterator of
C{(last_used, client_id)} in that order) and C{next_client_id()} /
C{set_next_client_id(n)}.

Also here: the byte format of a session entry and of the results it
saves (L{encode_session}, L{decode_session}); bytes that do not parse are
L{CorruptRecord}.  No I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from kvpaxos.kv.commands import (
    CorruptRecord,
    DeleteResponse,
    KeyValue,
    PutResponse,
    RangeResult,
    Request,
    Result,
    SessionExpired,
    SessionOpened,
    StaleSequence,
    TxnResult,
)

#: The first client id a fresh table assigns (0 means "no session").
FIRST_CLIENT_ID = 1


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """
    How large the session table may grow.  Replicated behaviour: every
    node of a cluster must use the same limits, or their tables diverge.
    """

    max_sessions: int = 10_000
    ttl_slots: int = 1_000_000


DEFAULT_LIMITS = SessionLimits()


@dataclass(frozen=True, slots=True)
class Session:
    """
    One session's entry: the last applied C{sequence} (0 right after it
    was opened), its C{result} (None before any), and the slot that last
    used the session.
    """

    sequence: int
    last_used: int
    result: object = None


def expire(view, slot: int, limits: SessionLimits) -> None:
    """Drop every session last used more than C{limits.ttl_slots} slots before C{slot}."""
    cutoff = slot - limits.ttl_slots
    doomed = []
    for last_used, client_id in view.sessions_by_use():
        if last_used >= cutoff:
            break
        doomed.append(client_id)
    for client_id in doomed:
        view.delete_session(client_id)


def open_session(view, slot: int, limits: SessionLimits) -> SessionOpened:
    """Assign the next client id, evicting least recently used sessions to make room."""
    excess = view.session_count() + 1 - limits.max_sessions
    if excess > 0:
        doomed = []
        for _, client_id in view.sessions_by_use():
            if len(doomed) == excess:
                break
            doomed.append(client_id)
        for client_id in doomed:
            view.delete_session(client_id)
    client_id = view.next_client_id()
    view.set_next_client_id(client_id + 1)
    view.put_session(client_id, Session(0, slot))
    return SessionOpened(client_id, view.revision())


def check(view, request: Request):
    """
    Return what C{request} gets without applying it (a saved result,
    L{StaleSequence} or L{SessionExpired}), or C{None} if it is to apply.
    A request without a session always applies.
    """
    client_id = request.client_id
    if not client_id:
        return None
    session = view.session(client_id)
    if session is None:
        return SessionExpired(client_id, request.sequence)
    if request.sequence == session.sequence:
        return session.result
    if request.sequence < session.sequence:
        return StaleSequence(client_id, request.sequence, session.sequence)
    return None


def record(view, request: Request, slot: int, result) -> None:
    """Save C{result} as the session's answer to C{request} (if it has a session)."""
    if request.client_id:
        view.put_session(request.client_id, Session(request.sequence, slot, result))


# --- the byte format ---------------------------------------------------------

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SESSION_HEAD = struct.Struct(">QQ")  # sequence, last used
_KV_TAIL = struct.Struct(">QQQ")  # version, create revision, mod revision

_NONE, _RESULT, _TXN = 0, 1, 2
_PUT, _DELETE, _RANGE = 1, 2, 3


class RecordReader:
    """Reads fields off hostile bytes; running past the end is L{CorruptRecord}."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data, what: str, offset: int = 0) -> None:
        self.data = data
        self.offset = offset
        self.what = what

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise CorruptRecord(f"truncated {self.what}: needs {end} bytes, has {len(self.data)}")
        chunk = bytes(self.data[self.offset:end])
        self.offset = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple:
        end = self.offset + layout.size
        if end > len(self.data):
            raise CorruptRecord(f"truncated {self.what}: needs {end} bytes, has {len(self.data)}")
        fields = layout.unpack_from(self.data, self.offset)
        self.offset = end
        return fields

    def flag(self) -> bool:
        (value,) = self.unpack(_U8)
        if value > 1:
            raise CorruptRecord(f"{self.what} has flag byte {value}")
        return bool(value)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise CorruptRecord(f"{self.what} has {len(self.data) - self.offset} trailing bytes")


def encode_key_value(kv: KeyValue, parts: list) -> None:
    """Append the bytes of C{kv} (key included) to C{parts}."""
    parts += [_U16.pack(len(kv.key)), kv.key, _U32.pack(len(kv.value)), kv.value,
              _KV_TAIL.pack(kv.version, kv.create_revision, kv.mod_revision)]


def decode_key_value(reader: RecordReader) -> KeyValue:
    """Read one L{KeyValue} written by L{encode_key_value}."""
    (length,) = reader.unpack(_U16)
    key = reader.take(length)
    (length,) = reader.unpack(_U32)
    value = reader.take(length)
    return KeyValue(key, value, *reader.unpack(_KV_TAIL))


def _encode_kvs(kvs, parts: list) -> None:
    parts.append(_U32.pack(len(kvs)))
    for kv in kvs:
        encode_key_value(kv, parts)


def _decode_kvs(reader: RecordReader) -> tuple:
    (count,) = reader.unpack(_U32)
    # Every record takes at least 30 bytes: refuse a count the data cannot hold.
    if count * 30 > len(reader.data) - reader.offset:
        raise CorruptRecord(f"{reader.what} claims {count} records")
    return tuple(decode_key_value(reader) for _ in range(count))


def _encode_optional_kv(kv: Optional[KeyValue], parts: list) -> None:
    parts.append(_U8.pack(kv is not None))
    if kv is not None:
        encode_key_value(kv, parts)


def _decode_optional_kv(reader: RecordReader) -> Optional[KeyValue]:
    return decode_key_value(reader) if reader.flag() else None


def encode_result(result, parts: list) -> None:
    """
    Append the bytes of a saved C{result} (None, L{Result} or L{TxnResult})
    to C{parts}.

    @raise TypeError: C{result} is of another type (not saved by sessions).
    """
    kind = type(result)
    if result is None:
        parts.append(_U8.pack(_NONE))
    elif kind is Result:
        parts += [_U8.pack(_RESULT), _U8.pack(result.existed), _U64.pack(result.revision),
                  _U8.pack(result.value is not None)]
        if result.value is not None:
            parts += [_U32.pack(len(result.value)), result.value]
        _encode_optional_kv(result.prev, parts)
    elif kind is TxnResult:
        parts += [_U8.pack(_TXN), _U8.pack(result.succeeded), _U64.pack(result.revision),
                  _U16.pack(len(result.responses))]
        for response in result.responses:
            _encode_response(response, parts)
    else:
        raise TypeError(f"not a result a session saves: {result!r}")


def _encode_response(response, parts: list) -> None:
    kind = type(response)
    if kind is PutResponse:
        parts.append(_U8.pack(_PUT))
        _encode_optional_kv(response.prev, parts)
    elif kind is DeleteResponse:
        parts += [_U8.pack(_DELETE), _U64.pack(response.deleted)]
        _encode_kvs(response.prevs, parts)
    elif kind is RangeResult:
        parts += [_U8.pack(_RANGE), _U64.pack(response.count), _U8.pack(response.more),
                  _U64.pack(response.revision)]
        _encode_kvs(response.kvs, parts)
    else:
        raise TypeError(f"not a transaction response: {response!r}")


def decode_result(reader: RecordReader):
    """Read one result written by L{encode_result}."""
    (tag,) = reader.unpack(_U8)
    if tag == _NONE:
        return None
    if tag == _RESULT:
        existed = reader.flag()
        (revision,) = reader.unpack(_U64)
        value = None
        if reader.flag():
            (length,) = reader.unpack(_U32)
            value = reader.take(length)
        return Result(existed, value, revision, _decode_optional_kv(reader))
    if tag == _TXN:
        succeeded = reader.flag()
        (revision,) = reader.unpack(_U64)
        (count,) = reader.unpack(_U16)
        responses = tuple(_decode_response(reader) for _ in range(count))
        return TxnResult(succeeded, responses, revision)
    raise CorruptRecord(f"unknown result tag {tag}")


def _decode_response(reader: RecordReader):
    (tag,) = reader.unpack(_U8)
    if tag == _PUT:
        return PutResponse(_decode_optional_kv(reader))
    if tag == _DELETE:
        (deleted,) = reader.unpack(_U64)
        return DeleteResponse(deleted, _decode_kvs(reader))
    if tag == _RANGE:
        (count,) = reader.unpack(_U64)
        more = reader.flag()
        (revision,) = reader.unpack(_U64)
        return RangeResult(_decode_kvs(reader), count, more, revision)
    raise CorruptRecord(f"unknown transaction response tag {tag}")


def encode_session(session: Session) -> bytes:
    """Return the bytes of a session entry (its client id is stored beside it)."""
    parts = [_SESSION_HEAD.pack(session.sequence, session.last_used)]
    encode_result(session.result, parts)
    return b"".join(parts)


def decode_session(data) -> Session:
    """
    Return the L{Session} in C{data}.

    @raise CorruptRecord: C{data} is not a session entry.
    """
    reader = RecordReader(data, "session")
    sequence, last_used = reader.unpack(_SESSION_HEAD)
    result = decode_result(reader)
    reader.end()
    return Session(sequence, last_used, result)
