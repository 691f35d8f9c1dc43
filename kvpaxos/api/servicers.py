"""
The gRPC servicers behind L{kvpaxos.api.server.GrpcServer}: C{kvpaxos.v1.KV}
(the unary RPCs and C{Stream}) and C{kvpaxos.v1.Cluster}, as coroutines on
the gRPC thread's event loop, and what they share (L{_NodeCalls}: a call to
the node across the crossing, its bounded wait and the response header).

A refusal inside a handler is raised as L{_Abort} (a C{grpc.Status}); the
unary RPCs send it with C{context.abort_with_status} (L{_rpc}), C{Stream}
as that request's own error.  So one handler body serves both.  Nothing
here decides what a request means: that is the node's business;
L{kvpaxos.api.convert} translates and L{kvpaxos.api.statuses} names the
status of each failure.
"""

from __future__ import annotations

import asyncio
import functools
from functools import partial
from typing import Any, Callable, NoReturn, Optional

import grpc
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.api import convert
from kvpaxos.api.credentials import node_arguments, request_credential
from kvpaxos.api.crossing import LoopPost, ReactorCrossing
from kvpaxos.api.errors import ApiError, InvalidArgument, Unavailable
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.api.streaming import (
    _NO_REQUEST,
    MAX_SERVER_STREAM_REQUESTS,
    MAX_STREAM_REQUESTS,
    _stream_error,
    _StreamAnswers,
    _streamed_context,
    _too_many,
)
from kvpaxos.api.statuses import (
    REFUSALS,
    compact_refused,
    internal,
    response_too_large,
    sequence_reused,
    status_for,
    unavailable,
)
from kvpaxos.kv.auth import Credential
from kvpaxos.kv.commands import (
    Op,
    RangeResult,
    Request,
    Result,
    SessionOpened,
    TxnResult,
    compare_and_swap,
    range_query,
    validate_request,
)
from kvpaxos.kv.compaction import CompactDone, CompactRefused
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

#: The node is given this share of a request's wait as its C{timeout_s}, so
#: that its own L{Unavailable} (which knows why, and names the leader)
#: usually arrives before the handler stops waiting.
NODE_TIMEOUT_SHARE = 0.9

_log = Logger()


class _Abort(Exception):
    """End the RPC with C{status} (a C{grpc.Status}): raised by the helpers, caught by L{_rpc}."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status)
        self.status = status


def _abort(status, member_id: Optional[int] = None) -> NoReturn:
    """Raise L{_Abort} for L{kvpaxos.api.statuses.Status} C{status}."""
    raise _Abort(status.rich(member_id))


def _abort_for(error, member_id: Optional[int] = None) -> NoReturn:
    """Raise L{_Abort} with the status L{status_for} names for C{error}."""
    _abort(status_for(error), member_id)


def _rpc(method):
    """An async handler whose L{_Abort} ends its RPC with that status; every answer is counted."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            response = await method(self, request, context)
        except _Abort as abort:
            self._calls.count(name, abort.status.code)
            await context.abort_with_status(abort.status)
            return None
        except asyncio.CancelledError:
            self._calls.count(name, grpc.StatusCode.CANCELLED)
            raise
        except BaseException:
            self._calls.count(name, grpc.StatusCode.UNKNOWN)
            raise
        self._calls.count(name, grpc.StatusCode.OK)
        return response

    return handler


class _Expired(Exception):
    """A request's wait for the node ran out."""


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


