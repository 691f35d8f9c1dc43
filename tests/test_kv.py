"""
Tests for the replicated state machine's commands (L{kvpaxos.kv.commands}:
limits, encoding, hostile bytes) and their application, revisions and
snapshots (L{kvpaxos.kv.machine}), independent of any durable provider: the
transaction view here is an in-memory L{MemoryState}.  Transactions and
ranges are in C{test_txn}, sessions in C{test_sessions}.
"""

from __future__ import annotations

import struct
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    CorruptCommand,
    CorruptRecord,
    InvalidArgument,
    KeyValue,
    Op,
    Request,
    Result,
    validate,
)
from kvpaxos.encoding.commands import COMMAND_VERSION, decode_request, encode_request
from kvpaxos.encoding.state import (
    SNAPSHOT_FORMAT,
    SnapshotState,
    decode_snapshot,
    encode_record,
    encode_session,
    encode_snapshot,
)
from kvpaxos.kv.machine import apply, apply_batch
from kvpaxos.kv.sessions import Session
from kvpaxos.storage.memory import MemoryState

#: Deterministic and leaves no example database behind.
FUZZ = settings(max_examples=400, derandomize=True, database=None, deadline=None)

#: The command header: version, op, origin, request id, flags.
HEADER = struct.Struct(">BBIQB")


def command(op, key, value=b"", origin=0, request_id=0):
    """Return the log bytes of one request."""
    return encode_request(Request(op, key, value, origin, request_id))


def raw(op=1, key=b"k", value=b"", version=COMMAND_VERSION, key_length=None):
    """Return sessionless command bytes built by hand, bypassing validation."""
    length = len(key) if key_length is None else key_length
    return (HEADER.pack(version, op, 0, 0, 0) + struct.pack(">H", length) + key
            + struct.pack(">I", len(value)) + value)


def kv(key, value, version, created, modified):
    """Return a KeyValue record."""
    return KeyValue(key, value, version, created, modified)


