"""
Tests for C{kvpaxos.v1.Lease} and leases on C{kvpaxos.v1.KV} at the gRPC
edge (L{kvpaxos.api.lease_servicer}, L{kvpaxos.api.servicers},
L{kvpaxos.api.statuses.lease_refused}): a real grpcio server on 127.0.0.1
in front of L{LeaseNode}, a L{tests.test_api.FakeNode} with the node's
lease calls over the real state machine; no reactor, nothing sleeps.
"""

from __future__ import annotations

import threading

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors, statuses
from kvpaxos.api.server import LEASE_SERVICE, SERVICE_NAMES
from kvpaxos.kv.commands import MAX_LEASE_ID, MAX_LEASE_TTL, InvalidArgument, Op, Request, validate_request
from kvpaxos.kv.leases import LeaseError, LeaseRefused
from kvpaxos.node.interfaces import NotLeaderError
from kvpaxos.node.leases import LeaseTime
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc, lease_pb2, lease_pb2_grpc
from tests.test_api import BOUND_S, FakeNode, RunningServer, ThreadedTestReactor

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class LeaseNode(FakeNode):
    """
    A L{FakeNode} with the node's lease calls (L{kvpaxos.node.lease_calls}):
    grants and revokes go through the real state machine (a TTL under
    C{min_ttl} raised to it; id 0: C{next_id}, then the next); keep-alives
    and time-to-live read the lease table, C{remaining[id]} (default its
    TTL) the time left.  C{lease_failure}, when set, is raised by every
    at-the-leader call.
    """

    min_ttl = 2

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 100
        self.remaining: dict[int, int] = {}
        self.lease_failure = None

    def _submitted(self, request: Request) -> defer.Deferred:
        try:
            validate_request(request)
        except InvalidArgument:
            return defer.fail()
        return defer.succeed(self._apply(request))

    def lease_grant(self, ttl: int, timeout_s: float, lease_id: int = 0, credential=None) -> defer.Deferred:
        self._called("lease_grant", ttl, lease_id, credential)
        if lease_id == 0:
            lease_id, self.next_id = self.next_id, self.next_id + 1
        return self._submitted(Request(Op.LEASE_GRANT, lease=lease_id, ttl=max(ttl, self.min_ttl)))

    def lease_revoke(self, lease_id: int, timeout_s: float, credential=None) -> defer.Deferred:
        self._called("lease_revoke", lease_id, credential)
        return self._submitted(Request(Op.LEASE_REVOKE, lease=lease_id))

    def _ttl(self, lease_id: int):
        return self.state.lease_ttl(lease_id) if 1 <= lease_id <= MAX_LEASE_ID else None

    def lease_keep_alive(self, lease_id: int) -> defer.Deferred:
        self._called("lease_keep_alive", lease_id)
        if self.lease_failure is not None:
            return defer.fail(self.lease_failure)
        return defer.succeed(self._ttl(lease_id) or 0)

    def lease_time_to_live(self, lease_id: int) -> defer.Deferred:
        self._called("lease_time_to_live", lease_id)
        if self.lease_failure is not None:
            return defer.fail(self.lease_failure)
        ttl = self._ttl(lease_id)
        return defer.succeed(None if ttl is None else LeaseTime(ttl, self.remaining.get(lease_id, ttl)))

    def lease_list(self) -> defer.Deferred:
        self._called("lease_list")
        return defer.succeed([lease for lease, _ in self.state.lease_items()])

    def lease_keys(self, lease_id: int, credential=None) -> defer.Deferred:
        self._called("lease_keys", lease_id, credential)
        return defer.succeed(list(self.state.lease_keys(lease_id)))

    def names(self) -> list:
        """The calls made, by name."""
        return [call[0] for call in self.calls]


