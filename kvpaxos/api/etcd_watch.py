"""
etcd's C{etcdserverpb.Watch} service on the etcd port (L{kvpaxos.api.etcd}),
as etcd 3.4 serves it (C{etcdserver/api/v3rpc/watch.go}), over the same
stream machinery as C{kvpaxos.v1.Watch}
(L{kvpaxos.api.watch_servicer.WatchStreamServicer}) and the node's
L{kvpaxos.node.watch_calls.WatchCalls}.

What is etcd's here:

  - revisions are kvpaxos's + 1 (L{kvpaxos.api.etcd_convert}): headers,
    records, C{start_revision} (etcd's 1, before any write, is kvpaxos's
    first revision too) and C{compact_revision};
  - headers carry the cluster id, member id and C{raft_term} (the ballot
    round) as the etcd KV service's (L{kvpaxos.api.etcd_kv.EtcdCalls});
  - an empty key is the smallest key (C{"\\x00"}); a C{range_end} of
    C{"\\x00"} is every key from the key on; unknown filters are ignored;
  - ids: 0 asks the member to choose, from 0 on (the lowest not yet
    given and not in use); a refused create is answered with watch id -1,
    C{created} and C{canceled}, and its reason in etcd's words (a range
    whose end is not after its key, an id in use, C{permission denied},
    C{invalid auth token}, C{user name is empty}, a negative start as
    etcd 3.5 answers it); a compacted start ends the watcher with
    C{compact_revision} (etcd's) and C{canceled};
  - C{fragment}: a revision too large for one response is split into
    fragments (C{fragment} set on all but the last) that the client joins;
  - C{progress_notify} and progress requests, as the shared machinery
    serves them (etcd 3.4.25's rules);
  - a stream opened with C{hasleader} metadata (etcd clients'
    C{WithRequireLeader}, which etcdctl uses) on a member that knows no
    leader fails at once with etcd's C{no leader}.

Nothing here decides what is sent: the node does.
"""

from __future__ import annotations

from typing import Optional

import grpc

from kvpaxos.api import etcd_errors
from kvpaxos.api.etcd_convert import key_value
from kvpaxos.api.etcd_errors import etcd_rpc, etcd_status, refuse
from kvpaxos.api.limits import TO_THE_END
from kvpaxos.api.watch_servicer import (
    COMPACTED_REASON,
    Refused,
    WatchStreamServicer,
    _Created,
    _StreamSink,
    _WatchStream,
)
from kvpaxos.etcdpb import kv_pb2 as mvccpb
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.kv.auth import NO_CREDENTIAL
from kvpaxos.kv.history import EventKind
from kvpaxos.node.watchers import Batch, WatchSpec

__all__ = ["WatchServicer"]

#: etcd's refusals of a create request (mvcc's words: etcd sends them without the "etcdserver: " prefix).
EMPTY_RANGE = "mvcc: watcher range is empty"
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
#: The metadata with which etcd's clients ask for a stream only while the member knows a leader.
REQUIRE_LEADER_KEY = "hasleader"


def watch_spec(request: pb.WatchCreateRequest) -> WatchSpec:
    """
    The L{WatchSpec} of an etcd create request, read as etcd reads it.

    @raise Refused: the range is empty (its end not after its key), or the
        start revision is negative.
    """
    key = request.key or b"\x00"  # etcd: the empty key is the smallest key
    end = request.range_end or None
    if end is not None and end != TO_THE_END and key >= end:
        raise Refused(EMPTY_RANGE)
    if request.start_revision < 0:
        raise Refused(COMPACTED_REASON)
    start = request.start_revision
    if start:
        start = max(start - 1, 1)  # etcd's 1 is kvpaxos's 0, which has no events: its first are at 1
    filters = set(request.filters)
    return WatchSpec(key, end, start, request.prev_kv, pb.WatchCreateRequest.NOPUT in filters,
                     pb.WatchCreateRequest.NODELETE in filters)


