"""
Tests for L{kvpaxos.encoding}: the one reader, the errors by whose fault,
the Paxos values as stored (the same layout as on the wire), the key-value
records, and the refusal of every truncation and corruption.  The wire
messages are in C{tests.test_codec}; commands in C{tests.test_kv} and
C{tests.test_txn}; session entries in C{tests.test_sessions}; snapshots in
C{tests.test_kv}; an old data directory in C{tests.test_storage_format}.
"""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding import state, values
from kvpaxos.encoding.commands import decode_request, encode_request
from kvpaxos.encoding.errors import (
    CorruptState,
    DecodeError,
    EncodeError,
    MalformedCommand,
    MalformedMessage,
    StoreFormatError,
)
from kvpaxos.encoding.messages import decode, encode
from kvpaxos.encoding.reader import U32, Reader, as_bytes
from kvpaxos.kv.commands import CorruptCommand, CorruptRecord, KeyValue, Op, Request
from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange
from kvpaxos.paxos.messages import (
    NOOP,
    Ballot,
    Batch,
    Catchup,
    InstallSnapshot,
    Snapshot,
)
from kvpaxos.paxos.state import Entry, HardState
from tests.test_codec import ballots, configs, nodes
from tests.test_codec import slots as u64s
from tests.test_codec import values as slot_values

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)

key_values = st.builds(
    KeyValue, st.binary(min_size=1, max_size=40), st.binary(max_size=80), u64s, u64s, u64s
)

B = Ballot(7, 2)
CONFIG = Config(frozenset({1, 2, 3}), frozenset({4}))

#: One stored record of every kind, with the decoder that reads it back.
RECORDS = [
    (values.decode_hard_state, values.encode_hard_state(HardState(B, 3))),
    (values.decode_entry, values.encode_entry(Entry(B, Batch((b"ab", b"", b"cd"))))),
    (values.decode_entry, values.encode_entry(Entry(B, NOOP))),
    (values.decode_entry, values.encode_entry(Entry(B, ConfigChange(ChangeKind.REMOVE, 2)))),
    (values.decode_snapshot_meta, values.encode_snapshot_meta(Snapshot(1, CONFIG))),
    (values.decode_u64, values.encode_u64(9)),
    (values.decode_use_key, values.encode_use_key(4, 5)),
    (lambda data: state.decode_record(b"k", data), state.encode_record(KeyValue(b"k", b"v", 1, 2, 3))),
]


class ReaderTests(SynchronousTestCase):
    """L{Reader} refuses every overrun with the error its caller chose."""

    def test_overrun_raises_chosen_error(self):
        """Reading past the end raises the reader's error, naming what was read."""
        for error in (MalformedMessage, CorruptState, MalformedCommand):
            reader = Reader(b"\x01\x02", error, "thing")
            self.assertEqual(reader.u8(), 1)
            with self.assertRaises(error) as caught:
                reader.u32()
            self.assertIn("thing", str(caught.exception))

    def test_count_checked_before_items(self):
        """A count whose items cannot fit in the bytes left is refused at once."""
        reader = Reader(U32.pack(3) + b"\x00" * 11, CorruptState, "list")
        self.assertRaises(CorruptState, reader.count, U32, 4)
        self.assertEqual(Reader(U32.pack(3) + b"\x00" * 12, CorruptState, "list").count(U32, 4), 3)

    def test_flag(self):
        """A flag byte is 0 or 1; anything else is refused."""
        self.assertEqual([Reader(bytes([b]), CorruptState, "f").flag() for b in (0, 1)], [False, True])
        self.assertRaises(CorruptState, Reader(b"\x02", CorruptState, "f").flag)

    def test_take_copies(self):
        """Bytes taken are C{bytes}, even off a bytearray."""
        taken = Reader(bytearray(b"abc"), CorruptState, "t").take(2)
        self.assertEqual((type(taken), taken), (bytes, b"ab"))

    def test_end(self):
        """Trailing bytes are refused; none is fine."""
        reader = Reader(b"\x00", CorruptState, "e")
        self.assertRaises(CorruptState, reader.end)
        reader.u8()
        reader.end()

    def test_as_bytes(self):
        """Bytes-like input becomes bytes; anything else is the caller's error class."""
        self.assertEqual(as_bytes(memoryview(b"x"), CorruptState), b"x")
        self.assertRaises(MalformedMessage, as_bytes, 42, MalformedMessage)


