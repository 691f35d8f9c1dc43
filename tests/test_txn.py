"""
Tests for transactions and range reads of the state machine
(L{kvpaxos.kv.machine.apply_txn}, L{kvpaxos.kv.machine.read_range}): every
compare target and result, atomicity in one revision, range conventions;
and the version-2 encoding of transaction requests, including hostile
bytes.  The view is an in-memory L{MemoryState}; the stores' C{range} is
in the storage contract (C{test_storage}).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import (
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
    CorruptCommand,
    DeleteRange,
    DeleteResponse,
    InvalidArgument,
    KeyValue,
    Op,
    Put,
    PutResponse,
    Range,
    RangeResult,
    Request,
    Txn,
    TxnResult,
    compare_and_swap,
    prefix_end,
    range_query,
    validate_request,
)
from kvpaxos.encoding.commands import COMMAND_VERSION, decode_request, encode_request
from kvpaxos.kv.machine import apply, read_range
from kvpaxos.storage.memory import MemoryState
from tests.test_kv import FUZZ

EQ, NE, LT, GT = CompareResult.EQUAL, CompareResult.NOT_EQUAL, CompareResult.LESS, CompareResult.GREATER


def txn(compares=(), success=(), failure=(), **session) -> Request:
    """Return a TXN request."""
    return Request(Op.TXN, txn=Txn(tuple(compares), tuple(success), tuple(failure)), **session)


class TxnTestCase(SynchronousTestCase):
    """A fresh state with helpers to apply requests to it."""

    def setUp(self):
        self.state = MemoryState()

    def apply(self, request, slot=1):
        """Apply C{request} at C{slot} and return its result."""
        return apply(self.state, request, slot)

    def put(self, key, value=b"v"):
        """Apply a plain put."""
        return self.apply(Request(Op.PUT, key, value))

    def holds(self, compare):
        """Return whether a transaction with the one C{compare} succeeds."""
        return self.apply(txn([compare])).succeeded


class CompareTests(TxnTestCase):
    """Every compare target against every result, including on missing keys."""

    def setUp(self):
        super().setUp()
        self.put(b"other")
        self.put(b"k", b"b")
        self.put(b"k", b"b")  # k: version 2, create 2, mod 3

    def check(self, target, operands):
        """Assert, for each (operand, [eq, ne, lt, gt]) pair, what each result gives."""
        for operand, expected in operands:
            found = [self.holds(Compare(b"k", target, r, operand)) for r in (EQ, NE, LT, GT)]
            self.assertEqual(found, expected, (target, operand))

    def test_value(self):
        """VALUE compares bytes lexicographically."""
        self.check(CompareTarget.VALUE, [
            (b"b", [True, False, False, False]),
            (b"a", [False, True, False, True]),
            (b"c", [False, True, True, False]),
            (b"ba", [False, True, True, False]),
        ])

    def test_version(self):
        """VERSION compares the number of writes since creation."""
        self.check(CompareTarget.VERSION, [
            (2, [True, False, False, False]), (1, [False, True, False, True]),
            (3, [False, True, True, False]),
        ])

    def test_create_revision(self):
        """CREATE_REVISION compares the revision that created the key."""
        self.check(CompareTarget.CREATE_REVISION, [
            (2, [True, False, False, False]), (1, [False, True, False, True]),
            (3, [False, True, True, False]),
        ])

    def test_mod_revision(self):
        """MOD_REVISION compares the revision of the key's latest write."""
        self.check(CompareTarget.MOD_REVISION, [
            (3, [True, False, False, False]), (2, [False, True, False, True]),
            (4, [False, True, True, False]),
        ])

    def test_exists(self):
        """EXISTS compares presence as true/false (true above false)."""
        self.check(CompareTarget.EXISTS, [
            (True, [True, False, False, False]), (False, [False, True, False, True]),
        ])

    def test_missing_key_numbers_are_zero(self):
        """A missing key has version, create and mod revision 0."""
        for target in (CompareTarget.VERSION, CompareTarget.CREATE_REVISION, CompareTarget.MOD_REVISION):
            self.assertTrue(self.holds(Compare(b"nope", target, EQ, 0)))
            self.assertTrue(self.holds(Compare(b"nope", target, LT, 1)))
            self.assertFalse(self.holds(Compare(b"nope", target, GT, 0)))

    def test_missing_key_value_never_matches(self):
        """Every VALUE compare on a missing key is false, NOT_EQUAL included (etcd's rule)."""
        for result in (EQ, NE, LT, GT):
            self.assertFalse(self.holds(Compare(b"nope", CompareTarget.VALUE, result, b"")))

    def test_missing_key_exists(self):
        """EXISTS on a missing key equals False."""
        self.assertTrue(self.holds(Compare(b"nope", CompareTarget.EXISTS, EQ, False)))
        self.assertFalse(self.holds(Compare(b"nope", CompareTarget.EXISTS, EQ, True)))

    def test_all_must_hold(self):
        """A transaction succeeds only if every one of its compares holds; none means success."""
        yes = Compare(b"k", CompareTarget.VERSION, EQ, 2)
        no = Compare(b"k", CompareTarget.VERSION, EQ, 5)
        self.assertTrue(self.apply(txn([yes, yes])).succeeded)
        self.assertFalse(self.apply(txn([yes, no])).succeeded)
        self.assertTrue(self.apply(txn([])).succeeded)


