"""
The wire encoding of Paxos messages: L{encode} turns a
L{kvpaxos.paxos.messages} message into bytes, L{decode} turns bytes from a
peer back into an equal message.

The format is compact, little-endian binary built with C{struct}; nothing
here uses pickle, eval or any dependency.  What must not live here: transport
framing (chunking, AMP) belongs to L{kvpaxos.node.peers}.

Layout (format version 1)::

    message  := version:u8 tag:u8 fields...
    ballot   := round:u64 node:u32
    value    := 0                                        (Noop)
              | 1 count:u32 len:u32*count bytes...       (Batch)
              | 2 kind:u8 node:u32                       (ConfigChange)
    config   := nvoters:u32 node:u32*nvoters nlearners:u32 node:u32*nlearners
                (each set in strictly ascending order)
    snapshot := index:u64 config data_len:u64 data

Node ids are u32, slots, indexes and rounds u64, so none can be negative.
A batch puts all command lengths first and the commands after them, so both
directions are a handful of C-level calls whatever the number of commands.

L{decode} treats its input as hostile: every length and count is checked
against the bytes that remain before anything is allocated, enums and
booleans must hold a known value, and trailing bytes are refused, so an
encoding is canonical: a message has exactly one.  Anything
wrong raises L{DecodeError} and nothing else.
"""

from __future__ import annotations

from itertools import accumulate, pairwise
from struct import Struct
from struct import error as StructError

from kvpaxos.paxos.messages import (
    NOOP,
    Accept,
    Accepted,
    Ballot,
    Batch,
    Catchup,
    CatchupRequest,
    ChangeKind,
    Config,
    ConfigChange,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Message,
    Nack,
    Noop,
    Prepare,
    Promise,
    Snapshot,
    TimeoutNow,
    PreVote,
    PreVoteReply,
    Value,
)

#: The format version written first in every encoding.
VERSION = 1


class DecodeError(ValueError):
    """
    Bytes from a peer are not a valid encoding (the peer misbehaves or the
    data was damaged): truncated, trailing bytes, an unknown version or tag,
    a length beyond the data, or a field out of range.
    """


# --- fixed-size parts -------------------------------------------------------

_HEAD = Struct("<BB")
_U32 = Struct("<I")
_U64 = Struct("<Q")
_BALLOT = Struct("<QI")
_SLOT_BALLOT = Struct("<QQI")
_CONFIG_CHANGE = Struct("<BI")
_SNAPSHOT_INDEX = Struct("<Q")

# Message bodies; "QI" is a ballot.  The count of a variable part comes last.
_PREPARE = Struct("<IIQIQBQI")  # src dst ballot first_slot transfer asked_by
_PROMISE = Struct("<IIQIQI")  # src dst ballot first_slot count
_NACK = Struct("<IIQIQIQ")  # src dst ballot promised chosen_index
_ACCEPT = Struct("<IIQIQQI")  # src dst ballot first_slot chosen_index count
_ACCEPTED = Struct("<IIQIQQQ")  # src dst ballot first_slot count chosen_index
_HEARTBEAT = Struct("<IIQIQQ")  # src dst ballot chosen_index read_round
_HEARTBEAT_ACK = Struct("<IIQIQQ")  # src dst ballot read_round chosen_index
_CATCHUP_REQUEST = Struct("<IIQ")  # src dst first_slot
_CATCHUP = Struct("<IIQQI")  # src dst first_slot chosen_index count
_INSTALL_SNAPSHOT = Struct("<II")  # src dst, then a snapshot
_TIMEOUT_NOW = Struct("<IIQI")  # src dst ballot
_PRE_VOTE = Struct("<IIQIQ")  # src dst ballot first_slot
_PRE_VOTE_REPLY = Struct("<IIQIBQ")  # src dst ballot granted chosen_index

_NOOP_TAG = 0
_BATCH_TAG = 1
_CONFIG_CHANGE_TAG = 2
_NOOP_BYTES = bytes([_NOOP_TAG])
_BATCH_TAG_BYTES = bytes([_BATCH_TAG])

_KIND_CODES = {
    ChangeKind.ADD_VOTER: 0,
    ChangeKind.ADD_LEARNER: 1,
    ChangeKind.PROMOTE: 2,
    ChangeKind.REMOVE: 3,
}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


# --- values -----------------------------------------------------------------


def _encode_value(value: Value, out: list) -> None:
    kind = type(value)
    if kind is Batch:
        commands = value.commands
        count = len(commands)
        out.append(_BATCH_TAG_BYTES)
        out.append(Struct(f"<I{count}I").pack(count, *map(len, commands)))
        out.extend(commands)
    elif kind is Noop:
        out.append(_NOOP_BYTES)
    elif kind is ConfigChange:
        out.append(bytes([_CONFIG_CHANGE_TAG]))
        out.append(_CONFIG_CHANGE.pack(_KIND_CODES[value.kind], value.node))
    else:
        raise TypeError(f"not a slot value: {kind.__name__}")


