"""
Tests for the etcd port's Cluster and Maintenance services
(L{kvpaxos.api.etcd_cluster}; Lease: tests.test_etcd_lease) in front of an in-memory node
(L{tests.test_etcd_fakes}; no port), and for the port's wiring in
L{kvpaxos.api.server.GrpcServer}: a real grpcio server on 127.0.0.1 with
ephemeral ports, as in L{tests.test_api}.
"""

from __future__ import annotations

import asyncio
import hashlib
import io

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.backup import CHUNK_BYTES_MAX, ETCD_SECTOR_BYTES, SnapshotHeader, read_snapshot
from kvpaxos.api.endpoints import CHANNEL_OPTIONS
from kvpaxos.api.errors import PermissionDenied, Unavailable
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.kv.auth import Credential
from kvpaxos.node.backups import BackupReader, Interrupted
from kvpaxos.node.interfaces import MemberInfo, MemberView
from kvpaxos.storage.staging import StreamInterrupted
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc
from tests.test_api import BOUND_S, ServerFixture, ThreadedTestReactor
from tests.test_etcd_fakes import CLUSTER_ID, VIEW, Aborted, EtcdHarness, EtcdNode, FakeContext, with_status

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
        """Defragment, Hash, HashKV, MoveLeader and Downgrade answer UNIMPLEMENTED."""
        m = self.maintenance
        for method, request in ((m.Defragment, pb.DefragmentRequest()), (m.Hash, pb.HashRequest()),
                                (m.HashKV, pb.HashKVRequest()), (m.MoveLeader, pb.MoveLeaderRequest(targetID=2)),
                                (m.Downgrade, pb.DowngradeRequest())):
            self.assertTrue(self.refused(method, request, UNIMPLEMENTED))


HEADER = SnapshotHeader(member_id=1, cluster_id=CLUSTER_ID, index=40, revision=33, next_client_id=5,
                        members=[{"id": 1, "role": "voter", "peer": "h:1", "client": "h:2"}], saved_at="now")


class BackupNode(EtcdNode):
    """
    An L{EtcdNode} with a node's backup calls over a list of chunks: each
    call is recorded in C{calls}; C{open_failure} fails the open;
    C{read_failure} fails a read once C{chunks} are all read; C{pending}
    (a Deferred or None) is what the open answers instead of the stream.
    """

    def __init__(self, chunks) -> None:
        super().__init__()
        self.chunks = list(chunks)
        self.stream = object()
        self.open_failure = None
        self.read_failure = None
        self.pending = None

    def open_backup_for(self, credential):
        self._called("open_backup_for", credential)
        if self.open_failure is not None:
            return defer.fail(self.open_failure)
        if self.pending is not None:
            return self.pending
        return defer.succeed((self.stream, HEADER))

    def read_backup(self, stream, max_bytes: int):
        self._called("read_backup", stream is self.stream, max_bytes)
        if self.chunks:
            return defer.succeed(self.chunks.pop(0))
        if self.read_failure is not None:
            return defer.fail(self.read_failure)
        return defer.succeed(None)

    def close_backup(self, stream):
        self._called("close_backup", stream is self.stream)
        return defer.succeed(None)

    def closes(self) -> list:
        return [call for call in self.calls if call[0] == "close_backup"]


class WritingContext(FakeContext):
    """A server-streaming context: C{written} holds every message; C{gone_after} messages, the client goes."""

    def __init__(self, metadata=(), gone_after=None) -> None:
        super().__init__(metadata)
        self.written: list = []
        self.gone_after = gone_after

    async def write(self, message) -> None:
        if self.gone_after is not None and len(self.written) >= self.gone_after:
            raise asyncio.CancelledError()
        self.written.append(message)


