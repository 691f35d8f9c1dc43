"""
The project's etcd proto definitions (proto/kvpaxos/etcdpb/, generated into
L{kvpaxos.etcdpb}) against a real etcd: the generated stubs talk to etcd
(Debian's etcd-server) and to a real kvpaxos node's etcd port, every
declared field of Put, Range, Txn and DeleteRange set where it means
something, and both answer the same messages (ids, terms and the revision
each test starts from aside).  etcd decoding our requests and answering
with what the request asked for proves the field numbers and types; the
same answers from kvpaxos prove the port's mapping.

One etcd and one one-node kvpaxos cluster for the class
(L{tests.test_etcd_process.SharedProcesses}); without etcd the tests fail
saying so.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from twisted.trial.unittest import TestCase

from kvpaxos.api.endpoints import CHANNEL_OPTIONS
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from tests.test_etcd_process import SharedProcesses

_R = pb.RangeRequest
_C = pb.Compare
#: Fields that name a member, a cluster or a term: not compared.
_IDS = {"cluster_id", "member_id", "raft_term"}
_REVISIONS = {"revision", "create_revision", "mod_revision"}


def _normalized(value, base: int):
    """C{value} (a message as a dict) without ids, its revisions counted from C{base}."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in _IDS:
                continue
            if key in _REVISIONS and int(item):
                out[key] = int(item) - base
            else:
                out[key] = _normalized(item, base)
        return out
    if isinstance(value, list):
        return [_normalized(item, base) for item in value]
    return value