def _decode_value(data: bytes, offset: int) -> tuple[Value, int]:
    if offset >= len(data):
        raise DecodeError("truncated value")
    tag = data[offset]
    offset += 1
    if tag == _BATCH_TAG:
        (count,) = _U32.unpack_from(data, offset)
        offset += 4
        if count * 4 > len(data) - offset:
            raise DecodeError(f"batch of {count} commands exceeds the data")
        lengths = Struct(f"<{count}I").unpack_from(data, offset)
        offset += count * 4
        ends = list(accumulate(lengths, initial=offset))
        if ends[-1] > len(data):
            raise DecodeError("batch commands exceed the data")
        commands = tuple([data[a:b] for a, b in pairwise(ends)])
        return Batch(commands), ends[-1]
    if tag == _NOOP_TAG:
        return NOOP, offset
    if tag == _CONFIG_CHANGE_TAG:
        code, node = _CONFIG_CHANGE.unpack_from(data, offset)
        kind = _KINDS.get(code)
        if kind is None:
            raise DecodeError(f"unknown config change kind {code}")
        return ConfigChange(kind, node), offset + _CONFIG_CHANGE.size
    raise DecodeError(f"unknown value tag {tag}")


def _decode_values(data: bytes, offset: int, count: int) -> tuple[tuple, int]:
    # Every value takes at least one byte: refuse counts the data cannot hold
    # before looping over them.
    if count > len(data) - offset:
        raise DecodeError(f"{count} values exceed the data")
    values = []
    for _ in range(count):
        value, offset = _decode_value(data, offset)
        values.append(value)
    return tuple(values), offset


# --- config and snapshot ----------------------------------------------------


def _encode_nodes(nodes: frozenset[int], out: list) -> None:
    count = len(nodes)
    out.append(Struct(f"<I{count}I").pack(count, *sorted(nodes)))


def _decode_nodes(data: bytes, offset: int) -> tuple[frozenset[int], int]:
    (count,) = _U32.unpack_from(data, offset)
    offset += 4
    if count * 4 > len(data) - offset:
        raise DecodeError(f"{count} node ids exceed the data")
    ids = Struct(f"<{count}I").unpack_from(data, offset)
    if any(a >= b for a, b in pairwise(ids)):
        raise DecodeError("member set not in strictly ascending order")
    return frozenset(ids), offset + count * 4


def _encode_snapshot(snapshot: Snapshot, out: list) -> None:
    out.append(_SNAPSHOT_INDEX.pack(snapshot.index))
    _encode_nodes(snapshot.config.voters, out)
    _encode_nodes(snapshot.config.learners, out)
    out.append(_U64.pack(len(snapshot.data)))
    out.append(snapshot.data)


def _decode_snapshot(data: bytes, offset: int) -> tuple[Snapshot, int]:
    (index,) = _SNAPSHOT_INDEX.unpack_from(data, offset)
    voters, offset = _decode_nodes(data, offset + _SNAPSHOT_INDEX.size)
    learners, offset = _decode_nodes(data, offset)
    (size,) = _U64.unpack_from(data, offset)
    offset += 8
    if size > len(data) - offset:
        raise DecodeError(f"snapshot data of {size} bytes exceeds the data")
    end = offset + size
    return Snapshot(index, Config(voters, learners), data[offset:end]), end


# --- messages ---------------------------------------------------------------
# Each encoder appends to a list of bytes; each decoder takes the data and
# the offset after the header and returns (message, offset after it).


def _enc_prepare(m: Prepare, out: list) -> None:
    if type(m.transfer) is not bool:
        raise TypeError("Prepare.transfer must be a bool")
    out.append(_PREPARE.pack(
        m.src, m.dst, *m.ballot, m.first_slot, m.transfer, *m.asked_by
    ))


def _dec_prepare(data: bytes, offset: int):
    src, dst, rnd, node, first_slot, transfer, a_rnd, a_node = _PREPARE.unpack_from(data, offset)
    if transfer > 1:
        raise DecodeError(f"bad boolean {transfer}")
    message = Prepare(
        src, dst, Ballot(rnd, node), first_slot, transfer == 1, Ballot(a_rnd, a_node)
    )
    return message, offset + _PREPARE.size


def _enc_promise(m: Promise, out: list) -> None:
    out.append(
        _PROMISE.pack(m.src, m.dst, *m.ballot, m.first_slot, len(m.accepted))
    )
    for slot, ballot, value in m.accepted:
        out.append(_SLOT_BALLOT.pack(slot, *ballot))
        _encode_value(value, out)


