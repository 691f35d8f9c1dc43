"""
The layout of one key's record, the unit the replicated state is made of
(in the data directory, a snapshot, a transfer, a saved result and an
event of the history alike)::

    record    := version:u64 create_revision:u64 mod_revision:u64
                 value_len:u32 value                 (a key's record)
    key_value := key_len:u16 key record              (a KeyValue)

A record is self-delimiting (its value's length is in its head), so other
layouts lay records end to end.  Its own module so that both
L{kvpaxos.encoding.state} (snapshots, sessions) and
L{kvpaxos.encoding.history} (events) build on it without importing each
other; L{kvpaxos.encoding.state} re-exports every name here.  Readers raise
L{CorruptState}.  No I/O.
"""

from __future__ import annotations

from struct import Struct

from kvpaxos.encoding.errors import CorruptState
from kvpaxos.encoding.reader import U16, Reader
from kvpaxos.kv.commands import KeyValue

#: A record's head: version, create revision, mod revision, value length.
RECORD_HEAD = Struct(">QQQI")
#: The least a key_value takes: a 1-byte key and an empty value.
KEY_VALUE_MIN = U16.size + 1 + RECORD_HEAD.size


def encode_record_of(value: bytes, version: int, created: int, modified: int) -> bytes:
    """Return the stored bytes of a key's record from its fields."""
    return RECORD_HEAD.pack(version, created, modified, len(value)) + value


def encode_record(kv: KeyValue) -> bytes:
    """Return the stored bytes of C{kv}'s record (its key is stored beside it)."""
    return encode_record_of(kv.value, kv.version, kv.create_revision, kv.mod_revision)


def record_header(data) -> tuple[int, int, int]:
    """
    Return the C{(version, create_revision, mod_revision)} of stored record
    C{data}, reading only its head.

    @raise CorruptState: C{data} is too short to be a record.
    """
    if len(data) < RECORD_HEAD.size:
        raise CorruptState(f"record of {len(data)} bytes is too short")
    return RECORD_HEAD.unpack_from(data)[:3]


def read_record(reader: Reader, key: bytes) -> KeyValue:
    """Read one record (of C{key}) off C{reader}."""
    version, created, modified, length = reader.unpack(RECORD_HEAD)
    return KeyValue(key, reader.take(length), version, created, modified)


def decode_record(key: bytes, data) -> KeyValue:
    """
    Return the L{KeyValue} of C{key} whose stored record is C{data}.

    @raise CorruptState: C{data} is not a record.
    """
    reader = Reader(data, CorruptState, "record")
    kv = read_record(reader, key)
    reader.end()
    return kv


def write_key_value(kv: KeyValue, out: list) -> None:
    """Append the bytes of C{kv}, key included, to C{out}."""
    out += [U16.pack(len(kv.key)), kv.key, encode_record(kv)]


def read_key_value(reader: Reader) -> KeyValue:
    """Read one L{KeyValue} written by L{write_key_value}."""
    return read_record(reader, reader.u16_bytes())


def possible_record(kv: KeyValue, revision: int) -> bool:
    """
    Whether C{kv} is a record a store at C{revision} may hold: version 1
    or more, and C{1 <= create_revision <= mod_revision <= revision}.
    """
    return kv.version >= 1 and 1 <= kv.create_revision <= kv.mod_revision <= revision


__all__ = [
    "KEY_VALUE_MIN",
    "RECORD_HEAD",
    "decode_record",
    "encode_record",
    "encode_record_of",
    "possible_record",
    "read_key_value",
    "read_record",
    "record_header",
    "write_key_value",
]
