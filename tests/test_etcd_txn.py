"""
Tests for the etcd port's C{Txn} (L{kvpaxos.api.etcd_kv},
L{kvpaxos.api.etcd_convert}): compares translated to kvpaxos's so that each
holds exactly when etcd's would, ops and their responses with etcd's
revisions, and etcd's refusals; in front of an in-memory node
(L{tests.test_etcd_fakes}), no port.
"""

from __future__ import annotations

import itertools

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import etcd_convert
from kvpaxos.api.limits import MAX_TXN_OPS
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.kv import machine
from kvpaxos.kv.commands import Op, Request
from kvpaxos.storage.memory import MemoryState
from tests.test_etcd_fakes import Aborted, EtcdHarness

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
_C = pb.Compare


def put(key: bytes, value: bytes = b"v", **fields) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **fields))


def get(key: bytes, **fields) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **fields))


def delete(key: bytes, **fields) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, **fields))


def _etcd_holds(compare: pb.Compare, record) -> bool:
    """What etcd's compareKV answers for C{compare} against C{record} (kvpaxos's, or None: missing)."""
    field = {_C.VERSION: "version", _C.CREATE: "create_revision", _C.MOD: "mod_revision"}[compare.target]
    if record is None:
        actual = 0
    elif field == "version":
        actual = record.version
    else:
        actual = getattr(record, field) + 1
    operand = getattr(compare, field) if compare.WhichOneof("target_union") == field else 0
    return {_C.EQUAL: actual == operand, _C.NOT_EQUAL: actual != operand, _C.LESS: actual < operand,
            _C.GREATER: actual > operand}[compare.result]


class CompareTranslationTests(SynchronousTestCase):
    """A translated compare holds exactly when etcd's does."""

    def test_every_operand(self) -> None:
        """Every target, result and operand around a key's values, on a missing and a present key."""
        state = MemoryState()
        for slot, value in enumerate((b"x", b"y", b"z"), 1):
            machine.apply(state, Request(Op.PUT, b"k", value), slot)
        present = state.get(b"k")  # version 3, create 1, mod 3: etcd's 2 and 4
        for key, target, result, operand in itertools.product(
                (b"k", b"missing"), (_C.VERSION, _C.CREATE, _C.MOD),
                (_C.EQUAL, _C.NOT_EQUAL, _C.LESS, _C.GREATER), (-5, -1, 0, 1, 2, 3, 4, 5, 1 << 62)):
            field = {_C.VERSION: "version", _C.CREATE: "create_revision", _C.MOD: "mod_revision"}[target]
            compare = _C(key=key, target=target, result=result, **{field: operand})
            translated = etcd_convert.compare_from_etcd(compare)
            holds = True if translated is None else machine.compare(state, translated)
            expected = _etcd_holds(compare, present if key == b"k" else None)
            self.assertEqual(holds, expected, (key, target, result, operand, translated))

    def test_other_operand_is_zero(self) -> None:
        """An operand in another field of the union reads as 0 (empty for VALUE), as etcd reads it."""
        compare = _C(key=b"k", target=_C.MOD, result=_C.EQUAL, version=7)
        self.assertEqual(etcd_convert.compare_from_etcd(compare).operand, 0)
        value = etcd_convert.compare_from_etcd(_C(key=b"k", target=_C.VALUE, result=_C.EQUAL, version=7))
        self.assertEqual(value.operand, b"")