def _dec_promise(data: bytes, offset: int):
    src, dst, rnd, node, first_slot, count = _PROMISE.unpack_from(data, offset)
    offset += _PROMISE.size
    if count * (_SLOT_BALLOT.size + 1) > len(data) - offset:
        raise DecodeError(f"{count} promised slots exceed the data")
    accepted = []
    for _ in range(count):
        slot, a_round, a_node = _SLOT_BALLOT.unpack_from(data, offset)
        value, offset = _decode_value(data, offset + _SLOT_BALLOT.size)
        accepted.append((slot, Ballot(a_round, a_node), value))
    message = Promise(src, dst, Ballot(rnd, node), first_slot, tuple(accepted))
    return message, offset


def _enc_nack(m: Nack, out: list) -> None:
    out.append(_NACK.pack(m.src, m.dst, *m.ballot, *m.promised, m.chosen_index))


def _dec_nack(data: bytes, offset: int):
    src, dst, rnd, node, p_rnd, p_node, chosen = _NACK.unpack_from(data, offset)
    message = Nack(src, dst, Ballot(rnd, node), Ballot(p_rnd, p_node), chosen)
    return message, offset + _NACK.size


def _enc_accept(m: Accept, out: list) -> None:
    out.append(
        _ACCEPT.pack(
            m.src, m.dst, *m.ballot, m.first_slot, m.chosen_index, len(m.values)
        )
    )
    for value in m.values:
        _encode_value(value, out)


def _dec_accept(data: bytes, offset: int):
    src, dst, rnd, node, first_slot, chosen, count = _ACCEPT.unpack_from(
        data, offset
    )
    values, offset = _decode_values(data, offset + _ACCEPT.size, count)
    message = Accept(src, dst, Ballot(rnd, node), first_slot, values, chosen)
    return message, offset


def _enc_accepted(m: Accepted, out: list) -> None:
    out.append(
        _ACCEPTED.pack(
            m.src, m.dst, *m.ballot, m.first_slot, m.count, m.chosen_index
        )
    )


def _dec_accepted(data: bytes, offset: int):
    src, dst, rnd, node, first_slot, count, chosen = _ACCEPTED.unpack_from(
        data, offset
    )
    message = Accepted(src, dst, Ballot(rnd, node), first_slot, count, chosen)
    return message, offset + _ACCEPTED.size


def _enc_heartbeat(m: Heartbeat, out: list) -> None:
    out.append(
        _HEARTBEAT.pack(m.src, m.dst, *m.ballot, m.chosen_index, m.read_round)
    )


def _dec_heartbeat(data: bytes, offset: int):
    src, dst, rnd, node, chosen, read_round = _HEARTBEAT.unpack_from(data, offset)
    message = Heartbeat(src, dst, Ballot(rnd, node), chosen, read_round)
    return message, offset + _HEARTBEAT.size


def _enc_heartbeat_ack(m: HeartbeatAck, out: list) -> None:
    out.append(
        _HEARTBEAT_ACK.pack(m.src, m.dst, *m.ballot, m.read_round, m.chosen_index)
    )


def _dec_heartbeat_ack(data: bytes, offset: int):
    src, dst, rnd, node, read_round, chosen = _HEARTBEAT_ACK.unpack_from(
        data, offset
    )
    message = HeartbeatAck(src, dst, Ballot(rnd, node), read_round, chosen)
    return message, offset + _HEARTBEAT_ACK.size


def _enc_catchup_request(m: CatchupRequest, out: list) -> None:
    out.append(_CATCHUP_REQUEST.pack(m.src, m.dst, m.first_slot))


def _dec_catchup_request(data: bytes, offset: int):
    src, dst, first_slot = _CATCHUP_REQUEST.unpack_from(data, offset)
    return CatchupRequest(src, dst, first_slot), offset + _CATCHUP_REQUEST.size


def _enc_catchup(m: Catchup, out: list) -> None:
    out.append(
        _CATCHUP.pack(m.src, m.dst, m.first_slot, m.chosen_index, len(m.entries))
    )
    for ballot, value in m.entries:
        out.append(_BALLOT.pack(*ballot))
        _encode_value(value, out)


def _dec_catchup(data: bytes, offset: int):
    src, dst, first_slot, chosen, count = _CATCHUP.unpack_from(data, offset)
    offset += _CATCHUP.size
    if count * (_BALLOT.size + 1) > len(data) - offset:
        raise DecodeError(f"{count} catch-up entries exceed the data")
    entries = []
    for _ in range(count):
        rnd, node = _BALLOT.unpack_from(data, offset)
        value, offset = _decode_value(data, offset + _BALLOT.size)
        entries.append((Ballot(rnd, node), value))
    return Catchup(src, dst, first_slot, tuple(entries), chosen), offset