class SnapshotTests(EtcdHarness, SynchronousTestCase):
    """Maintenance.Snapshot: the backup file of kvpaxos snapshot save, in the envelope etcdctl keeps."""

    chunks = [b"a" * 10, b"b" * CHUNK_BYTES_MAX, b"c" * 777]

    def make_node(self) -> BackupNode:
        return BackupNode(self.chunks)

    def snapshot(self, context) -> list:
        self.loop.run_until_complete(self.maintenance.Snapshot(pb.SnapshotRequest(), context))
        return context.written

    def test_stream(self) -> None:
        """The blobs make a backup file of every chunk, padded to 512 bytes, then its SHA-256 alone, as etcd sends it."""
        written = self.snapshot(WritingContext())
        data = b"".join(m.blob for m in written)
        self.assertEqual(len(data) % ETCD_SECTOR_BYTES, 32)  # etcdctl's hasChecksum
        self.assertEqual(written[-1].blob, hashlib.sha256(data[:-32]).digest())
        header, chunks = read_snapshot(io.BytesIO(data))
        self.assertEqual((header, list(chunks)), (HEADER, self.chunks))
        reads = [call for call in self.node.calls if call[0] == "read_backup"]
        self.assertEqual(reads, [("read_backup", True, CHUNK_BYTES_MAX)] * (len(self.chunks) + 1))
        self.assertEqual(self.node.closes(), [])  # the store closed it at its end
        self.assertEqual(self.counts.seen, [("etcdserverpb.Maintenance/Snapshot", "OK")])

    def test_remaining_bytes(self) -> None:
        """remaining_bytes: exact for the last two messages (0 for the checksum), never more than follows, never 0 before."""
        written = self.snapshot(WritingContext())
        sizes = [len(m.blob) for m in written]
        follows = [sum(sizes[i + 1:]) for i in range(len(sizes))]
        remaining = [m.remaining_bytes for m in written]
        self.assertEqual(remaining[-2:], follows[-2:])
        self.assertEqual(remaining[-1], 0)
        for said, true in zip(remaining[:-2], follows[:-2]):
            self.assertTrue(0 < said <= true, (said, true))

    def test_empty_state(self) -> None:
        """A state of no chunks is still a whole file in the envelope."""
        self.node.chunks = []
        data = b"".join(m.blob for m in self.snapshot(WritingContext()))
        self.assertEqual(len(data) % ETCD_SECTOR_BYTES, 32)
        self.assertEqual(list(read_snapshot(io.BytesIO(data))[1]), [])

    def test_credential(self) -> None:
        """The request's token reaches the node's open; a refusal is etcd's permission denied, and nothing is sent."""
        self.node.open_failure = PermissionDenied("etcdserver: permission denied")
        context = WritingContext(metadata=(("token", "t0k"),))
        error = self.assertRaises(Aborted, self.snapshot, context)
        self.assertEqual((error.status.code, error.status.details),
                         (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"))
        self.assertEqual(self.node.calls, [("open_backup_for", Credential(token="t0k"))])
        self.assertEqual(context.written, [])

    def test_interrupted(self) -> None:
        """A read that stops (the map grew) ends the call UNAVAILABLE, saying to save again; the stream is closed once."""
        self.node.read_failure = StreamInterrupted("the LMDB map grew under the snapshot stream")
        error = self.assertRaises(Aborted, self.snapshot, WritingContext())
        self.assertEqual(error.status.code, grpc.StatusCode.UNAVAILABLE)
        self.assertIn("save again", error.status.details)
        self.assertEqual(self.node.closes(), [("close_backup", True)])

    def test_client_gone(self) -> None:
        """A client that goes mid-stream has its stream closed, once, and nothing more read."""
        context = WritingContext(gone_after=1)
        self.assertRaises(asyncio.CancelledError, self.snapshot, context)
        self.assertEqual(len(context.written), 1)
        self.assertEqual(self.node.closes(), [("close_backup", True)])
        self.assertEqual(len([c for c in self.node.calls if c[0] == "read_backup"]), 2)  # the look-ahead


class BackupReaderTests(SynchronousTestCase):
    """L{BackupReader}: the read transaction is closed exactly once, whenever its client goes."""

    def setUp(self) -> None:
        self.node = BackupNode([b"x"])

    def test_close_while_opening(self) -> None:
        """A close during the open closes the stream when it opens; the open fails UNAVAILABLE."""
        self.node.pending = defer.Deferred()
        reader = BackupReader(self.node, None)
        opened = reader.open()
        reader.close()
        self.assertEqual(self.node.closes(), [])
        self.node.pending.callback((self.node.stream, HEADER))
        self.failureResultOf(opened, Unavailable)
        self.assertEqual(self.node.closes(), [("close_backup", True)])
        reader.close()
        self.assertEqual(self.node.closes(), [("close_backup", True)])

    def test_close_while_reading(self) -> None:
        """A close during a read closes the stream once the read ends; a read after a close is Interrupted."""
        reading = defer.Deferred()
        self.node.read_backup = lambda stream, max_bytes: reading
        reader = BackupReader(self.node, None)
        self.assertEqual(self.successResultOf(reader.open()), HEADER)
        read = reader.read(100)
        reader.close()
        self.assertEqual(self.node.closes(), [])
        reading.callback(b"x")
        self.assertEqual(self.successResultOf(read), b"x")
        self.assertEqual(self.node.closes(), [("close_backup", True)])
        self.assertIsInstance(self.successResultOf(reader.read(100)), Interrupted)

    def test_open_failure(self) -> None:
        """An open the store cannot do is UNAVAILABLE; a refusal (auth) stays what it is."""
        self.node.open_failure = OSError("no space")
        self.failureResultOf(BackupReader(self.node, None).open(), Unavailable)
        self.flushLoggedErrors(OSError)
        self.node.open_failure = PermissionDenied("etcdserver: permission denied")
        self.failureResultOf(BackupReader(self.node, None).open(), PermissionDenied)


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