class ApplyTests(SynchronousTestCase):
    """How each command changes the state, its revisions and versions, and what it reports."""

    def setUp(self):
        self.state = MemoryState()

    def apply(self, request, slot=1):
        """Apply one request at C{slot} and return its result."""
        return apply(self.state, request, slot)

    def test_put_new_key(self):
        """A put of a missing key creates it at version 1 with create and mod revision 1."""
        self.assertEqual(self.apply(Request(Op.PUT, b"k", b"v")), Result(False, None, 1))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"v", 1, 1, 1))
        self.assertEqual(self.state.revision(), 1)

    def test_put_replaces(self):
        """A put of a present key bumps its version, keeps its create revision and reports it existed."""
        self.apply(Request(Op.PUT, b"k", b"old"))
        self.apply(Request(Op.PUT, b"other", b"x"))
        self.assertEqual(self.apply(Request(Op.PUT, b"k", b"new")), Result(True, None, 3))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"new", 2, 1, 3))

    def test_put_same_value_is_a_write(self):
        """Putting the value a key already holds is still a write: revision and version grow."""
        self.apply(Request(Op.PUT, b"k", b"v"))
        self.apply(Request(Op.PUT, b"k", b"v"))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"v", 2, 1, 2))

    def test_put_empty_value(self):
        """An empty value is a value: the key exists afterwards."""
        self.apply(Request(Op.PUT, b"k", b""))
        self.assertTrue(self.apply(Request(Op.PUT, b"k", b"x")).existed)

    def test_prev_kv(self):
        """A put, append or delete asking for prev_kv gets the record it replaced; without it, None."""
        self.apply(Request(Op.PUT, b"k", b"1"))
        old = self.state.get(b"k")
        self.assertEqual(self.apply(Request(Op.PUT, b"k", b"2", prev_kv=True)).prev, old)
        self.assertIsNone(self.apply(Request(Op.APPEND, b"k", b"3")).prev)
        before = self.state.get(b"k")
        self.assertEqual(self.apply(Request(Op.DELETE, b"k", prev_kv=True)).prev, before)
        self.assertIsNone(self.apply(Request(Op.PUT, b"k", b"4", prev_kv=True)).prev)

    def test_delete(self):
        """A delete removes a present key (one revision) and one of a missing key changes no revision."""
        self.apply(Request(Op.PUT, b"k", b"v"))
        self.assertEqual(self.apply(Request(Op.DELETE, b"k")), Result(True, None, 2))
        self.assertEqual(self.apply(Request(Op.DELETE, b"k")), Result(False, None, 2))
        self.assertIsNone(self.state.get(b"k"))
        self.assertEqual(self.state.revision(), 2)

    def test_recreate_starts_over(self):
        """A key deleted and put again starts at version 1 with a new create revision."""
        self.apply(Request(Op.PUT, b"k", b"v"))
        self.apply(Request(Op.PUT, b"k", b"w"))
        self.apply(Request(Op.DELETE, b"k"))
        self.apply(Request(Op.PUT, b"k", b"x"))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"x", 1, 4, 4))

    def test_append_missing_key(self):
        """An append to a missing key creates it and returns the new value."""
        self.assertEqual(self.apply(Request(Op.APPEND, b"k", b"ab")), Result(False, b"ab", 1))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"ab", 1, 1, 1))

    def test_append_present_key(self):
        """An append to a present key extends it, bumps its version and returns the new value."""
        self.apply(Request(Op.PUT, b"k", b"ab"))
        self.assertEqual(self.apply(Request(Op.APPEND, b"k", b"cd")), Result(True, b"abcd", 2))
        self.assertEqual(self.state.get(b"k"), kv(b"k", b"abcd", 2, 1, 2))

    def test_batch_in_order(self):
        """apply_batch applies commands in order and returns each request with its result."""
        results = apply_batch(
            self.state,
            [
                command(Op.PUT, b"a", b"1", origin=3, request_id=9),
                command(Op.APPEND, b"a", b"2"),
                command(Op.DELETE, b"a"),
                command(Op.DELETE, b"a"),
            ],
            1,
        )
        self.assertEqual(
            results,
            [
                (Request(Op.PUT, b"a", b"1", 3, 9), Result(False, None, 1)),
                (Request(Op.APPEND, b"a", b"2"), Result(True, b"12", 2)),
                (Request(Op.DELETE, b"a"), Result(True, None, 3)),
                (Request(Op.DELETE, b"a"), Result(False, None, 3)),
            ],
        )
        self.assertEqual(self.state.records, {})

    def test_corrupt_commands_skipped(self):
        """Commands that do not decode are skipped, without a result, and the others apply."""
        results = apply_batch(
            self.state,
            [b"", raw(version=9), command(Op.PUT, b"a", b"1"), raw(op=0), raw(key_length=600)],
            1,
        )
        self.assertEqual(results, [(Request(Op.PUT, b"a", b"1"), Result(False, None, 1))])
        self.assertEqual(self.state.get(b"a").value, b"1")

    def test_decoded_commands_not_decoded_again(self):
        """
        A command given with its request in C{decoded} applies that request
        without being decoded; the others are decoded as usual.
        """
        mine = command(Op.PUT, b"a", b"1", origin=1, request_id=5)
        theirs = command(Op.PUT, b"b", b"2", origin=2, request_id=6)
        known = Request(Op.PUT, b"a", b"1", 1, 5)
        decoded = {mine: known}
        with patch("kvpaxos.kv.machine.decode_request", side_effect=decode_request) as decode:
            results = apply_batch(self.state, [mine, theirs], 1, decoded=decoded)
        self.assertEqual([call.args for call in decode.call_args_list], [(theirs,)])
        self.assertIs(results[0][0], known)
        self.assertEqual(results[1][0], Request(Op.PUT, b"b", b"2", 2, 6))
        self.assertEqual((self.state.get(b"a").value, self.state.get(b"b").value), (b"1", b"2"))

    def test_empty_batch(self):
        """An empty batch applies nothing."""
        self.assertEqual(apply_batch(self.state, [], 1), [])

    def test_origin_does_not_change_data(self):
        """Origin and request id identify the waiting client and do not change what is applied."""
        one, two = MemoryState(), MemoryState()
        apply_batch(one, [command(Op.APPEND, b"k", b"v", origin=1, request_id=1)], 1)
        apply_batch(two, [command(Op.APPEND, b"k", b"v", origin=2, request_id=7)], 1)
        self.assertEqual(one.snapshot_data(), two.snapshot_data())