class LeaseServer(RunningServer):
    """A started server in front of a fresh L{LeaseNode}, with KV and Lease stubs."""

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.node = LeaseNode()
        self.server = self.start_server(self.request_timeout_s)
        self.channel = self.connect(self.server)
        self.kv = kv_pb2_grpc.KVStub(self.channel)
        self.lease = lease_pb2_grpc.LeaseStub(self.channel)

    def grant(self, ttl: int = 10, lease_id: int = 0) -> lease_pb2.LeaseGrantResponse:
        return self.rpc(self.lease.Grant, lease_pb2.LeaseGrantRequest(ttl=ttl, id=lease_id)).result()

    def keep_alive(self, *ids: int) -> tuple[list, object]:
        """Send one KeepAlive stream of C{ids}; return the answers and the stream's error (or None)."""
        answers: list = []
        outcome: dict = {}

        def consume() -> None:
            try:
                for answer in self.lease.KeepAlive(iter([lease_pb2.LeaseKeepAliveRequest(id=i) for i in ids]),
                                                   timeout=BOUND_S):
                    answers.append(answer)
            except grpc.RpcError as error:
                outcome["error"] = error
            finally:
                outcome["done"] = True
                self.reactor.wake()

        threading.Thread(target=consume, daemon=True).start()
        self.reactor.pump_until(lambda: "done" in outcome)
        return answers, outcome.get("error")


class GrantRevokeTests(LeaseServer, SynchronousTestCase):
    """Grant and Revoke: log commands through the node; the state machine's refusals as statuses."""

    def test_grant(self) -> None:
        """Grant answers the id and the TTL the node granted (raised to its minimum); the header its revision."""
        response = self.grant(ttl=1)
        self.assertEqual((response.id, response.ttl, response.header.member_id, response.header.leader_id),
                         (100, LeaseNode.min_ttl, 1, 2))
        self.assertEqual(self.node.calls[0], ("lease_grant", 1, 0, None))
        self.assertEqual(self.node.state.lease_ttl(100), LeaseNode.min_ttl)

    def test_grant_chosen_id(self) -> None:
        """A grant of a chosen id makes that lease."""
        self.assertEqual(self.grant(30, 0x694D5765FC71500B).id, 0x694D5765FC71500B)
        self.assertEqual(self.node.state.lease_ttl(0x694D5765FC71500B), 30)

    def test_grant_exists(self) -> None:
        """A grant of an id in use is FAILED_PRECONDITION LEASE_EXISTS, naming the lease; nothing changes."""
        self.grant(10, 7)
        call = self.rpc(self.lease.Grant, lease_pb2.LeaseGrantRequest(ttl=20, id=7))
        details = self.assertStatus(call, grpc.StatusCode.FAILED_PRECONDITION, errors.LEASE_EXISTS,
                                    {errors.LEASE_ID: 7, errors.MEMBER_ID: 1})
        self.assertTrue(details.startswith("lease already exists: lease 7 (0000000000000007)"), details)
        self.assertEqual(self.node.state.lease_ttl(7), 10)

    def test_grant_out_of_range(self) -> None:
        """A TTL under 1 or over the maximum, or a negative id, is INVALID_ARGUMENT and never reaches the node."""
        for ttl, lease_id in ((0, 0), (-5, 0), (MAX_LEASE_TTL + 1, 0), (10, -1)):
            call = self.rpc(self.lease.Grant, lease_pb2.LeaseGrantRequest(ttl=ttl, id=lease_id))
            self.assertStatus(call, INVALID, errors.INVALID_ARGUMENT)
        self.assertEqual(self.node.calls, [])

    def test_revoke(self) -> None:
        """Revoke deletes the lease's keys in one revision and answers how many."""
        self.grant(10, 5)
        for key in (b"a", b"b"):
            self.rpc(self.kv.Put, kv_pb2.PutRequest(key=key, value=b"v", lease=5)).result()
        response = self.rpc(self.lease.Revoke, lease_pb2.LeaseRevokeRequest(id=5)).result()
        self.assertEqual((response.deleted, response.header.revision), (2, 3))
        self.assertEqual((self.node.state.get(b"a"), self.node.state.lease_ttl(5)), (None, None))

    def test_revoke_missing(self) -> None:
        """A revoke of no such lease is NOT_FOUND LEASE_NOT_FOUND; of id 0, INVALID_ARGUMENT."""
        details = self.assertStatus(self.rpc(self.lease.Revoke, lease_pb2.LeaseRevokeRequest(id=31)), NOT_FOUND,
                                    errors.LEASE_NOT_FOUND, {errors.LEASE_ID: 31})
        self.assertEqual(details, "requested lease not found: lease 31 (000000000000001f) does not exist (never "
                                  "granted, revoked, or expired); nothing was applied")
        self.assertStatus(self.rpc(self.lease.Revoke, lease_pb2.LeaseRevokeRequest(id=0)), INVALID)

    def test_unavailable(self) -> None:
        """A node that cannot reach a leader makes Grant UNAVAILABLE NOT_LEADER, naming the leader."""
        self.node.lease_grant = lambda *args, **kwargs: defer.fail(NotLeaderError(3))
        self.assertStatus(self.rpc(self.lease.Grant, lease_pb2.LeaseGrantRequest(ttl=5)), grpc.StatusCode.UNAVAILABLE,
                          errors.NOT_LEADER, {errors.LEADER_ID: 3})


