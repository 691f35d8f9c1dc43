"""
Tests for L{kvpaxos.encoding.messages} (the wire format): every message round-trips to an equal one,
and hostile bytes raise L{MalformedMessage} and nothing else.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.errors import MalformedMessage
from kvpaxos.encoding.messages import WIRE_VERSION as VERSION, decode, encode
from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange, MemberAddress
from kvpaxos.paxos.messages import (
    NOOP,
    Accept,
    Accepted,
    Ballot,
    Batch,
    Catchup,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    InstallSnapshot,
    Nack,
    Prepare,
    Promise,
    Snapshot,
    TimeoutNow,
    PreVote,
    PreVoteReply,
)

nodes = st.integers(0, 2**32 - 1)
slots = st.integers(0, 2**64 - 1)
ballots = st.builds(Ballot, slots, nodes)
values = st.one_of(
    st.just(NOOP),
    st.builds(Batch, st.lists(st.binary(max_size=64), max_size=8).map(tuple)),
    st.builds(ConfigChange, st.sampled_from(ChangeKind), nodes),
)
configs = st.builds(
    Config, st.frozensets(nodes, max_size=5), st.frozensets(nodes, max_size=3)
)
snapshots = st.builds(Snapshot, slots, configs, st.binary(max_size=256))


def _tuples(strategy, max_size=5):
    return st.lists(strategy, max_size=max_size).map(tuple)


messages = st.one_of(
    st.builds(Prepare, nodes, nodes, ballots, slots, st.booleans()),
    st.builds(
        Promise,
        nodes,
        nodes,
        ballots,
        slots,
        _tuples(st.tuples(slots, ballots, values)),
    ),
    st.builds(Nack, nodes, nodes, ballots, ballots, slots),
    st.builds(Accept, nodes, nodes, ballots, slots, _tuples(values), slots),
    st.builds(Accepted, nodes, nodes, ballots, slots, slots, slots),
    st.builds(Heartbeat, nodes, nodes, ballots, slots, slots),
    st.builds(HeartbeatAck, nodes, nodes, ballots, slots, slots),
    st.builds(CatchupRequest, nodes, nodes, slots),
    st.builds(Catchup, nodes, nodes, slots, _tuples(st.tuples(ballots, values)), slots),
    st.builds(InstallSnapshot, nodes, nodes, snapshots),
    st.builds(TimeoutNow, nodes, nodes, ballots),
    st.builds(PreVote, nodes, nodes, ballots, slots),
    st.builds(PreVoteReply, nodes, nodes, ballots, st.booleans(), slots),
)

B = Ballot(7, 2)
BATCH = Batch((b"put a 1", b"", b"\x00" * 300))
CHANGE = ConfigChange(ChangeKind.PROMOTE, 4)
ADDRESSED = Config(
    frozenset({1, 2}), frozenset({4}),
    ((1, MemberAddress("127.0.0.1:12380", "127.0.0.1:2379")), (4, MemberAddress("h:1", ""))),
    0xFEEDFACE12345678,
)
SNAPSHOT = Snapshot(12, Config(frozenset({1, 2, 3}), frozenset({4})), b"state" * 20)

#: One message of every type, each with every kind of value it can hold.
EXAMPLES = [
    Prepare(1, 2, B, 5, True),
    Prepare(1, 2, B, 0),
    Promise(
        2, 1, B, 5, ((5, Ballot(3, 1), BATCH), (6, Ballot(4, 3), NOOP), (7, B, CHANGE))
    ),
    Promise(2, 1, B, 5, ()),
    Nack(2, 1, B, Ballot(9, 3), 40),
    Accept(1, 2, B, 5, (BATCH, NOOP, CHANGE, Batch(())), 4),
    Accepted(2, 1, B, 5, 3, 4),
    Heartbeat(1, 2, B, 4, 17),
    HeartbeatAck(2, 1, B, 17, 4),
    CatchupRequest(3, 1, 0),
    Catchup(1, 3, 1, ((B, BATCH), (Ballot(1, 1), NOOP), (B, CHANGE)), 3),
    InstallSnapshot(1, 3, SNAPSHOT),
    InstallSnapshot(1, 3, Snapshot(0, Config(frozenset({1})))),
    InstallSnapshot(1, 3, Snapshot(9, ADDRESSED)),
    Accept(1, 2, B, 5, (ConfigChange(ChangeKind.ADD_LEARNER, 4, "10.0.0.4:2380", "[::1]:2379"),
                        ConfigChange(ChangeKind.UPDATE, 1, "", "h\u00e9te:1")), 4),
    TimeoutNow(1, 2, B),
    PreVote(1, 2, B, 5),
    PreVoteReply(2, 1, B, True, 4),
    PreVoteReply(2, 1, B, False, 0),
]


class RoundTripTests(SynchronousTestCase):
    """L{decode} of L{encode} gives back an equal message."""

    def test_examples(self):
        """Every message type, holding every kind of value, round-trips."""
        for message in EXAMPLES:
            self.assertEqual(decode(encode(message)), message)

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_any_message(self, message):
        """Any message with fields in range round-trips."""
        self.assertEqual(decode(encode(message)), message)

    def test_versioned(self):
        """Every encoding starts with the format version."""
        for message in EXAMPLES:
            self.assertEqual(encode(message)[0], VERSION)

    def test_large_batch(self):
        """An Accept with a 60 kB batch of 600 commands round-trips."""
        commands = tuple(bytes([i % 256]) * 100 for i in range(600))
        message = Accept(1, 2, B, 9, (Batch(commands),), 8)
        self.assertEqual(decode(encode(message)), message)

    def test_decoded_commands_are_bytes(self):
        """Commands come back as bytes even when decoding a bytearray."""
        decoded = decode(bytearray(encode(Accept(1, 2, B, 1, (BATCH,), 0))))
        self.assertEqual({type(c) for c in decoded.values[0].commands}, {bytes})

    def test_encode_rejects_negative(self):
        """A negative node id or slot is caller misuse: ValueError."""
        self.assertRaises(ValueError, encode, Heartbeat(-1, 2, B, 0, 0))
        self.assertRaises(ValueError, encode, CatchupRequest(1, 2, -5))

    def test_encode_rejects_non_message(self):
        """Something that is not a message is caller misuse: TypeError."""
        self.assertRaises(TypeError, encode, "Heartbeat")
        self.assertRaises(TypeError, encode, Accept(1, 2, B, 1, ("value",), 0))


class HostileInputTests(SynchronousTestCase):
    """Whatever the bytes, L{decode} raises L{MalformedMessage} or returns a message."""

    def assertRejected(self, data):
        self.assertRaises(MalformedMessage, decode, data)

    def test_every_truncation(self):
        """Every proper prefix of every valid encoding is refused."""
        for message in EXAMPLES:
            data = encode(message)
            for end in range(len(data)):
                self.assertRejected(data[:end])

    def test_trailing_bytes(self):
        """A valid encoding followed by anything is refused."""
        for message in EXAMPLES:
            self.assertRejected(encode(message) + b"\x00")

    def test_unknown_version(self):
        """An encoding of another format version, such as 1 (the old little-endian codec), is refused."""
        self.assertEqual(VERSION, 4)
        data = encode(EXAMPLES[0])
        for version in (0, 1, VERSION + 1):
            self.assertRejected(bytes([version]) + data[1:])

    def test_unknown_tags(self):
        """Unknown message tags and value tags are refused."""
        for tag in (0, 12, 255):
            self.assertRejected(bytes([VERSION, tag]) + b"\x00" * 64)
        data = bytearray(encode(Accept(1, 2, B, 1, (NOOP,), 0)))
        data[-1] = 9
        self.assertRejected(bytes(data))

    def test_unknown_change_kind(self):
        """A config change of an unknown kind is refused."""
        for code in (0, 6, 255):
            data = bytearray(encode(Accept(1, 2, B, 1, (CHANGE,), 0)))
            data[-9] = code  # kind:u8 node:u32, then two empty addresses (u16 each)
            self.assertRejected(bytes(data))

    def test_bad_boolean(self):
        """A Prepare whose transfer flag is neither 0 nor 1 is refused."""
        data = bytearray(encode(Prepare(1, 2, B, 5, True)))
        data[-13] = 2  # the flag, before the asked_by ballot (12 bytes)
        self.assertRejected(bytes(data))

    def test_huge_counts_and_lengths(self):
        """Counts and lengths beyond the data are refused without allocating them."""
        head = bytes([VERSION])
        accept = struct.pack(">IIQIQQ", 1, 2, 7, 2, 1, 0)
        self.assertRejected(head + b"\x04" + accept + struct.pack(">I", 2**32 - 1))
        batch = b"\x01" + struct.pack(">I", 2**32 - 1)
        self.assertRejected(head + b"\x04" + accept + struct.pack(">I", 1) + batch)
        one_huge = b"\x01" + struct.pack(">II", 1, 2**32 - 1) + b"xy"
        self.assertRejected(head + b"\x04" + accept + struct.pack(">I", 1) + one_huge)
        promise = struct.pack(">IIQIQI", 1, 2, 7, 2, 1, 2**32 - 1)
        self.assertRejected(head + b"\x02" + promise)
        catchup = struct.pack(">IIQQI", 1, 2, 1, 0, 2**32 - 1)
        self.assertRejected(head + b"\x09" + catchup)
        snapshot = struct.pack(">IIQ", 1, 2, 5)
        self.assertRejected(head + b"\x0a" + snapshot + struct.pack(">I", 2**32 - 1))
        no_data = struct.pack(">IIQIIQ", 1, 2, 5, 0, 0, 2**64 - 1)
        self.assertRejected(head + b"\x0a" + no_data)

    def test_duplicate_member(self):
        """A member set that names a node twice, or out of order, is refused."""
        # src, dst, index, 2 voters, 0 learners, 0 addresses, cluster id,
        # the removed nodes (then the snapshot's data, absent).
        def snapshot(voters, addresses=b"", count=0, removed=()):
            return bytes([VERSION, 10]) + struct.pack(
                ">IIQI2III", 1, 2, 5, 2, *voters, 0, count
            ) + addresses + struct.pack(">QI", 7, len(removed)) + struct.pack(
                f">{len(removed)}I", *removed
            ) + struct.pack(">Q", 0)

        good = snapshot((3, 4))
        self.assertEqual(decode(good).snapshot.config, Config(frozenset({3, 4}), cluster_id=7))
        self.assertRejected(snapshot((3, 3)))
        self.assertRejected(snapshot((4, 3)))
        removed = decode(snapshot((3, 4), removed=(1, 2))).snapshot.config
        self.assertEqual(removed, Config(frozenset({3, 4}), cluster_id=7, removed=frozenset({1, 2})))
        self.assertRejected(snapshot((3, 4), removed=(2, 1)))  # out of order
        self.assertRejected(snapshot((3, 4), removed=(3,)))  # a member and removed

    def test_bad_addresses(self):
        """Addresses out of order, for a non-member, or not UTF-8 are refused."""
        def entry(node, peer=b"p:1", client=b""):
            return struct.pack(">IH", node, len(peer)) + peer + struct.pack(">H", len(client)) + client

        def snapshot(*entries):
            return bytes([VERSION, 10]) + struct.pack(
                ">IIQI2III", 1, 2, 5, 2, 3, 4, 0, len(entries)
            ) + b"".join(entries) + struct.pack(">QI", 7, 0) + struct.pack(">Q", 0)

        config = decode(snapshot(entry(3), entry(4, b"q:2", b"c:3"))).snapshot.config
        self.assertEqual(config.address(4), MemberAddress("q:2", "c:3"))
        self.assertRejected(snapshot(entry(4), entry(3)))
        self.assertRejected(snapshot(entry(3), entry(3, b"q:2")))
        self.assertRejected(snapshot(entry(5)))
        self.assertRejected(snapshot(entry(3, b"\xff:1")))

    def test_not_bytes(self):
        """Input that is not bytes-like is refused."""
        self.assertRejected("\x01\x06")
        self.assertRejected(None)
        self.assertRejected(42)

    def test_empty(self):
        """Empty input is refused."""
        self.assertRejected(b"")

    def test_random_bytes(self):
        """Random bytes, alone or after a valid header, never raise anything else."""
        rng = random.Random(1)
        for _ in range(5_000):
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(80)))
            if rng.random() < 0.5:
                data = bytes([VERSION, rng.randrange(1, 12)]) + data
            try:
                decode(data)
            except MalformedMessage:
                pass

    def test_mutations(self):
        """Valid encodings with random bytes flipped decode or raise MalformedMessage."""
        rng = random.Random(2)
        for _ in range(3_000):
            data = bytearray(encode(rng.choice(EXAMPLES)))
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            try:
                decode(bytes(data))
            except MalformedMessage:
                pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, data):
        """Any bytes are refused or decode to a message that re-encodes to them."""
        try:
            message = decode(data)
        except MalformedMessage:
            return
        self.assertEqual(encode(message), data)
