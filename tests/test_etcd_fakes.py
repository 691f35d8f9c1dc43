"""
What the etcd port's unit tests share (tests/test_etcd_*.py; no tests
here): an in-memory node (L{EtcdNode}: the real state machine, as
L{tests.test_api.FakeNode}, with a status, a member view and membership
calls), a fake grpc.aio context, and L{EtcdHarness}, which runs one etcd
servicer method as a coroutine on a loop of its own in the test thread.
No port, no thread, no reactor: the crossing's C{callFromThread} runs the drain at once, so the
node is called synchronously and every test is deterministic.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Optional

import grpc
from twisted.internet import defer

from kvpaxos.api.crossing import LoopPost, ReactorCrossing
from kvpaxos.api.etcd import EtcdCalls
from kvpaxos.api.etcd_cluster import ClusterServicer, MaintenanceServicer
from kvpaxos.api.etcd_kv import KVServicer
from kvpaxos.api.etcd_lease import LeaseServicer
from kvpaxos.api.etcd_watch import WatchServicer
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.kv.commands import Range, Request
from kvpaxos.node.interfaces import MemberInfo, MembershipRejected, MemberView, NodeStatus
from tests.test_api import FakeNode

CLUSTER_ID = 0xFEEDFACE12345678
VIEW = MemberView(
    cluster_id=CLUSTER_ID, leader=2,
    members=(
        MemberInfo(3, "voter", "127.0.0.1:32380", "127.0.0.1:32379"),
        MemberInfo(1, "voter", "127.0.0.1:12380", "127.0.0.1:2379"),
        MemberInfo(4, "learner", "127.0.0.1:42380", ""),
    ),
)
STATUS = NodeStatus(member_id=1, role="follower", leader=2, voters=(1, 2, 3), learners=(4,),
                    chosen_index=17, applied_index=16, ballot_round=5, used_bytes=40960,
                    quota_bytes=1 << 30)


class EtcdNode(FakeNode):
    """
    A L{FakeNode} that takes credentials (recorded in C{credentials}), has
    a settable C{node_status} and member C{view}, and membership calls
    that answer C{change} (a callable returning a Deferred; by default the
    view).
    """

    def __init__(self) -> None:
        super().__init__()
        self.node_status = STATUS
        self.view = VIEW
        self.credentials: list = []
        self.change = None

    def submit(self, request: Request, timeout_s: float, credential=None):
        self.credentials.append(credential)
        return super().submit(request, timeout_s)

    def range(self, query: Range, timeout_s: float, consistency: str = "linearizable", credential=None):
        self.credentials.append(credential)
        return super().range(query, timeout_s, consistency)

    def status(self) -> NodeStatus:
        return self.node_status

    def members(self) -> MemberView:
        return self.view

    def _changed(self, *call):
        self._called(*call)
        if self.change is not None:
            return self.change()
        return defer.succeed(self.view)

    def member_remove(self, node_id: int, force: bool, timeout_s: float):
        return self._changed("member_remove", node_id, force)

    def member_promote(self, node_id: int, timeout_s: float):
        return self._changed("member_promote", node_id)

    def reject(self, message: str) -> None:
        """Make membership changes fail as the node refuses them."""
        self.change = lambda: defer.fail(MembershipRejected(message))


class Aborted(Exception):
    """The handler aborted its RPC with C{status}."""

    def __init__(self, status) -> None:
        super().__init__(status.code, status.details)
        self.status = status


class FakeContext:
    """The parts of a grpc.aio servicer context the etcd handlers use."""

    def __init__(self, metadata=()) -> None:
        self.metadata = tuple(metadata)

    def time_remaining(self) -> Optional[float]:
        return None

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        return {}

    async def abort_with_status(self, status) -> None:
        raise Aborted(status)


class ImmediateReactor:
    """C{callFromThread} that calls at once: the test thread is the reactor thread."""

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)


class Counts:
    """A metrics stand-in: every answered request's (method, code)."""

    def __init__(self) -> None:
        self.seen: list = []

    def grpc_request(self, method: str, code: str) -> None:
        self.seen.append((method, code))


class EtcdHarness:
    """Mixed into a SynchronousTestCase: a fresh L{EtcdNode} and the etcd servicers in front of it."""

    def setUp(self) -> None:
        super().setUp()
        self.node = self.make_node()
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.calls = EtcdCalls(self.node, ReactorCrossing(ImmediateReactor()), 5.0)
        self.calls.post = LoopPost(self.loop)
        self.calls.client_urls = ("http://127.0.0.1:2479",)
        self.counts = Counts()
        self.calls.metrics = self.counts
        self.kv = KVServicer(self.node, self.calls)
        self.cluster = ClusterServicer(self.node, self.calls)
        self.maintenance = MaintenanceServicer(self.node, self.calls)
        self.watch = WatchServicer(self.node, self.calls)
        self.lease = LeaseServicer(self.node, self.calls)

    def make_node(self) -> EtcdNode:
        """The node the servicers are in front of (a test case may make another)."""
        return EtcdNode()

    def call(self, method, request, metadata=()):
        """Run C{method(request, context)} to its end; return its response (raises L{Aborted})."""
        return self.loop.run_until_complete(method(request, FakeContext(metadata)))

    def refused(self, method, request, code: grpc.StatusCode, message: Optional[str] = None) -> str:
        """Assert that C{method(request)} aborts with C{code} (and C{message}, exactly); return the message."""
        try:
            self.call(method, request)
        except Aborted as aborted:
            self.assertEqual(aborted.status.code, code, aborted.status.details)
            if message is not None:
                self.assertEqual(aborted.status.details, message)
            return aborted.status.details
        self.fail(f"{method.__name__} did not abort")

    def put(self, key: bytes, value: bytes = b"v") -> pb.PutResponse:
        return self.call(self.kv.Put, pb.PutRequest(key=key, value=value))

    def submitted(self) -> list:
        """The requests the node was given to submit, in order."""
        return [call[1] for call in self.node.calls if call[0] == "submit"]


def with_status(**changes) -> NodeStatus:
    """L{STATUS} with C{changes}."""
    return replace(STATUS, **changes)
