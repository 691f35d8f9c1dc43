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
message carries at most L{BATCH_BYTES} of requests (more go in the next;
a request too large for any message is refused alone, before anything is
sent).  A stream that breaks fails every request it carried with its
error, marked L{broken}: their outcome is unknown, as a unary call's that
failed after sending (the caller's retry policy decides, L{as_unavailable}),
and what was queued on it, or given up on (timed out, cancelled), is never
sent on a later stream.  The next request opens a new stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import threading
import time
from typing import Any, Callable, Optional

import grpc
import grpc.aio

from kvpaxos.api.errors import DETAILS_KEY
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["BlockingMultiplexer", "KIND_OF_RPC", "Multiplexer", "as_unavailable", "broken"]

#: The request kinds a stream carries (the StreamRequest oneof's names).
KINDS = ("get", "put", "delete", "append", "range", "txn", "compare_and_swap", "open_session")

#: The C{KV} unary RPC each kind stands for: C{"Put"} -> C{"put"}, ...
KIND_OF_RPC = {
    "Get": "get", "Put": "put", "Delete": "delete", "Append": "append", "Range": "range", "Txn": "txn",
    "CompareAndSwap": "compare_and_swap", "OpenSession": "open_session",
}


#: The most bytes of requests one message carries (room left under the
#: message limit for the wrapper's own bytes); a request larger than this
#: goes alone, and one larger than L{MAX_REQUEST_BYTES} is refused.
BATCH_BYTES = MAX_MESSAGE_BYTES - (64 << 10)
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES - 16


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


def as_unavailable(error: _StreamBroken) -> _StreamBroken:
    """
    A broken stream's error as the retry policy must read it: UNAVAILABLE
    (the member or the link failed while the request was in flight: its
    outcome is unknown, as a unary call's that lost its connection),
    whatever code ended the call.
    """
    if error.code() is grpc.StatusCode.UNAVAILABLE:
        return error
    return _broken_error(grpc.StatusCode.UNAVAILABLE,
                         f"the stream broke ({error.code().name}: {error.details()})")


def _of_call(error: grpc.RpcError) -> _StreamBroken:
    """The failure of a whole stream call as each of its requests' error."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else ()
    return _StreamBroken(code, grpc.aio.Metadata(), grpc.aio.Metadata(*(trailing or ())), details)


def _error_of(details: bytes) -> grpc.aio.AioRpcError:
    """The C{RpcError} of a streamed request's error (a serialized google.rpc.Status)."""
    from google.rpc import status_pb2

    try:
        status = status_pb2.Status.FromString(details)
    except Exception:  # garbage from the member: still this request's answer
        return grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                    "the member answered with an unreadable error")
    trailing = grpc.aio.Metadata((DETAILS_KEY, details))
    return grpc.aio.AioRpcError(_code_of(status.code), grpc.aio.Metadata(), trailing, status.message)


def _deadline_error(timeout_s: Optional[float]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
        f"no answer on the stream within {timeout_s} s",
    )


def _queued(request_id: int, kind: str, message: Any, timeout_s: Optional[float], now: float) -> "_Queued":
    """
    A request ready to queue: its message, its deadline (None: none) and
    size.  Its timeout is stamped when it is sent (the time left then).

    @raise grpc.RpcError: RESOURCE_EXHAUSTED, when no message could carry it.
    """
    request = kv_pb2.StreamRequest(id=request_id, **{kind: message})
    size = request.ByteSize() + 16  # its tag and length, and the timeout stamped later
    if size > MAX_REQUEST_BYTES:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
            f"a request of {size} bytes is larger than a message may be ({MAX_REQUEST_BYTES})")
    finite = timeout_s is not None and math.isfinite(timeout_s)
    return _Queued(request, now + timeout_s if finite else None, size)


class _Queued:
    __slots__ = ("request", "deadline", "size")

    def __init__(self, request: kv_pb2.StreamRequest, deadline: Optional[float], size: int) -> None:
        self.request, self.deadline, self.size = request, deadline, size


