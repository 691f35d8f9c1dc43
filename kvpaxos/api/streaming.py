"""
What C{KV.Stream} (L{kvpaxos.api.servicers.KVServicer.Stream}) is made of
besides the handler bodies it shares with the unary RPCs: the caps on
requests in flight, the context a streamed request runs with (its own
timeout, L{_Streamed}), the answer carrying an error, and the
writer that batches answers into messages under the limit
(L{_StreamAnswers}).
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

import grpc

from kvpaxos.api import errors
from kvpaxos.api.limits import MAX_MESSAGE_BYTES
from kvpaxos.api.statuses import Status
from kvpaxos.v1 import kv_pb2

#: The most requests of one stream in flight at once, and of every stream
#: of one server (L{kvpaxos.api.servicers.KVServicer.stream_requests_max}, ...).
MAX_STREAM_REQUESTS = 4096
MAX_SERVER_STREAM_REQUESTS = 16384


class _Streamed:
    """
    The context a streamed request sees: its deadline, counted from when it
    was read (None: the request timeout applies), and its stream's
    credential (L{kvpaxos.node.auth.Credential}).
    """

    __slots__ = ("_deadline", "credential")

    def __init__(self, timeout_s: Optional[float], credential) -> None:
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.credential = credential

    def time_remaining(self) -> Optional[float]:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())


def _streamed_context(one: kv_pb2.StreamRequest, credential):
    """The context request C{one} of a stream runs with: its own timeout, if it carries one."""
    timeout_s = one.timeout.ToNanoseconds() / 1e9 if one.HasField("timeout") else None
    return _Streamed(timeout_s, credential)


_NO_REQUEST = Status(grpc.StatusCode.INVALID_ARGUMENT, "a stream request carries no request", errors.INVALID_ARGUMENT)


def _too_many(message: str) -> Status:
    """The status of a stream request not run because too many are in flight."""
    return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, errors.TOO_MANY_REQUESTS)


def _stream_error(request_id: int, status, member_id: Optional[int] = None) -> kv_pb2.StreamResponse:
    """The answer carrying C{status} (a C{grpc.Status}, or one of ours) as a google.rpc.Status."""
    if not isinstance(status, grpc.Status):
        status = status.rich(member_id)
    details = dict(status.trailing_metadata).get(errors.DETAILS_KEY, b"")
    return kv_pb2.StreamResponse(id=request_id, error=details)


class _StreamAnswers:
    """
    A stream's answers, written in batches by one writer coroutine: every
    answer settled before the writer next runs goes in its message.
    """

    #: The most bytes of answers one message carries (room left under the
    #: message limit for the wrapper's own bytes).
    budget = MAX_MESSAGE_BYTES - (64 << 10)

    def __init__(self, context) -> None:
        self._context = context
        self._pending: list = []
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def unwritten(self) -> int:
        """Answers waiting to be written."""
        return len(self._pending)

    def answer(self, response: kv_pb2.StreamResponse) -> None:
        self._pending.append(response)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def write_all(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            for message in self._messages(batch):
                await self._context.write(message)
            if self._closed and not self._pending:
                return

    def _messages(self, batch: list):
        """C{batch} in messages of at most L{budget} bytes of answers (one answer each at least)."""
        chunk, size = [], 0
        for answer in batch:
            bytes_ = answer.ByteSize()
            if chunk and size + bytes_ > self.budget:
                yield kv_pb2.StreamResponses(responses=chunk)
                chunk, size = [], 0
            chunk.append(answer)
            size += bytes_
        if chunk:
            yield kv_pb2.StreamResponses(responses=chunk)