class _NodeCalls:
    """
    What both servicers share: a call to the node across the crossing, the
    bounded wait for it, and the response header.
    """

    def __init__(self, node, crossing: ReactorCrossing, request_timeout_s: float) -> None:
        self._node = node
        self._crossing = crossing
        self._request_timeout_s = request_timeout_s
        #: The leader the node last named, and the node's member id
        #: (written in the reactor thread, read by the gRPC thread for
        #: failures).
        self.leader: Optional[int] = None
        self.member_id: Optional[int] = None
        #: Where the reactor's outcomes enter the gRPC thread's loop (set
        #: when the server starts there).
        self.post: Optional[LoopPost] = None
        #: The node's metrics (L{kvpaxos.node.metrics.NodeMetrics}), or None.
        self.metrics = None
        #: Whether a verified client certificate's common name names the
        #: user of a request without a token (the server's client_cert_auth).
        self.cert_names_user = False

    def credential(self, context) -> Credential:
        """The credential the request of C{context} brings (L{request_credential})."""
        return request_credential(context, self.cert_names_user)

    def count(self, method: str, code: grpc.StatusCode) -> None:
        """One request of C{method} answered with C{code} (for the metrics, if there are any)."""
        if self.metrics is not None:
            self.metrics.grpc_request(method, code.name)

    async def call(self, context, node_call: Callable[[float], Any]) -> tuple[Any, kv_pb2.ResponseHeader]:
        """
        Run C{node_call(timeout_s)} in the reactor thread and return its
        result with the response header, or abort the RPC with the status its
        failure, or its refusal (L{REFUSALS}: nothing was applied), maps to.
        Called in the gRPC thread's event loop.
        """
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # A streamed request whose timeout was up when it was read (a
            # unary one never gets here: grpcio ends it first).
            _abort(unavailable("the request's timeout passed before it ran", self.leader), self.member_id)
        wait_s = self._request_timeout_s if remaining is None else min(remaining, self._request_timeout_s)
        node_timeout_s = wait_s * NODE_TIMEOUT_SHARE
        post = self.post
        waiter = post.loop.create_future()
        future = self._crossing.enqueue(partial(self._in_reactor, node_call, node_timeout_s),
                                        partial(post.settle, waiter))
        timer = post.loop.call_later(wait_s, _expire, waiter)
        try:
            result, header = await waiter
        except _Expired:
            future.cancel()
            _abort(unavailable(f"no answer from the node within {wait_s:.3g}s", self.leader),
                   self.member_id)
        except asyncio.CancelledError:
            future.cancel()  # the client gave up: the call need not run
            raise
        except Exception as error:
            _abort_for(error, self.member_id)
        finally:
            timer.cancel()
        if isinstance(result, REFUSALS):
            _abort_for(result, self.member_id)
        return result, header

    def in_reactor(self, call: Callable[[], Any]) -> None:
        """
        Run C{call()} in the reactor thread, after every call queued before
        it, its outcome ignored (a failure is logged): a clean-up that must
        run even when the RPC has ended (from any thread; never waited on).
        """
        def done(ok: bool, value: Any) -> None:
            if not ok and not isinstance(value, (ApiError, asyncio.CancelledError)):  # a stop's refusal: expected
                _log.failure("a call in the reactor failed", Failure(value))

        self._crossing.enqueue(call, done)

    def _in_reactor(self, node_call: Callable[[float], Any], timeout_s: float) -> defer.Deferred:
        d = defer.maybeDeferred(node_call, timeout_s)
        d.addCallback(self._with_header)
        d.addErrback(self._failed)
        return d

    def _with_header(self, result: Any) -> tuple[Any, kv_pb2.ResponseHeader]:
        status = self._node.status()
        self.leader, self.member_id = status.leader, status.member_id
        # Every result but a status and a refusal names the revision it saw or made.
        header = kv_pb2.ResponseHeader(
            member_id=status.member_id, leader_id=status.leader or 0,
            revision=getattr(result, "revision", 0),
        )
        return result, header

    def _failed(self, failure):
        if self.member_id is None:
            try:
                self.member_id = self._node.status().member_id
            except Exception:  # a node not started yet: the ErrorInfo names no member
                pass
        if isinstance(failure.value, Unavailable) and failure.value.leader is not None:
            self.leader = failure.value.leader
        if status_for(failure.value).unexpected:
            _log.failure("gRPC request failed unexpectedly", failure)
        return failure


def _checked(member_id: Optional[int], convert_request: Callable[[], Any]) -> Any:
    """
    Return C{convert_request()}, or abort with INVALID_ARGUMENT (naming
    member C{member_id}) if it raises L{InvalidArgument}.
    """
    try:
        return convert_request()
    except InvalidArgument as error:
        _abort_for(error, member_id)


