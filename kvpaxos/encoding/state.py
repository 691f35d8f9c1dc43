"""
The layouts of the replicated state, the same in the data directory and in
a snapshot sent to a peer:

    record    := version:u64 create_revision:u64 mod_revision:u64
                 value_len:u32 value                 (a key's record)
    key_value := key_len:u16 key record              (a KeyValue)
    session   := sequence:u64 last_used:u64 result   (a session entry)
    result    := 0                                   (none yet)
               | 1 existed:u8 revision:u64 has_value:u8 [value_len:u32 value]
                 has_prev:u8 [key_value]              (Result)
               | 2 succeeded:u8 revision:u64 count:u16 response*count (TxnResult)
    response  := 1 has_prev:u8 [key_value]           (PutResponse)
               | 2 deleted:u64 count:u32 key_value*count   (DeleteResponse)
               | 3 count:u64 more:u8 revision:u64 n:u32 key_value*n (RangeResult)
    snapshot  := b""                                 (the empty state)
               | format:u8 revision:u64 next_client_id:u64
                 nrecords:u64 key_value*nrecords     (in key order)
                 nsessions:u64 (client_id:u64 session)*nsessions (in id order)
                 nauth:u64 auth_entry*nauth          (in key order; format 4)
                 compacted:u64 nevents:u64 (history_key event)*nevents
                                                     (in key order; format 5)
                 nleases:u64 (id:u64 ttl:u64)*nleases (in id order; format 5)
                 nattached:u64 (key_len:u16 key lease:u64)*nattached
                                                     (in key order; format 5)
    auth_entry := key_len:u16 key value_len:u32 value (an auth table entry)
    auth_group := count:u16 (tail_len:u8 tail value_len:u32 value)*count
                                                     (in tail order; LMDB only)

The auth table (users, roles and their grants, L{kvpaxos.kv.auth}) is
opaque here: C{key -> value}, keys of 1 to L{AUTH_KEY_MAX_BYTES} bytes,
values of at most L{AUTH_VALUE_MAX_BYTES}.  The history of writes
(C{history_key} and C{event}: L{kvpaxos.encoding.history}) follows it:
the compacted revision (every event below it was dropped) and the events
kept, each of a revision from the compacted one to the snapshot's.  The
lease tables (L{kvpaxos.encoding.leases}) close it: the leases (id and
TTL granted) and the keys attached to them, each attached key a record
of the snapshot and its lease one of the table's.  A
format-4 snapshot (before the history and the leases) or format-3 one
(before the auth table too) is still read, with no events, no leases and
the compacted revision its
revision + 1 (L{kvpaxos.kv.history.compacted_without_history}: a watch
from any revision of it is told "compacted", never given a gap); every
snapshot written is of format L{SNAPSHOT_FORMAT}.

The LMDB store keeps C{key -> record}, C{client_id:u64 -> session},
C{key -> auth value}, C{history_key -> event}, C{id:u64 -> ttl:u64} and
C{key -> lease:u64}, so a snapshot is its stored bytes laid end to end
(L{encode_snapshot} takes them as they are stored, without decoding, but
for the lease tables' integers).  The
one exception is an auth key longer than LMDB's 511-byte key limit: LMDB
keeps every auth entry whose key starts with the same 511 bytes in one
C{auth_group}, under those 511 bytes (L{kvpaxos.storage.lmdb_auth}).
Every reader raises L{CorruptState} (a
L{kvpaxos.kv.commands.CorruptRecord}); a snapshot is checked as hostile (it
may come from a peer): lengths, orders, revisions, client ids.  No I/O
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct
from typing import Optional

from kvpaxos.encoding.errors import CorruptState, EncodeError
from kvpaxos.encoding.history import EVENT_MIN, HISTORY_KEY, HISTORY_KEY_BYTES, read_event
from kvpaxos.encoding.leases import read_leases, write_leases
from kvpaxos.encoding.reader import U8, U16, U32, U64, Reader, as_bytes
from kvpaxos.encoding.records import (  # re-exported (__all__): the state's layouts
    KEY_VALUE_MIN,
    RECORD_HEAD,
    decode_record,
    encode_record,
    encode_record_of,
    possible_record,
    read_key_value,
    read_record,
    record_header,
    write_key_value,
)
from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    DeleteResponse,
    KeyValue,
    PutResponse,
    RangeResult,
    Result,
    TxnResult,
)
from kvpaxos.kv.history import compacted_without_history
from kvpaxos.kv.sessions import FIRST_CLIENT_ID, Session

#: The format byte a non-empty snapshot starts with: 5 since the history
#: of writes and the leases; 4 (neither) and 3 (no auth table either) are still read;
#: 2 was the layout before kvpaxos.encoding and is refused.
SNAPSHOT_FORMAT = 5
#: The formats L{decode_snapshot} reads.
_READ_FORMATS = (3, 4, SNAPSHOT_FORMAT)

#: The longest key of the auth table (its keys are 1 to this many bytes).
AUTH_KEY_MAX_BYTES = 512
#: The longest value of the auth table (its values are 0 to this many bytes).
AUTH_VALUE_MAX_BYTES = 65536

_SESSION_HEAD = Struct(">QQ")  # sequence, last used
_SNAPSHOT_HEAD = Struct(">BQQ")  # format, revision, next client id
#: The least an auth_entry takes: a 1-byte key and an empty value.
_AUTH_ENTRY_MIN = U16.size + 1 + U32.size
#: The least an auth_group's member takes: an empty tail and value.
_AUTH_MEMBER_MIN = U8.size + U32.size

_NONE, _RESULT, _TXN = 0, 1, 2
_PUT, _DELETE, _RANGE = 1, 2, 3


# --- records (L{kvpaxos.encoding.records}, re-exported) ------------------------

def _write_kvs(kvs, out: list) -> None:
    out.append(U32.pack(len(kvs)))
    for kv in kvs:
        write_key_value(kv, out)


def _read_kvs(reader: Reader) -> tuple:
    count = reader.count(U32, KEY_VALUE_MIN)
    return tuple([read_key_value(reader) for _ in range(count)])


def _write_optional_kv(kv: Optional[KeyValue], out: list) -> None:
    out.append(U8.pack(kv is not None))
    if kv is not None:
        write_key_value(kv, out)


def _read_optional_kv(reader: Reader) -> Optional[KeyValue]:
    return read_key_value(reader) if reader.flag() else None


# --- saved results and session entries ----------------------------------------


def write_result(result, out: list) -> None:
    """
    Append the bytes of a result a session saves (None, L{Result} or
    L{TxnResult}) to C{out}.

    @raise TypeError: C{result} is of another type (not saved by sessions).
    """
    kind = type(result)
    if result is None:
        out.append(U8.pack(_NONE))
    elif kind is Result:
        out += [U8.pack(_RESULT), U8.pack(result.existed), U64.pack(result.revision),
                U8.pack(result.value is not None)]
        if result.value is not None:
            out += [U32.pack(len(result.value)), result.value]
        _write_optional_kv(result.prev, out)
    elif kind is TxnResult:
        out += [U8.pack(_TXN), U8.pack(result.succeeded), U64.pack(result.revision),
                U16.pack(len(result.responses))]
        for response in result.responses:
            _write_response(response, out)
    else:
        raise TypeError(f"not a result a session saves: {result!r}")


def _write_response(response, out: list) -> None:
    kind = type(response)
    if kind is PutResponse:
        out.append(U8.pack(_PUT))
        _write_optional_kv(response.prev, out)
    elif kind is DeleteResponse:
        out += [U8.pack(_DELETE), U64.pack(response.deleted)]
        _write_kvs(response.prevs, out)
    elif kind is RangeResult:
        out += [U8.pack(_RANGE), U64.pack(response.count), U8.pack(response.more),
                U64.pack(response.revision)]
        _write_kvs(response.kvs, out)
    else:
        raise TypeError(f"not a transaction response: {response!r}")


def read_result(reader: Reader):
    """Read one result written by L{write_result}."""
    tag = reader.u8()
    if tag == _NONE:
        return None
    if tag == _RESULT:
        existed = reader.flag()
        revision = reader.u64()
        value = reader.u32_bytes() if reader.flag() else None
        return Result(existed, value, revision, _read_optional_kv(reader))
    if tag == _TXN:
        succeeded = reader.flag()
        revision = reader.u64()
        # Every response takes at least two bytes.
        count = reader.count(U16, 2)
        responses = tuple([_read_response(reader) for _ in range(count)])
        return TxnResult(succeeded, responses, revision)
    reader.fail(f"unknown result tag {tag}")


def _read_response(reader: Reader):
    tag = reader.u8()
    if tag == _PUT:
        return PutResponse(_read_optional_kv(reader))
    if tag == _DELETE:
        deleted = reader.u64()
        return DeleteResponse(deleted, _read_kvs(reader))
    if tag == _RANGE:
        count = reader.u64()
        more = reader.flag()
        revision = reader.u64()
        return RangeResult(_read_kvs(reader), count, more, revision)
    reader.fail(f"unknown transaction response tag {tag}")


def _write_session(session: Session, out: list) -> None:
    out.append(_SESSION_HEAD.pack(session.sequence, session.last_used))
    write_result(session.result, out)


def _read_session(reader: Reader) -> Session:
    sequence, last_used = reader.unpack(_SESSION_HEAD)
    return Session(sequence, last_used, read_result(reader))


def encode_session(session: Session) -> bytes:
    """Return the stored bytes of a session entry (its client id is stored beside it)."""
    out: list = []
    _write_session(session, out)
    return b"".join(out)


def decode_session_head(data) -> tuple[int, int]:
    """
    Return C{(sequence, last_used)} of stored session C{data} without
    reading the result it saves (the common case: only a retry needs it).

    @raise CorruptState: C{data} is too short to be a session entry.
    """
    if len(data) < _SESSION_HEAD.size + 1:  # the head, then at least the result's tag
        raise CorruptState(f"session: {len(data)} bytes, too few for an entry ({_SESSION_HEAD.size + 1} at least)")
    return _SESSION_HEAD.unpack_from(data)


def decode_session(data) -> Session:
    """
    Return the L{Session} in stored C{data}.

    @raise CorruptState: C{data} is not a session entry.
    """
    reader = Reader(data, CorruptState, "session")
    session = _read_session(reader)
    reader.end()
    return session


# --- the auth table ----------------------------------------------------------


def auth_entry_fault(key_bytes: int, value_bytes: int) -> Optional[str]:
    """
    Return what is wrong with an auth table entry whose key and value are
    that long (the key 1 to L{AUTH_KEY_MAX_BYTES} bytes, the value at most
    L{AUTH_VALUE_MAX_BYTES}), or C{None}: the one bound every reader and
    writer of the table checks.
    """
    if not 0 < key_bytes <= AUTH_KEY_MAX_BYTES:
        return f"auth key of {key_bytes} bytes (1 to {AUTH_KEY_MAX_BYTES})"
    if value_bytes > AUTH_VALUE_MAX_BYTES:
        return f"auth value of {value_bytes} bytes (at most {AUTH_VALUE_MAX_BYTES})"
    return None


def check_auth_entry(key: bytes, value: bytes) -> None:
    """
    Refuse an auth table entry the table cannot hold (what a view checks
    before it writes one: stored, it would make a snapshot no peer reads).

    @raise TypeError: C{key} or C{value} is not C{bytes}.
    @raise EncodeError: out of the table's bounds (L{auth_entry_fault}):
        the caller's fault.
    """
    if type(key) is not bytes or type(value) is not bytes:
        raise TypeError(f"an auth entry is bytes -> bytes, not {type(key).__name__} -> {type(value).__name__}")
    fault = auth_entry_fault(len(key), len(value))
    if fault is not None:
        raise EncodeError(fault)


def _read_auth_entry(reader: Reader, previous: bytes) -> tuple:
    key_bytes = reader.u16()
    if not 0 < key_bytes <= AUTH_KEY_MAX_BYTES:
        reader.fail(f"auth key of {key_bytes} bytes")
    key = reader.take(key_bytes)
    if key <= previous:
        reader.fail("auth keys out of order")
    value_bytes = reader.u32()
    if value_bytes > AUTH_VALUE_MAX_BYTES:
        reader.fail(f"auth value of {value_bytes} bytes")
    return key, reader.take(value_bytes)


def encode_auth_group(members) -> bytes:
    """
    Return the C{auth_group} of C{members}: C{(tail, value)} pairs in tail
    order, the entries whose keys share one 511-byte start (tails of at
    most 255 bytes).
    """
    out = [U16.pack(len(members))]
    for tail, value in members:
        out += [U8.pack(len(tail)), tail, U32.pack(len(value)), value]
    return b"".join(out)


def decode_auth_group(data) -> list:
    """
    Return the C{(tail, value)} pairs of stored C{auth_group} C{data}, in
    tail order.

    @raise CorruptState: C{data} is not an auth group.
    """
    reader = Reader(as_bytes(data, CorruptState), CorruptState, "auth group")
    count = reader.count(U16, _AUTH_MEMBER_MIN)
    members = []
    previous = None
    for _ in range(count):
        tail = reader.take(reader.u8())
        if previous is not None and tail <= previous:
            reader.fail("tails out of order")
        value_bytes = reader.u32()
        if value_bytes > AUTH_VALUE_MAX_BYTES:
            reader.fail(f"auth value of {value_bytes} bytes")
        members.append((tail, reader.take(value_bytes)))
        previous = tail
    reader.end()
    return members


# --- snapshots -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """
    The state a snapshot holds: the revision, the next client id, every
    record in key order, every C{(client_id, Session)} in client id order,
    every C{(key, value)} of the auth table in key order, the history's
    compacted revision and its C{(revision, index, Event)}s in order, the
    lease table's C{(id, ttl)}s in id order and the attached keys'
    C{(key, lease)}s in key order.
    """

    revision: int = 0
    next_client_id: int = FIRST_CLIENT_ID
    records: tuple = ()
    sessions: tuple = ()
    auth: tuple = ()
    compacted: int = 0
    events: tuple = ()
    leases: tuple = ()
    attached: tuple = ()


def encode_snapshot(revision: int, next_client_id: int, records, session_entries, auth_entries,
                    compacted: int = 0, events=(), leases=(), attached=()) -> bytes:
    """
    Return the snapshot bytes of a state: C{records}, a list of C{(key,
    encode_record bytes)} in key order; C{session_entries}, a list of
    C{(client_id, encode_session bytes)} in client id order;
    C{auth_entries}, a list of the auth table's C{(key, value)} in key
    order; C{compacted}, the history's compacted revision, and C{events},
    its C{(history_key, event)} bytes in key order (a caller with no
    history to give passes C{compacted_without_history(revision)});
    C{leases}, the lease table's C{(id, ttl)} in id order, and
    C{attached}, the attached keys' C{(key, lease)} in key order.  The
    empty state (no auth entries, compacted revision 0, no events and no
    leases either) encodes to C{b""} (the bootstrap snapshot's data); equal
    states encode to equal bytes, whichever provider holds them.
    """
    if (not revision and next_client_id == FIRST_CLIENT_ID and not records and not session_entries
            and not auth_entries and not compacted and not events and not leases and not attached):
        return b""
    u16, u32, u64 = U16.pack, U32.pack, U64.pack
    parts = [_SNAPSHOT_HEAD.pack(SNAPSHOT_FORMAT, revision, next_client_id), u64(len(records))]
    for key, record in records:
        parts += [u16(len(key)), key, record]
    parts.append(u64(len(session_entries)))
    for client_id, entry in session_entries:
        parts += [u64(client_id), entry]
    parts.append(u64(len(auth_entries)))
    for key, value in auth_entries:
        parts += [u16(len(key)), key, u32(len(value)), value]
    parts += [u64(compacted), u64(len(events))]
    for key, event in events:
        parts += [key, event]
    write_leases(leases, attached, parts)
    return b"".join(parts)


def decode_snapshot(data) -> SnapshotState:
    """
    Return the state in snapshot C{data} (hostile bytes, perhaps from a
    peer: every length, order and bound is checked).  A format-3 snapshot
    (written before the auth table) has an empty auth table; a format-3 or
    format-4 one (before the history and the leases) no events, no leases,
    and the compacted revision C{revision + 1}.

    @raise CorruptState: C{data} is not a snapshot of a format read here.
    """
    data = as_bytes(data, CorruptState)
    if not data:
        return SnapshotState()
    reader = Reader(data, CorruptState, "snapshot")
    if data[0] not in _READ_FORMATS:
        reader.fail(f"format {data[0]}, not one of {_READ_FORMATS}")
    form, revision, next_client_id = reader.unpack(_SNAPSHOT_HEAD)
    count = reader.count(U64, KEY_VALUE_MIN)
    records = []
    previous = b""
    for _ in range(count):
        kv = read_key_value(reader)
        key = kv.key
        if not 0 < len(key) <= MAX_KEY_BYTES:
            reader.fail(f"key of {len(key)} bytes")
        if key <= previous:
            reader.fail("keys out of order")
        if not possible_record(kv, revision):
            reader.fail(f"record of {key!r} has impossible revisions")
        records.append(kv)
        previous = key
    count = reader.count(U64, U64.size + _SESSION_HEAD.size + 1)
    entries = []
    last_id = 0
    for _ in range(count):
        client_id = reader.u64()
        if not last_id < client_id < next_client_id:
            reader.fail(f"session {client_id} out of order or unassigned")
        entries.append((client_id, _read_session(reader)))
        last_id = client_id
    auth = []
    if form >= 4:
        count = reader.count(U64, _AUTH_ENTRY_MIN)
        previous = b""
        for _ in range(count):
            entry = _read_auth_entry(reader, previous)
            auth.append(entry)
            previous = entry[0]
    if form >= 5:
        compacted, events = _read_history(reader, revision)
        leases, attached = read_leases(reader, records)
    else:
        compacted, events = compacted_without_history(revision), ()
        leases = attached = ()
    reader.end()
    return SnapshotState(revision, next_client_id, tuple(records), tuple(entries), tuple(auth),
                         compacted, events, leases, attached)


def _read_history(reader: Reader, revision: int) -> tuple[int, tuple]:
    """Read a snapshot's compacted revision and events (of a store at C{revision})."""
    compacted = reader.u64()
    if compacted > revision + 1:
        reader.fail(f"compacted revision {compacted} past the revision {revision} + 1")
    count = reader.count(U64, HISTORY_KEY_BYTES + EVENT_MIN)
    events = []
    previous = (-1, -1)
    for _ in range(count):
        at = reader.unpack(HISTORY_KEY)
        if at <= previous:
            reader.fail("events out of order")
        if not max(compacted, 1) <= at[0] <= revision:
            reader.fail(f"an event of revision {at[0]}, outside {compacted}..{revision}")
        events.append((at[0], at[1], read_event(reader, at[0])))
        previous = at
    return compacted, tuple(events)


__all__ = [
    "AUTH_KEY_MAX_BYTES",
    "AUTH_VALUE_MAX_BYTES",
    "KEY_VALUE_MIN",
    "RECORD_HEAD",
    "SNAPSHOT_FORMAT",
    "SnapshotState",
    "auth_entry_fault",
    "check_auth_entry",
    "decode_auth_group",
    "decode_record",
    "decode_session",
    "decode_session_head",
    "decode_snapshot",
    "encode_auth_group",
    "encode_record",
    "encode_record_of",
    "encode_session",
    "encode_snapshot",
    "possible_record",
    "read_key_value",
    "read_record",
    "read_result",
    "record_header",
    "write_key_value",
    "write_result",
]