class PutLeaseTests(LeaseServer, SynchronousTestCase):
    """PutRequest.lease, alone and in a Txn."""

    def test_put_attaches(self) -> None:
        """A put with a lease attaches its key; a later put without one detaches it."""
        self.grant(10, 9)
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", lease=9)).result()
        (call,) = [c for c in self.node.calls if c[0] == "submit"]
        self.assertEqual(call[1], Request(Op.PUT, b"k", b"v", lease=9))
        self.assertEqual(list(self.node.state.lease_keys(9)), [b"k"])
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"w")).result()
        self.assertEqual(list(self.node.state.lease_keys(9)), [])

    def test_put_missing_lease(self) -> None:
        """A put naming no such lease is NOT_FOUND LEASE_NOT_FOUND, and applies nothing."""
        call = self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", lease=12))
        self.assertStatus(call, NOT_FOUND, errors.LEASE_NOT_FOUND, {errors.LEASE_ID: 12})
        self.assertEqual((self.node.state.get(b"k"), self.node.state.revision()), (None, 0))

    def test_put_bad_lease(self) -> None:
        """A negative lease is INVALID_ARGUMENT before the node."""
        self.assertStatus(self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"k", value=b"v", lease=-1)), INVALID)
        self.assertEqual(self.node.calls, [])

    def test_txn(self) -> None:
        """A Txn put carries its lease; one naming no such lease refuses the whole transaction."""
        self.grant(10, 4)
        op = kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"a", value=b"1", lease=4))
        self.assertTrue(self.rpc(self.kv.Txn, kv_pb2.TxnRequest(success=[op])).result().succeeded)
        self.assertEqual(list(self.node.state.lease_keys(4)), [b"a"])
        ops = [kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"b", value=b"2")),
               kv_pb2.RequestOp(request_put=kv_pb2.PutRequest(key=b"c", value=b"3", lease=44))]
        self.assertStatus(self.rpc(self.kv.Txn, kv_pb2.TxnRequest(success=ops)), NOT_FOUND, errors.LEASE_NOT_FOUND)
        self.assertIsNone(self.node.state.get(b"b"))


