"""
The layouts of the Paxos core's values, the same wherever they travel
(in a peer message and in the data directory):

    ballot   := round:u64 node:u32
    value    := 0                                        (Noop)
              | 1 count:u32 len:u32*count bytes...       (Batch)
              | 2 kind:u8 node:u32 peer:text client:text (ConfigChange)
    config   := nvoters:u32 node:u32*nvoters nlearners:u32 node:u32*nlearners
                naddresses:u32 (node:u32 peer:text client:text)*naddresses
                cluster_id:u64 nremoved:u32 node:u32*nremoved
                (each set, and the addresses by node, in strictly ascending
                order; an address names a member; a removed node is none)
    text     := len:u16 utf-8 bytes                      ("" when not known)
    snapshot_meta := index:u64 config          (a Snapshot without its data)
    hard_state    := promised:ballot chosen_index:u64
    entry         := ballot value

Node ids are u32; slots, indexes and rounds u64; every integer is
big-endian.  A batch puts all command lengths first and the commands after
them, so both directions are a handful of C-level calls whatever the number
of commands.  The kinds of a config change are coded 1 to 5; codes and tags
are part of the format: never renumber, only append.

Also the keys of the LMDB sub-databases (L{encode_slot}, L{encode_u64},
L{encode_use_key}): big-endian, so keys sort as their numbers do.

The C{read_*} functions take a L{Reader} (whose error says whose fault the
bytes are); the C{decode_*} functions read one whole stored record and
raise L{CorruptState}.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from itertools import accumulate, pairwise
from struct import Struct

from kvpaxos.encoding.errors import CorruptState, EncodeError
from kvpaxos.encoding.reader import U16, U32, U64, Reader, pack_u32s
from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange, MemberAddress
from kvpaxos.paxos.messages import (
    NOOP,
    Ballot,
    Batch,
    Noop,
    Snapshot,
    Value,
)
from kvpaxos.paxos.state import Entry, HardState

BALLOT = Struct(">QI")
_HARD_STATE = Struct(">QIQ")  # promised round, node, chosen index
_CHANGE = Struct(">BI")  # kind, node
_USE_KEY = Struct(">QQ")  # last-used slot, client id

NOOP_TAG = 0
BATCH_TAG = 1
CONFIG_CHANGE_TAG = 2
_NOOP_BYTES = bytes([NOOP_TAG])
_BATCH_TAG_BYTES = bytes([BATCH_TAG])

_KIND_CODES = {
    ChangeKind.ADD_VOTER: 1,
    ChangeKind.ADD_LEARNER: 2,
    ChangeKind.PROMOTE: 3,
    ChangeKind.REMOVE: 4,
    ChangeKind.UPDATE: 5,
}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


def pack(layout: Struct, *fields) -> bytes:
    """C{layout.pack(*fields)}, a field out of range being L{EncodeError}."""
    try:
        return layout.pack(*fields)
    except struct.error as e:
        raise EncodeError(f"cannot encode {fields!r}: {e}") from None


# --- slot values ---------------------------------------------------------------


def write_value(value: Value, out: list) -> None:
    """
    Append the bytes of slot value C{value} to C{out}.

    @raise TypeError: C{value} is not a slot value.
    @raise struct.error: a field is out of range (the caller turns it into
        L{EncodeError}).
    """
    kind = type(value)
    if kind is Batch:
        commands = value.commands
        out.append(_BATCH_TAG_BYTES)
        out.append(pack_u32s(list(map(len, commands))))
        out.extend(commands)
    elif kind is Noop:
        out.append(_NOOP_BYTES)
    elif kind is ConfigChange:
        out.append(bytes([CONFIG_CHANGE_TAG]))
        out.append(_CHANGE.pack(_KIND_CODES[value.kind], value.node))
        write_text(value.peer, out)
        write_text(value.client, out)
    else:
        raise TypeError(f"not a slot value: {kind.__name__}")


def read_value(reader: Reader) -> Value:
    """Read one slot value."""
    tag = reader.u8()
    if tag == BATCH_TAG:
        # Every command takes at least its 4-byte length.
        count = reader.count(U32, 4)
        lengths = reader.u32s(count)
        data = reader.data
        ends = list(accumulate(lengths, initial=reader.offset))
        if ends[-1] > len(data):
            reader.fail("batch commands exceed the data")
        reader.offset = ends[-1]
        return Batch(tuple([data[a:b] for a, b in pairwise(ends)]))
    if tag == NOOP_TAG:
        return NOOP
    if tag == CONFIG_CHANGE_TAG:
        code, node = reader.unpack(_CHANGE)
        kind = _KINDS.get(code)
        if kind is None:
            reader.fail(f"unknown config change kind {code}")
        return ConfigChange(kind, node, read_text(reader), read_text(reader))
    reader.fail(f"unknown value tag {tag}")


def read_values(reader: Reader, count: int) -> tuple:
    """Read C{count} slot values (each at least one byte: checked first)."""
    if count > reader.left():
        reader.fail(f"{count} values exceed the data")
    return tuple([read_value(reader) for _ in range(count)])


def read_ballot(reader: Reader) -> Ballot:
    """Read one ballot."""
    return Ballot(*reader.unpack(BALLOT))


# --- member sets and snapshot metadata ---------------------------------------


def write_text(text: str, out: list) -> None:
    """
    Append C{text} (an address) as u16 length and UTF-8 bytes.

    @raise struct.error: longer than 65,535 bytes.
    """
    data = text.encode("utf-8")
    out.append(U16.pack(len(data)))
    out.append(data)


def read_text(reader: Reader) -> str:
    """Read one text written by L{write_text}."""
    data = reader.u16_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        reader.fail("an address is not UTF-8")


def write_config(config: Config, out: list) -> None:
    """Append the bytes of member set C{config} to C{out}."""
    out.append(pack_u32s(sorted(config.voters)))
    out.append(pack_u32s(sorted(config.learners)))
    out.append(U32.pack(len(config.addresses)))
    for node, address in config.addresses:
        out.append(U32.pack(node))
        write_text(address.peer, out)
        write_text(address.client, out)
    out.append(U64.pack(config.cluster_id))
    out.append(pack_u32s(sorted(config.removed)))


def _read_nodes(reader: Reader) -> frozenset:
    count = reader.count(U32, 4)
    ids = reader.u32s(count)
    if any(a >= b for a, b in pairwise(ids)):
        reader.fail("member set not in strictly ascending order")
    return frozenset(ids)


def read_config(reader: Reader) -> Config:
    """Read one member set."""
    voters = _read_nodes(reader)
    learners = _read_nodes(reader)
    members = voters | learners
    count = reader.count(U32, 8)
    addresses = []
    for _ in range(count):
        node = reader.u32()
        if addresses and node <= addresses[-1][0]:
            reader.fail("member addresses not in strictly ascending order")
        if node not in members:
            reader.fail(f"an address for node {node}, not a member")
        addresses.append((node, MemberAddress(read_text(reader), read_text(reader))))
    cluster_id = reader.u64()
    removed = _read_nodes(reader)
    if removed & members:
        reader.fail(f"nodes {sorted(removed & members)} are both members and removed")
    return Config(voters, learners, tuple(addresses), cluster_id, removed)


def write_snapshot_meta(snapshot: Snapshot, out: list) -> None:
    """Append C{snapshot}'s index and member set (not its data) to C{out}."""
    out.append(U64.pack(snapshot.index))
    write_config(snapshot.config, out)