class SnapshotTests(SynchronousTestCase):
    """Snapshot data encodes records, revision and sessions, canonically, and refuses anything else."""

    def state(self):
        """Return a state with records, a deletion and an open session."""
        state = MemoryState()
        apply_batch(
            state,
            [
                command(Op.PUT, b"b", b""),
                command(Op.PUT, b"a", b"x" * MAX_VALUE_BYTES),
                command(Op.PUT, b"k" * MAX_KEY_BYTES, b"v"),
                command(Op.DELETE, b"b"),
                encode_request(Request(Op.OPEN_SESSION)),
                encode_request(Request(Op.APPEND, b"a", b"y", client_id=1, sequence=1)),
            ],
            7,
        )
        return state

    def test_round_trip(self):
        """A state decodes to its revision, next client id, records in key order and sessions."""
        state = self.state()
        found = decode_snapshot(state.snapshot_data())
        self.assertEqual(found.revision, 5)
        self.assertEqual(found.next_client_id, 2)
        self.assertEqual([r.key for r in found.records], [b"a", b"k" * MAX_KEY_BYTES])
        self.assertEqual(found.records[0], state.get(b"a"))
        self.assertEqual(found.sessions, ((1, state.session(1)),))
        self.assertEqual(MemoryState.from_snapshot(state.snapshot_data()).snapshot_data(),
                         state.snapshot_data())

    def test_empty(self):
        """The empty state encodes to no bytes, and no bytes decode to the empty state."""
        self.assertEqual(MemoryState().snapshot_data(), b"")
        self.assertEqual(encode_snapshot(0, 1, [], [], []), b"")
        self.assertEqual(decode_snapshot(b""), SnapshotState())

    def test_every_truncation(self):
        """Every proper non-empty prefix of a snapshot is refused with CorruptRecord."""
        state = MemoryState()
        apply_batch(state, [command(Op.PUT, b"a", b"1"), command(Op.PUT, b"bb", b""),
                            encode_request(Request(Op.OPEN_SESSION))], 1)
        data = state.snapshot_data()
        for end in range(1, len(data)):
            self.assertRaises(CorruptRecord, decode_snapshot, data[:end])

    def test_trailing_bytes(self):
        """A snapshot followed by extra bytes is refused."""
        data = self.state().snapshot_data() + b"\x00"
        self.assertRaises(CorruptRecord, decode_snapshot, data)

    def test_unknown_format(self):
        """A snapshot whose format byte is not the current one (such as a format-2 snapshot) is refused."""
        for form in (1, 2, SNAPSHOT_FORMAT + 1):
            data = bytearray(self.state().snapshot_data())
            data[0] = form
            self.assertRaises(CorruptRecord, decode_snapshot, bytes(data))

    def test_keys_out_of_order(self):
        """Records not in strictly increasing key order are refused."""
        record = encode_record(kv(b"a", b"", 1, 1, 1))
        self.assertRaises(CorruptRecord, decode_snapshot,
                          encode_snapshot(1, 1, [(b"b", record), (b"a", record)], [], []))
        self.assertRaises(CorruptRecord, decode_snapshot,
                          encode_snapshot(1, 1, [(b"a", record), (b"a", record)], [], []))

    def test_impossible_revisions(self):
        """A record with version 0, or revisions above the store's or out of order, is refused."""
        for record in (kv(b"a", b"", 0, 1, 1), kv(b"a", b"", 1, 0, 1), kv(b"a", b"", 1, 2, 1),
                       kv(b"a", b"", 1, 1, 9)):
            data = encode_snapshot(3, 1, [(b"a", encode_record(record))], [], [])
            self.assertRaises(CorruptRecord, decode_snapshot, data)

    def test_unassigned_session(self):
        """A session whose client id is 0 or not below the next client id is refused."""
        entry = encode_session(Session(0, 1))
        for client_id in (0, 2, 3):
            data = encode_snapshot(0, 2, [], [(client_id, entry)], [])
            self.assertRaises(CorruptRecord, decode_snapshot, data)

    def test_huge_counts_refused_cheaply(self):
        """A snapshot claiming more records than its bytes can hold is refused before reading them."""
        data = struct.pack(">BQQQ", SNAPSHOT_FORMAT, 1, 1, 2**40)
        self.assertRaises(CorruptRecord, decode_snapshot, data)

    @FUZZ
    @given(st.data())
    def test_damaged_snapshots(self, data):
        """A snapshot with one byte changed or cut short decodes or raises CorruptRecord only."""
        encoded = bytearray(self.state().snapshot_data()[:400])
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
        try:
            decode_snapshot(bytes(encoded))
        except CorruptRecord:
            pass


