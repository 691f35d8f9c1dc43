"""
The snapshot transfer stream (issue 11): the node-level messages that move
a member's state to a peer behind its compaction point in bounded chunks,
their wire encoding, and the layout of a chunk's records.

These are not Paxos messages: the core decides nothing about them.  The
node's L{kvpaxos.node.transfers} sends and takes them; a peer link carries
each as one AMP value (every encoding is at most L{MESSAGE_BYTES_MAX},
below AMP's 65,535-byte cap).  The protocol::

    sender                                 receiver
    SnapshotOffer(transfer, index, member set, revision, next client id) ->
    SnapshotChunk(transfer, seq, records)  ->  (staged)
                                          <-  SnapshotAck(transfer, seq)
    ...  (at most a window of chunks unacknowledged)
    SnapshotDone(transfer, count, digest)  ->  (installed through the core)
    SnapshotAbort(transfer, reason)       <->  either side gives up

Layout (format L{TRANSFER_FORMAT})::

    message := format:u8 tag:u8 src:u32 dst:u32 transfer:u64 fields...
    offer   := snapshot_meta revision:u64 next_client_id:u64
    chunk   := seq:u64 records_len:u32 records
    ack     := seq:u64
    done    := count:u64 digest:16 bytes
    abort   := reason_len:u16 reason (UTF-8)
    records := table:u8 count:u32 item*
    table   := 1 (records: key -> record) | 2 (sessions: client_id:u64 -> session)
             | 3 (the auth table: key -> value)
             | 4 (the history's compacted revision: one item, key b"",
                  value compacted:u64)
             | 5 (the history: history_key -> event, L{kvpaxos.encoding.history})
             | 6 (the lease table: id:u64 -> ttl:u64)
             | 7 (the attached keys: key -> lease:u64)
    item    := key_len:u16 key more:u8 value_len:u32 value

A transfer's chunks hold the records, then the sessions, then the auth
table, then the compacted revision, then the history, then the leases,
then the attached keys, each in key order, one table per chunk.  A
transfer without table 4 (from a member that keeps no history) installs
no events and the compacted revision C{revision + 1}; one without tables
6 and 7, no leases.  Every attached key is one of the transfer's records
and its lease one of table 6's (L{kvpaxos.encoding.leases}: the
receiver's check).

An item whose C{more} is 1 holds a piece of a stored value that continues
in the next item (the first of the next chunk), under the same key: a
value larger than a chunk (values go up to 1 MiB) travels in pieces.

The snapshot metadata (index, member set) is laid out by
L{kvpaxos.encoding.values}; a record's value by L{kvpaxos.encoding.state}
(the same bytes as in the data directory).  L{decode} treats its input as
hostile and raises L{MalformedMessage} only; L{decode_records} checks a
chunk's layout (also L{MalformedMessage}), while whether each record is
sound is the store's check as it stages it (L{CorruptState}).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from struct import Struct
from struct import error as StructError

from kvpaxos.encoding.errors import EncodeError, MalformedMessage
from kvpaxos.encoding.reader import U16, U32, U64, Reader, as_bytes
from kvpaxos.encoding.values import read_snapshot_meta, write_snapshot_meta
from kvpaxos.paxos.config import Config
from kvpaxos.paxos.messages import Snapshot

#: The format byte every transfer message starts with.
TRANSFER_FORMAT = 1
#: The most a chunk's records may take: one chunk is one AMP value.
CHUNK_BYTES_MAX = 60_000
#: The most one encoded transfer message may take (a chunk and its header).
MESSAGE_BYTES_MAX = CHUNK_BYTES_MAX + 64
#: The longest abort reason sent.
REASON_BYTES_MAX = 500
#: The length of a L{SnapshotDone} digest (L{Digest}).
DIGEST_BYTES = 16

#: The tables a chunk's records belong to (codes are part of the format:
#: never renumber, only append).
TABLE_RECORDS = 1
TABLE_SESSIONS = 2
TABLE_AUTH = 3
TABLE_COMPACTED = 4
TABLE_HISTORY = 5
TABLE_LEASES = 6
TABLE_LEASE_KEYS = 7
_TABLES = {table: table for table in (TABLE_RECORDS, TABLE_SESSIONS, TABLE_AUTH, TABLE_COMPACTED, TABLE_HISTORY,
                                      TABLE_LEASES, TABLE_LEASE_KEYS)}

_HEAD = Struct(">BBIIQ")  # format, tag, src, dst, transfer
_ITEM_MIN = U16.size + 1 + U32.size


@dataclass(frozen=True, slots=True)
class SnapshotOffer:
    """
    The sender's state, as of C{index}, is coming as transfer C{transfer};
    the receiver discards any other transfer it was staging.
    """

    src: int
    dst: int
    transfer: int
    index: int
    config: Config
    revision: int
    next_client_id: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Chunk C{seq} (from 0) of transfer C{transfer}: L{encode_records} bytes."""

    src: int
    dst: int
    transfer: int
    seq: int
    records: bytes


