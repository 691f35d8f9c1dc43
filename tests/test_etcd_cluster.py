"""
Tests for the etcd port's Cluster and Maintenance services
(L{kvpaxos.api.etcd_cluster}; Lease: tests.test_etcd_lease) in front of an in-memory node
(L{tests.test_etcd_fakes}; no port), and for the port's wiring in
L{kvpaxos.api.server.GrpcServer}: a real grpcio server on 127.0.0.1 with
ephemeral ports, as in L{tests.test_api}.
"""

from __future__ import annotations

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.endpoints import CHANNEL_OPTIONS
from kvpaxos.api.errors import Unavailable
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.node.interfaces import MemberInfo, MemberView
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc
from tests.test_api import BOUND_S, ServerFixture, ThreadedTestReactor
from tests.test_etcd_fakes import CLUSTER_ID, VIEW, EtcdHarness, EtcdNode, with_status

UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


class MemberTests(EtcdHarness, SynchronousTestCase):
    """The member list, and removal and promotion through the node."""

    def rows(self, members) -> list:
        return [(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner) for m in members]

    def test_member_list(self) -> None:
        """Every member in id order: named once started, its peer URL, its etcd URL only for this member."""
        response = self.call(self.cluster.MemberList, pb.MemberListRequest())
        self.assertEqual(self.rows(response.members), [
            (1, "node1", ["http://127.0.0.1:12380"], ["http://127.0.0.1:2479"], False),
            (3, "node3", ["http://127.0.0.1:32380"], [], False),
            (4, "", ["http://127.0.0.1:42380"], [], True),
        ])
        self.assertEqual((response.header.cluster_id, response.header.member_id, response.header.raft_term,
                          response.header.revision), (CLUSTER_ID, 1, 5, 0))

    def test_peer_scheme(self) -> None:
        """With TLS on the peer links the peer URLs say https."""
        self.calls.peer_scheme = "https"
        response = self.call(self.cluster.MemberList, pb.MemberListRequest())
        self.assertEqual(response.members[0].peerURLs, ["https://127.0.0.1:12380"])

    def test_linearizable_member_list(self) -> None:
        """A linearizable member list is UNIMPLEMENTED (the list is this member's applied set)."""
        message = self.refused(self.cluster.MemberList, pb.MemberListRequest(linearizable=True), UNIMPLEMENTED)
        self.assertIn("--consistency=s", message)

    def test_remove(self) -> None:
        """MemberRemove is the node's member_remove, not forced; it answers the members after."""
        self.node.view = MemberView(CLUSTER_ID, 1, VIEW.members[1:])
        response = self.call(self.cluster.MemberRemove, pb.MemberRemoveRequest(ID=3))
        self.assertEqual(self.node.calls, [("member_remove", 3, False)])
        self.assertEqual([m.ID for m in response.members], [1, 4])

    def test_promote(self) -> None:
        """MemberPromote is the node's member_promote."""
        self.node.view = MemberView(CLUSTER_ID, 1, VIEW.members[:2] + (MemberInfo(4, "voter", "h:1", "h:2"),))
        response = self.call(self.cluster.MemberPromote, pb.MemberPromoteRequest(ID=4))
        self.assertEqual(self.node.calls, [("member_promote", 4)])
        self.assertEqual([(m.ID, m.isLearner) for m in response.members], [(1, False), (3, False), (4, False)])

    def test_refusals(self) -> None:
        """A refused change: etcd's member-not-found or not-a-learner where they apply, else the node's sentence."""
        self.node.reject("the node's reason")
        self.refused(self.cluster.MemberRemove, pb.MemberRemoveRequest(ID=9), grpc.StatusCode.NOT_FOUND,
                     "etcdserver: member not found")
        self.refused(self.cluster.MemberPromote, pb.MemberPromoteRequest(ID=3), grpc.StatusCode.FAILED_PRECONDITION,
                     "etcdserver: can only promote a learner member")
        self.refused(self.cluster.MemberPromote, pb.MemberPromoteRequest(ID=4), grpc.StatusCode.FAILED_PRECONDITION,
                     "the node's reason")

    def test_unavailable(self) -> None:
        """A change not done in time is etcd's request timed out."""
        self.node.change = lambda: defer.fail(Unavailable("not chosen in time", 2))
        self.refused(self.cluster.MemberRemove, pb.MemberRemoveRequest(ID=3), grpc.StatusCode.UNAVAILABLE,
                     "etcdserver: request timed out")

    def test_add_and_update(self) -> None:
        """MemberAdd and MemberUpdate are UNIMPLEMENTED, saying what to do instead."""
        message = self.refused(self.cluster.MemberAdd, pb.MemberAddRequest(peerURLs=["http://h:1"]), UNIMPLEMENTED)
        self.assertIn("kvpaxos member add", message)
        self.refused(self.cluster.MemberUpdate, pb.MemberUpdateRequest(ID=1), UNIMPLEMENTED)
        self.assertEqual(self.node.calls, [])