class ErrorTests(SynchronousTestCase):
    """One error per whose fault, each a DecodeError, and the kv layer's classes still catch theirs."""

    def test_hierarchy(self):
        """Stored state is a CorruptRecord, a command a CorruptCommand, a message neither."""
        self.assertTrue(issubclass(CorruptState, CorruptRecord))
        self.assertTrue(issubclass(StoreFormatError, CorruptState))
        self.assertTrue(issubclass(MalformedCommand, CorruptCommand))
        for error in (CorruptState, MalformedCommand, MalformedMessage):
            self.assertTrue(issubclass(error, DecodeError))
        self.assertFalse(issubclass(MalformedMessage, CorruptRecord))
        self.assertFalse(issubclass(MalformedMessage, CorruptCommand))
        self.assertFalse(issubclass(EncodeError, DecodeError))

    def test_each_source_its_error(self):
        """The same garbage is a peer's fault on the wire, the disk's in a record, the log's in a command."""
        garbage = b"\xff" * 5
        self.assertRaises(MalformedMessage, decode, garbage)
        self.assertRaises(CorruptState, values.decode_entry, garbage)
        self.assertRaises(CorruptState, state.decode_snapshot, garbage)
        self.assertRaises(MalformedCommand, decode_request, garbage)

    def test_out_of_range_is_encode_error(self):
        """A field out of range is the caller's EncodeError (a ValueError), on every encoder."""
        self.assertRaises(EncodeError, values.encode_hard_state, HardState(Ballot(-1, 1), 0))
        self.assertRaises(EncodeError, values.encode_entry, Entry(Ballot(1, 2**32), NOOP))
        self.assertRaises(EncodeError, values.encode_u64, 2**64)
        self.assertRaises(EncodeError, values.encode_snapshot_meta, Snapshot(-1, CONFIG))
        self.assertTrue(issubclass(EncodeError, ValueError))

    def test_not_a_value(self):
        """Encoding something that is not a slot value is a TypeError."""
        self.assertRaises(TypeError, values.encode_value, b"raw")
        self.assertRaises(TypeError, values.encode_entry, Entry(B, "raw"))


class OneLayoutTests(SynchronousTestCase):
    """A value has one layout, on the wire and on disk."""

    def test_entry_on_wire_and_disk(self):
        """A Catchup carries each entry in exactly the bytes the store keeps for it."""
        entry = Entry(B, Batch((b"put", b"x" * 300)))
        wire = encode(Catchup(1, 2, 5, ((entry.ballot, entry.value),), 4))
        self.assertTrue(wire.endswith(values.encode_entry(entry)))

    def test_snapshot_meta_on_wire_and_disk(self):
        """An InstallSnapshot carries the index and member set as the store keeps them."""
        snapshot = Snapshot(12, CONFIG, b"data")
        self.assertIn(values.encode_snapshot_meta(snapshot), encode(InstallSnapshot(1, 2, snapshot)))

    def test_key_value_in_snapshot_is_stored_record(self):
        """A snapshot holds each record in the bytes the store keeps under its key."""
        kv = KeyValue(b"k", b"value", 1, 1, 1)
        record = state.encode_record(kv)
        self.assertIn(b"\x00\x01k" + record, state.encode_snapshot(1, 1, [(b"k", record)], [], []))

    def test_big_endian(self):
        """Integers are big-endian, so stored keys sort as their numbers do."""
        self.assertEqual(values.encode_slot(258), b"\x00" * 6 + b"\x01\x02")
        keys = [values.encode_use_key(used, client) for used, client in ((1, 9), (2, 1), (2, 3), (300, 0))]
        self.assertEqual(sorted(keys), keys)


class RoundTripTests(SynchronousTestCase):
    """Every stored value decodes to what was encoded."""

    @FUZZ
    @given(ballots, u64s)
    def test_hard_state(self, promised, chosen):
        """Any hard state round-trips."""
        hard = HardState(promised, chosen)
        self.assertEqual(values.decode_hard_state(values.encode_hard_state(hard)), hard)

    @FUZZ
    @given(ballots, slot_values)
    def test_entry(self, ballot, value):
        """Any log entry, of any value kind, round-trips."""
        entry = Entry(ballot, value)
        self.assertEqual(values.decode_entry(values.encode_entry(entry)), entry)

    @FUZZ
    @given(u64s, configs)
    def test_snapshot_meta(self, index, config):
        """Any snapshot's index and member set round-trip."""
        snapshot = Snapshot(index, config, b"data")
        self.assertEqual(values.decode_snapshot_meta(values.encode_snapshot_meta(snapshot), b"data"), snapshot)

    @FUZZ
    @given(key_values)
    def test_record(self, kv):
        """Any key's record round-trips, and its head reads alone."""
        data = state.encode_record(kv)
        self.assertEqual(state.decode_record(kv.key, data), kv)
        self.assertEqual(state.record_header(data), (kv.version, kv.create_revision, kv.mod_revision))

    @FUZZ
    @given(u64s, u64s)
    def test_keys(self, first, second):
        """Counters and session index keys round-trip."""
        self.assertEqual(values.decode_u64(values.encode_u64(first)), first)
        self.assertEqual(values.decode_use_key(values.encode_use_key(first, second)), (first, second))

    def test_large_batch(self):
        """An entry holding a 70 kB command round-trips."""
        entry = Entry(B, Batch((b"", b"x" * 70_000)))
        self.assertEqual(values.decode_entry(values.encode_entry(entry)), entry)

    @FUZZ
    @given(st.sampled_from([Op.PUT, Op.DELETE, Op.APPEND]), st.binary(min_size=1, max_size=40),
           nodes, u64s, st.booleans(), st.integers(1, 2**64 - 1))
    def test_command(self, op, key, origin, request_id, prev_kv, client):
        """Any single-key command, with or without a session, round-trips."""
        value = b"" if op is Op.DELETE else b"v"
        for client_id, sequence in ((0, 0), (client, client)):
            request = Request(op, key, value, origin, request_id, client_id, sequence, prev_kv)
            self.assertEqual(decode_request(encode_request(request)), request)


