"""
etcd's C{etcdserverpb.KV} service on the etcd port (L{kvpaxos.api.etcd}),
and L{EtcdCalls}, the node calls of every etcd service with etcd's
response header.

Each method checks the request's shape (etcd's checks, and the refusals of
what kvpaxos does not serve: L{kvpaxos.api.etcd_convert}), makes one node
call (C{range} or C{submit}, with the request's credential from the
C{token} metadata, as on the kvpaxos port) and converts the answer:

  - Range: a read at the consistency asked (C{serializable}, else
    linearizable); sorted or filtered ranges are sorted and filtered here
    after the read, then limited (etcd's order of work), at most
    L{kvpaxos.api.etcd_convert.SORT_RECORDS_MAX} keys;
  - Put: a PUT, with its lease (a lease that is not there is the state
    machine's refusal: etcd's "requested lease not found"; C{ignore_lease}
    is not served); DeleteRange: a TXN of one delete-range op (its
    C{deleted} count); Txn: a TXN (its puts' leases as a put's);
  - Compact: a COMPACT at kvpaxos's revision N - 1
    (L{kvpaxos.api.etcd_convert.compact_request}); its refusals are etcd's
    "required revision has been compacted" and "... is a future
    revision" (OUT_OF_RANGE); the header's revision is the store's.

Nothing here decides what a request means: the node applies it.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

from twisted.logger import Logger

from kvpaxos.api import etcd_convert as convert
from kvpaxos.api import etcd_errors
from kvpaxos.api.convert import RESPONSE_KVS_BYTES_MAX
from kvpaxos.api.credentials import node_arguments
from kvpaxos.api.etcd_errors import etcd_rpc, exhausted, refuse
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.api.servicers import _abort, _checked, _NodeCalls
from kvpaxos.api.statuses import internal
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.etcdpb import rpc_pb2_grpc
from kvpaxos.kv.commands import (
    DeleteRange,
    Op,
    Request,
    Result,
    Txn,
    TxnResult,
    range_query,
    validate_request,
)
from kvpaxos.kv.compaction import CompactDone, CompactError, CompactRefused

_log = Logger()


class EtcdCalls(_NodeCalls):
    """
    L{_NodeCalls} whose header is etcd's: the cluster id, the member id,
    C{raft_term} the Paxos ballot round (the node's C{status()}) and the
    revision the result names as etcd's (kvpaxos's + 1; 0 for a result
    that names none: a status or a member list, as etcd's Cluster calls).

    @ivar client_urls: this member's etcd URLs (C{http://host:port}), set
        once the port is bound; its own entry of the member list shows them.
    @ivar peer_scheme: C{"https"} when the peer links are TLS, else C{"http"}.
    """

    def __init__(self, node, crossing, request_timeout_s: float) -> None:
        super().__init__(node, crossing, request_timeout_s)
        self.client_urls: tuple = ()
        self.peer_scheme = "http"
        # The cluster id, once known (a joining node learns it): it never
        # changes while the process runs.
        self._cluster_id = 0

    def _with_header(self, result):
        status = self._node.status()
        self.leader, self.member_id = status.leader, status.member_id
        if not self._cluster_id:
            self._cluster_id = self._read_cluster_id()
        revision = getattr(result, "revision", None)
        header = pb.ResponseHeader(
            cluster_id=self._cluster_id, member_id=status.member_id, raft_term=status.ballot_round,
            revision=0 if revision is None else revision + 1,
        )
        return result, header

    def _read_cluster_id(self) -> int:
        members = getattr(self._node, "members", None)
        if members is None:
            return 0
        try:
            return members().cluster_id
        except Exception:  # not started yet: no id in the header
            return 0


def _validated(member_id: Optional[int], command: Request) -> Request:
    """C{command}, checked by the state machine's rules (a key over 511 bytes: INVALID_ARGUMENT)."""
    _checked(member_id, partial(validate_request, command))
    return command


def _applied_too_large(size: int, revision: int) -> None:
    exhausted(f"the request applied at revision {revision}, but its response of {size} bytes exceeds the "
              f"{MAX_MESSAGE_BYTES}-byte message limit; ask for fewer records (prev_kv, ranges)")


class KVServicer(rpc_pb2_grpc.KVServicer):
    """C{etcdserverpb.KV} in front of a node (L{kvpaxos.node.interfaces.IKeyValueNode})."""

    def __init__(self, node, calls: EtcdCalls) -> None:
        self._node = node
        self._calls = calls

    @etcd_rpc("KV")
    async def Range(self, request: pb.RangeRequest, context) -> pb.RangeResponse:
        plan = convert.range_plan(request)
        query = plan.query
        _checked(self._calls.member_id, partial(range_query, query.key, query.end, query.limit,
                                                 query.keys_only, query.count_only))
        consistency = "serializable" if request.serializable else "linearizable"
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.range(query, timeout_s, consistency, *node_arguments(credential)))
        convert.check_revision(plan, result.revision)
        kvs, more = convert.range_records(plan, result)
        used = 0
        for index, kv in enumerate(kvs):
            used += kv.ByteSize() + 8  # the field's tag and length, at most
            if used > RESPONSE_KVS_BYTES_MAX:
                if not plan.limit:
                    exhausted(f"the range's records exceed the {RESPONSE_KVS_BYTES_MAX}-byte response limit; "
                              "read it in pages: with a limit, and from after the last key while more is set")
                kvs, more = kvs[:index], True  # a page: the client asks again from after the last key
                break
        return pb.RangeResponse(header=header, kvs=kvs, more=more, count=result.count)

    @etcd_rpc("KV")
    async def Put(self, request: pb.PutRequest, context) -> pb.PutResponse:
        convert.check_put(request)
        command = _validated(self._calls.member_id, convert.put_request(request))
        result, header = await self._submit(context, command, Result)
        prev = result.prev
        return pb.PutResponse(header=header, prev_kv=None if prev is None else convert.key_value(prev))

    @etcd_rpc("KV")
    async def DeleteRange(self, request: pb.DeleteRangeRequest, context) -> pb.DeleteRangeResponse:
        if not request.key:
            refuse(etcd_errors.EMPTY_KEY)
        delete = DeleteRange(request.key, request.range_end or None, request.prev_kv)
        command = _validated(self._calls.member_id, Request(Op.TXN, txn=Txn((), (delete,), ())))
        result, header = await self._submit(context, command, TxnResult)
        deleted = result.responses[0]
        response = pb.DeleteRangeResponse(header=header, deleted=deleted.deleted,
                                          prev_kvs=[convert.key_value(kv) for kv in deleted.prevs])
        size = response.ByteSize()
        if size > MAX_MESSAGE_BYTES:
            _applied_too_large(size, header.revision)
        return response

    @etcd_rpc("KV")
    async def Txn(self, request: pb.TxnRequest, context) -> pb.TxnResponse:
        command = _validated(self._calls.member_id, convert.txn_from_etcd(request))
        result, header = await self._submit(context, command, TxnResult)
        response = convert.txn_response(result, header, request)
        size = response.ByteSize()
        if size > MAX_MESSAGE_BYTES:
            _applied_too_large(size, header.revision)
        return response

    @etcd_rpc("KV")
    async def Compact(self, request: pb.CompactionRequest, context) -> pb.CompactionResponse:
        command = _validated(self._calls.member_id, convert.compact_request(request))
        result, header = await self._submit(context, command, (CompactDone, CompactRefused))
        if type(result) is CompactRefused:
            refuse(etcd_errors.FUTURE_REVISION if result.error is CompactError.FUTURE else etcd_errors.COMPACTED)
        return pb.CompactionResponse(header=header)

    async def _submit(self, context, command: Request, kind):
        """Submit C{command} and return its result (of type C{kind}, or one of a tuple of types) with the header."""
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.submit(command, timeout_s, *node_arguments(credential)))
        if not isinstance(result, kind):  # no sessions here: a node bug
            _log.error("node answered {command!r} with {result!r}", command=command, result=result)
            _abort(internal(f"internal error: unexpected result {type(result).__name__}"), header.member_id)
        return result, header
