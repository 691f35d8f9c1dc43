"""
Tests for etcd's C{Lease} service on the etcd port (L{kvpaxos.api.etcd_lease})
and leases on its puts (L{kvpaxos.api.etcd_kv}, L{kvpaxos.api.etcd_convert}),
in front of an in-memory node with the node's lease calls
(L{tests.test_lease_api.LeaseNode} as an L{tests.test_etcd_fakes.EtcdNode}):
etcd's answers and errors, word for word.  No port, no thread, no reactor.
"""

from __future__ import annotations

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.crossing import LoopPost, ReactorCrossing
from kvpaxos.api.etcd import EtcdCalls
from kvpaxos.api.etcd_kv import KVServicer
from kvpaxos.api.etcd_lease import LeaseServicer
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.kv.commands import MAX_LEASE_TTL
from kvpaxos.node.interfaces import NotLeaderError
from tests.test_etcd_fakes import Aborted, EtcdHarness, EtcdNode, FakeContext, ImmediateReactor
from tests.test_lease_api import LeaseNode

NOT_FOUND = grpc.StatusCode.NOT_FOUND
NOT_FOUND_MESSAGE = "etcdserver: requested lease not found"


class LeaseEtcdNode(LeaseNode, EtcdNode):
    """An L{EtcdNode} with lease calls."""


class StreamContext(FakeContext):
    """A fake stream context: C{read} gives C{requests} then EOF; C{write} keeps the answers."""

    def __init__(self, requests) -> None:
        super().__init__()
        self._requests = list(requests)
        self.written: list = []

    async def read(self):
        return self._requests.pop(0) if self._requests else grpc.aio.EOF

    async def write(self, message) -> None:
        self.written.append(message)


class LeaseHarness(EtcdHarness):
    """L{EtcdHarness} in front of a L{LeaseEtcdNode}."""

    def setUp(self) -> None:
        super().setUp()
        self.node = LeaseEtcdNode()
        self.calls = EtcdCalls(self.node, ReactorCrossing(ImmediateReactor()), 5.0)
        self.calls.post = LoopPost(self.loop)
        self.calls.metrics = self.counts
        self.kv = KVServicer(self.node, self.calls)
        self.lease = LeaseServicer(self.node, self.calls)

    def grant(self, ttl: int = 60, lease_id: int = 0) -> pb.LeaseGrantResponse:
        return self.call(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl, ID=lease_id))

    def keep_alive(self, *ids: int) -> StreamContext:
        context = StreamContext(pb.LeaseKeepAliveRequest(ID=i) for i in ids)
        self.loop.run_until_complete(self.lease.LeaseKeepAlive(None, context))
        return context


class GrantRevokeTests(LeaseHarness, SynchronousTestCase):
    """LeaseGrant and LeaseRevoke, with etcd's errors."""

    def test_grant(self) -> None:
        """A grant answers its ID and TTL (the node's minimum for less) and etcd's header."""
        response = self.grant(ttl=1)
        self.assertEqual((response.ID, response.TTL, response.header.revision, response.header.member_id),
                         (100, LeaseNode.min_ttl, 1, 1))
        self.assertEqual(self.grant(60, 0x694D5765FC71500B).ID, 0x694D5765FC71500B)
        self.assertIn(("etcdserverpb.Lease/LeaseGrant", "OK"), self.counts.seen)

    def test_negative_ttl(self) -> None:
        """A negative TTL is raised to the minimum, as etcd raises it."""
        self.assertEqual(self.grant(ttl=-5).TTL, LeaseNode.min_ttl)

    def test_too_large(self) -> None:
        """A TTL over etcd's MaxLeaseTTL is etcd's "too large lease TTL"; nothing reaches the node."""
        self.refused(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=MAX_LEASE_TTL + 1), grpc.StatusCode.OUT_OF_RANGE,
                     "etcdserver: too large lease TTL")
        self.assertEqual(self.node.calls, [])

    def test_negative_id(self) -> None:
        """A negative ID is INVALID_ARGUMENT (kvpaxos's ids are 1 to 2**63 - 1)."""
        self.refused(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=5, ID=-3), grpc.StatusCode.INVALID_ARGUMENT)

    def test_exists(self) -> None:
        """A grant of an ID in use is etcd's "lease already exists" (FAILED_PRECONDITION)."""
        self.grant(10, 7)
        self.refused(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=10, ID=7), grpc.StatusCode.FAILED_PRECONDITION,
                     "etcdserver: lease already exists")

    def test_revoke(self) -> None:
        """A revoke deletes the lease's keys; the header carries the revision that deleted them."""
        self.grant(10, 7)
        self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v", lease=7))
        response = self.call(self.lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=7))
        self.assertEqual(response.header.revision, 3)
        self.assertIsNone(self.node.state.get(b"k"))

    def test_revoke_missing(self) -> None:
        """A revoke of no such lease, or of ID 0 or below (never sent), is etcd's "requested lease not found"."""
        for lease_id in (5, 0, -2):
            self.refused(self.lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lease_id), NOT_FOUND, NOT_FOUND_MESSAGE)
        self.assertEqual(self.node.names(), ["lease_revoke"])


