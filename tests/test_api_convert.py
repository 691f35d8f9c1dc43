"""
Tests for the conversions between C{kvpaxos.v1} messages and commands and
results (L{kvpaxos.api.convert}): pure functions, no server.  The RPCs that
use them are tested through a real server in L{tests.test_api}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import convert
from kvpaxos.kv.commands import (
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
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
)
from kvpaxos.v1 import kv_pb2

#: A record and its message.
RECORD = KeyValue(b"k", b"v", 2, 3, 4)
RECORD_MESSAGE = kv_pb2.KeyValue(key=b"k", value=b"v", version=2, create_revision=3, mod_revision=4)
HEADER = kv_pb2.ResponseHeader(member_id=1, leader_id=2, revision=9)


def big(key: bytes, size: int = 1 << 20) -> KeyValue:
    """Return a record of C{key} with a value of C{size} bytes."""
    return KeyValue(key, b"x" * size, 1, 1, 1)


class RecordTests(SynchronousTestCase):
    """Records and read consistency."""

    def test_key_value_both_ways(self) -> None:
        """A record converts to its message and back unchanged."""
        self.assertEqual(convert.key_value_to_proto(RECORD), RECORD_MESSAGE)
        self.assertEqual(convert.key_value_from_proto(RECORD_MESSAGE), RECORD)

    def test_optional_key_value(self) -> None:
        """No record converts to None, so the field stays unset."""
        self.assertIsNone(convert.optional_key_value_to_proto(None))

    def test_consistency_names(self) -> None:
        """Each ReadConsistency value maps to the node's name for it."""
        self.assertEqual(
            [convert.consistency_name(c) for c in (kv_pb2.LINEARIZABLE, kv_pb2.SERIALIZABLE, kv_pb2.LEASE)],
            ["linearizable", "serializable", "lease"],
        )

    def test_unknown_consistency(self) -> None:
        """A ReadConsistency value this version does not know is InvalidArgument."""
        self.assertRaises(InvalidArgument, convert.consistency_name, 3)


class RangeTests(SynchronousTestCase):
    """Range queries and the size cap on range responses."""

    def test_query(self) -> None:
        """A RangeRequest converts to the checked Range with its limit and flags."""
        message = kv_pb2.RangeRequest(key=b"a", range_end=TO_THE_END, limit=5, keys_only=True)
        self.assertEqual(convert.range_query_from_proto(message), Range(b"a", TO_THE_END, 5, keys_only=True))

    def test_empty_end_one_key(self) -> None:
        """An empty range_end means the one key: end None, and back again."""
        query = convert.range_query_from_proto(kv_pb2.RangeRequest(key=b"a", count_only=True))
        self.assertEqual(query, Range(b"a", count_only=True))
        self.assertEqual(convert.range_to_proto(query), kv_pb2.RangeRequest(key=b"a", count_only=True))

    def test_bad_query(self) -> None:
        """A negative limit, an empty key or an over-long end is InvalidArgument."""
        for message in (kv_pb2.RangeRequest(key=b"a", limit=-1), kv_pb2.RangeRequest(),
                        kv_pb2.RangeRequest(key=b"a", range_end=b"z" * 512)):
            self.assertRaises(InvalidArgument, convert.range_query_from_proto, message)

    def test_response_within_budget(self) -> None:
        """A result that fits is answered whole, with its count, more and the header."""
        response, used = convert.range_response(RangeResult((RECORD,), 3, True, 9), HEADER)
        self.assertEqual(response, kv_pb2.RangeResponse(header=HEADER, kvs=[RECORD_MESSAGE], more=True, count=3))
        self.assertEqual(used, RECORD_MESSAGE.ByteSize() + 2)

    def test_response_cut(self) -> None:
        """Records past the budget are left out, more is set, and count stays the total."""
        result = RangeResult(tuple(big(b"k%d" % i) for i in range(5)), 5, False, 9)
        response, used = convert.range_response(result, HEADER)
        self.assertEqual((len(response.kvs), response.more, response.count), (2, True, 5))
        self.assertLessEqual(used, convert.RESPONSE_KVS_BYTES_MAX)
        rest = kv_pb2.RangeResponse(header=HEADER, more=True, count=5)
        self.assertEqual(response.ByteSize() - rest.ByteSize(), used)

    def test_response_no_budget(self) -> None:
        """With no budget left no record is answered, and more says some were left out."""
        response, used = convert.range_response(RangeResult((RECORD,), 1, False, 9), HEADER, 0)
        self.assertEqual((len(response.kvs), response.more, used), (0, True, 0))