class KeepAliveTests(LeaseServer, SynchronousTestCase):
    """KeepAlive: each request answered in order; TTL 0 for no such lease; a failure ends the stream."""

    def test_keep_alive(self) -> None:
        """Every request is answered with its id and the lease's TTL (0: no such lease), in order."""
        self.grant(15, 3)
        answers, error = self.keep_alive(3, 8, 3)
        self.assertIsNone(error)
        self.assertEqual([(a.id, a.ttl) for a in answers], [(3, 15), (8, 0), (3, 15)])
        self.assertEqual(answers[0].header.member_id, 1)
        self.assertEqual([c for c in self.node.calls if c[0] == "lease_keep_alive"],
                         [("lease_keep_alive", 3), ("lease_keep_alive", 8), ("lease_keep_alive", 3)])

    def test_failure_ends_stream(self) -> None:
        """A keep-alive the node could not confirm ends the stream UNAVAILABLE with its reason."""
        self.grant(15, 3)
        self.node.lease_failure = NotLeaderError(2)
        answers, error = self.keep_alive(3, 3)
        self.assertEqual(answers, [])
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(errors.error_details(error).reason, errors.NOT_LEADER)

    def test_empty(self) -> None:
        """A stream that sends nothing ends OK."""
        self.assertEqual(self.keep_alive(), ([], None))


class TimeToLiveTests(LeaseServer, SynchronousTestCase):
    """TimeToLive and Leases."""

    def test_time_to_live(self) -> None:
        """TTL left and granted, and with keys the lease's keys (from this member's store)."""
        self.grant(60, 6)
        self.rpc(self.kv.Put, kv_pb2.PutRequest(key=b"x", value=b"1", lease=6)).result()
        self.node.remaining[6] = 42
        response = self.rpc(self.lease.TimeToLive, lease_pb2.LeaseTimeToLiveRequest(id=6, keys=True)).result()
        self.assertEqual((response.id, response.ttl, response.granted_ttl, list(response.keys)), (6, 42, 60, [b"x"]))
        response = self.rpc(self.lease.TimeToLive, lease_pb2.LeaseTimeToLiveRequest(id=6)).result()
        self.assertEqual(list(response.keys), [])
        self.assertEqual(self.node.names().count("lease_keys"), 1)

    def test_missing(self) -> None:
        """No such lease answers TTL -1, granted TTL 0 (not an error); its keys are not read."""
        response = self.rpc(self.lease.TimeToLive, lease_pb2.LeaseTimeToLiveRequest(id=77, keys=True)).result()
        self.assertEqual((response.id, response.ttl, response.granted_ttl), (77, -1, 0))
        self.assertNotIn("lease_keys", self.node.names())

    def test_leases(self) -> None:
        """Leases lists every lease id in ascending order."""
        for lease_id in (30, 4, 500):
            self.grant(10, lease_id)
        self.assertEqual(list(self.rpc(self.lease.Leases, lease_pb2.LeasesRequest()).result().ids), [4, 30, 500])


class StatusTests(SynchronousTestCase):
    """L{statuses.lease_refused} and the service's name."""

    def test_refusals(self) -> None:
        """A LeaseRefused is a refusal: NOT_FOUND or FAILED_PRECONDITION with its reason and lease id."""
        self.assertIn(LeaseRefused, statuses.REFUSALS)
        missing = statuses.status_for(LeaseRefused(LeaseError.NOT_FOUND, 0x1F, 3))
        exists = statuses.status_for(LeaseRefused(LeaseError.EXISTS, 5, 3))
        self.assertEqual((missing.code, missing.reason, missing.metadata),
                         (NOT_FOUND, errors.LEASE_NOT_FOUND, {errors.LEASE_ID: 0x1F}))
        self.assertEqual((exists.code, exists.reason), (grpc.StatusCode.FAILED_PRECONDITION, errors.LEASE_EXISTS))
        for reason in (errors.LEASE_NOT_FOUND, errors.LEASE_EXISTS):
            self.assertIn(reason, errors.REASONS)

    def test_served(self) -> None:
        """The server offers kvpaxos.v1.Lease (listed for reflection)."""
        self.assertEqual(LEASE_SERVICE, "kvpaxos.v1.Lease")
        self.assertIn(LEASE_SERVICE, SERVICE_NAMES)
