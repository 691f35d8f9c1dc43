"""
L{Multiplexer}: many concurrent requests to one member over one
C{KV.Stream} call (issue 12's multiplexed client path).  Requests that
queue up while a message is being sent go together in the next one; each
answer settles its own request, with its response or, as a
C{grpc.aio.AioRpcError} carrying the same code, message and ErrorInfo as
the unary RPC's error, its failure.  A stream that breaks fails every
request it carried with its error: their outcome is unknown, as a unary
call's that failed after sending (the caller's retry policy decides).

Not yet wired into L{kvpaxos.client.aio.AsyncClient}: the benchmark
(C{bench/kv_bench.py --stream}) drives it directly.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable, Optional

import grpc
import grpc.aio

from kvpaxos.api.errors import DETAILS_KEY
from kvpaxos.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["Multiplexer"]

#: The request kinds a stream carries (the StreamRequest oneof's names).
KINDS = ("get", "put", "delete", "append", "range", "txn", "compare_and_swap", "open_session")


def _code_of(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _error_of(details: bytes) -> grpc.aio.AioRpcError:
    """The C{AioRpcError} of a streamed request's error (a serialized google.rpc.Status)."""
    from google.rpc import status_pb2

    status = status_pb2.Status.FromString(details)
    trailing = grpc.aio.Metadata((DETAILS_KEY, details))
    return grpc.aio.AioRpcError(_code_of(status.code), grpc.aio.Metadata(), trailing, status.message)


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
        if kind not in KINDS:
            raise ValueError(f"a stream carries no {kind!r} requests")

        async def call(request, timeout: Optional[float] = None):
            return await self.request(kind, request, timeout)

        return call

    async def request(self, kind: str, message: Any, timeout_s: Optional[float] = None) -> Any:
        """Send one request of C{kind} and return its response, or raise its error."""
        self._open()
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        pending = self._pending  # this stream's (a later stream has its own)
        pending[request_id] = future
        queued = kv_pb2.StreamRequest(id=request_id, **{kind: message})
        self._queued.append(queued)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            pending.pop(request_id, None)
            if queued in self._queued:  # not sent yet: it never will be
                self._queued.remove(queued)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                f"no answer on the stream within {timeout_s} s",
            ) from None

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
                for answer in message.responses:
                    future = pending.pop(answer.id, None)
                    if future is None or future.done():
                        continue
                    kind = answer.WhichOneof("response")
                    if kind == "error":
                        future.set_exception(_error_of(answer.error))
                    else:
                        future.set_result(getattr(answer, kind))
        except grpc.aio.AioRpcError as error:
            broken: BaseException = error
        except asyncio.CancelledError:
            broken = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(),
                                          grpc.aio.Metadata(), "the stream was closed")
        else:
            broken = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                          grpc.aio.Metadata(), "the stream ended")
        self._broken(call)
        for request_id in sorted(pending):
            future = pending.pop(request_id)
            if not future.done():
                future.set_exception(broken)

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
