"""
The wire encoding of Paxos messages: L{encode} turns a
L{kvpaxos.paxos.messages} message into bytes, L{decode} turns bytes from a
peer back into an equal message.

Layout (wire version L{WIRE_VERSION})::

    message  := version:u8 tag:u8 fields...
    snapshot := snapshot_meta data_len:u64 data

with the values (ballot, slot value, member set, snapshot metadata) laid
out as L{kvpaxos.encoding.values} says, as they are on disk.  Each
message's fixed fields come first, in the order of its dataclass, and the
count of its variable part last.

L{decode} treats its input as hostile: every length and count is checked
against the bytes that remain before anything is allocated, enums and
booleans must hold a known value, and trailing bytes are refused, so an
encoding is canonical: a message has exactly one.  Anything wrong raises
L{MalformedMessage} and nothing else.  What must not live here: transport
framing (chunking, AMP) belongs to L{kvpaxos.node.peers}.
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError

from kvpaxos.encoding.errors import EncodeError, MalformedMessage
from kvpaxos.encoding.reader import U64, Reader, as_bytes
from kvpaxos.encoding.values import (
    BALLOT,
    read_ballot,
    read_snapshot_meta,
    read_value,
    read_values,
    write_snapshot_meta,
    write_value,
)
from kvpaxos.paxos.messages import (
    Accept,
    Accepted,
    Ballot,
    Catchup,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Message,
    Nack,
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    Snapshot,
    TimeoutNow,
)

#: The wire format version written first in every message (1 was the
#: little-endian layout of kvpaxos.node.codec).
WIRE_VERSION = 4

_HEAD = Struct(">BB")
_SLOT_BALLOT = Struct(">QQI")

# Message bodies; "QI" is a ballot.  The count of a variable part comes last.
_PREPARE = Struct(">IIQIQBQI")  # src dst ballot first_slot transfer asked_by
_PROMISE = Struct(">IIQIQI")  # src dst ballot first_slot count
_NACK = Struct(">IIQIQIQ")  # src dst ballot promised chosen_index
_ACCEPT = Struct(">IIQIQQI")  # src dst ballot first_slot chosen_index count
_ACCEPTED = Struct(">IIQIQQQ")  # src dst ballot first_slot count chosen_index
_HEARTBEAT = Struct(">IIQIQQ")  # src dst ballot chosen_index read_round
_HEARTBEAT_ACK = Struct(">IIQIQQ")  # src dst ballot read_round chosen_index
_CATCHUP_REQUEST = Struct(">IIQ")  # src dst first_slot
_CATCHUP = Struct(">IIQQI")  # src dst first_slot chosen_index count
_INSTALL_SNAPSHOT = Struct(">II")  # src dst, then a snapshot
_TIMEOUT_NOW = Struct(">IIQI")  # src dst ballot
_PRE_VOTE = Struct(">IIQIQ")  # src dst ballot first_slot
_PRE_VOTE_REPLY = Struct(">IIQIBQ")  # src dst ballot granted chosen_index


# Each encoder appends to a list of bytes; each decoder reads the fields
# after the header off a Reader.


def _enc_prepare(m: Prepare, out: list) -> None:
    if type(m.transfer) is not bool:
        raise TypeError("Prepare.transfer must be a bool")
    out.append(_PREPARE.pack(m.src, m.dst, *m.ballot, m.first_slot, m.transfer, *m.asked_by))


def _dec_prepare(reader: Reader) -> Prepare:
    src, dst, rnd, node, first_slot, transfer, a_rnd, a_node = reader.unpack(_PREPARE)
    if transfer > 1:
        reader.fail(f"bad boolean {transfer}")
    return Prepare(src, dst, Ballot(rnd, node), first_slot, transfer == 1, Ballot(a_rnd, a_node))


def _enc_promise(m: Promise, out: list) -> None:
    out.append(_PROMISE.pack(m.src, m.dst, *m.ballot, m.first_slot, len(m.accepted)))
    for slot, ballot, value in m.accepted:
        out.append(_SLOT_BALLOT.pack(slot, *ballot))
        write_value(value, out)


def _dec_promise(reader: Reader) -> Promise:
    src, dst, rnd, node, first_slot, count = reader.unpack(_PROMISE)
    if count * (_SLOT_BALLOT.size + 1) > reader.left():
        reader.fail(f"{count} promised slots exceed the data")
    accepted = []
    for _ in range(count):
        slot, a_round, a_node = reader.unpack(_SLOT_BALLOT)
        accepted.append((slot, Ballot(a_round, a_node), read_value(reader)))
    return Promise(src, dst, Ballot(rnd, node), first_slot, tuple(accepted))


def _enc_nack(m: Nack, out: list) -> None:
    out.append(_NACK.pack(m.src, m.dst, *m.ballot, *m.promised, m.chosen_index))


def _dec_nack(reader: Reader) -> Nack:
    src, dst, rnd, node, p_rnd, p_node, chosen = reader.unpack(_NACK)
    return Nack(src, dst, Ballot(rnd, node), Ballot(p_rnd, p_node), chosen)


def _enc_accept(m: Accept, out: list) -> None:
    out.append(_ACCEPT.pack(m.src, m.dst, *m.ballot, m.first_slot, m.chosen_index, len(m.values)))
    for value in m.values:
        write_value(value, out)


def _dec_accept(reader: Reader) -> Accept:
    src, dst, rnd, node, first_slot, chosen, count = reader.unpack(_ACCEPT)
    values = read_values(reader, count)
    return Accept(src, dst, Ballot(rnd, node), first_slot, values, chosen)


def _enc_accepted(m: Accepted, out: list) -> None:
    out.append(_ACCEPTED.pack(m.src, m.dst, *m.ballot, m.first_slot, m.count, m.chosen_index))


def _dec_accepted(reader: Reader) -> Accepted:
    src, dst, rnd, node, first_slot, count, chosen = reader.unpack(_ACCEPTED)
    return Accepted(src, dst, Ballot(rnd, node), first_slot, count, chosen)


def _enc_heartbeat(m: Heartbeat, out: list) -> None:
    out.append(_HEARTBEAT.pack(m.src, m.dst, *m.ballot, m.chosen_index, m.read_round))


def _dec_heartbeat(reader: Reader) -> Heartbeat:
    src, dst, rnd, node, chosen, read_round = reader.unpack(_HEARTBEAT)
    return Heartbeat(src, dst, Ballot(rnd, node), chosen, read_round)


def _enc_heartbeat_ack(m: HeartbeatAck, out: list) -> None:
    out.append(_HEARTBEAT_ACK.pack(m.src, m.dst, *m.ballot, m.read_round, m.chosen_index))


def _dec_heartbeat_ack(reader: Reader) -> HeartbeatAck:
    src, dst, rnd, node, read_round, chosen = reader.unpack(_HEARTBEAT_ACK)
    return HeartbeatAck(src, dst, Ballot(rnd, node), read_round, chosen)


def _enc_catchup_request(m: CatchupRequest, out: list) -> None:
    out.append(_CATCHUP_REQUEST.pack(m.src, m.dst, m.first_slot))


def _dec_catchup_request(reader: Reader) -> CatchupRequest:
    return CatchupRequest(*reader.unpack(_CATCHUP_REQUEST))


def _enc_catchup(m: Catchup, out: list) -> None:
    out.append(_CATCHUP.pack(m.src, m.dst, m.first_slot, m.chosen_index, len(m.entries)))
    for ballot, value in m.entries:
        out.append(BALLOT.pack(*ballot))
        write_value(value, out)


def _dec_catchup(reader: Reader) -> Catchup:
    src, dst, first_slot, chosen, count = reader.unpack(_CATCHUP)
    if count * (BALLOT.size + 1) > reader.left():
        reader.fail(f"{count} catch-up entries exceed the data")
    entries = tuple([(read_ballot(reader), read_value(reader)) for _ in range(count)])
    return Catchup(src, dst, first_slot, entries, chosen)


def _enc_install_snapshot(m: InstallSnapshot, out: list) -> None:
    out.append(_INSTALL_SNAPSHOT.pack(m.src, m.dst))
    write_snapshot_meta(m.snapshot, out)
    out.append(U64.pack(len(m.snapshot.data)))
    out.append(m.snapshot.data)


def _dec_install_snapshot(reader: Reader) -> InstallSnapshot:
    src, dst = reader.unpack(_INSTALL_SNAPSHOT)
    meta = read_snapshot_meta(reader)
    return InstallSnapshot(src, dst, Snapshot(meta.index, meta.config, reader.u64_bytes()))


def _enc_timeout_now(m: TimeoutNow, out: list) -> None:
    out.append(_TIMEOUT_NOW.pack(m.src, m.dst, *m.ballot))


def _dec_timeout_now(reader: Reader) -> TimeoutNow:
    src, dst, rnd, node = reader.unpack(_TIMEOUT_NOW)
    return TimeoutNow(src, dst, Ballot(rnd, node))


def _enc_pre_vote(m: PreVote, out: list) -> None:
    out.append(_PRE_VOTE.pack(m.src, m.dst, *m.ballot, m.first_slot))


def _dec_pre_vote(reader: Reader) -> PreVote:
    src, dst, rnd, node, first_slot = reader.unpack(_PRE_VOTE)
    return PreVote(src, dst, Ballot(rnd, node), first_slot)


def _enc_pre_vote_reply(m: PreVoteReply, out: list) -> None:
    if type(m.granted) is not bool:
        raise TypeError("PreVoteReply.granted must be a bool")
    out.append(_PRE_VOTE_REPLY.pack(m.src, m.dst, *m.ballot, m.granted, m.chosen_index))


def _dec_pre_vote_reply(reader: Reader) -> PreVoteReply:
    src, dst, rnd, node, granted, chosen = reader.unpack(_PRE_VOTE_REPLY)
    if granted > 1:
        reader.fail(f"bad boolean {granted}")
    return PreVoteReply(src, dst, Ballot(rnd, node), granted == 1, chosen)


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
_ENCODERS = {kind: (_HEAD.pack(WIRE_VERSION, tag), enc) for tag, kind, enc, _ in _CODECS}
_DECODERS = {tag: dec for tag, _, _, dec in _CODECS}


def encode(message: Message) -> bytes:
    """
    Return the encoding of C{message}, which L{decode} turns back into an
    equal message.

    @raise TypeError: C{message} is not a Paxos message, or holds a value of
        the wrong type (caller misuse).
    @raise EncodeError: a field is out of range: a negative or too large id,
        slot, index or round (caller misuse; a C{ValueError}).
    """
    try:
        head, encoder = _ENCODERS[type(message)]
    except KeyError:
        raise TypeError(f"not a Paxos message: {type(message).__name__}") from None
    out = [head]
    try:
        encoder(message, out)
    except StructError as e:
        raise EncodeError(f"cannot encode {type(message).__name__}: {e}") from None
    return b"".join(out)


def decode(data) -> Message:
    """
    Return the message that C{data} encodes.  C{data} is untrusted: it may
    come from a faulty or hostile peer.

    @param data: one complete encoding (bytes, bytearray or memoryview).
    @raise MalformedMessage: C{data} is not exactly one valid encoding; no
        other exception escapes.
    """
    reader = Reader(as_bytes(data, MalformedMessage), MalformedMessage, "message")
    version, tag = reader.unpack(_HEAD)
    if version != WIRE_VERSION:
        reader.fail(f"wire format version {version}, not {WIRE_VERSION}")
    decoder = _DECODERS.get(tag)
    if decoder is None:
        reader.fail(f"unknown message tag {tag}")
    message = decoder(reader)
    reader.end()
    return message