class TxnApplyTests(TxnTestCase):
    """Branches apply atomically, in order, in one revision."""

    def test_success_branch(self):
        """When the compares hold, the success ops apply and the failure ops do not."""
        result = self.apply(txn([Compare(b"a", CompareTarget.EXISTS, EQ, False)],
                                [Put(b"a", b"1")], [Put(b"b", b"1")]))
        self.assertEqual(result, TxnResult(True, (PutResponse(),), 1))
        self.assertEqual(self.state.get(b"a"), KeyValue(b"a", b"1", 1, 1, 1))
        self.assertIsNone(self.state.get(b"b"))

    def test_failure_branch(self):
        """When a compare fails, the failure ops apply and the success ops do not."""
        result = self.apply(txn([Compare(b"a", CompareTarget.EXISTS, EQ, True)],
                                [Put(b"a", b"1")], [Put(b"b", b"1")]))
        self.assertEqual(result, TxnResult(False, (PutResponse(),), 1))
        self.assertIsNone(self.state.get(b"a"))
        self.assertEqual(self.state.get(b"b").value, b"1")

    def test_one_revision_for_all_writes(self):
        """Every write of a transaction carries the same revision, one above the store's before."""
        self.put(b"x")
        self.put(b"y")
        result = self.apply(txn([], [Put(b"a", b"1"), Put(b"b", b"2"), DeleteRange(b"x"),
                                     Put(b"y", b"3")]))
        self.assertEqual(result.revision, 3)
        self.assertEqual(self.state.revision(), 3)
        self.assertEqual([self.state.get(k).mod_revision for k in (b"a", b"b", b"y")], [3, 3, 3])
        self.assertEqual(self.state.get(b"y").version, 2)

    def test_read_only_keeps_revision(self):
        """A transaction that writes nothing (reads, deletes of nothing, empty branch) keeps the revision."""
        self.put(b"a")
        for request in (txn([], [Range(b"a")]), txn([], [DeleteRange(b"zz")]), txn()):
            self.assertEqual(self.apply(request).revision, 1)
        self.assertEqual(self.state.revision(), 1)

    def test_ops_see_earlier_writes(self):
        """An op reads what the ops before it in the same branch wrote, at the transaction's revision."""
        self.put(b"a", b"old")
        result = self.apply(txn([], [Put(b"a", b"new"), Range(b"a"), DeleteRange(b"a"), Range(b"a")]))
        self.assertEqual(result.responses[1], RangeResult((KeyValue(b"a", b"new", 2, 1, 2),), 1, False, 2))
        self.assertEqual(result.responses[3], RangeResult((), 0, False, 2))

    def test_put_prev_kv(self):
        """A put asking for prev_kv returns the record it replaced."""
        self.put(b"a", b"1")
        result = self.apply(txn([], [Put(b"a", b"2", prev_kv=True), Put(b"b", b"2", prev_kv=True)]))
        self.assertEqual(result.responses, (PutResponse(KeyValue(b"a", b"1", 1, 1, 1)), PutResponse()))

    def test_delete_range(self):
        """A ranged delete removes every key in [start, end) and counts them; prev_kv returns them."""
        for key in (b"a", b"b", b"c", b"d"):
            self.put(key)
        result = self.apply(txn([], [DeleteRange(b"b", b"d", prev_kv=True)]))
        self.assertEqual(result.responses, (DeleteResponse(2, (KeyValue(b"b", b"v", 1, 2, 2),
                                                               KeyValue(b"c", b"v", 1, 3, 3))),))
        self.assertEqual(sorted(self.state.records), [b"a", b"d"])
        self.assertEqual(self.apply(txn([], [DeleteRange(b"b", TO_THE_END)])).responses,
                         (DeleteResponse(1),))
        self.assertEqual(sorted(self.state.records), [b"a"])

    def test_failure_changes_nothing_else(self):
        """A failed transaction with an empty failure branch changes neither data nor revision."""
        self.put(b"a")
        before = self.state.snapshot_data()
        result = self.apply(txn([Compare(b"a", CompareTarget.VERSION, EQ, 9)], [DeleteRange(b"a")]))
        self.assertEqual(result, TxnResult(False, (), 1))
        self.assertEqual(self.state.snapshot_data(), before)

    def test_compare_and_swap_by_value(self):
        """compare_and_swap by value swaps when the value matches and otherwise returns the current record."""
        self.put(b"k", b"1")
        swapped = self.apply(compare_and_swap(b"k", b"2", expected_value=b"1"))
        self.assertTrue(swapped.succeeded)
        missed = self.apply(compare_and_swap(b"k", b"3", expected_value=b"1"))
        self.assertFalse(missed.succeeded)
        self.assertEqual(missed.responses[0].kvs, (KeyValue(b"k", b"2", 2, 1, 2),))

    def test_compare_and_swap_by_version(self):
        """compare_and_swap at version 0 creates a missing key once; a stale version does not swap."""
        self.assertTrue(self.apply(compare_and_swap(b"k", b"1", expected_version=0)).succeeded)
        self.assertFalse(self.apply(compare_and_swap(b"k", b"2", expected_version=0)).succeeded)
        self.assertTrue(self.apply(compare_and_swap(b"k", b"2", expected_version=1)).succeeded)
        self.assertEqual(self.state.get(b"k"), KeyValue(b"k", b"2", 2, 1, 2))

    def test_compare_and_swap_needs_one_expectation(self):
        """compare_and_swap with neither or both expectations is InvalidArgument."""
        self.assertRaises(InvalidArgument, compare_and_swap, b"k", b"v")
        self.assertRaises(InvalidArgument, compare_and_swap, b"k", b"v", expected_value=b"",
                          expected_version=0)