class CompareTests(SynchronousTestCase):
    """Compares: the operand oneof per target."""

    OPERANDS = (
        (kv_pb2.Compare.VALUE, CompareTarget.VALUE, "value", b"v"),
        (kv_pb2.Compare.VERSION, CompareTarget.VERSION, "version", 3),
        (kv_pb2.Compare.CREATE_REVISION, CompareTarget.CREATE_REVISION, "create_revision", 4),
        (kv_pb2.Compare.MOD_REVISION, CompareTarget.MOD_REVISION, "mod_revision", 5),
        (kv_pb2.Compare.EXISTS, CompareTarget.EXISTS, "exists", True),
    )

    def test_each_target_both_ways(self) -> None:
        """Each target takes its operand from its own oneof field, and converts back to it."""
        for number, target, field, operand in self.OPERANDS:
            message = kv_pb2.Compare(key=b"k", target=number, result=kv_pb2.Compare.LESS, **{field: operand})
            compare = Compare(b"k", target, CompareResult.LESS, operand)
            self.assertEqual(convert.compare_from_proto(message), compare)
            self.assertEqual(convert.compare_to_proto(compare), message)

    def test_unset_operand(self) -> None:
        """An unset operand is the default of the target's field."""
        defaults = [convert.compare_from_proto(kv_pb2.Compare(key=b"k", target=number)).operand
                    for number, _, _, _ in self.OPERANDS]
        self.assertEqual(defaults, [b"", 0, 0, 0, False])
        self.assertIs(defaults[-1], False)

    def test_other_targets_operand(self) -> None:
        """An operand in another target's field is InvalidArgument."""
        message = kv_pb2.Compare(key=b"k", target=kv_pb2.Compare.MOD_REVISION, version=1)
        error = self.assertRaises(InvalidArgument, convert.compare_from_proto, message)
        self.assertIn("mod_revision", str(error))

    def test_unknown_target_or_result(self) -> None:
        """A target or result this version does not know is InvalidArgument."""
        for message in (kv_pb2.Compare(key=b"k", target=9), kv_pb2.Compare(key=b"k", result=9)):
            self.assertRaises(InvalidArgument, convert.compare_from_proto, message)

    def test_results(self) -> None:
        """Each result maps to its CompareResult."""
        results = [convert.compare_from_proto(kv_pb2.Compare(key=b"k", result=r)).result
                   for r in (kv_pb2.Compare.EQUAL, kv_pb2.Compare.NOT_EQUAL, kv_pb2.Compare.LESS, kv_pb2.Compare.GREATER)]
        self.assertEqual(results, [CompareResult.EQUAL, CompareResult.NOT_EQUAL, CompareResult.LESS, CompareResult.GREATER])


class TxnTests(SynchronousTestCase):
    """Transaction requests and responses."""

    REQUEST = Request(Op.TXN, client_id=4, sequence=2, txn=Txn(
        (Compare(b"a", CompareTarget.VERSION, CompareResult.EQUAL, 0),),
        (Put(b"a", b"1", True), DeleteRange(b"b", TO_THE_END, True), DeleteRange(b"c"),
         Range(b"a", b"z", 3, True, False)),
        (Range(b"a", count_only=True),),
    ))

    def test_request_both_ways(self) -> None:
        """A transaction converts to its message and back unchanged, with its session fields."""
        message = convert.txn_request_to_proto(self.REQUEST)
        self.assertEqual(convert.txn_request_from_proto(message), self.REQUEST)

    def test_empty_op(self) -> None:
        """A RequestOp with no op set is InvalidArgument."""
        message = kv_pb2.TxnRequest(success=[kv_pb2.RequestOp()])
        self.assertRaises(InvalidArgument, convert.txn_request_from_proto, message)

    def test_request_validated(self) -> None:
        """A transaction that converts but breaks a rule (a key put twice) is InvalidArgument."""
        put = kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"k"))
        self.assertRaises(InvalidArgument, convert.txn_request_from_proto, kv_pb2.TxnRequest(success=[put, put]))

    def test_response(self) -> None:
        """Each op's result answers in kind, every inner header the transaction's."""
        result = TxnResult(True, (PutResponse(RECORD), PutResponse(), DeleteResponse(2, (RECORD,)),
                                  RangeResult((RECORD,), 1, False, 9)), 9)
        response = convert.txn_response(result, HEADER)
        put, blind, delete, read = response.responses
        self.assertEqual(put.response_put, kv_pb2.PutResponse(header=HEADER, existed=True, prev_kv=RECORD_MESSAGE))
        self.assertEqual(blind.response_put, kv_pb2.PutResponse(header=HEADER))
        self.assertEqual(delete.response_delete_range,
                         kv_pb2.DeleteRangeResponse(header=HEADER, deleted=2, prev_kvs=[RECORD_MESSAGE]))
        self.assertEqual(read.response_range, kv_pb2.RangeResponse(header=HEADER, kvs=[RECORD_MESSAGE], count=1))
        self.assertEqual((response.succeeded, response.header), (True, HEADER))

    def test_ranges_share_budget(self) -> None:
        """The ranges of a transaction share one budget, less the records its deletes return."""
        records = tuple(big(b"k%d" % i) for i in range(3))
        result = TxnResult(True, (RangeResult(records[:1], 1, False, 9), DeleteResponse(1, records[1:2]),
                                  RangeResult(records, 3, False, 9)), 9)
        first, _, second = convert.txn_response(result, HEADER).responses
        self.assertEqual((len(first.response_range.kvs), first.response_range.more), (1, False))
        self.assertEqual((len(second.response_range.kvs), second.response_range.more), (0, True))