class PutTests(LeaseHarness, SynchronousTestCase):
    """PutRequest.lease, alone and in a Txn."""

    def test_put(self) -> None:
        """A put with a lease attaches its key; records read still say lease 0 (the store does not tell)."""
        self.grant(10, 7)
        self.call(self.kv.Put, pb.PutRequest(key=b"k", value=b"v", lease=7))
        self.assertEqual(list(self.node.state.lease_keys(7)), [b"k"])
        (kv,) = self.call(self.kv.Range, pb.RangeRequest(key=b"k")).kvs
        self.assertEqual((kv.value, kv.lease), (b"v", 0))

    def test_put_missing(self) -> None:
        """A put naming no such lease is etcd's "requested lease not found", and applies nothing."""
        self.refused(self.kv.Put, pb.PutRequest(key=b"k", value=b"v", lease=0x1F), NOT_FOUND, NOT_FOUND_MESSAGE)
        self.assertIsNone(self.node.state.get(b"k"))

    def test_txn(self) -> None:
        """A Txn put carries its lease; one naming no such lease refuses the transaction."""
        self.grant(10, 7)
        put = pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"1", lease=7))
        self.assertTrue(self.call(self.kv.Txn, pb.TxnRequest(success=[put])).succeeded)
        self.assertEqual(list(self.node.state.lease_keys(7)), [b"a"])
        missing = pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"1", lease=8))
        self.refused(self.kv.Txn, pb.TxnRequest(success=[missing]), NOT_FOUND, NOT_FOUND_MESSAGE)

    def test_ignore_lease(self) -> None:
        """ignore_lease is UNIMPLEMENTED, saying what to do instead."""
        message = self.refused(self.kv.Put, pb.PutRequest(key=b"k", ignore_lease=True), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("put with that lease", message)


class KeepAliveTests(LeaseHarness, SynchronousTestCase):
    """LeaseKeepAlive and LeaseTimeToLive, LeaseLeases."""

    def test_keep_alive(self) -> None:
        """Each request is answered in order with its ID and TTL; no such lease is TTL 0 (etcd's)."""
        self.grant(30, 9)
        context = self.keep_alive(9, 4, 9)
        self.assertEqual([(r.ID, r.TTL) for r in context.written], [(9, 30), (4, 0), (9, 30)])
        self.assertEqual(context.written[0].header.member_id, 1)

    def test_keep_alive_no_leader(self) -> None:
        """A keep-alive no leader answered ends the stream with etcd's "no leader"."""
        self.grant(30, 9)
        self.node.lease_failure = NotLeaderError(None)
        with self.assertRaises(Aborted) as raised:
            self.keep_alive(9)
        self.assertEqual((raised.exception.status.code, raised.exception.status.details),
                         (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"))

    def test_time_to_live(self) -> None:
        """TTL left, granted TTL and (keys) the keys; no such lease is TTL -1, grantedTTL 0."""
        self.grant(60, 9)
        self.call(self.kv.Put, pb.PutRequest(key=b"a", value=b"1", lease=9))
        self.node.remaining[9] = 59
        response = self.call(self.lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=9, keys=True))
        self.assertEqual((response.ID, response.TTL, response.grantedTTL, list(response.keys)), (9, 59, 60, [b"a"]))
        response = self.call(self.lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=10, keys=True))
        self.assertEqual((response.ID, response.TTL, response.grantedTTL, list(response.keys)), (10, -1, 0, []))

    def test_leases(self) -> None:
        """LeaseLeases lists every lease."""
        self.grant(60, 9)
        self.grant(60, 3)
        response = self.call(self.lease.LeaseLeases, pb.LeaseLeasesRequest())
        self.assertEqual([status.ID for status in response.leases], [3, 9])