def _enc_install_snapshot(m: InstallSnapshot, out: list) -> None:
    out.append(_INSTALL_SNAPSHOT.pack(m.src, m.dst))
    _encode_snapshot(m.snapshot, out)


def _dec_install_snapshot(data: bytes, offset: int):
    src, dst = _INSTALL_SNAPSHOT.unpack_from(data, offset)
    snapshot, offset = _decode_snapshot(data, offset + _INSTALL_SNAPSHOT.size)
    return InstallSnapshot(src, dst, snapshot), offset


def _enc_timeout_now(m: TimeoutNow, out: list) -> None:
    out.append(_TIMEOUT_NOW.pack(m.src, m.dst, *m.ballot))


def _dec_timeout_now(data: bytes, offset: int):
    src, dst, rnd, node = _TIMEOUT_NOW.unpack_from(data, offset)
    return TimeoutNow(src, dst, Ballot(rnd, node)), offset + _TIMEOUT_NOW.size


def _enc_pre_vote(m: PreVote, out: list) -> None:
    out.append(_PRE_VOTE.pack(m.src, m.dst, *m.ballot, m.first_slot))


def _dec_pre_vote(data: bytes, offset: int):
    src, dst, rnd, node, first_slot = _PRE_VOTE.unpack_from(data, offset)
    return PreVote(src, dst, Ballot(rnd, node), first_slot), offset + _PRE_VOTE.size


def _enc_pre_vote_reply(m: PreVoteReply, out: list) -> None:
    if type(m.granted) is not bool:
        raise TypeError("PreVoteReply.granted must be a bool")
    out.append(_PRE_VOTE_REPLY.pack(m.src, m.dst, *m.ballot, m.granted, m.chosen_index))


def _dec_pre_vote_reply(data: bytes, offset: int):
    src, dst, rnd, node, granted, chosen = _PRE_VOTE_REPLY.unpack_from(data, offset)
    if granted > 1:
        raise DecodeError(f"bad boolean {granted}")
    message = PreVoteReply(src, dst, Ballot(rnd, node), granted == 1, chosen)
    return message, offset + _PRE_VOTE_REPLY.size


# Tags are part of the format: never renumber, only append.
_CODECS = [
    (1, Prepare, _enc_prepare, _dec_prepare),
    (2, Promise, _enc_promise, _dec_promise),
    (3, Nack, _enc_nack, _dec_nack),
    (4, Accept, _enc_accept, _dec_accept),
    (5, Accepted, _enc_accepted, _dec_accepted),
    (6, Heartbeat, _enc_heartbeat, _dec_heartbeat),
    (7, HeartbeatAck, _enc_heartbeat_ack, _dec_heartbeat_ack),
    (8, CatchupRequest, _enc_catchup_request, _dec_catchup_request),
    (9, Catchup, _enc_catchup, _dec_catchup),
    (10, InstallSnapshot, _enc_install_snapshot, _dec_install_snapshot),
    (11, TimeoutNow, _enc_timeout_now, _dec_timeout_now),
    (12, PreVote, _enc_pre_vote, _dec_pre_vote),
    (13, PreVoteReply, _enc_pre_vote_reply, _dec_pre_vote_reply),
]
_ENCODERS = {kind: (_HEAD.pack(VERSION, tag), enc) for tag, kind, enc, _ in _CODECS}
_DECODERS = {tag: dec for tag, _, _, dec in _CODECS}


def encode(message: Message) -> bytes:
    """
    Return the encoding of C{message}, which L{decode} turns back into an
    equal message.

    @raise TypeError: C{message} is not a Paxos message, or holds a value of
        the wrong type (caller misuse).
    @raise ValueError: a field is out of range: a negative or too large id,
        slot, index or round (caller misuse).
    """
    try:
        head, encoder = _ENCODERS[type(message)]
    except KeyError:
        raise TypeError(f"not a Paxos message: {type(message).__name__}") from None
    out = [head]
    try:
        encoder(message, out)
        return b"".join(out)
    except StructError as e:
        raise ValueError(f"cannot encode {type(message).__name__}: {e}") from None


def decode(data: bytes) -> Message:
    """
    Return the message that C{data} encodes.  C{data} is untrusted: it may
    come from a faulty or hostile peer.

    @param data: one complete encoding (bytes, bytearray or memoryview).
    @raise DecodeError: C{data} is not exactly one valid encoding; no other
        exception escapes.
    """
    if type(data) is not bytes:
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise DecodeError(f"not bytes: {type(data).__name__}") from None
    try:
        version, tag = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise DecodeError(f"unknown format version {version}")
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise DecodeError(f"unknown message tag {tag}")
        message, offset = decoder(data, _HEAD.size)
    except StructError as e:
        raise DecodeError(f"truncated message: {e}") from None
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes")
    return message
