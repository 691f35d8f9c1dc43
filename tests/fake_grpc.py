"""
A fake of what a grpc stub raises, shared by the client and CLI tests: a
C{grpc.RpcError} with a status code, a message and, as a kvpaxos server
attaches them, ErrorInfo details in its trailing metadata (built with the
server's own L{kvpaxos.api.errors.rich_status}); and C{KV.Stream} calls
(L{FakeStreamCall}, L{FakeAioStreamCall}) whose requests a fake serves with
its unary handlers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import AsyncIterator, Callable, Iterator, Mapping, Optional

import grpc
from google.rpc import status_pb2

from kvpaxos.api import errors
from kvpaxos.client.stream import KIND_OF_RPC
from kvpaxos.v1 import kv_pb2


class FakeRpcError(grpc.RpcError):
    """An RPC failure: C{code}, C{details} and, when C{reason} is given, an ErrorInfo."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: Optional[str] = None,
                 metadata: Optional[Mapping[str, object]] = None) -> None:
        super().__init__(details)
        self._code, self._details = code, details
        self._trailing = () if reason is None else errors.rich_status(
            code, details, reason, metadata or {}).trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailing


def unavailable(details: str = "no quorum before deadline", leader: Optional[int] = None,
                reason: Optional[str] = errors.UNAVAILABLE) -> FakeRpcError:
    """
    An UNAVAILABLE as a node raises it, naming C{leader} in its metadata;
    with C{reason=None}, as grpcio raises it for a connection failure (no
    details).
    """
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, details, reason,
                        None if reason is None else {errors.LEADER_ID: leader})


# --- KV.Stream, served by a fake's unary handlers ----------------------------

#: The unary RPC each stream request kind stands for.
RPC_OF_KIND = {kind: rpc for rpc, kind in KIND_OF_RPC.items()}


def status_bytes(error: FakeRpcError) -> bytes:
    """C{error} as a serialized google.rpc.Status, as a streamed answer carries it."""
    for key, value in error.trailing_metadata():
        if key == errors.DETAILS_KEY:
            return value
    return status_pb2.Status(code=error.code().value[0], message=error.details()).SerializeToString()


def serve_streamed(serve: Callable, one: kv_pb2.StreamRequest) -> kv_pb2.StreamResponse:
    """
    Answer stream request C{one} with C{serve(rpc, request, timeout)}, as
    the server runs each request of a stream: its unary handler, its own
    timeout, its error as its answer.
    """
    kind = one.WhichOneof("request")
    timeout = one.timeout.ToNanoseconds() / 1e9 if one.HasField("timeout") else None
    try:
        response = serve(RPC_OF_KIND[kind], getattr(one, kind), timeout)
    except FakeRpcError as error:
        return kv_pb2.StreamResponse(id=one.id, error=status_bytes(error))
    except Exception as error:  # a bug in a test's fake: answered, so no caller waits for it
        return kv_pb2.StreamResponse(id=one.id, error=status_pb2.Status(
            code=grpc.StatusCode.UNKNOWN.value[0], message=f"the fake failed: {error!r}").SerializeToString())
    return kv_pb2.StreamResponse(id=one.id, **{kind: response})


_CANCELLED = object()


class FakeStreamCall:
    """
    A blocking C{KV.Stream} call: a thread takes the request iterator's
    messages and serves each request in a thread of its own (so requests
    of many threads run at once, as on a server); the call iterates the
    answers, and raises CANCELLED once cancelled.
    """

    def __init__(self, requests: Iterator, serve: Callable) -> None:
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._consume, args=(requests, serve), daemon=True).start()

    def _consume(self, requests: Iterator, serve: Callable) -> None:
        for message in requests:
            message = kv_pb2.StreamRequests.FromString(message.SerializeToString())
            for one in message.requests:
                threading.Thread(target=self._answer, args=(serve, one), daemon=True).start()

    def _answer(self, serve: Callable, one: kv_pb2.StreamRequest) -> None:
        answer = serve_streamed(serve, one)
        self._answers.put(kv_pb2.StreamResponses.FromString(
            kv_pb2.StreamResponses(responses=[answer]).SerializeToString()))

    def __iter__(self) -> "FakeStreamCall":
        return self

    def __next__(self) -> kv_pb2.StreamResponses:
        answer = self._answers.get()
        if answer is _CANCELLED:
            self._answers.put(_CANCELLED)
            raise FakeRpcError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return answer

    def cancel(self) -> None:
        self._answers.put(_CANCELLED)


class FakeAioStreamCall:
    """The C{grpc.aio} twin of L{FakeStreamCall}: a task takes the request iterator; every request is served at once."""

    def __init__(self, requests: AsyncIterator, serve: Callable) -> None:
        self._answers: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.ensure_future(self._consume(requests, serve))

    async def _consume(self, requests: AsyncIterator, serve: Callable) -> None:
        async for message in requests:
            message = kv_pb2.StreamRequests.FromString(message.SerializeToString())
            answers = [serve_streamed(serve, one) for one in message.requests]
            self._answers.put_nowait(kv_pb2.StreamResponses(responses=answers))

    def __aiter__(self) -> "FakeAioStreamCall":
        return self

    async def __anext__(self) -> kv_pb2.StreamResponses:
        answer = await self._answers.get()
        if answer is _CANCELLED:
            raise asyncio.CancelledError()
        return answer

    def cancel(self) -> None:
        self._task.cancel()
        self._answers.put_nowait(_CANCELLED)