class RangeTests(TxnTestCase):
    """Range reads: etcd's end conventions, key order, limit/more, keys_only, count_only."""

    def setUp(self):
        super().setUp()
        for key in (b"b", b"a\xff", b"a", b"\x00", b"ab", b"b\x00", b"c"):
            self.put(key, key.upper())

    def keys(self, start, end=None, **options):
        """Return the keys a range read finds."""
        return [kv.key for kv in read_range(self.state, Range(start, end, **options)).kvs]

    def test_single_key(self):
        """No end reads the one key, or nothing if it is missing."""
        self.assertEqual(self.keys(b"ab"), [b"ab"])
        self.assertEqual(self.keys(b"zz"), [])

    def test_half_open_in_key_order(self):
        """[start, end) returns keys in byte order, the end excluded."""
        self.assertEqual(self.keys(b"a", b"b\x00"), [b"a", b"ab", b"a\xff", b"b"])

    def test_to_the_end(self):
        """End b"\\x00" reads every key from the start on; start b"\\x00" with it reads all."""
        self.assertEqual(self.keys(b"b", TO_THE_END), [b"b", b"b\x00", b"c"])
        self.assertEqual(len(self.keys(b"\x00", TO_THE_END)), 7)

    def test_empty_when_end_not_after_start(self):
        """An end at or before the start reads nothing."""
        self.assertEqual(self.keys(b"b", b"b"), [])
        self.assertEqual(self.keys(b"c", b"a"), [])

    def test_prefix(self):
        """prefix_end makes a range of exactly the keys with that prefix."""
        self.assertEqual(self.keys(b"a", prefix_end(b"a")), [b"a", b"ab", b"a\xff"])
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff\xff"), TO_THE_END)

    def test_limit_and_more(self):
        """A limit returns the first keys, counts them all and says there are more."""
        result = read_range(self.state, Range(b"a", TO_THE_END, limit=2))
        self.assertEqual(([kv.key for kv in result.kvs], result.count, result.more),
                         ([b"a", b"ab"], 6, True))
        exact = read_range(self.state, Range(b"a", TO_THE_END, limit=6))
        self.assertEqual((len(exact.kvs), exact.more), (6, False))

    def test_keys_only(self):
        """keys_only returns records with empty values and everything else intact."""
        result = read_range(self.state, Range(b"c", keys_only=True))
        self.assertEqual(result.kvs, (KeyValue(b"c", b"", 1, 7, 7),))

    def test_count_only(self):
        """count_only returns the count and no records."""
        result = read_range(self.state, Range(b"a", b"b", count_only=True, limit=1))
        self.assertEqual(result, RangeResult((), 3, False, 7))

    def test_range_query_checks(self):
        """range_query refuses a bad start, an empty end or a negative limit."""
        self.assertRaises(InvalidArgument, range_query, b"")
        self.assertRaises(InvalidArgument, range_query, b"a", b"")
        self.assertRaises(InvalidArgument, range_query, b"a", None, -1)
        self.assertEqual(range_query(b"a", b"b", 3), Range(b"a", b"b", 3))