def _messages(batch: list, now: float):
    """
    The messages that carry C{batch} (L{_Queued}s), each under
    L{BATCH_BYTES} (a larger request alone), every request's timeout
    stamped with the time left at C{now}.
    """
    chunk, size = [], 0
    for queued in batch:
        if queued.deadline is not None:
            queued.request.timeout.FromNanoseconds(max(0, int((queued.deadline - now) * 1e9)))
        if chunk and size + queued.size > BATCH_BYTES:
            yield kv_pb2.StreamRequests(requests=chunk)
            chunk, size = [], 0
        chunk.append(queued.request)
        size += queued.size
    if chunk:
        yield kv_pb2.StreamRequests(requests=chunk)


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
            set_exception(future, grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(),
                                                       grpc.aio.Metadata(), "an answer with no response"))
        else:
            set_result(future, getattr(answer, kind))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a stream carries no {kind!r} requests")


class _OneStream:
    """
    One call of a multiplexer: its requests waiting for answers (by id),
    those not sent yet (L{_Queued}), and whether it is over.
    """

    def __init__(self, wake) -> None:
        self.pending: dict = {}
        self.queued: list = []
        self.wake = wake  # an asyncio.Event, or a threading.Condition
        self.over = False
        self.call = None
        self.reader = None

    def forget(self, request_id: int, queued: "_Queued") -> None:
        """The caller gave up on this request: it is never answered, and never sent if it is not yet."""
        self.pending.pop(request_id, None)
        if any(q is queued for q in self.queued):
            self.queued = [q for q in self.queued if q is not queued]


class _Multiplexing:
    """What both multiplexers hold: the stub, the clock, request ids, the current stream, whether closed."""

    def __init__(self, channel, clock: Optional[Callable[[], float]]) -> None:
        self._stub = kv_pb2_grpc.KVStub(channel)
        self._clock = clock
        self._ids = itertools.count(1)
        self._stream: Optional[_OneStream] = None
        self._closed = False
        #: Messages sent, and requests they carried (for the benchmark).
        self.messages = 0
        self.requests = 0

    @property
    def closed(self) -> bool:
        """Whether L{close} was called (later requests are refused)."""
        return self._closed