class MaintenanceTests(EtcdHarness, SynchronousTestCase):
    """Status and the NOSPACE alarm; the rest UNIMPLEMENTED."""

    def test_status(self) -> None:
        """Status reports the node's status in etcd's fields."""
        response = self.call(self.maintenance.Status, pb.StatusRequest())
        self.assertEqual(
            (response.leader, response.raftIndex, response.raftAppliedIndex, response.raftTerm, response.dbSize,
             response.dbSizeInUse, response.dbSizeQuota, response.isLearner, list(response.errors)),
            (2, 17, 16, 5, 40960, 40960, 1 << 30, False, []))
        self.assertEqual((response.header.member_id, response.header.cluster_id), (1, CLUSTER_ID))
        self.assertTrue(response.version)

    def test_status_errors(self) -> None:
        """No leader and the NOSPACE alarm are listed in errors as etcd lists them; a learner says so."""
        self.node.node_status = with_status(leader=None, space_alarm=True, member_id=4)
        response = self.call(self.maintenance.Status, pb.StatusRequest())
        self.assertEqual(list(response.errors), ["etcdserver: no leader", "memberID:4 alarm:NOSPACE "])
        self.assertEqual((response.leader, response.isLearner), (0, True))

    def test_alarm_list(self) -> None:
        """Alarm GET lists this member's NOSPACE alarm while it is on, and nothing otherwise."""
        self.assertEqual(list(self.call(self.maintenance.Alarm, pb.AlarmRequest()).alarms), [])
        self.node.node_status = with_status(space_alarm=True)
        for alarm in (pb.NONE, pb.NOSPACE):
            response = self.call(self.maintenance.Alarm, pb.AlarmRequest(alarm=alarm))
            self.assertEqual([(a.memberID, a.alarm) for a in response.alarms], [(1, pb.NOSPACE)])
        self.assertEqual(list(self.call(self.maintenance.Alarm, pb.AlarmRequest(alarm=pb.CORRUPT)).alarms), [])

    def test_alarm_changes(self) -> None:
        """Raising or disarming an alarm is UNIMPLEMENTED (the alarm clears by itself)."""
        for action in (pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE):
            self.refused(self.maintenance.Alarm, pb.AlarmRequest(action=action, alarm=pb.NOSPACE), UNIMPLEMENTED)
        self.refused(self.maintenance.Alarm, pb.AlarmRequest(action=7), grpc.StatusCode.INVALID_ARGUMENT)

    def test_unimplemented(self) -> None:
        """Defragment, Hash, HashKV, Snapshot, MoveLeader and Downgrade answer UNIMPLEMENTED."""
        m = self.maintenance
        for method, request in ((m.Defragment, pb.DefragmentRequest()), (m.Hash, pb.HashRequest()),
                                (m.HashKV, pb.HashKVRequest()), (m.Snapshot, pb.SnapshotRequest()),
                                (m.MoveLeader, pb.MoveLeaderRequest(targetID=2)),
                                (m.Downgrade, pb.DowngradeRequest())):
            self.assertTrue(self.refused(method, request, UNIMPLEMENTED))