def event_message(event, prev_kv: bool) -> mvccpb.Event:
    """
    A history event as etcd's: a put's record, or a delete's key with the
    deleting revision alone (the rest 0, as etcd's); C{prev_kv} the record
    before (none for a key the event created).
    """
    if event.kind is EventKind.PUT:
        message = mvccpb.Event(type=mvccpb.Event.PUT, kv=key_value(event.kv))
    else:
        message = mvccpb.Event(type=mvccpb.Event.DELETE,
                               kv=mvccpb.KeyValue(key=event.kv.key, mod_revision=event.kv.mod_revision + 1))
    if prev_kv and event.prev is not None:
        message.prev_kv.CopyFrom(key_value(event.prev))
    return message


class _HeaderSink(_StreamSink):
    """A sink that, taking each batch in the reactor, renews the header its responses will carry."""

    def send(self, batch: Batch) -> bool:
        self._stream.servicer.reactor_header(batch.revision)
        return super().send(batch)


def _requires_leader(context) -> bool:
    return any(key == REQUIRE_LEADER_KEY and value == "true" for key, value in context.invocation_metadata() or ())


class WatchServicer(WatchStreamServicer, rpc_pb2_grpc.WatchServicer):
    """C{etcdserverpb.Watch} in front of a node that offers L{kvpaxos.node.watch_calls.WatchCalls}."""

    response_type = pb.WatchResponse
    request_field = "request_union"
    first_watch_id = 0
    numbers_refused = False
    duplicate_id_reason = DUPLICATE_ID

    def __init__(self, node, calls) -> None:
        super().__init__(node, calls)
        # The header the reactor built last (cluster, member, term, etcd's
        # revision): what the responses written on the loop carry.
        self._stamp: Optional[pb.ResponseHeader] = None

    @etcd_rpc("Watch")
    async def Watch(self, request_iterator, context) -> None:
        if _requires_leader(context):
            status, _ = await self._calls.call(context, lambda timeout_s: self.node.status())
            if not status.leader:
                refuse(etcd_errors.NO_LEADER)
        await self.serve(context)

    def header(self, revision: Optional[int]) -> pb.ResponseHeader:
        stamp = self._stamp
        if stamp is None:
            stamp = pb.ResponseHeader(member_id=self._calls.member_id or 0)
        return pb.ResponseHeader(cluster_id=stamp.cluster_id, member_id=stamp.member_id, raft_term=stamp.raft_term,
                                 revision=stamp.revision if revision is None else revision + 1)

    def reactor_header(self, revision: int) -> pb.ResponseHeader:
        _, header = self._calls._with_header(_Created(None, revision))
        self._stamp = header
        return header

    def create_spec(self, request: pb.WatchCreateRequest) -> WatchSpec:
        return watch_spec(request)

    def event_message(self, event, prev_kv: bool) -> mvccpb.Event:
        return event_message(event, prev_kv)

    def events_response(self, watch_id: int, events: list, revision: int, fragment: bool) -> pb.WatchResponse:
        return pb.WatchResponse(header=self.header(revision), watch_id=watch_id, events=events, fragment=fragment)

    def compacted_response(self, watch_id: int, compacted: int) -> pb.WatchResponse:
        return pb.WatchResponse(header=self.header(None), watch_id=watch_id, canceled=True,
                                compact_revision=compacted + 1, cancel_reason=COMPACTED_REASON)

    def refused_response(self, request, watch_id: Optional[int], reason: str, header) -> pb.WatchResponse:
        return pb.WatchResponse(header=header, watch_id=-1, created=True, canceled=True, cancel_reason=reason)

    def refusal_reason(self, status: grpc.Status, context) -> str:
        return etcd_status(status, self._calls.credential(context) is not NO_CREDENTIAL).details

    def make_sink(self, stream: _WatchStream, watch_id: int, request, spec: WatchSpec) -> _StreamSink:
        return _HeaderSink(stream, watch_id, spec.prev_kv, request.progress_notify, request.fragment)
