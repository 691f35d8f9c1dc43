"""
Many concurrent requests to one member over one C{KV.Stream} call
(issue 12's multiplexed client path): L{Multiplexer} on C{grpc.aio} for
L{kvpaxos.client.aio.AsyncClient}, L{BlockingMultiplexer} on grpcio's
blocking API for L{kvpaxos.client.blocking.Client}.

Requests that queue up while a message is being sent go together in the
next one; each carries its own timeout (the time its caller waits), which
the member keeps as a unary RPC's deadline.  Each answer settles its own
request, with its response or, as a C{grpc.RpcError} carrying the same
code, message and ErrorInfo as the unary RPC's error, its failure.  A
stream that breaks fails every request it carried with its error, marked
L{broken}: their outcome is unknown, as a unary call's that failed after
sending (the caller's retry policy decides), and what was queued on it is
never sent on a later stream.  The next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from typing import Any, Callable, Optional

import grpc
import grpc.aio

from kvpaxos.api.errors import DETAILS_KEY
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["BlockingMultiplexer", "KIND_OF_RPC", "Multiplexer", "broken"]

#: The request kinds a stream carries (the StreamRequest oneof's names).
KINDS = ("get", "put", "delete", "append", "range", "txn", "compare_and_swap", "open_session")

#: The C{KV} unary RPC each kind stands for: C{"Put"} -> C{"put"}, ...
KIND_OF_RPC = {
    "Get": "get", "Put": "put", "Delete": "delete", "Append": "append", "Range": "range", "Txn": "txn",
    "CompareAndSwap": "compare_and_swap", "OpenSession": "open_session",
}


def _code_of(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


class _StreamBroken(grpc.aio.AioRpcError):
    """The error of a request whose stream broke (not the request's own answer)."""


def broken(error: BaseException) -> bool:
    """True when C{error} is a request's because its stream broke, not its own answer."""
    return isinstance(error, _StreamBroken)


def _broken_error(code: grpc.StatusCode, details: str) -> _StreamBroken:
    return _StreamBroken(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def _of_call(error: grpc.RpcError) -> _StreamBroken:
    """The failure of a whole stream call as each of its requests' error."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else ()
    return _StreamBroken(code, grpc.aio.Metadata(), grpc.aio.Metadata(*(trailing or ())), details)


def _error_of(details: bytes) -> grpc.aio.AioRpcError:
    """The C{RpcError} of a streamed request's error (a serialized google.rpc.Status)."""
    from google.rpc import status_pb2

    status = status_pb2.Status.FromString(details)
    trailing = grpc.aio.Metadata((DETAILS_KEY, details))
    return grpc.aio.AioRpcError(_code_of(status.code), grpc.aio.Metadata(), trailing, status.message)


def _deadline_error(timeout_s: Optional[float]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
        f"no answer on the stream within {timeout_s} s",
    )


def _stream_request(request_id: int, kind: str, message: Any, timeout_s: Optional[float]) -> kv_pb2.StreamRequest:
    request = kv_pb2.StreamRequest(id=request_id, **{kind: message})
    if timeout_s is not None:
        request.timeout.FromNanoseconds(max(0, int(timeout_s * 1e9)))
    return request


def _settle(pending: dict, message: kv_pb2.StreamResponses, set_result: Callable, set_exception: Callable) -> None:
    """Settle the request of every answer in C{message} (answers to requests given up on are dropped)."""
    for answer in message.responses:
        future = pending.pop(answer.id, None)
        if future is None or future.done():
            continue
        kind = answer.WhichOneof("response")
        if kind == "error":
            set_exception(future, _error_of(answer.error))
        elif kind is None:
            set_exception(future, _broken_error(grpc.StatusCode.INTERNAL, "an answer with no response"))
        else:
            set_result(future, getattr(answer, kind))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a stream carries no {kind!r} requests")


class Multiplexer:
    """
    One C{KV.Stream} to one member (over C{channel}, a C{grpc.aio}
    channel), opened on the first request and again after it broke.  Use
    it from one event loop.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = kv_pb2_grpc.KVStub(channel)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._queued: list = []
        self._wake: Optional[asyncio.Event] = None
        self._call = None
        self._reader: Optional[asyncio.Task] = None
        #: Messages sent, and requests they carried (for the benchmark).
        self.messages = 0
        self.requests = 0

    def caller(self, kind: str) -> Callable:
        """An C{async (request, timeout=...) -> response} for requests of C{kind}, like a stub's method."""
        _check_kind(kind)

        async def call(request, timeout: Optional[float] = None):
            return await self.request(kind, request, timeout)

        return call

    async def request(self, kind: str, message: Any, timeout_s: Optional[float] = None) -> Any:
        """Send one request of C{kind} and return its response, or raise its error."""
        _check_kind(kind)
        self._open()
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        pending = self._pending  # this stream's (a later stream has its own)
        pending[request_id] = future
        queued = _stream_request(request_id, kind, message, timeout_s)
        self._queued.append(queued)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            pending.pop(request_id, None)
            if any(q is queued for q in self._queued):  # not sent yet: it never will be
                self._queued = [q for q in self._queued if q is not queued]
            raise _deadline_error(timeout_s) from None

    def _open(self) -> None:
        if self._call is not None:
            return
        self._wake = asyncio.Event()
        self._pending = {}
        self._call = self._stub.Stream(self._requests())
        self._reader = asyncio.ensure_future(self._read(self._call, self._pending))

    async def _requests(self):
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            batch, self._queued = self._queued, []
            if batch:
                self.messages += 1
                self.requests += len(batch)
                yield kv_pb2.StreamRequests(requests=batch)

    async def _read(self, call, pending: dict) -> None:
        try:
            async for message in call:
                _settle(pending, message, asyncio.Future.set_result, asyncio.Future.set_exception)
        except grpc.RpcError as error:
            failure: BaseException = _of_call(error)
        except asyncio.CancelledError:
            failure = _broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
        else:
            failure = _broken_error(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        self._broken(call)
        for request_id in sorted(pending):
            future = pending.pop(request_id)
            if not future.done():
                future.set_exception(failure)

    def _broken(self, call) -> None:
        """C{call} is over: what was queued on it (failed with it) is never sent on a later one."""
        if self._call is call:
            self._call = None
            self._queued = []

    async def close(self) -> None:
        """End the stream; requests still waiting fail (CANCELLED)."""
        call = self._call
        if call is not None:
            self._broken(call)
            call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class _OneStream:
    """One call of a L{BlockingMultiplexer}: its requests waiting for answers, and those not sent yet."""

    def __init__(self, lock: threading.Lock) -> None:
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.queued: list = []
        self.wake = threading.Condition(lock)
        self.over = False
        self.call = None


class BlockingMultiplexer:
    """
    One C{KV.Stream} to one member over a blocking grpcio C{channel},
    shared by every thread: L{request} blocks its caller until the answer.
    grpcio's own thread takes what is queued (as a request iterator); a
    reader thread of ours settles the answers.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = kv_pb2_grpc.KVStub(channel)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stream: Optional[_OneStream] = None
        self._closed = False
        self.messages = 0
        self.requests = 0

    def request(self, kind: str, message: Any, timeout_s: Optional[float] = None) -> Any:
        """Send one request of C{kind}; return its response or raise its error (a C{grpc.RpcError})."""
        _check_kind(kind)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise _broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
            stream = self._stream
            if stream is None:
                stream = self._stream = self._open()
            request_id = next(self._ids)
            queued = _stream_request(request_id, kind, message, timeout_s)
            stream.pending[request_id] = future
            stream.queued.append(queued)
            stream.wake.notify()
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            with self._lock:
                stream.pending.pop(request_id, None)
                stream.queued = [q for q in stream.queued if q is not queued]  # unsent: never sent
            raise _deadline_error(timeout_s) from None

    def _open(self) -> _OneStream:
        """A new stream (called with the lock held)."""
        stream = _OneStream(self._lock)
        stream.call = self._stub.Stream(self._requests(stream))
        threading.Thread(target=self._read, args=(stream,), name="kvpaxos-stream-reader", daemon=True).start()
        return stream

    def _requests(self, stream: _OneStream):
        while True:
            with self._lock:
                while not stream.queued and not stream.over:
                    stream.wake.wait()
                if stream.over:
                    return
                batch, stream.queued = stream.queued, []
                self.messages += 1
                self.requests += len(batch)
            yield kv_pb2.StreamRequests(requests=batch)

    def _read(self, stream: _OneStream) -> None:
        def set_result(future, value):
            future.set_result(value)

        def set_exception(future, error):
            future.set_exception(error)

        failure: BaseException
        try:
            for message in stream.call:
                with self._lock:
                    answered = {a.id: stream.pending.pop(a.id) for a in message.responses if a.id in stream.pending}
                _settle(answered, message, set_result, set_exception)
        except grpc.RpcError as error:
            failure = (_broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
                       if error.code() is grpc.StatusCode.CANCELLED and self._closed else _of_call(error))
        except Exception as error:  # grpcio's own failure: the requests still get an answer
            failure = _broken_error(grpc.StatusCode.UNKNOWN, f"the stream failed: {error!r}")
        else:
            failure = _broken_error(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        with self._lock:
            stream.over = True
            stream.wake.notify_all()
            if self._stream is stream:
                self._stream = None
            pending, stream.pending, stream.queued = stream.pending, {}, []
        for request_id in sorted(pending):
            future = pending[request_id]
            if not future.done():
                future.set_exception(failure)

    def close(self) -> None:
        """End the stream; requests still waiting fail (CANCELLED)."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.over = True
                stream.wake.notify_all()
        if stream is not None:
            stream.call.cancel()