class EtcdPortTests(ServerFixture, SynchronousTestCase):
    """The etcd port is a server of its own beside the kvpaxos port (real grpcio, ephemeral ports)."""

    def setUp(self) -> None:
        from kvpaxos.api.server import GrpcServer

        self.reactor = ThreadedTestReactor()
        self.node = EtcdNode()
        self.server = GrpcServer(self.node, "127.0.0.1:0", self.reactor, etcd_address="127.0.0.1:0")
        self.server.startService()
        self.addCleanup(self.stop, self.server)

    def channel(self, port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self.addCleanup(channel.close)
        return channel

    def test_etcd_on_its_own_port(self) -> None:
        """etcd's KV and Cluster answer on the etcd port, with that port's URL in the member list."""
        etcd = self.channel(self.server.etcd_port)
        put = self.rpc(rpc_pb2_grpc.KVStub(etcd).Put, pb.PutRequest(key=b"k", value=b"v")).result()
        got = self.rpc(rpc_pb2_grpc.KVStub(etcd).Range, pb.RangeRequest(key=b"k")).result()
        self.assertEqual((put.header.revision, got.kvs[0].value), (2, b"v"))
        members = self.rpc(rpc_pb2_grpc.ClusterStub(etcd).MemberList, pb.MemberListRequest()).result()
        self.assertEqual(members.members[0].clientURLs, [f"http://127.0.0.1:{self.server.etcd_port}"])

    def test_apart(self) -> None:
        """The kvpaxos port does not serve etcd's API, nor the etcd port kvpaxos's."""
        kvpaxos = self.channel(self.server.port)
        etcd = self.channel(self.server.etcd_port)
        wrong = self.rpc(rpc_pb2_grpc.KVStub(kvpaxos).Range, pb.RangeRequest(key=b"k"))
        self.assertEqual(wrong.exception().code(), UNIMPLEMENTED)
        also_wrong = self.rpc(kv_pb2_grpc.KVStub(etcd).Get, kv_pb2.GetRequest(key=b"k"))
        self.assertEqual(also_wrong.exception().code(), UNIMPLEMENTED)

    def test_etcd_error_on_the_wire(self) -> None:
        """An etcd error reaches a client with etcd's code and message."""
        etcd = self.channel(self.server.etcd_port)
        call = self.rpc(rpc_pb2_grpc.KVStub(etcd).Put, pb.PutRequest(key=b"", value=b"v"), timeout_s=BOUND_S)
        self.assertEqual((call.exception().code(), call.exception().details()),
                         (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"))


class EtcdPortTLSTests(ServerFixture, SynchronousTestCase):
    """With TLS, the etcd port serves it with the client port's files."""

    def test_tls(self) -> None:
        """A TLS client reaches the etcd port, whose own URL says https; a plaintext one does not."""
        from kvpaxos.api.server import GrpcServer
        from kvpaxos.tls import TLSFiles, grpc_channel_credentials, grpc_server_credentials
        from tests.test_tls import Certificates

        certs = Certificates(self.mktemp())
        cert, key = certs.issue("node1")
        self.reactor = ThreadedTestReactor()
        files = TLSFiles(cert, key, certs.path("ca.pem"))
        server = GrpcServer(EtcdNode(), "127.0.0.1:0", self.reactor, etcd_address="127.0.0.1:0",
                            credentials=grpc_server_credentials(files, False),
                            etcd_credentials=grpc_server_credentials(files, False))
        server.startService()
        self.addCleanup(self.stop, server)
        secure = grpc.secure_channel(f"localhost:{server.etcd_port}", grpc_channel_credentials(certs.path("ca.pem")),
                                     options=CHANNEL_OPTIONS)
        self.addCleanup(secure.close)
        members = self.rpc(rpc_pb2_grpc.ClusterStub(secure).MemberList, pb.MemberListRequest()).result()
        self.assertEqual(members.members[0].clientURLs, [f"https://127.0.0.1:{server.etcd_port}"])
        plain = grpc.insecure_channel(f"127.0.0.1:{server.etcd_port}", options=CHANNEL_OPTIONS)
        self.addCleanup(plain.close)
        refused = self.rpc(rpc_pb2_grpc.ClusterStub(plain).MemberList, pb.MemberListRequest(), timeout_s=2)
        self.assertEqual(refused.exception().code(), grpc.StatusCode.UNAVAILABLE)


class NoEtcdPortTests(SynchronousTestCase):
    """Without an etcd address no etcd port is served."""

    def test_off_by_default(self) -> None:
        """A server given no etcd address has no etcd port."""
        from kvpaxos.api.server import GrpcServer

        server = GrpcServer(EtcdNode(), "127.0.0.1:0", ThreadedTestReactor())
        self.assertEqual((server.etcd_address, server.etcd_port), (None, None))
