"""
The C{kvpaxos.v1.Lease} servicer (C{proto/kvpaxos/v1/lease.proto}), on the
gRPC thread's event loop like L{kvpaxos.api.servicers}, in front of a node
that offers L{kvpaxos.node.lease_calls.LeaseCalls}:

  - C{Grant}, C{Revoke}: the node's C{lease_grant} and C{lease_revoke}
    (through the log, with the request's credential); the state machine's
    refusals (L{kvpaxos.kv.leases.LeaseRefused}) are
    L{kvpaxos.api.statuses.lease_refused}'s NOT_FOUND and
    FAILED_PRECONDITION (L{kvpaxos.api.statuses.REFUSALS});
  - C{KeepAlive}: one C{lease_keep_alive} per request read, in order, each
    answered before the next is read; a failure ends the stream with its
    status (UNAVAILABLE: the client opens another, on any member);
  - C{TimeToLive}: C{lease_time_to_live} (at the leader), then with
    C{keys} C{lease_keys} (this member's store), in one reactor call;
  - C{Leases}: C{lease_list} (this member's store).

What a request means, whether a lease exists and when it runs out are the
node's to decide; this module checks the shape of a request and converts.
"""

from __future__ import annotations

from functools import partial

import grpc

from kvpaxos.api.credentials import node_arguments
from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.servicers import _abort, _checked, _NodeCalls, _rpc
from kvpaxos.api.statuses import internal
from kvpaxos.kv.commands import MAX_LEASE_ID, MAX_LEASE_TTL
from kvpaxos.kv.leases import LeaseGranted, LeaseRevoked
from kvpaxos.v1 import lease_pb2, lease_pb2_grpc

__all__ = ["LeaseServicer", "check_grant"]


def check_grant(request: lease_pb2.LeaseGrantRequest) -> None:
    """
    Refuse a grant whose TTL is not 1 to L{MAX_LEASE_TTL} seconds, or whose
    id is neither 0 (the member picks) nor 1 to L{MAX_LEASE_ID}.

    @raise InvalidArgument: either is out of range (nothing is sent).
    """
    if not 1 <= request.ttl <= MAX_LEASE_TTL:
        raise InvalidArgument(f"a lease TTL must be from 1 to {MAX_LEASE_TTL} seconds, not {request.ttl} (one under "
                              "the cluster's minimum is raised to it)")
    if not 0 <= request.id <= MAX_LEASE_ID:
        raise InvalidArgument(f"a lease id must be 0 (the cluster picks one) or from 1 to {MAX_LEASE_ID}, "
                              f"not {request.id}")


def _time_and_keys(node, lease_id: int, keys: bool, credential):
    """
    In the reactor: the node's time-to-live of C{lease_id} and, if C{keys}
    and the lease exists, its keys; a Deferred of C{(LeaseTime or None, keys)}.
    """
    d = node.lease_time_to_live(lease_id)

    def with_keys(time):
        if time is None or not keys:
            return time, []
        return node.lease_keys(lease_id, *node_arguments(credential)).addCallback(lambda found: (time, found))

    return d.addCallback(with_keys)


class LeaseServicer(lease_pb2_grpc.LeaseServicer):
    """C{kvpaxos.v1.Lease}: each method makes one node call (see the module docstring) and converts."""

    def __init__(self, node, calls: _NodeCalls) -> None:
        self._node = node
        self._calls = calls

    def _unexpected(self, result, header) -> None:
        _abort(internal(f"internal error: unexpected result {type(result).__name__}"), header.member_id)

    @_rpc
    async def Grant(self, request: lease_pb2.LeaseGrantRequest, context) -> lease_pb2.LeaseGrantResponse:
        _checked(self._calls.member_id, partial(check_grant, request))
        credential = self._calls.credential(context)
        ttl, lease_id = request.ttl, request.id
        result, header = await self._calls.call(context, lambda timeout_s: self._node.lease_grant(
            ttl, timeout_s, lease_id, *node_arguments(credential)))
        if type(result) is not LeaseGranted:
            self._unexpected(result, header)
        return lease_pb2.LeaseGrantResponse(header=header, id=result.id, ttl=result.ttl)

    @_rpc
    async def Revoke(self, request: lease_pb2.LeaseRevokeRequest, context) -> lease_pb2.LeaseRevokeResponse:
        credential = self._calls.credential(context)
        lease_id = request.id
        result, header = await self._calls.call(context, lambda timeout_s: self._node.lease_revoke(
            lease_id, timeout_s, *node_arguments(credential)))
        if type(result) is not LeaseRevoked:
            self._unexpected(result, header)
        return lease_pb2.LeaseRevokeResponse(header=header, deleted=result.deleted)

    @_rpc
    async def KeepAlive(self, request_iterator, context) -> None:
        # One at a time, in order: the answer to a request is written before
        # the next is read (as etcd's), so answers need no bound of their own.
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            lease_id = request.id
            ttl, header = await self._calls.call(context, lambda timeout_s: self._node.lease_keep_alive(lease_id))
            await context.write(lease_pb2.LeaseKeepAliveResponse(header=header, id=lease_id, ttl=ttl))

    @_rpc
    async def TimeToLive(self, request: lease_pb2.LeaseTimeToLiveRequest,
                         context) -> lease_pb2.LeaseTimeToLiveResponse:
        credential = self._calls.credential(context)
        lease_id, keys = request.id, request.keys
        (time, found), header = await self._calls.call(
            context, lambda timeout_s: _time_and_keys(self._node, lease_id, keys, credential))
        if time is None:
            return lease_pb2.LeaseTimeToLiveResponse(header=header, id=lease_id, ttl=-1)
        return lease_pb2.LeaseTimeToLiveResponse(header=header, id=lease_id, ttl=time.remaining_s,
                                                 granted_ttl=time.granted_ttl, keys=found)

    @_rpc
    async def Leases(self, request: lease_pb2.LeasesRequest, context) -> lease_pb2.LeasesResponse:
        ids, header = await self._calls.call(context, lambda timeout_s: self._node.lease_list())
        return lease_pb2.LeasesResponse(header=header, ids=ids)