def read_snapshot_meta(reader: Reader, data=b"") -> Snapshot:
    """Read a snapshot's index and member set; the snapshot holds C{data}."""
    index = reader.u64()
    return Snapshot(index, read_config(reader), data)


# --- whole stored records ------------------------------------------------------


def _encoded(write, value) -> bytes:
    out: list = []
    try:
        write(value, out)
    except struct.error as e:
        raise EncodeError(f"cannot encode {value!r}: {e}") from None
    return b"".join(out)


def _decode(read, data, what: str):
    reader = Reader(data, CorruptState, what)
    if data is None:
        reader.fail("missing")
    value = read(reader)
    reader.end()
    return value


def encode_value(value: Value) -> bytes:
    """
    Return the bytes of a slot value.

    @raise TypeError: C{value} is not a slot value.
    @raise EncodeError: a field is out of range.
    """
    return _encoded(write_value, value)


def encode_hard_state(hard_state: HardState) -> bytes:
    """
    Return the record of C{hard_state}.

    @raise EncodeError: a field is out of range.
    """
    promised = hard_state.promised
    return pack(_HARD_STATE, promised.round, promised.node, hard_state.chosen_index)


def decode_hard_state(data) -> HardState:
    """
    Return the L{HardState} in stored C{data}.

    @raise CorruptState: C{data} is not a hard state record.
    """
    def read(reader):
        round_, node, chosen = reader.unpack(_HARD_STATE)
        return HardState(Ballot(round_, node), chosen)

    return _decode(read, data, "hard state")


def _write_entry(entry: Entry, out: list) -> None:
    out.append(BALLOT.pack(*entry.ballot))
    write_value(entry.value, out)


def encode_entry(entry: Entry) -> bytes:
    """
    Return the record of log entry C{entry}.

    @raise TypeError: its value is not a slot value.
    @raise EncodeError: a field is out of range.
    """
    return _encoded(_write_entry, entry)


def decode_entry(data) -> Entry:
    """
    Return the L{Entry} in stored C{data}.

    @raise CorruptState: C{data} is not an entry record.
    """
    return _decode(lambda r: Entry(read_ballot(r), read_value(r)), data, "entry")


def encode_snapshot_meta(snapshot: Snapshot) -> bytes:
    """
    Return the record of C{snapshot}'s index and member set (not its data).

    @raise EncodeError: a field is out of range.
    """
    return _encoded(write_snapshot_meta, snapshot)


def decode_snapshot_meta(data, snapshot_data=b"") -> Snapshot:
    """
    Return the L{Snapshot} whose stored metadata record is C{data}, holding
    C{snapshot_data}.

    @raise CorruptState: C{data} is not a snapshot metadata record.
    """
    return _decode(lambda r: read_snapshot_meta(r, snapshot_data), data, "snapshot")


# --- keys and counters ---------------------------------------------------------


def encode_u64(number: int) -> bytes:
    """
    Return 8-byte C{number}: a slot (as a log key, sorting as slots do), an
    applied index, a revision, a client id or a counter.

    @raise EncodeError: C{number} is negative or above 2**64 - 1.
    """
    return pack(U64, number)


encode_slot = encode_u64


def decode_u64(data) -> int:
    """
    Return the number in stored 8-byte C{data}.

    @raise CorruptState: C{data} is not 8 bytes.
    """
    return _decode(lambda r: r.u64(), data, "8-byte number")


decode_slot = decode_u64


def encode_use_key(last_used: int, client_id: int) -> bytes:
    """
    Return the key of a session in the least-recently-used index: sorts by
    last-used slot, then client id (the eviction order).
    """
    return pack(_USE_KEY, last_used, client_id)


def decode_use_key(data) -> tuple[int, int]:
    """
    Return the C{(last_used, client_id)} of an L{encode_use_key} key.

    @raise CorruptState: C{data} is not 16 bytes.
    """
    return _decode(lambda r: r.unpack(_USE_KEY), data, "session index key")