class TxnValidationTests(SynchronousTestCase):
    """What a transaction request may hold; anything else is the client's fault."""

    def assertInvalid(self, request):
        """Assert that C{request} is InvalidArgument and refused by encode_request."""
        self.assertRaises(InvalidArgument, validate_request, request)
        self.assertRaises(InvalidArgument, encode_request, request)

    def test_duplicate_put(self):
        """A branch that puts one key twice is refused (etcd's rule)."""
        self.assertInvalid(txn([], [Put(b"a"), Put(b"a")]))
        validate_request(txn([], [Put(b"a")], [Put(b"a")]))

    def test_put_inside_deleted_range(self):
        """A branch that puts a key inside a range it deletes is refused."""
        self.assertInvalid(txn([], [DeleteRange(b"a", b"c"), Put(b"b")]))
        self.assertInvalid(txn([], [Put(b"b"), DeleteRange(b"b")]))
        validate_request(txn([], [DeleteRange(b"a", b"b"), Put(b"b")]))

    def test_too_many_ops(self):
        """More than MAX_TXN_OPS compares or ops in a branch is refused."""
        ops = tuple(Range(b"k%d" % i) for i in range(MAX_TXN_OPS + 1))
        self.assertInvalid(txn([], ops))
        compare = Compare(b"k", CompareTarget.EXISTS, EQ, True)
        self.assertInvalid(txn([compare] * (MAX_TXN_OPS + 1)))
        validate_request(txn([compare] * MAX_TXN_OPS, ops[:-1], ops[:-1]))

    def test_too_many_bytes(self):
        """A transaction encoding to more than MAX_TXN_BYTES is refused."""
        big = b"v" * MAX_VALUE_BYTES
        self.assertInvalid(txn([], [Put(b"a", big), Put(b"b", big), Put(b"c", big)]))

    def test_operand_types(self):
        """Each compare target takes its own operand type; others are refused."""
        for target, operand in ((CompareTarget.VALUE, 1), (CompareTarget.VERSION, b"1"),
                                (CompareTarget.VERSION, -1), (CompareTarget.EXISTS, 1),
                                (CompareTarget.MOD_REVISION, True)):
            self.assertInvalid(txn([Compare(b"k", target, EQ, operand)]))

    def test_shape(self):
        """A TXN needs a Txn and no key; other ops carry no Txn; ops must be transaction ops."""
        self.assertInvalid(Request(Op.TXN))
        self.assertInvalid(Request(Op.TXN, b"k", txn=Txn()))
        self.assertInvalid(Request(Op.PUT, b"k", txn=Txn()))
        self.assertInvalid(txn([], [Request(Op.PUT, b"k")]))
        self.assertInvalid(txn([], [Range(b"")]))
        self.assertInvalid(txn([], [Range(b"a", b"")]))


