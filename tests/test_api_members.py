"""
Tests for the read-only C{Cluster.MemberList} RPC of the gRPC edge
(L{kvpaxos.api.server}): a real grpcio server on 127.0.0.1 in front of a
fake node, as in L{tests.test_api}.
"""

from __future__ import annotations

import threading

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.node.interfaces import MemberInfo, MemberView, Unavailable
from kvpaxos.v1 import kv_pb2
from tests.test_api import FakeNode, RunningServer

VIEW = MemberView(
    cluster_id=0xFEEDFACE12345678, leader=2,
    members=(
        MemberInfo(3, "voter", "127.0.0.1:32380", "127.0.0.1:32379"),
        MemberInfo(1, "voter", "127.0.0.1:12380", "127.0.0.1:2379"),
        MemberInfo(4, "learner", "127.0.0.1:42380", ""),
    ),
)


class MembersNode(FakeNode):
    """A L{FakeNode} that also lists members (C{members()} of IMembership)."""

    def __init__(self) -> None:
        super().__init__()
        self.view = VIEW
        self.error = None

    def members(self) -> MemberView:
        self._called("members")
        if self.error is not None:
            raise self.error
        return self.view


class MemberListTests(RunningServer, SynchronousTestCase):
    """C{Cluster.MemberList} lists the node's member view."""

    def start_server(self, request_timeout_s: float = 5.0):
        self.node = MembersNode()
        return super().start_server(request_timeout_s)

    def test_member_list(self) -> None:
        """Every member is listed in id order with its role and addresses, with the cluster id and leader."""
        response = self.rpc(self.cluster.MemberList, kv_pb2.MemberListRequest()).result()
        self.assertEqual((response.cluster_id, response.leader_id), (0xFEEDFACE12345678, 2))
        self.assertEqual(
            [(m.member_id, m.role, m.peer_address, m.client_address) for m in response.members],
            [(1, "voter", "127.0.0.1:12380", "127.0.0.1:2379"),
             (3, "voter", "127.0.0.1:32380", "127.0.0.1:32379"),
             (4, "learner", "127.0.0.1:42380", "")],
        )
        self.assertEqual((response.header.member_id, response.header.leader_id), (1, 2))

    def test_no_leader(self) -> None:
        """A view without a leader lists leader_id 0."""
        self.node.view = MemberView(7, None, VIEW.members)
        response = self.rpc(self.cluster.MemberList, kv_pb2.MemberListRequest()).result()
        self.assertEqual((response.cluster_id, response.leader_id), (7, 0))

    def test_called_in_reactor_thread(self) -> None:
        """The node's members() is called in the reactor thread, once, and changes nothing."""
        self.rpc(self.cluster.MemberList, kv_pb2.MemberListRequest()).result()
        self.assertEqual(self.node.calls, [("members",)])
        self.assertEqual(self.node.threads, {threading.get_ident()})

    def test_unavailable(self) -> None:
        """A node that cannot list its members answers UNAVAILABLE with the API's ErrorInfo."""
        self.node.error = Unavailable("not started yet", 3)
        call = self.rpc(self.cluster.MemberList, kv_pb2.MemberListRequest())
        self.assertStatus(call, grpc.StatusCode.UNAVAILABLE, errors.UNAVAILABLE, {errors.LEADER_ID: 3})
