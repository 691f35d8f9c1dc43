"""
Tests for the replicated state machine's commands (L{kvpaxos.kv.commands}:
limits, encoding, hostile bytes) and their application and snapshots
(L{kvpaxos.kv.machine}), independent of any storage provider: the
transaction here is a dict.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    CorruptCommand,
    InvalidArgument,
    Op,
    Request,
    Result,
    decode_request,
    encode_request,
    validate,
)
from kvpaxos.kv.machine import apply, apply_batch, decode_snapshot, encode_snapshot

#: Deterministic and leaves no example database behind.
FUZZ = settings(max_examples=400, derandomize=True, database=None, deadline=None)

#: The command header: version, op, origin, request id, key length.
HEADER = struct.Struct(">BBIQH")


class DictTxn:
    """The get/put/delete transaction L{apply} expects, over a dict."""

    def __init__(self, data=None):
        self.data = dict(data or {})

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value

    def delete(self, key):
        return self.data.pop(key, None) is not None


def command(op, key, value=b"", origin=0, request_id=0):
    """Return the log bytes of one request."""
    return encode_request(Request(op, key, value, origin, request_id))


def raw(op=1, key=b"k", value=b"", version=1, key_length=None):
    """Return command bytes built by hand, bypassing validation."""
    length = len(key) if key_length is None else key_length
    return HEADER.pack(version, op, 0, 0, length) + key + value


class ApplyTests(SynchronousTestCase):
    """How each command changes the data and what it reports."""

    def test_put_new_key(self):
        """A put of a missing key stores the value and reports it did not exist."""
        txn = DictTxn()
        self.assertEqual(apply(txn, Request(Op.PUT, b"k", b"v")), Result(False))
        self.assertEqual(txn.data, {b"k": b"v"})

    def test_put_replaces(self):
        """A put of a present key replaces its value and reports it existed."""
        txn = DictTxn({b"k": b"old"})
        self.assertEqual(apply(txn, Request(Op.PUT, b"k", b"new")), Result(True))
        self.assertEqual(txn.data, {b"k": b"new"})

    def test_put_empty_value(self):
        """An empty value is a value: the key exists afterwards."""
        txn = DictTxn()
        apply(txn, Request(Op.PUT, b"k", b""))
        self.assertEqual(apply(txn, Request(Op.PUT, b"k", b"x")), Result(True))

    def test_delete(self):
        """A delete removes a present key and reports whether it existed."""
        txn = DictTxn({b"k": b"v"})
        self.assertEqual(apply(txn, Request(Op.DELETE, b"k")), Result(True))
        self.assertEqual(apply(txn, Request(Op.DELETE, b"k")), Result(False))
        self.assertEqual(txn.data, {})

    def test_append_missing_key(self):
        """An append to a missing key creates it and returns the new value."""
        txn = DictTxn()
        self.assertEqual(apply(txn, Request(Op.APPEND, b"k", b"ab")), Result(False, b"ab"))
        self.assertEqual(txn.data, {b"k": b"ab"})

    def test_append_present_key(self):
        """An append to a present key extends it and returns the new value."""
        txn = DictTxn({b"k": b"ab"})
        self.assertEqual(apply(txn, Request(Op.APPEND, b"k", b"cd")), Result(True, b"abcd"))
        self.assertEqual(txn.data, {b"k": b"abcd"})

    def test_batch_in_order(self):
        """apply_batch applies commands in order and returns each request with its result."""
        txn = DictTxn()
        results = apply_batch(
            txn,
            [
                command(Op.PUT, b"a", b"1", origin=3, request_id=9),
                command(Op.APPEND, b"a", b"2"),
                command(Op.DELETE, b"a"),
                command(Op.DELETE, b"a"),
            ],
        )
        self.assertEqual(
            results,
            [
                (Request(Op.PUT, b"a", b"1", 3, 9), Result(False)),
                (Request(Op.APPEND, b"a", b"2"), Result(True, b"12")),
                (Request(Op.DELETE, b"a"), Result(True)),
                (Request(Op.DELETE, b"a"), Result(False)),
            ],
        )
        self.assertEqual(txn.data, {})

    def test_corrupt_commands_skipped(self):
        """Commands that do not decode are skipped, without a result, and the others apply."""
        txn = DictTxn()
        results = apply_batch(
            txn,
            [b"", raw(version=9), command(Op.PUT, b"a", b"1"), raw(op=0), raw(key_length=600)],
        )
        self.assertEqual(results, [(Request(Op.PUT, b"a", b"1"), Result(False))])
        self.assertEqual(txn.data, {b"a": b"1"})

    def test_empty_batch(self):
        """An empty batch applies nothing."""
        self.assertEqual(apply_batch(DictTxn(), []), [])

    def test_origin_does_not_change_data(self):
        """Origin and request id identify the waiting client and do not change what is applied."""
        one, two = DictTxn(), DictTxn()
        apply_batch(one, [command(Op.APPEND, b"k", b"v", origin=1, request_id=1)])
        apply_batch(two, [command(Op.APPEND, b"k", b"v", origin=2, request_id=7)])
        self.assertEqual(one.data, two.data)


class SnapshotTests(SynchronousTestCase):
    """Snapshot data encodes (key, value) pairs and refuses truncation."""

    def test_round_trip(self):
        """Items, including empty and 1 MiB values, decode to what was encoded, in order."""
        items = [(b"b", b""), (b"a", b"x" * MAX_VALUE_BYTES), (b"k" * MAX_KEY_BYTES, b"v")]
        self.assertEqual(list(decode_snapshot(encode_snapshot(items))), items)

    def test_empty(self):
        """No items encode to no bytes, and no bytes decode to no items."""
        self.assertEqual(encode_snapshot([]), b"")
        self.assertEqual(list(decode_snapshot(b"")), [])

    def test_every_truncation(self):
        """A prefix ending between items decodes those items; any other prefix raises ValueError."""
        items = [(b"a", b"1"), (b"bb", b""), (b"ccc", b"333")]
        data = encode_snapshot(items)
        boundaries = {len(encode_snapshot(items[:n])): n for n in range(len(items) + 1)}
        for end in range(len(data)):
            prefix = data[:end]
            if end in boundaries:
                self.assertEqual(list(decode_snapshot(prefix)), items[: boundaries[end]])
            else:
                self.assertRaises(ValueError, list, decode_snapshot(prefix))

    def test_oversized_length(self):
        """A length running past the end of the data raises ValueError."""
        data = struct.pack(">I", 1) + b"k" + struct.pack(">I", 0xFFFFFFFF) + b"v"
        self.assertRaises(ValueError, list, decode_snapshot(data))


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
        """Another command version is CorruptCommand."""
        self.assertRaises(CorruptCommand, decode_request, raw(version=2))

    def test_unknown_op(self):
        """An op code that is not put, delete or append is CorruptCommand."""
        for op in (0, 4, 255):
            self.assertRaises(CorruptCommand, decode_request, raw(op=op))

    def test_bad_key_length(self):
        """A key length of 0, over 511, or past the end of the data is CorruptCommand."""
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"", key_length=0))
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"k" * 512))
        self.assertRaises(CorruptCommand, decode_request, raw(key=b"kk", key_length=3))

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