class HostileRecordTests(SynchronousTestCase):
    """Every truncation and corruption of a stored record is refused with CorruptState, never misread."""

    def test_every_truncation(self):
        """Every proper prefix of every record kind is refused."""
        for decode_record, data in RECORDS:
            for end in range(len(data)):
                self.assertRaises(CorruptState, decode_record, data[:end])

    def test_trailing_bytes(self):
        """A record followed by anything is refused."""
        for decode_record, data in RECORDS:
            self.assertRaises(CorruptState, decode_record, data + b"\x00")

    def test_missing(self):
        """A record that is not there (None from the store) is refused, not a TypeError."""
        self.assertRaises(CorruptState, values.decode_hard_state, None)

    def test_unknown_tags(self):
        """An unknown value tag or config change kind is refused."""
        head = values.encode_entry(Entry(B, NOOP))[:-1]
        self.assertRaises(CorruptState, values.decode_entry, head + b"\x09")
        for code in (0, 5, 255):
            self.assertRaises(CorruptState, values.decode_entry, head + b"\x02" + bytes([code]) + b"\x00" * 4)

    def test_huge_count_refused_cheaply(self):
        """A batch claiming more commands than its bytes can hold is refused before allocating them."""
        head = values.encode_entry(Entry(B, NOOP))[:-1]
        self.assertRaises(CorruptState, values.decode_entry, head + b"\x01\xff\xff\xff\xff")
        lengths = b"\x01" + struct.pack(">II", 1, 2**32 - 1) + b"xy"
        self.assertRaises(CorruptState, values.decode_entry, head + lengths)

    def test_member_set_order(self):
        """A member set that names a node twice or out of order is refused (one encoding per set)."""
        for ids in ((3, 3), (4, 3)):
            data = struct.pack(">QI2II", 5, 2, *ids, 0)
            self.assertRaises(CorruptState, values.decode_snapshot_meta, data)

    def test_mutations(self):
        """Records with random bytes changed decode to something or raise CorruptState only."""
        rng = random.Random(3)
        for _ in range(3_000):
            decode_record, data = rng.choice(RECORDS)
            data = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            try:
                decode_record(bytes(data))
            except CorruptState:
                pass

    @FUZZ
    @given(st.binary(max_size=60))
    def test_any_bytes(self, data):
        """Any bytes are refused as an entry, or decode to one that re-encodes to them."""
        try:
            entry = values.decode_entry(data)
        except CorruptState:
            return
        self.assertEqual(values.encode_entry(entry), data)


class StateRoundTripTests(SynchronousTestCase):
    """Session entries holding any records round-trip (the records in the layout snapshots use)."""

    @FUZZ
    @given(u64s, u64s, st.booleans(), st.one_of(st.none(), key_values), st.lists(key_values, max_size=3))
    def test_session(self, sequence, last_used, existed, prev, prevs):
        """A session saving a Result or a TxnResult with records round-trips."""
        from kvpaxos.kv.commands import DeleteResponse, PutResponse, RangeResult, Result, TxnResult
        from kvpaxos.kv.sessions import Session

        for result in (
            Result(existed, None, sequence, prev),
            TxnResult(existed, (PutResponse(prev), DeleteResponse(len(prevs), tuple(prevs)),
                                RangeResult(tuple(prevs), last_used, existed, sequence)), last_used),
        ):
            session = Session(sequence, last_used, result)
            self.assertEqual(state.decode_session(state.encode_session(session)), session)