@dataclass(frozen=True, slots=True)
class SnapshotAck:
    """The receiver staged chunk C{seq} of C{transfer} (and every one before)."""

    src: int
    dst: int
    transfer: int
    seq: int


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """
    Transfer C{transfer} had C{count} chunks whose records hash (L{Digest})
    to C{digest}.
    """

    src: int
    dst: int
    transfer: int
    count: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SnapshotAbort:
    """Either side gives transfer C{transfer} up (C{reason}, for the log)."""

    src: int
    dst: int
    transfer: int
    reason: str


TransferMessage = SnapshotOffer | SnapshotChunk | SnapshotAck | SnapshotDone | SnapshotAbort

# Tags are part of the format: never renumber, only append.
_TAGS = {SnapshotOffer: 1, SnapshotChunk: 2, SnapshotAck: 3, SnapshotDone: 4, SnapshotAbort: 5}
_TYPES = {tag: kind for kind, tag in _TAGS.items()}


class Digest:
    """The running hash of a transfer's chunks, in order (BLAKE2b, 16 bytes)."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)
        self.count = 0

    def add(self, records: bytes) -> None:
        self._hash.update(U32.pack(len(records)))
        self._hash.update(records)
        self.count += 1

    def digest(self) -> bytes:
        return self._hash.digest()


# --- messages ----------------------------------------------------------------


def encode(message: TransferMessage) -> bytes:
    """
    Return the bytes of a transfer message.

    @raise TypeError: C{message} is not a transfer message.
    @raise EncodeError: a field is out of range (a chunk over
        L{CHUNK_BYTES_MAX}, a digest not L{DIGEST_BYTES} long).
    """
    tag = _TAGS.get(type(message))
    if tag is None:
        raise TypeError(f"not a transfer message: {type(message).__name__}")
    try:
        out = [_HEAD.pack(TRANSFER_FORMAT, tag, message.src, message.dst, message.transfer)]
        kind = type(message)
        if kind is SnapshotOffer:
            write_snapshot_meta(Snapshot(message.index, message.config), out)
            out.append(U64.pack(message.revision) + U64.pack(message.next_client_id))
        elif kind is SnapshotChunk:
            if len(message.records) > CHUNK_BYTES_MAX:
                raise EncodeError(f"chunk of {len(message.records)} bytes")
            out += [U64.pack(message.seq), U32.pack(len(message.records)), message.records]
        elif kind is SnapshotAck:
            out.append(U64.pack(message.seq))
        elif kind is SnapshotDone:
            if len(message.digest) != DIGEST_BYTES:
                raise EncodeError(f"digest of {len(message.digest)} bytes")
            out += [U64.pack(message.count), message.digest]
        else:
            reason = message.reason.encode("utf-8")[:REASON_BYTES_MAX]
            out += [U16.pack(len(reason)), reason]
    except StructError as e:
        raise EncodeError(f"cannot encode {message!r}: {e}") from None
    return b"".join(out)


def decode(data) -> TransferMessage:
    """
    Return the transfer message in C{data} (a peer's bytes).

    @raise MalformedMessage: C{data} is not one canonical transfer message
        of this format (truncated, over L{MESSAGE_BYTES_MAX}, an unknown
        tag, a bad length, trailing bytes).
    """
    data = as_bytes(data, MalformedMessage)
    reader = Reader(data, MalformedMessage, "transfer message")
    if len(data) > MESSAGE_BYTES_MAX:
        reader.fail(f"{len(data)} bytes, over {MESSAGE_BYTES_MAX}")
    fmt, tag, src, dst, transfer = reader.unpack(_HEAD)
    if fmt != TRANSFER_FORMAT:
        reader.fail(f"format {fmt}, not {TRANSFER_FORMAT}")
    kind = _TYPES.get(tag)
    if kind is None:
        reader.fail(f"unknown tag {tag}")
    if kind is SnapshotOffer:
        meta = read_snapshot_meta(reader)
        message = SnapshotOffer(src, dst, transfer, meta.index, meta.config,
                                reader.u64(), reader.u64())
    elif kind is SnapshotChunk:
        seq = reader.u64()
        size = reader.u32()
        if size > CHUNK_BYTES_MAX:
            reader.fail(f"chunk of {size} bytes")
        message = SnapshotChunk(src, dst, transfer, seq, reader.take(size))
    elif kind is SnapshotAck:
        message = SnapshotAck(src, dst, transfer, reader.u64())
    elif kind is SnapshotDone:
        message = SnapshotDone(src, dst, transfer, reader.u64(), reader.take(DIGEST_BYTES))
    else:
        raw = reader.u16_bytes()
        if len(raw) > REASON_BYTES_MAX:
            reader.fail(f"reason of {len(raw)} bytes")
        message = SnapshotAbort(src, dst, transfer, raw.decode("utf-8", "replace"))
    reader.end()
    return message


# --- a chunk's records -------------------------------------------------------------


def item_bytes(key: bytes, value_bytes: int) -> int:
    """What one item of C{key} and C{value_bytes} adds to a chunk's records."""
    return _ITEM_MIN + len(key) + value_bytes


#: What a chunk's records take before their first item.
RECORDS_HEAD_BYTES = 1 + U32.size


def encode_records(table: int, items) -> bytes:
    """
    Return a chunk's records: the C{(key, value, more)} C{items} of
    C{table} (L{TABLE_RECORDS}, L{TABLE_SESSIONS}, L{TABLE_AUTH},
    L{TABLE_COMPACTED}, L{TABLE_HISTORY}, L{TABLE_LEASES} or
    L{TABLE_LEASE_KEYS}), in key order.
    """
    if table not in _TABLES:
        raise EncodeError(f"unknown table {table}")
    out = [bytes([table]), U32.pack(len(items))]
    u16, u32 = U16.pack, U32.pack
    for key, value, more in items:
        out += [u16(len(key)), key, b"\x01" if more else b"\x00", u32(len(value)), value]
    return b"".join(out)


def decode_records(data) -> tuple[int, list]:
    """
    Return C{(table, [(key, value, more), ...])} of a chunk's records (a
    peer's bytes: only their layout is checked here).

    @raise MalformedMessage: not a chunk's records (an unknown table, a
        count the bytes cannot hold, truncated, trailing bytes).
    """
    reader = Reader(as_bytes(data, MalformedMessage), MalformedMessage, "chunk records")
    table = reader.code(_TABLES, "table")
    count = reader.count(U32, _ITEM_MIN)
    items = []
    for _ in range(count):
        key = reader.u16_bytes()
        more = reader.flag()
        items.append((key, reader.u32_bytes(), more))
    reader.end()
    return table, items