ALL_OPS_TXN = txn(
    [Compare(b"a", CompareTarget.VALUE, NE, b"x" * 300), Compare(b"b", CompareTarget.VERSION, LT, 2**63 - 1),
     Compare(b"c", CompareTarget.CREATE_REVISION, GT, 0), Compare(b"d", CompareTarget.MOD_REVISION, EQ, 5),
     Compare(b"e", CompareTarget.EXISTS, EQ, False)],
    [Put(b"a", b"1", prev_kv=True), DeleteRange(b"b", b"c", True), DeleteRange(b"z"),
     Range(b"\x00", TO_THE_END, 10, keys_only=True), Range(b"q", count_only=True)],
    [Put(b"f", b"")],
    origin=2**32 - 1, request_id=2**64 - 1, client_id=7, sequence=9,
)


class TxnEncodingTests(SynchronousTestCase):
    """Transaction requests round-trip through the command format; damaged bytes are CorruptCommand only."""

    def test_round_trip(self):
        """A transaction with every compare target and op kind decodes to what was encoded."""
        data = encode_request(ALL_OPS_TXN)
        self.assertEqual(data[0], COMMAND_VERSION)
        self.assertEqual(decode_request(data), ALL_OPS_TXN)

    def test_empty_txn_round_trip(self):
        """An empty transaction round-trips."""
        self.assertEqual(decode_request(encode_request(txn())), txn())

    def test_trailing_bytes(self):
        """A transaction followed by extra bytes is CorruptCommand."""
        self.assertRaises(CorruptCommand, decode_request, encode_request(txn()) + b"\x00")

    def test_invalid_content_refused(self):
        """Well-formed bytes holding an invalid transaction (a duplicate put) are CorruptCommand."""
        one = encode_request(txn([], [Put(b"a")]))
        head, count, op = one[:-13], one[-13:-11], one[-11:-2]
        self.assertEqual(count, b"\x00\x01")
        data = head + b"\x00\x02" + op + op + b"\x00\x00"
        self.assertRaises(CorruptCommand, decode_request, data)

    def test_every_truncation(self):
        """Every proper prefix of a transaction command is CorruptCommand."""
        data = encode_request(ALL_OPS_TXN)
        for end in range(len(data)):
            self.assertRaises(CorruptCommand, decode_request, data[:end])

    @FUZZ
    @given(st.data())
    def test_damaged_transactions(self, data):
        """A transaction with one byte changed decodes to a valid request or raises CorruptCommand."""
        encoded = bytearray(encode_request(ALL_OPS_TXN))
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
        try:
            request = decode_request(bytes(encoded))
        except CorruptCommand:
            return
        validate_request(request)