class Side:
    """One server (etcd or kvpaxos's etcd port) through the generated stubs."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.base = 0

    def start(self) -> None:
        """Count revisions from now on."""
        self.base = self.kv.Range(_R(key=b"\0"), timeout=10).header.revision

    def answer(self, method: str, request):
        """C{(code, message)} of a refusal, or the normalized answer."""
        try:
            response = getattr(self.kv, method)(request, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()
        return _normalized(json_format.MessageToDict(response, preserving_proto_field_name=True), self.base)


class WireTests(SharedProcesses, TestCase):
    """etcd and kvpaxos answer the project's stubs alike."""

    size = 1

    def setUp(self) -> None:
        super().setUp()
        self.sides = [Side(self.processes.etcd.endpoint), Side(self.processes.kvpaxos[0])]
        for side in self.sides:
            self.addCleanup(side.channel.close)
            side.start()

    def same(self, method: str, request):
        """Send C{request} to both; assert the same answer; return etcd's."""
        etcd, kvpaxos = (side.answer(method, request) for side in self.sides)
        self.assertEqual(kvpaxos, etcd, f"{method} {request}")
        return etcd

    def test_put(self) -> None:
        """Put with prev_kv answers the previous record; a missing lease, and ignore_lease with a lease, as etcd."""
        first = self.same("Put", pb.PutRequest(key=b"w/p", value=b"1", prev_kv=True))
        self.assertEqual(first, {"header": {"revision": 1}})
        second = self.same("Put", pb.PutRequest(key=b"w/p", value=b"2", prev_kv=True))
        self.assertEqual(second["prev_kv"]["mod_revision"], 1)
        self.same("Put", pb.PutRequest(key=b"w/p", value=b"4", lease=12345))
        self.same("Put", pb.PutRequest(key=b"w/p", value=b"4", ignore_value=True))
        self.same("Put", pb.PutRequest(key=b"w/p", lease=9, ignore_lease=True))
        self.same("Put", pb.PutRequest(key=b""))

    def test_range(self) -> None:
        """Range with each field: ends, limit, revision, sorts, serializable, keys and count only, filters."""
        for key, value in ((b"w/r/a", b"c"), (b"w/r/b", b"a"), (b"w/r/c", b"b"), (b"w/r/a", b"cc")):
            self.same("Put", pb.PutRequest(key=key, value=value))
        prefix = dict(key=b"w/r/", range_end=b"w/r0")
        requests = [
            _R(key=b"w/r/a"),
            _R(**prefix, limit=2),
            _R(key=b"w/r/b", range_end=b"\0", keys_only=True),
            _R(**prefix, count_only=True, limit=1),
            _R(**prefix, serializable=True),
            _R(**prefix, sort_order=_R.DESCEND, sort_target=_R.VALUE, limit=2),
            _R(**prefix, sort_order=_R.ASCEND, sort_target=_R.MOD),
            _R(**prefix, sort_target=_R.CREATE),
            _R(**prefix, sort_order=_R.DESCEND, sort_target=_R.VERSION, keys_only=True),
            _R(**prefix, sort_order=_R.DESCEND, sort_target=_R.KEY),
            _R(**prefix, min_mod_revision=3, max_mod_revision=4),
            _R(**prefix, min_create_revision=2, max_create_revision=3),
            _R(key=b""),
        ]
        for request in requests:
            self.same("Range", request)
        for side in self.sides:  # the newest revision, as each counts it; one past it is refused
            newest = side.kv.Range(_R(key=b"w/r/a"), timeout=10).header.revision
            self.assertEqual(side.answer("Range", _R(key=b"w/r/a", revision=newest))["kvs"][0]["value"], "Y2M=")
            self.assertEqual(side.answer("Range", _R(key=b"w/r/a", revision=newest + 1))[0],
                             grpc.StatusCode.OUT_OF_RANGE)

    def test_txn(self) -> None:
        """Txn: each compare target with its union field, both branches, each op with its fields."""
        self.same("Put", pb.PutRequest(key=b"w/t/a", value=b"1"))
        self.same("Put", pb.PutRequest(key=b"w/t/b", value=b"2"))
        compares = [
            _C(key=b"w/t/a", target=_C.VALUE, result=_C.EQUAL, value=b"1"),
            _C(key=b"w/t/a", target=_C.VERSION, result=_C.GREATER, version=0),
            _C(key=b"w/t/a", target=_C.CREATE, result=_C.LESS, create_revision=1000),
            _C(key=b"w/t/b", target=_C.MOD, result=_C.NOT_EQUAL, mod_revision=1),
            _C(key=b"w/t/none", target=_C.CREATE, result=_C.EQUAL, create_revision=0),
        ]
        success = [
            pb.RequestOp(request_range=_R(key=b"w/t/", range_end=b"w/t0", limit=1, keys_only=True)),
            pb.RequestOp(request_put=pb.PutRequest(key=b"w/t/a", value=b"x", prev_kv=True)),
            pb.RequestOp(request_range=_R(key=b"w/t/", range_end=b"w/t0", count_only=True)),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"w/t/b", range_end=b"w/t/c", prev_kv=True)),
            pb.RequestOp(request_range=_R(key=b"w/t/", range_end=b"w/t0", serializable=True)),
        ]
        failure = [pb.RequestOp(request_put=pb.PutRequest(key=b"w/t/never", value=b"x"))]
        answer = self.same("Txn", pb.TxnRequest(compare=compares, success=success, failure=failure))
        self.assertTrue(answer["succeeded"])
        failed = self.same("Txn", pb.TxnRequest(compare=compares[:1], success=failure, failure=success[:1]))
        self.assertNotIn("succeeded", failed)
        self.same("Txn", pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
            key=b"w/t/zz")), pb.RequestOp(request_put=pb.PutRequest(key=b"w/t/c"))]))
        self.same("Txn", pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"w/t/d")),
                                                pb.RequestOp(request_put=pb.PutRequest(key=b"w/t/d"))]))
        self.same("Txn", pb.TxnRequest(success=[pb.RequestOp()]))
        self.same("Txn", pb.TxnRequest(compare=[_C(key=b"")]))

    def test_delete_range(self) -> None:
        """DeleteRange of a key, a missing key, a range with prev_kv, and from a key on."""
        for key in (b"w/d/a", b"w/d/b", b"w/d/c", b"w/d/d"):
            self.same("Put", pb.PutRequest(key=key, value=b"v" + key))
        self.assertEqual(self.same("DeleteRange", pb.DeleteRangeRequest(key=b"w/d/a"))["deleted"], "1")
        self.same("DeleteRange", pb.DeleteRangeRequest(key=b"w/d/a"))
        self.same("DeleteRange", pb.DeleteRangeRequest(key=b"w/d/b", range_end=b"w/d/d", prev_kv=True))
        self.same("DeleteRange", pb.DeleteRangeRequest(key=b"w/d/", range_end=b"\0", prev_kv=True))
        self.same("DeleteRange", pb.DeleteRangeRequest(key=b""))

    def test_status_and_members(self) -> None:
        """
        Status, MemberList and Alarm decode with the fields etcd 3.4 sets
        (values aside), and those etcd 3.6 adds: Status's quota, Alarm's header.
        """
        for stub, method, request, later in (
                (rpc_pb2_grpc.MaintenanceStub, "Status", pb.StatusRequest(), "dbSizeQuota"),
                (rpc_pb2_grpc.ClusterStub, "MemberList", pb.MemberListRequest(), None),
                (rpc_pb2_grpc.MaintenanceStub, "Alarm", pb.AlarmRequest(), "header")):
            fields = []
            for side in self.sides:
                response = getattr(stub(side.channel), method)(request, timeout=10)
                fields.append(sorted(f.name for f, _ in response.ListFields()))
            self.assertEqual([f for f in fields[1] if f != later], fields[0], method)