class ValidateTests(SynchronousTestCase):
    """The limits on keys and values, and whose fault breaking them is."""

    def test_key_limits(self):
        """Keys of 1 and 511 bytes pass; empty and 512-byte keys are InvalidArgument."""
        validate(Op.PUT, b"k")
        validate(Op.PUT, b"k" * MAX_KEY_BYTES)
        self.assertRaises(InvalidArgument, validate, Op.PUT, b"")
        self.assertRaises(InvalidArgument, validate, Op.PUT, b"k" * (MAX_KEY_BYTES + 1))

    def test_key_must_be_bytes(self):
        """A key that is not bytes is InvalidArgument."""
        self.assertRaises(InvalidArgument, validate, Op.PUT, "k")

    def test_value_limits(self):
        """Values up to 1 MiB pass; one byte more is InvalidArgument."""
        validate(Op.PUT, b"k", b"")
        validate(Op.APPEND, b"k", b"v" * MAX_VALUE_BYTES)
        self.assertRaises(InvalidArgument, validate, Op.PUT, b"k", b"v" * (MAX_VALUE_BYTES + 1))

    def test_delete_takes_no_value(self):
        """A delete with a value is InvalidArgument."""
        self.assertRaises(InvalidArgument, validate, Op.DELETE, b"k", b"v")

    def test_client_fault_is_value_error(self):
        """InvalidArgument is a ValueError, distinct from CorruptCommand."""
        self.assertTrue(issubclass(InvalidArgument, ValueError))
        self.assertFalse(issubclass(InvalidArgument, CorruptCommand))

    def test_encode_validates(self):
        """encode_request refuses a request outside the limits."""
        self.assertRaises(InvalidArgument, encode_request, Request(Op.PUT, b""))
        self.assertRaises(InvalidArgument, encode_request, Request(Op.DELETE, b"k", b"v"))


class RequestEncodingTests(SynchronousTestCase):
    """Requests round-trip through their log bytes; other bytes are CorruptCommand."""

    def test_round_trip_each_op(self):
        """Every op, with the largest key, value, origin and request id, round-trips."""
        for request in (
            Request(Op.PUT, b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES, 2**32 - 1, 2**64 - 1),
            Request(Op.DELETE, b"\x00"),
            Request(Op.APPEND, b"key", b"", 5, 6),
        ):
            self.assertEqual(decode_request(encode_request(request)), request)

    def test_decoded_fields_are_bytes(self):
        """Decoding a memoryview gives bytes keys and values, not views."""
        request = decode_request(memoryview(command(Op.PUT, b"k", b"v")))
        self.assertIs(type(request.key), bytes)
        self.assertIs(type(request.value), bytes)

    def test_too_short(self):
        """Fewer bytes than the header is CorruptCommand."""
        for data in (b"", b"\x01", command(Op.PUT, b"k")[: HEADER.size - 1]):
            self.assertRaises(CorruptCommand, decode_request, data)

    def test_unknown_version(self):
        """A command version other than the current one (such as 1 or 2, the old layouts) is CorruptCommand."""
        for version in (0, 1, 2, COMMAND_VERSION + 1, 255):
            self.assertRaises(CorruptCommand, decode_request, raw(version=version))

    def test_unknown_op(self):
        """An unknown op code, or an OPEN_SESSION with a key and value, is CorruptCommand."""
        for op in (0, 5, 6, 255):
            self.assertRaises(CorruptCommand, decode_request, raw(op=op))

    def test_bad_key_length(self):
        """A key length of 0, over 511, or past the end of the data is CorruptCommand."""
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"", key_length=0))
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"k" * 512))
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"kk", key_length=3))
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"kk", key_length=9))

    def test_value_too_long(self):
        """A value over 1 MiB is CorruptCommand."""
        data = raw(value=b"v" * (MAX_VALUE_BYTES + 1))
        self.assertRaises(CorruptCommand, decode_request, data)

    @FUZZ
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, data):
        """Arbitrary bytes decode to a request or raise CorruptCommand, nothing else."""
        try:
            request = decode_request(data)
        except CorruptCommand:
            return
        self.assertIsInstance(request, Request)

    @FUZZ
    @given(st.binary(min_size=1, max_size=40), st.data())
    def test_damaged_commands(self, key, data):
        """A valid command with one byte changed or cut short decodes or raises CorruptCommand only."""
        encoded = bytearray(command(Op.APPEND, key, b"value"))
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
        end = data.draw(st.integers(0, len(encoded)))
        try:
            request = decode_request(bytes(encoded[:end]))
        except CorruptCommand:
            return
        self.assertIsInstance(request, Request)
        self.assertTrue(0 < len(request.key) <= MAX_KEY_BYTES)