class TxnTests(EtcdHarness, SynchronousTestCase):
    """Txn as etcd's."""

    def setUp(self) -> None:
        super().setUp()
        self.node.write(b"a", b"1")  # kvpaxos revision 1: etcd's 2
        self.node.write(b"b", b"2")  # 3

    def txn(self, compare=(), success=(), failure=()) -> pb.TxnResponse:
        return self.call(self.kv.Txn, pb.TxnRequest(compare=list(compare), success=list(success),
                                                    failure=list(failure)))

    def test_success_branch(self) -> None:
        """Holding compares run the success ops; each response has etcd's revision in its header."""
        response = self.txn([_C(key=b"a", target=_C.VALUE, result=_C.EQUAL, value=b"1"),
                             _C(key=b"a", target=_C.MOD, result=_C.EQUAL, mod_revision=2)],
                            [get(b"a"), put(b"a", b"new", prev_kv=True), get(b"a"), delete(b"b", prev_kv=True)],
                            [put(b"never")])
        self.assertTrue(response.succeeded)
        self.assertEqual(response.header.revision, 4)
        first, written, second, deleted = response.responses
        self.assertEqual((first.response_range.header.revision, first.response_range.kvs[0].value), (3, b"1"))
        self.assertEqual((written.response_put.header.revision, written.response_put.prev_kv.value), (4, b"1"))
        self.assertEqual((second.response_range.header.revision, second.response_range.kvs[0].value,
                          second.response_range.kvs[0].mod_revision), (4, b"new", 4))
        self.assertEqual((deleted.response_delete_range.deleted, deleted.response_delete_range.header.revision,
                          deleted.response_delete_range.prev_kvs[0].key), (1, 4, b"b"))
        self.assertIsNone(self.node.state.get(b"never"))

    def test_failure_branch(self) -> None:
        """A failing compare runs the failure ops; a read-only branch keeps the revision."""
        response = self.txn([_C(key=b"a", target=_C.VERSION, result=_C.GREATER, version=1)],
                            [put(b"x")], [get(b"a", keys_only=True), get(b"\0", range_end=b"\0", count_only=True)])
        self.assertFalse(response.succeeded)
        self.assertEqual(response.header.revision, 3)
        keys, counted = response.responses
        self.assertEqual((keys.response_range.kvs[0].value, keys.response_range.header.revision), (b"", 3))
        self.assertEqual((counted.response_range.count, list(counted.response_range.kvs)), (2, []))

    def test_delete_nothing_then_put(self) -> None:
        """A delete of nothing before the first change answers the starting revision, as etcd's."""
        response = self.txn(success=[delete(b"zz"), put(b"c"), delete(b"zz")])
        revisions = [r.response_delete_range.header.revision or r.response_put.header.revision
                     for r in response.responses]
        self.assertEqual((revisions, response.header.revision), ([3, 4, 4], 4))

    def test_absent_key_idiom(self) -> None:
        """create_revision = 0 holds for a missing key only (etcd's "key absent" test)."""
        missing = self.txn([_C(key=b"new", target=_C.CREATE, result=_C.EQUAL, create_revision=0)], [put(b"new")])
        present = self.txn([_C(key=b"a", target=_C.CREATE, result=_C.EQUAL, create_revision=0)], [put(b"a")])
        self.assertEqual((missing.succeeded, present.succeeded), (True, False))

    def test_value_compare_missing_key(self) -> None:
        """Every VALUE compare on a missing key fails, NOT_EQUAL too (etcd's rule)."""
        response = self.txn([_C(key=b"nope", target=_C.VALUE, result=_C.NOT_EQUAL, value=b"x")])
        self.assertFalse(response.succeeded)

    def test_etcd_refusals(self) -> None:
        """etcd's own refusals of a transaction, in its words; none reaches the node."""
        many = [put(b"k%d" % i) for i in range(MAX_TXN_OPS + 1)]
        cases = [
            (pb.TxnRequest(success=many), "etcdserver: too many operations in txn request"),
            (pb.TxnRequest(compare=[_C(key=b"")]), "etcdserver: key is not provided"),
            (pb.TxnRequest(success=[put(b"")]), "etcdserver: key is not provided"),
            (pb.TxnRequest(failure=[get(b"")]), "etcdserver: key is not provided"),
            (pb.TxnRequest(success=[delete(b"")]), "etcdserver: key is not provided"),
            (pb.TxnRequest(success=[pb.RequestOp()]), "etcdserver: key not found"),
            (pb.TxnRequest(success=[put(b"k"), put(b"k")]), "etcdserver: duplicate key given in txn request"),
            (pb.TxnRequest(failure=[delete(b"a", range_end=b"c"), put(b"b")]),
             "etcdserver: duplicate key given in txn request"),
            (pb.TxnRequest(success=[put(b"k", ignore_value=True)]), "etcdserver: value is provided"),
            (pb.TxnRequest(success=[get(b"k", sort_order=5)]), "etcdserver: invalid sort option"),
            (pb.TxnRequest(success=[put(b"k", b"x" * (2 << 20))]), "etcdserver: request is too large"),
        ]
        for request, message in cases:
            self.refused(self.kv.Txn, request, INVALID, message)
        self.refused(self.kv.Txn, pb.TxnRequest(success=[put(b"k", lease=-3)]), grpc.StatusCode.NOT_FOUND,
                     "etcdserver: requested lease not found")
        self.assertEqual(self.node.calls, [])

    def test_put_same_key_in_both_branches(self) -> None:
        """One key put in each branch is no duplicate (only one branch runs)."""
        response = self.txn(success=[put(b"k", b"s")], failure=[put(b"k", b"f")])
        self.assertTrue(response.succeeded)

    def test_unimplemented(self) -> None:
        """What kvpaxos does not serve in a transaction answers UNIMPLEMENTED; none reaches the node."""
        cases = [
            pb.TxnRequest(compare=[_C(key=b"a", target=_C.LEASE, result=_C.EQUAL, lease=0)]),
            pb.TxnRequest(compare=[_C(key=b"a", range_end=b"b", target=_C.VERSION, version=1)]),
            pb.TxnRequest(success=[pb.RequestOp(request_txn=pb.TxnRequest())]),
            pb.TxnRequest(success=[get(b"a", revision=2)]),
            pb.TxnRequest(success=[put(b"a", ignore_value=True, value=b"")]),
            pb.TxnRequest(success=[put(b"a", ignore_lease=True)]),
        ]
        for request in cases:
            self.refused(self.kv.Txn, request, UNIMPLEMENTED)
        self.assertEqual(self.node.calls, [])

    def test_key_order_sort_allowed(self) -> None:
        """A transaction's range sorted by key, ascending, is served (it is the key order)."""
        response = self.txn(success=[get(b"a", range_end=b"c", sort_order=pb.RangeRequest.ASCEND)])
        self.assertEqual([kv.key for kv in response.responses[0].response_range.kvs], [b"a", b"b"])

    def test_sorted_and_filtered_ranges(self) -> None:
        """
        A transaction's range sorted by any target, either way, or filtered
        by revisions, answers as etcd's: filtered, sorted, then cut to its
        limit (etcd's lock reads its owner with C{WithFirstCreate}).
        """
        self.node.write(b"l/b", b"1")  # etcd revisions 4, 5, 6 (after setUp's): created b, c, then a
        self.node.write(b"l/c", b"3")
        self.node.write(b"l/a", b"2")
        lock = dict(range_end=b"l0")

        def keys(*ops, **branch):
            response = self.txn(success=list(ops), **branch)
            return [[(kv.key, kv.value) for kv in r.response_range.kvs] for r in response.responses]

        first_create = get(b"l/", sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.ASCEND,
                           limit=1, **lock)
        last_create = get(b"l/", sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.DESCEND,
                          limit=1, **lock)
        by_value = get(b"l/", sort_target=pb.RangeRequest.VALUE, keys_only=True, **lock)
        created_by_5 = get(b"l/", max_create_revision=5, sort_order=pb.RangeRequest.DESCEND, **lock)
        self.assertEqual(keys(first_create, last_create, by_value, created_by_5), [
            [(b"l/b", b"1")], [(b"l/a", b"2")], [(b"l/b", b""), (b"l/a", b""), (b"l/c", b"")],
            [(b"l/c", b"3"), (b"l/b", b"1")],
        ])
        response = self.txn(success=[first_create])
        self.assertTrue(response.responses[0].response_range.more)
        self.assertEqual(response.responses[0].response_range.count, 3)
        # The branch that ran is the one whose ops are sorted: here, failure's.
        response = self.txn([_C(key=b"l/a", target=_C.VERSION, result=_C.EQUAL, version=0)],
                            success=[put(b"l/d")], failure=[last_create])
        self.assertFalse(response.succeeded)
        self.assertEqual([kv.key for kv in response.responses[0].response_range.kvs], [b"l/a"])
        # A put before the sorted range in one transaction is seen by it.
        response = self.txn(success=[put(b"l/0", b"9"), last_create])
        self.assertEqual([kv.key for kv in response.responses[1].response_range.kvs], [b"l/0"])

    def test_unknown_compare(self) -> None:
        """An unknown compare target or result is INVALID_ARGUMENT."""
        for compare in (_C(key=b"a", target=9), _C(key=b"a", result=9)):
            with self.assertRaises(Aborted) as raised:
                self.txn([compare])
            self.assertEqual(raised.exception.status.code, INVALID)

    def test_response_too_large(self) -> None:
        """A transaction whose answer exceeds the message limit applied: RESOURCE_EXHAUSTED names its revision."""
        big = b"x" * (1 << 20)
        for i in range(5):
            self.node.write(b"big%d" % i, big)
        message = self.refused(self.kv.Txn, pb.TxnRequest(success=[get(b"big", range_end=b"bih"), put(b"c")]),
                               grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("revision 9", message)
        self.assertIsNotNone(self.node.state.get(b"c"))
