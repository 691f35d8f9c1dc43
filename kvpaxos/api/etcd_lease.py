"""
etcd's C{etcdserverpb.Lease} service on the etcd port (L{kvpaxos.api.etcd}),
as etcd 3.4 serves it (C{etcdserver/api/v3rpc/lease.go}), in front of the
node's lease calls (L{kvpaxos.node.lease_calls.LeaseCalls}), the same as
C{kvpaxos.v1.Lease}'s (L{kvpaxos.api.lease_servicer}):

  - C{LeaseGrant}: C{lease_grant} (ID 0: the member picks one; a TTL under
    the cluster's minimum, or negative, is raised to it as etcd raises it
    to its C{minLeaseTTL}); a TTL over etcd's C{MaxLeaseTTL} is etcd's
    "too large lease TTL" (OUT_OF_RANGE), an ID in use etcd's "lease
    already exists" (FAILED_PRECONDITION);
  - C{LeaseRevoke}: C{lease_revoke}; no such lease is etcd's "requested
    lease not found" (NOT_FOUND);
  - C{LeaseKeepAlive}: one C{lease_keep_alive} per request read, in order;
    TTL 0 for no such lease (etcd's); a failure ends the stream in etcd's
    words (C{no leader}, C{request timed out});
  - C{LeaseTimeToLive}: C{lease_time_to_live} at the leader and, with
    C{keys}, the keys from this member's store; no such lease answers TTL
    -1 and grantedTTL 0 (etcd's, which etcdctl prints "already expired");
  - C{LeaseLeases}: C{lease_list}, this member's store.

Ids are etcd's int64s; kvpaxos's are 1 to 2**63 - 1, the same non-negative
ones.  Headers and errors as the etcd KV service's (L{kvpaxos.api.etcd_kv}).
Nothing here decides anything: the node does.
"""

from __future__ import annotations

import grpc

from kvpaxos.api import etcd_convert as convert
from kvpaxos.api import etcd_errors
from kvpaxos.api.credentials import node_arguments
from kvpaxos.api.etcd_errors import etcd_rpc, refuse
from kvpaxos.api.lease_servicer import _time_and_keys
from kvpaxos.api.servicers import _abort
from kvpaxos.api.statuses import internal
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.kv.commands import MAX_LEASE_ID
from kvpaxos.kv.leases import LeaseGranted, LeaseRevoked

__all__ = ["LeaseServicer"]


class LeaseServicer(rpc_pb2_grpc.LeaseServicer):
    """C{etcdserverpb.Lease} in front of a node that offers L{kvpaxos.node.lease_calls.LeaseCalls}."""

    def __init__(self, node, calls) -> None:
        self._node = node
        self._calls = calls

    def _unexpected(self, result, header) -> None:
        _abort(internal(f"internal error: unexpected result {type(result).__name__}"), header.member_id)

    @etcd_rpc("Lease")
    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context) -> pb.LeaseGrantResponse:
        convert.check_grant(request)
        credential = self._calls.credential(context)
        ttl, lease_id = request.TTL, request.ID
        result, header = await self._calls.call(context, lambda timeout_s: self._node.lease_grant(
            ttl, timeout_s, lease_id, *node_arguments(credential)))
        if type(result) is not LeaseGranted:
            self._unexpected(result, header)
        return pb.LeaseGrantResponse(header=header, ID=result.id, TTL=result.ttl)

    @etcd_rpc("Lease")
    async def LeaseRevoke(self, request: pb.LeaseRevokeRequest, context) -> pb.LeaseRevokeResponse:
        if not 1 <= request.ID <= MAX_LEASE_ID:
            refuse(etcd_errors.LEASE_NOT_FOUND)  # no lease has that id
        credential = self._calls.credential(context)
        lease_id = request.ID
        result, header = await self._calls.call(context, lambda timeout_s: self._node.lease_revoke(
            lease_id, timeout_s, *node_arguments(credential)))
        if type(result) is not LeaseRevoked:
            self._unexpected(result, header)
        return pb.LeaseRevokeResponse(header=header)

    @etcd_rpc("Lease")
    async def LeaseKeepAlive(self, request_iterator, context) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            lease_id = request.ID
            ttl, header = await self._calls.call(context, lambda timeout_s: self._node.lease_keep_alive(lease_id))
            await context.write(pb.LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl))

    @etcd_rpc("Lease")
    async def LeaseTimeToLive(self, request: pb.LeaseTimeToLiveRequest, context) -> pb.LeaseTimeToLiveResponse:
        credential = self._calls.credential(context)
        lease_id, keys = request.ID, request.keys
        (time, found), header = await self._calls.call(
            context, lambda timeout_s: _time_and_keys(self._node, lease_id, keys, credential))
        if time is None:
            return pb.LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=-1)
        return pb.LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=time.remaining_s,
                                          grantedTTL=time.granted_ttl, keys=found)

    @etcd_rpc("Lease")
    async def LeaseLeases(self, request: pb.LeaseLeasesRequest, context) -> pb.LeaseLeasesResponse:
        ids, header = await self._calls.call(context, lambda timeout_s: self._node.lease_list())
        return pb.LeaseLeasesResponse(header=header, leases=[pb.LeaseStatus(ID=lease) for lease in ids])