def _session_request(member_id: Optional[int], op: Op, request, value: bytes = b"",
                     prev_kv: bool = False, lease: int = 0) -> Request:
    """
    Return the checked L{Request} of a single-key write with the session
    fields of C{request} (origin and request_id are the node's to fill in)
    and, for a put, the lease it attaches its key to (0: none).
    """
    command = Request(op, request.key, value, client_id=request.client_id,
                      sequence=request.sequence, prev_kv=prev_kv, lease=lease)
    _checked(member_id, partial(validate_request, command))
    return command


class KVServicer(kv_pb2_grpc.KVServicer):
    """
    C{kvpaxos.v1.KV}: each method converts its request (L{convert}), makes
    one node call and converts the result back.  Every response header
    carries the revision the result names.
    """

    #: The most requests of one stream, and of every stream of this
    #: server together, in flight at once (running, or answered and not yet
    #: written); more are refused one by one (RESOURCE_EXHAUSTED,
    #: TOO_MANY_REQUESTS).  grpcio's own bound counts a stream as one RPC.
    stream_requests_max: int = MAX_STREAM_REQUESTS
    server_stream_requests_max: int = MAX_SERVER_STREAM_REQUESTS

    def __init__(self, node, calls: _NodeCalls) -> None:
        self._node = node
        self._calls = calls
        #: Streamed requests running now, over every stream (loop thread only).
        self._streamed_running = 0

    @_rpc
    async def Get(self, request: kv_pb2.GetRequest, context) -> kv_pb2.GetResponse:
        query = _checked(self._calls.member_id, partial(range_query, request.key))
        consistency = _checked(self._calls.member_id, partial(convert.consistency_name, request.consistency))
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.range(query, timeout_s, consistency, *node_arguments(credential))
        )
        if not result.kvs:
            return kv_pb2.GetResponse(header=header, found=False)
        kv = result.kvs[0]
        return kv_pb2.GetResponse(header=header, found=True, value=kv.value,
                                  kv=convert.key_value_to_proto(kv))

    @_rpc
    async def Put(self, request: kv_pb2.PutRequest, context) -> kv_pb2.PutResponse:
        # A lease that is not there is the state machine's refusal (LeaseRefused,
        # nothing applied): NOT_FOUND, reason LEASE_NOT_FOUND (statuses.REFUSALS).
        command = _session_request(self._calls.member_id, Op.PUT, request, request.value, request.prev_kv,
                                   request.lease)
        result, header = await self._submit(context, command, Result)
        return kv_pb2.PutResponse(header=header, existed=result.existed,
                                  prev_kv=convert.optional_key_value_to_proto(result.prev))

    @_rpc
    async def Delete(self, request: kv_pb2.DeleteRequest, context) -> kv_pb2.DeleteResponse:
        command = _session_request(self._calls.member_id, Op.DELETE, request, prev_kv=request.prev_kv)
        result, header = await self._submit(context, command, Result)
        return kv_pb2.DeleteResponse(header=header, deleted=result.existed,
                                     prev_kv=convert.optional_key_value_to_proto(result.prev))

    @_rpc
    async def Append(self, request: kv_pb2.AppendRequest, context) -> kv_pb2.AppendResponse:
        command = _session_request(self._calls.member_id, Op.APPEND, request, request.value)
        result, header = await self._submit(context, command, Result)
        return kv_pb2.AppendResponse(header=header, value=result.value or b"", existed=result.existed)

    @_rpc
    async def Range(self, request: kv_pb2.RangeRequest, context) -> kv_pb2.RangeResponse:
        query = _checked(self._calls.member_id, partial(convert.range_query_from_proto, request))
        consistency = _checked(self._calls.member_id, partial(convert.consistency_name, request.consistency))
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.range(query, timeout_s, consistency, *node_arguments(credential))
        )
        response, _ = convert.range_response(result, header)
        return response

    @_rpc
    async def Txn(self, request: kv_pb2.TxnRequest, context) -> kv_pb2.TxnResponse:
        command = _checked(self._calls.member_id, partial(convert.txn_request_from_proto, request))
        result, header = await self._submit(context, command, TxnResult)
        response = convert.txn_response(result, header)
        size = response.ByteSize()
        if size > MAX_MESSAGE_BYTES:
            _abort(response_too_large(size, MAX_MESSAGE_BYTES, result.revision), header.member_id)
        return response

    @_rpc
    async def CompareAndSwap(self, request: kv_pb2.CompareAndSwapRequest, context) -> kv_pb2.CompareAndSwapResponse:
        # None set means "absent": version 0 is a missing key's.
        expected = request.WhichOneof("expected") or "expected_version"
        command = _checked(self._calls.member_id, partial(
            compare_and_swap, request.key, request.value,
            client_id=request.client_id, sequence=request.sequence,
            **{expected: getattr(request, expected)},
        ))
        result, header = await self._submit(context, command, TxnResult)
        if result.succeeded:
            return kv_pb2.CompareAndSwapResponse(header=header, succeeded=True)
        # compare_and_swap's failure branch is one Range of the key; anything
        # else is the saved answer of another transaction with this sequence.
        if len(result.responses) != 1 or type(result.responses[0]) is not RangeResult:
            _abort(sequence_reused(command), header.member_id)
        current = result.responses[0]
        kv = current.kvs[0] if current.kvs else None
        return kv_pb2.CompareAndSwapResponse(header=header, succeeded=False,
                                             current=convert.optional_key_value_to_proto(kv))

    @_rpc
    async def OpenSession(self, request: kv_pb2.OpenSessionRequest, context) -> kv_pb2.OpenSessionResponse:
        result, header = await self._submit(context, Request(Op.OPEN_SESSION), SessionOpened)
        return kv_pb2.OpenSessionResponse(header=header, client_id=result.client_id)

    @_rpc
    async def Compact(self, request: kv_pb2.CompactRequest, context) -> kv_pb2.CompactResponse:
        # A log command without a session: the state machine decides
        # (kvpaxos.kv.compaction); a refusal changed nothing.  Unary only.
        command = Request(Op.COMPACT, compact_revision=request.revision)
        _checked(self._calls.member_id, partial(validate_request, command))
        result, header = await self._submit(context, command, (CompactDone, CompactRefused))
        if type(result) is CompactRefused:
            _abort(compact_refused(result, request.revision), header.member_id)
        return kv_pb2.CompactResponse(header=header, compact_revision=result.compacted)

    async def _submit(self, context, command: Request, kind):
        """
        Submit C{command} and return its result of type C{kind} (a type, or
        a tuple of them) with the header.  A result of another type is a
        session retry whose sequence first went with a different request
        (FAILED_PRECONDITION), or without a session a node bug (INTERNAL).
        """
        credential = self._calls.credential(context)
        result, header = await self._calls.call(
            context, lambda timeout_s: self._node.submit(command, timeout_s, *node_arguments(credential)))
        if not isinstance(result, kind):
            if command.client_id:
                _abort(sequence_reused(command), header.member_id)
            _log.error("node answered {command!r} with {result!r}", command=command, result=result)
            _abort(internal(f"internal error: unexpected result {type(result).__name__}"), header.member_id)
        return result, header


    async def Stream(self, request_iterator, context) -> None:
        """
        Many requests over one call: each received batch's requests run at
        once, each as its unary method runs it (its own timeout, result and
        error); the answers go back batched, as many per message as settled
        since the last one was written.
        """
        out = _StreamAnswers(context)
        credential = self._calls.credential(context)
        writer = asyncio.ensure_future(out.write_all())
        running: set = set()
        ended = False
        try:
            while True:
                batch = await context.read()
                if batch is grpc.aio.EOF:
                    break
                for one in batch.requests:
                    kind = one.WhichOneof("request")
                    # Running, or answered and not yet written (a client
                    # that does not read holds them): both count.
                    refusal = None
                    if kind is None:
                        refusal = _NO_REQUEST
                    elif len(running) + out.unwritten >= self.stream_requests_max:
                        refusal = _too_many(f"more than {self.stream_requests_max} requests of one stream in flight")
                    elif self._streamed_running >= self.server_stream_requests_max:
                        refusal = _too_many(f"more than {self.server_stream_requests_max} streamed requests in "
                                            "flight at this member")
                    if refusal is not None:
                        self._calls.count(_STREAMED[kind].__name__ if kind else "Stream", refusal.code)
                        out.answer(_stream_error(one.id, refusal, self._calls.member_id))
                        continue
                    task = asyncio.ensure_future(self._streamed(kind, one, out, _streamed_context(one, credential)))
                    running.add(task)
                    self._streamed_running += 1
                    task.add_done_callback(self._stream_task_done(running))
            if running:
                await asyncio.gather(*running)
            ended = True
        finally:
            for task in list(running):
                task.cancel()
            out.close()
            if not ended:
                writer.cancel()  # the call is gone (cancelled or failed): nothing to write to
        await writer

    def _stream_task_done(self, running: set) -> Callable:
        def done(task) -> None:
            running.discard(task)
            self._streamed_running -= 1
        return done

    async def _streamed(self, kind: str, one: kv_pb2.StreamRequest, out: "_StreamAnswers", context) -> None:
        method = _STREAMED[kind]
        name = method.__name__
        try:
            response = await method(self, getattr(one, kind), context)
        except _Abort as abort:
            self._calls.count(name, abort.status.code)
            out.answer(_stream_error(one.id, abort.status))
            return
        except Exception:
            _log.failure("streamed {kind} request failed unexpectedly", kind=kind)
            self._calls.count(name, grpc.StatusCode.INTERNAL)
            out.answer(_stream_error(one.id, internal("internal error").rich(self._calls.member_id)))
            return
        self._calls.count(name, grpc.StatusCode.OK)
        out.answer(kv_pb2.StreamResponse(id=one.id, **{kind: response}))