class Multiplexer(_Multiplexing):
    """
    One C{KV.Stream} to one member (over C{channel}, a C{grpc.aio}
    channel), opened on the first request and again after it broke.  Use
    it from one event loop.
    """

    def __init__(self, channel: grpc.aio.Channel, clock: Optional[Callable[[], float]] = None) -> None:
        """
        @param clock: monotonic seconds, for the timeouts stamped when
            requests are sent (default: the event loop's).
        """
        super().__init__(channel, clock)

    def caller(self, kind: str) -> Callable:
        """An C{async (request, timeout=...) -> response} for requests of C{kind}, like a stub's method."""
        _check_kind(kind)

        async def call(request, timeout: Optional[float] = None):
            return await self.request(kind, request, timeout)

        return call

    async def request(self, kind: str, message: Any, timeout_s: Optional[float] = None) -> Any:
        """Send one request of C{kind} and return its response, or raise its error."""
        _check_kind(kind)
        if self._closed:
            raise _broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        queued = _queued(request_id, kind, message, timeout_s, (self._clock or loop.time)())
        stream = self._open()
        future = loop.create_future()
        stream.pending[request_id] = future
        stream.queued.append(queued)
        stream.wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            stream.forget(request_id, queued)
            raise _deadline_error(timeout_s) from None
        except BaseException:  # cancelled: as a unary call, it is not sent later
            stream.forget(request_id, queued)
            raise

    def _open(self) -> _OneStream:
        stream = self._stream
        if stream is None:
            stream = self._stream = _OneStream(asyncio.Event())
            stream.call = self._stub.Stream(self._requests(stream))
            stream.reader = asyncio.ensure_future(self._read(stream))
        return stream

    async def _requests(self, stream: _OneStream):
        clock = self._clock or asyncio.get_running_loop().time
        while True:
            await stream.wake.wait()
            stream.wake.clear()
            if stream.over:
                return
            batch, stream.queued = stream.queued, []
            for message in _messages(batch, clock()):
                self.messages += 1
                self.requests += len(message.requests)
                yield message

    async def _read(self, stream: _OneStream) -> None:
        failure: BaseException
        try:
            async for message in stream.call:
                _settle(stream.pending, message, asyncio.Future.set_result, asyncio.Future.set_exception)
        except grpc.RpcError as error:
            failure = _of_call(error)
        except asyncio.CancelledError:
            failure = _broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
        except Exception as error:  # grpcio's own failure: the requests still get an answer
            failure = _broken_error(grpc.StatusCode.UNKNOWN, f"the stream failed: {error!r}")
            stream.call.cancel()
        else:
            failure = _broken_error(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        # Over: its request iterator ends, nothing queued on it is sent,
        # and the next request opens another stream.
        stream.over = True
        stream.wake.set()
        stream.queued = []
        if self._stream is stream:
            self._stream = None
        pending, stream.pending = stream.pending, {}
        for request_id in sorted(pending):
            future = pending[request_id]
            if not future.done():
                future.set_exception(failure)

    async def close(self) -> None:
        """End the stream; requests still waiting fail (CANCELLED); later requests are refused."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.over = True
        stream.wake.set()
        stream.call.cancel()
        await asyncio.gather(stream.reader, return_exceptions=True)


class BlockingMultiplexer(_Multiplexing):
    """
    One C{KV.Stream} to one member over a blocking grpcio C{channel},
    shared by every thread: L{request} blocks its caller until the answer.
    grpcio's own thread takes what is queued (as a request iterator); a
    reader thread of ours settles the answers.
    """

    def __init__(self, channel: grpc.Channel, clock: Callable[[], float] = time.monotonic) -> None:
        """@param clock: monotonic seconds, for the timeouts stamped when requests are sent."""
        super().__init__(channel, clock)
        self._lock = threading.Lock()

    def request(self, kind: str, message: Any, timeout_s: Optional[float] = None) -> Any:
        """Send one request of C{kind}; return its response or raise its error (a C{grpc.RpcError})."""
        _check_kind(kind)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise _broken_error(grpc.StatusCode.CANCELLED, "the stream was closed")
            request_id = next(self._ids)
            queued = _queued(request_id, kind, message, timeout_s, self._clock())
            stream = self._stream
            if stream is None:
                stream = self._stream = self._open()
            stream.pending[request_id] = future
            stream.queued.append(queued)
            stream.wake.notify()
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            with self._lock:
                stream.forget(request_id, queued)
            raise _deadline_error(timeout_s) from None
        except BaseException as error:
            if not isinstance(error, grpc.RpcError):  # interrupted: not sent later
                with self._lock:
                    stream.forget(request_id, queued)
            raise

    def _open(self) -> _OneStream:
        """A new stream (called with the lock held)."""
        stream = _OneStream(threading.Condition(self._lock))
        stream.call = self._stub.Stream(self._requests(stream))
        stream.reader = threading.Thread(target=self._read, args=(stream,), name="kvpaxos-stream-reader",
                                         daemon=True)
        stream.reader.start()
        return stream

    def _requests(self, stream: _OneStream):
        while True:
            with self._lock:
                while not stream.queued and not stream.over:
                    stream.wake.wait()
                if stream.over:
                    return
                batch, stream.queued = stream.queued, []
                messages = list(_messages(batch, self._clock()))
                self.messages += len(messages)
                self.requests += len(batch)
            yield from messages

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
            stream.call.cancel()
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
        """End the stream; requests still waiting fail (CANCELLED); later requests are refused."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.over = True
                stream.wake.notify_all()
        if stream is not None:
            stream.call.cancel()
