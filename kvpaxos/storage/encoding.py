"""
The on-disk byte format of the acceptor state: L{HardState}, L{Entry} (and
the slot L{Value} inside it), L{Config} and the metadata of a L{Snapshot}.

Every record starts with a format version byte (L{FORMAT_VERSION}); a
reader refuses a record with another version or with bytes that do not
parse, by raising L{CorruptRecord}.  Integers are big-endian and unsigned
(C{struct}); variable-length parts carry a 4-byte length.  No pickle: a
record means exactly what this module says it means, whatever code wrote it.

Also the keys of the LMDB session sub-databases (L{encode_u64},
L{encode_use_key}).  The state machine's own records (a key's record, a
session entry, the snapshot's data) are formatted by L{kvpaxos.kv.machine}
and L{kvpaxos.kv.sessions}, since snapshots carry them between providers;
L{CorruptRecord} is the one error for all of them.

Only codecs live here: no I/O, no LMDB.  The snapshot's data is opaque bytes
and is stored as it is, not through this module.
"""

from __future__ import annotations

import struct

# CorruptRecord: stored bytes that are not a record of this format (a damaged
# disk, or data written by a newer kvpaxos).  One class for the acceptor
# records here and the state machine's (key records, sessions, snapshots),
# defined in the kv layer so that it need not import storage.
from kvpaxos.kv.commands import CorruptRecord  # noqa: F401 (re-exported)
from kvpaxos.paxos.messages import (
    NOOP,
    Ballot,
    Batch,
    ChangeKind,
    Config,
    ConfigChange,
    Noop,
    Snapshot,
    Value,
)
from kvpaxos.paxos.state import Entry, HardState

#: The version byte every record starts with.
FORMAT_VERSION = 1

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HARD_STATE = struct.Struct(">BQQQ")  # version, promised round, node, chosen index
_ENTRY_HEAD = struct.Struct(">BQQ")  # version, ballot round, node
_SNAPSHOT_HEAD = struct.Struct(">BQ")  # version, index
_CHANGE = struct.Struct(">BQ")  # change kind, node

# Value tags.
_NOOP = 0
_BATCH = 1
_CONFIG_CHANGE = 2

_KIND_CODES = {
    ChangeKind.ADD_VOTER: 1,
    ChangeKind.ADD_LEARNER: 2,
    ChangeKind.PROMOTE: 3,
    ChangeKind.REMOVE: 4,
}
_CODE_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


def _need(data, offset: int, size: int, what: str) -> None:
    if offset + size > len(data):
        raise CorruptRecord(f"truncated {what}: needs {offset + size} bytes, has {len(data)}")


def _check_version(data, what: str) -> None:
    _need(data, 0, 1, what)
    if data[0] != FORMAT_VERSION:
        raise CorruptRecord(f"{what} has format version {data[0]}, not {FORMAT_VERSION}")


def _check_end(data, offset: int, what: str) -> None:
    if offset != len(data):
        raise CorruptRecord(f"{what} has {len(data) - offset} trailing bytes")


# --- hard state ------------------------------------------------------------


def encode_hard_state(hard_state: HardState) -> bytes:
    """Return the record of C{hard_state}."""
    promised = hard_state.promised
    return _HARD_STATE.pack(
        FORMAT_VERSION, promised.round, promised.node, hard_state.chosen_index
    )


def decode_hard_state(data: bytes) -> HardState:
    """
    Return the L{HardState} in C{data}.

    @raise CorruptRecord: C{data} is not a hard state record.
    """
    _check_version(data, "hard state")
    _need(data, 0, _HARD_STATE.size, "hard state")
    _check_end(data, _HARD_STATE.size, "hard state")
    _, round_, node, chosen_index = _HARD_STATE.unpack(data)
    return HardState(Ballot(round_, node), chosen_index)


# --- slot values and entries -------------------------------------------------


def encode_value(value: Value) -> bytes:
    """
    Return the bytes of a slot value (no version byte: it is embedded in a
    versioned record).

    @raise TypeError: C{value} is not a slot value.
    """
    kind = type(value)
    if kind is Batch:
        pack = _U32.pack
        parts = [_U8.pack(_BATCH), pack(len(value.commands))]
        for command in value.commands:
            parts.append(pack(len(command)))
            parts.append(command)
        return b"".join(parts)
    if kind is Noop:
        return _U8.pack(_NOOP)
    if kind is ConfigChange:
        return _U8.pack(_CONFIG_CHANGE) + _CHANGE.pack(_KIND_CODES[value.kind], value.node)
    raise TypeError(f"not a slot value: {value!r}")