#: Stream request kinds -> the unary handler that serves each (unwrapped:
#: a refusal is raised as L{_Abort}, then sent as that request's error).
_STREAMED = {
    "get": KVServicer.Get.__wrapped__,
    "put": KVServicer.Put.__wrapped__,
    "delete": KVServicer.Delete.__wrapped__,
    "append": KVServicer.Append.__wrapped__,
    "range": KVServicer.Range.__wrapped__,
    "txn": KVServicer.Txn.__wrapped__,
    "compare_and_swap": KVServicer.CompareAndSwap.__wrapped__,
    "open_session": KVServicer.OpenSession.__wrapped__,
}


class ClusterServicer(kv_pb2_grpc.ClusterServicer):
    """
    C{kvpaxos.v1.Cluster}: the node's view of the cluster, read-only.
    C{MemberList} needs a node that also provides
    L{kvpaxos.node.interfaces.IMembership} (C{members()}).
    """

    def __init__(self, node, calls: _NodeCalls) -> None:
        self._node = node
        self._calls = calls

    @_rpc
    async def Status(self, request: kv_pb2.StatusRequest, context) -> kv_pb2.StatusResponse:
        status, header = await self._calls.call(context, lambda timeout_s: self._node.status())
        return kv_pb2.StatusResponse(
            header=header,
            member_id=status.member_id,
            role=status.role,
            leader_id=status.leader or 0,
            voters=sorted(status.voters),
            learners=sorted(status.learners),
            chosen_index=status.chosen_index,
            applied_index=status.applied_index,
            ballot_round=status.ballot_round,
            used_bytes=status.used_bytes,
            quota_bytes=status.quota_bytes,
            space_alarm=status.space_alarm,
        )

    @_rpc
    async def MemberList(self, request: kv_pb2.MemberListRequest, context) -> kv_pb2.MemberListResponse:
        view, header = await self._calls.call(context, lambda timeout_s: self._node.members())
        return convert.member_list_response(view, header)
