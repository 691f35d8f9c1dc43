"""
etcd's C{Cluster} and C{Maintenance} services on the etcd port
(L{kvpaxos.api.etcd}; C{Watch} is L{kvpaxos.api.etcd_watch}, C{Lease}
L{kvpaxos.api.etcd_lease}).

Served: C{MemberList} (the answering member's applied member set, as
kvpaxos.v1's), C{MemberRemove} and C{MemberPromote} (the node's
membership calls, L{kvpaxos.node.interfaces.IMembership}, carried to the
leader by the node), C{Status} (the node's C{status()}) and C{Alarm} GET
(this member's NOSPACE alarm) and C{Snapshot} (below).  Everything else
answers UNIMPLEMENTED with a sentence saying what to do instead; the list
is README.md's ("etcd's API").  Nothing here decides anything: the node
does.

C{Snapshot} streams what C{kvpaxos snapshot save} would write (the file of
L{kvpaxos.api.backup}: one consistent read of this member's state, read
through a L{kvpaxos.node.backups.BackupReader}), in etcd's envelope (zero
padding to 512 bytes, then a SHA-256 of all before it, in a message of its
own as etcd sends it), because etcdctl keeps only a file of N * 512 + 32
bytes.  So C{etcdctl snapshot save FILE} saves a file that C{kvpaxos
snapshot restore} restores; it is not a bbolt file (etcdctl's C{snapshot
status} and C{restore} cannot read it).  C{remaining_bytes} is exact from
the last chunk on, and before it a lower bound (the total is not known
until the read transaction is read through): never 0 before the checksum.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from kvpaxos.api import etcd_convert as convert
from kvpaxos.api import etcd_errors
from kvpaxos.api.backup import CHUNK_BYTES_MAX, EtcdEnvelope, SnapshotWriter
from kvpaxos.api.etcd_errors import etcd_rpc, invalid, refuse, unimplemented
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.node.backups import BackupReader, Interrupted
from kvpaxos.node.interfaces import MembershipRejected

#: The version the etcd port reports in C{Status}: the etcd API release
#: whose calls it answers as etcd does (clients read it as etcd's).
ETCD_VERSION = "3.4.0"
#: The longest a Snapshot stream waits for its client to take one message
#: before it gives up (and closes the read transaction, which pins pages):
#: the admin port's idle limit for the same stream.
SNAPSHOT_WRITE_S = 30.0
#: The fewest bytes that follow the last chunk read: the end marker, the
#: file's checksum and etcd's.
_TAIL_BYTES_MIN = 4 + 32 + 32


@dataclass(frozen=True)
class _Rejected:
    """The node refused a membership change (nothing changed): its sentence and the member view then."""

    message: str
    view: object


def _changed(node, d):
    """C{d}, a membership change's Deferred, with a refusal as a L{_Rejected} result (in the reactor)."""

    def rejected(failure):
        failure.trap(MembershipRejected)
        return _Rejected(failure.getErrorMessage(), node.members())

    return d.addErrback(rejected)


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    """C{etcdserverpb.Cluster}: the member list, and removal and promotion through the node."""

    def __init__(self, node, calls) -> None:
        self._node = node
        self._calls = calls

    def _members(self, view, header) -> list:
        return convert.members(view, header.member_id, self._calls.client_urls, self._calls.peer_scheme)

    @etcd_rpc("Cluster")
    async def MemberList(self, request: pb.MemberListRequest, context) -> pb.MemberListResponse:
        if request.linearizable:
            unimplemented("a linearizable member list is not supported yet: ask for a serializable one "
                          "(etcdctl member list --consistency=s), this member's applied member set")
        view, header = await self._calls.call(context, lambda timeout_s: self._node.members())
        return pb.MemberListResponse(header=header, members=self._members(view, header))

    @etcd_rpc("Cluster")
    async def MemberAdd(self, request: pb.MemberAddRequest, context) -> pb.MemberAddResponse:
        unimplemented("MemberAdd is not supported on the etcd port: kvpaxos member ids are chosen by the "
                      "operator; add a learner with the admin CLI (kvpaxos member add ID --peer HOST:PORT "
                      "--client HOST:PORT), then promote it (MemberPromote, or kvpaxos member promote ID)")

    @etcd_rpc("Cluster")
    async def MemberUpdate(self, request: pb.MemberUpdateRequest, context) -> pb.MemberUpdateResponse:
        unimplemented("MemberUpdate is not supported: a kvpaxos member's peer address does not change; "
                      "remove the member and add it again with its new address")

    @etcd_rpc("Cluster")
    async def MemberRemove(self, request: pb.MemberRemoveRequest, context) -> pb.MemberRemoveResponse:
        outcome, header = await self._calls.call(context, lambda timeout_s: _changed(
            self._node, self._node.member_remove(request.ID, False, timeout_s)))
        self._refused(outcome, request.ID, promote=False)
        return pb.MemberRemoveResponse(header=header, members=self._members(outcome, header))

    @etcd_rpc("Cluster")
    async def MemberPromote(self, request: pb.MemberPromoteRequest, context) -> pb.MemberPromoteResponse:
        outcome, header = await self._calls.call(context, lambda timeout_s: _changed(
            self._node, self._node.member_promote(request.ID, timeout_s)))
        self._refused(outcome, request.ID, promote=True)
        return pb.MemberPromoteResponse(header=header, members=self._members(outcome, header))

    @staticmethod
    def _refused(outcome, member_id: int, promote: bool) -> None:
        """
        A refused change in etcd's words where etcd has them (chosen from
        the member view at the refusal: data, not the node's sentence): not
        a member, or promoting a voter; else FAILED_PRECONDITION with the
        node's sentence.
        """
        if type(outcome) is not _Rejected:
            return
        roles = {m.id: m.role for m in outcome.view.members}
        if member_id not in roles:
            refuse(etcd_errors.MEMBER_NOT_FOUND)
        if promote and roles[member_id] != "learner":
            refuse(etcd_errors.MEMBER_NOT_LEARNER)
        refuse((grpc.StatusCode.FAILED_PRECONDITION, outcome.message))


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    """C{etcdserverpb.Maintenance}: C{Status}, C{Alarm} GET and C{Snapshot}; the rest UNIMPLEMENTED."""

    def __init__(self, node, calls) -> None:
        self._node = node
        self._calls = calls

    @etcd_rpc("Maintenance")
    async def Status(self, request: pb.StatusRequest, context) -> pb.StatusResponse:
        status, header = await self._calls.call(context, lambda timeout_s: self._node.status())
        errors = []
        if not status.leader:
            errors.append(etcd_errors.NO_LEADER[1])
        if status.space_alarm:
            errors.append(f"memberID:{status.member_id} alarm:NOSPACE ")  # etcd's AlarmMember as text
        return pb.StatusResponse(
            header=header, version=ETCD_VERSION, dbSize=status.used_bytes, leader=status.leader or 0,
            raftIndex=status.chosen_index, raftTerm=status.ballot_round, raftAppliedIndex=status.applied_index,
            errors=errors, dbSizeInUse=status.used_bytes, isLearner=status.member_id in status.learners,
            dbSizeQuota=status.quota_bytes,
        )

    @etcd_rpc("Maintenance")
    async def Alarm(self, request: pb.AlarmRequest, context) -> pb.AlarmResponse:
        if request.action in (pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE):
            unimplemented("alarms cannot be raised or disarmed: kvpaxos's NOSPACE alarm is this member's own and "
                          "clears by itself once deletes bring the store under its quota")
        if request.action != pb.AlarmRequest.GET:
            invalid(f"unknown alarm action {request.action}")
        status, header = await self._calls.call(context, lambda timeout_s: self._node.status())
        alarms = []
        if status.space_alarm and request.alarm in (pb.NONE, pb.NOSPACE):
            alarms.append(pb.AlarmMember(memberID=status.member_id, alarm=pb.NOSPACE))
        return pb.AlarmResponse(header=header, alarms=alarms)

    @etcd_rpc("Maintenance")
    async def Defragment(self, request, context):
        unimplemented("Defragment is not supported: kvpaxos's LMDB store reuses freed pages by itself")

    @etcd_rpc("Maintenance")
    async def Hash(self, request, context):
        unimplemented("Hash is not supported: kvpaxos's store is not etcd's bbolt file")

    @etcd_rpc("Maintenance")
    async def HashKV(self, request, context):
        unimplemented("HashKV is not supported yet")

    @etcd_rpc("Maintenance")
    async def Snapshot(self, request: pb.SnapshotRequest, context) -> None:
        reader = BackupReader(self._node, self._calls.credential(context))
        try:
            await self._send_snapshot(reader, context)
        finally:
            # However the call ends (done, refused, the client gone): after
            # the calls queued before it, so an open under way is closed too.
            self._calls.in_reactor(reader.close)

    async def _send_snapshot(self, reader: BackupReader, context) -> None:
        header, _ = await self._calls.call(context, lambda timeout_s: reader.open())
        envelope = EtcdEnvelope()
        writer = SnapshotWriter(envelope, header)
        blob = envelope.take()  # the magic and the header
        while True:
            records, _ = await self._calls.call(context, lambda timeout_s: reader.read(CHUNK_BYTES_MAX))
            if type(records) is Interrupted:
                refuse((grpc.StatusCode.UNAVAILABLE, records.message))
            if records is None:
                break
            writer.chunk(records)
            following = envelope.take()
            await self._write(context, blob, len(following) + _TAIL_BYTES_MIN)
            blob = following
        writer.finish()
        checksum = envelope.finish()
        await self._write(context, blob + envelope.take(), len(checksum))
        await self._write(context, checksum, 0)

    @staticmethod
    async def _write(context, blob: bytes, remaining_bytes: int) -> None:
        try:
            await asyncio.wait_for(context.write(pb.SnapshotResponse(remaining_bytes=remaining_bytes, blob=blob)),
                                   SNAPSHOT_WRITE_S)
        except asyncio.TimeoutError:
            refuse((grpc.StatusCode.UNAVAILABLE, f"the client took no snapshot bytes for {SNAPSHOT_WRITE_S:g}s: "
                                                 "the snapshot stream is closed; save again"))

    @etcd_rpc("Maintenance")
    async def MoveLeader(self, request, context):
        unimplemented("MoveLeader is not supported on the etcd port yet: use kvpaxos leader transfer ID "
                      "(the admin port)")

    @etcd_rpc("Maintenance")
    async def Downgrade(self, request, context):
        unimplemented("Downgrade is not supported: kvpaxos is not etcd")