def decode_value(data, offset: int = 0) -> tuple[Value, int]:
    """
    Return the value encoded at C{offset} of C{data} and the offset just
    after it.

    @raise CorruptRecord: the bytes there are not a slot value.
    """
    _need(data, offset, 1, "value")
    tag = data[offset]
    offset += 1
    if tag == _NOOP:
        return NOOP, offset
    if tag == _BATCH:
        _need(data, offset, 4, "batch")
        (count,) = _U32.unpack_from(data, offset)
        offset += 4
        # Every command takes at least its 4-byte length: a count the data
        # cannot hold is refused before anything is allocated for it.
        _need(data, offset, 4 * count, "batch")
        commands = []
        view = memoryview(data)
        for _ in range(count):
            _need(data, offset, 4, "batch command")
            (length,) = _U32.unpack_from(data, offset)
            offset += 4
            _need(data, offset, length, "batch command")
            commands.append(bytes(view[offset:offset + length]))
            offset += length
        return Batch(tuple(commands)), offset
    if tag == _CONFIG_CHANGE:
        _need(data, offset, _CHANGE.size, "config change")
        code, node = _CHANGE.unpack_from(data, offset)
        kind = _CODE_KINDS.get(code)
        if kind is None:
            raise CorruptRecord(f"unknown config change kind {code}")
        return ConfigChange(kind, node), offset + _CHANGE.size
    raise CorruptRecord(f"unknown value tag {tag}")


def encode_entry(entry: Entry) -> bytes:
    """Return the record of log entry C{entry}."""
    ballot = entry.ballot
    return _ENTRY_HEAD.pack(FORMAT_VERSION, ballot.round, ballot.node) + encode_value(
        entry.value
    )


def decode_entry(data) -> Entry:
    """
    Return the L{Entry} in C{data}.

    @raise CorruptRecord: C{data} is not an entry record.
    """
    _check_version(data, "entry")
    _need(data, 0, _ENTRY_HEAD.size, "entry")
    _, round_, node = _ENTRY_HEAD.unpack_from(data)
    value, offset = decode_value(data, _ENTRY_HEAD.size)
    _check_end(data, offset, "entry")
    return Entry(Ballot(round_, node), value)


# --- member sets and snapshot metadata ------------------------------------


def _encode_nodes(nodes) -> bytes:
    ordered = sorted(nodes)
    return _U32.pack(len(ordered)) + b"".join(_U64.pack(n) for n in ordered)


def _decode_nodes(data, offset: int) -> tuple[frozenset, int]:
    _need(data, offset, 4, "member set")
    (count,) = _U32.unpack_from(data, offset)
    offset += 4
    _need(data, offset, 8 * count, "member set")
    nodes = frozenset(
        _U64.unpack_from(data, offset + 8 * i)[0] for i in range(count)
    )
    return nodes, offset + 8 * count


def encode_config(config: Config) -> bytes:
    """Return the bytes of member set C{config} (embedded in a record)."""
    return _encode_nodes(config.voters) + _encode_nodes(config.learners)


def decode_config(data, offset: int = 0) -> tuple[Config, int]:
    """
    Return the L{Config} encoded at C{offset} and the offset just after it.

    @raise CorruptRecord: the bytes there are not a member set.
    """
    voters, offset = _decode_nodes(data, offset)
    learners, offset = _decode_nodes(data, offset)
    return Config(voters, learners), offset


def encode_snapshot_meta(snapshot: Snapshot) -> bytes:
    """Return the record of C{snapshot}'s index and member set (not its data)."""
    return _SNAPSHOT_HEAD.pack(FORMAT_VERSION, snapshot.index) + encode_config(
        snapshot.config
    )


def decode_snapshot_meta(data, snapshot_data: bytes = b"") -> Snapshot:
    """
    Return the L{Snapshot} whose metadata record is C{data}, holding
    C{snapshot_data}.

    @raise CorruptRecord: C{data} is not a snapshot metadata record.
    """
    _check_version(data, "snapshot")
    _need(data, 0, _SNAPSHOT_HEAD.size, "snapshot")
    _, index = _SNAPSHOT_HEAD.unpack_from(data)
    config, offset = decode_config(data, _SNAPSHOT_HEAD.size)
    _check_end(data, offset, "snapshot")
    return Snapshot(index, config, snapshot_data)


# --- slots -----------------------------------------------------------------


def encode_slot(slot: int) -> bytes:
    """Return the 8-byte big-endian key of C{slot} (keys sort as slots do)."""
    return _U64.pack(slot)


def decode_slot(data) -> int:
    """
    Return the slot (or applied index) in 8-byte C{data}.

    @raise CorruptRecord: C{data} is not 8 bytes.
    """
    if len(data) != 8:
        raise CorruptRecord(f"slot of {len(data)} bytes, not 8")
    return _U64.unpack(data)[0]


# --- state machine metadata and session keys ---------------------------------

_USE_KEY = struct.Struct(">QQ")  # last-used slot, client id


def encode_u64(number: int) -> bytes:
    """Return 8-byte big-endian C{number} (a revision, client id or counter)."""
    return _U64.pack(number)


#: Read back an L{encode_u64}; 8 bytes or L{CorruptRecord}.
decode_u64 = decode_slot


def encode_use_key(last_used: int, client_id: int) -> bytes:
    """
    Return the key of a session in the least-recently-used index: sorts by
    last-used slot, then client id (the eviction order).
    """
    return _USE_KEY.pack(last_used, client_id)


def decode_use_key(data) -> tuple[int, int]:
    """
    Return the C{(last_used, client_id)} of an L{encode_use_key} key.

    @raise CorruptRecord: C{data} is not 16 bytes.
    """
    if len(data) != _USE_KEY.size:
        raise CorruptRecord(f"session index key of {len(data)} bytes, not 16")
    return _USE_KEY.unpack(data)
