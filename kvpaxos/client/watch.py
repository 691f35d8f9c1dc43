"""
Watching keys (C{kvpaxos.v1.Watch}, C{proto/kvpaxos/v1/watch.proto}) from
the clients: L{Watch} (a blocking iterator) and L{AsyncWatch} (an async
iterator) of L{WatchEvent}s.

    with client.watch(b"app/", prefix=True) as events:
        for event in events:
            print(event.kind, event.key, event.value, event.revision)

A watch follows one stream to one member.  When the stream breaks (the
member stops, the connection drops, the member is removed), the watch
opens another to the next endpoint and asks for the revision after the
last one it was sent everything up to, so the events go on exactly where
they stopped: no gap, no duplicate, on any member.  It waits between
attempts with the client's backoff; it has no deadline (a watch lasts
until it is closed).  A start revision that was compacted away, before or
during a resume, raises L{WatchCompacted} (its C{compact_revision} is
where the history starts: read the keys anew, then watch from there); a
watch the member refuses (permission, a bad range) raises the error it
named.  Pure I/O over the policy objects (L{kvpaxos.client.retry}).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import grpc

from kvpaxos.client.errors import ClientError, InvalidArgument, RequestFailed, rpc_failure
from kvpaxos.client.requests import BytesLike, Operation, _bytes, _range_end
from kvpaxos.v1 import kv_pb2, watch_pb2, watch_pb2_grpc

__all__ = ["AsyncWatch", "Watch", "WatchCompacted", "WatchEvent", "watch_request"]


class WatchCompacted(ClientError):
    """
    The watch's next revision is older than the history kept: events were
    compacted away.  C{compact_revision}: the first revision still kept.
    """

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class WatchEvent:
    """
    One change: C{kind} C{"put"} or C{"delete"}, the key's new record
    C{kv} (a delete: the key, with C{mod_revision} the deleting revision),
    and its previous record C{prev_kv} if the watch asked (None otherwise,
    or if the key did not exist).
    """

    kind: str
    kv: kv_pb2.KeyValue
    prev_kv: Optional[kv_pb2.KeyValue] = None

    @property
    def key(self) -> bytes:
        return self.kv.key

    @property
    def value(self) -> bytes:
        return self.kv.value

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


def watch_request(key: BytesLike, range_end: Optional[BytesLike] = None, prefix: bool = False,
                  start_revision: int = 0, prev_kv: bool = False, no_put: bool = False,
                  no_delete: bool = False) -> watch_pb2.WatchCreateRequest:
    """The create request of a watch (see L{Watch}); L{InvalidArgument} for a bad one."""
    key = _bytes(key)
    if not isinstance(start_revision, int) or start_revision < 0:
        raise InvalidArgument(f"start_revision must be 0 (now) or more, not {start_revision!r}")
    filters = ([watch_pb2.WatchCreateRequest.NOPUT] if no_put else []) + (
        [watch_pb2.WatchCreateRequest.NODELETE] if no_delete else [])
    return watch_pb2.WatchCreateRequest(key=key, range_end=_range_end(key, range_end, prefix),
                                        start_revision=start_revision, prev_kv=prev_kv, filters=filters)


def _event(message: watch_pb2.Event) -> WatchEvent:
    kind = "put" if message.type == watch_pb2.Event.PUT else "delete"
    return WatchEvent(kind, message.kv, message.prev_kv if message.HasField("prev_kv") else None)


class _Progress:
    """
    Where a watch stands: the next revision it needs (0 until the first
    stream said where "now" is), read from the responses (pure).
    """

    def __init__(self, request: watch_pb2.WatchCreateRequest) -> None:
        self.request = request
        self.next_revision = request.start_revision

    def create(self) -> watch_pb2.WatchRequest:
        request = watch_pb2.WatchCreateRequest()
        request.CopyFrom(self.request)
        request.start_revision = self.next_revision
        return watch_pb2.WatchRequest(create_request=request)

    def read(self, endpoint: str, response: watch_pb2.WatchResponse) -> list:
        """The events of C{response}; raises for a refusal or a compaction."""
        if response.canceled:
            if response.compact_revision:
                raise WatchCompacted(
                    f"{endpoint}: the watch's revision {self.next_revision} was compacted; the history starts at "
                    f"{response.compact_revision}", response.compact_revision)
            raise RequestFailed(f"{endpoint}: the watch was refused: {response.cancel_reason or 'cancelled'}",
                                None, response.cancel_reason)
        if response.created:
            if self.next_revision == 0:
                self.next_revision = response.header.revision + 1
            return []
        events = [_event(e) for e in response.events]
        if response.header.revision >= self.next_revision:
            self.next_revision = response.header.revision + 1
        return events


def _retriable(error: grpc.RpcError) -> bool:
    code = rpc_failure(error).code
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)


class Watch:
    """
    A blocking iterator of L{WatchEvent}s (see the module docstring);
    L{close} (or leaving the C{with} block) ends it from any thread.
    """

    def __init__(self, client, request: watch_pb2.WatchCreateRequest) -> None:
        self._client = client
        self._progress = _Progress(request)
        self._closed = threading.Event()
        self._call = None
        self._lock = threading.Lock()
        #: The endpoint the watch streams from now (None between streams).
        self.endpoint: Optional[str] = None

    @property
    def next_revision(self) -> int:
        """The revision the watch needs next (0 until the first stream answered)."""
        return self._progress.next_revision

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def __iter__(self) -> Iterator[WatchEvent]:
        pauses = 0
        tried: set = set()
        while not self._closed.is_set():
            endpoint = self._client._policy.directory.pick(False, tried)
            if endpoint is None:
                tried.clear()
                pauses += 1
                if self._closed.wait(self._client._policy.backoff.delay_s(pauses, self._client._policy.rng)):
                    return
                continue
            try:
                for event in self._stream(endpoint):
                    pauses = 0
                    yield event
                if self._closed.is_set():
                    return
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                if not _retriable(error):
                    raise RequestFailed(f"{endpoint}: the watch failed: {rpc_failure(error).details}",
                                        rpc_failure(error).code, rpc_failure(error).details) from None
            tried.add(endpoint)
            self._client._policy.directory.failed(endpoint, None)

    def _stream(self, endpoint: str) -> Iterator[WatchEvent]:
        requests: queue.Queue = queue.Queue()
        requests.put(self._progress.create())

        def outgoing():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        stub = watch_pb2_grpc.WatchStub(self._client._connection(endpoint).channel)
        metadata = self._client._metadata(_WATCH_OPERATION, self._client._clock() + self._client._policy.timeout_s)
        call = stub.Watch(outgoing(), metadata=metadata) if metadata else stub.Watch(outgoing())
        with self._lock:
            self._call = call
        self.endpoint = endpoint
        try:
            if self._closed.is_set():
                call.cancel()
            for response in call:
                for event in self._progress.read(endpoint, response):
                    yield event
        finally:
            self.endpoint = None
            requests.put(None)
            call.cancel()


class AsyncWatch:
    """The asyncio twin of L{Watch}: C{async for event in watch}, C{await watch.close()}."""

    def __init__(self, client, request: watch_pb2.WatchCreateRequest) -> None:
        self._client = client
        self._progress = _Progress(request)
        self._closed = False
        self._call = None

    @property
    def next_revision(self) -> int:
        return self._progress.next_revision

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __aiter__(self):
        return self._events()

    async def _events(self):
        pauses = 0
        tried: set = set()
        while not self._closed:
            endpoint = self._client._policy.directory.pick(False, tried)
            if endpoint is None:
                tried.clear()
                pauses += 1
                await self._client._sleep(self._client._policy.backoff.delay_s(pauses, self._client._policy.rng))
                continue
            try:
                stub = watch_pb2_grpc.WatchStub(self._client._connection(endpoint).channel)
                metadata = await self._client._metadata(
                    _WATCH_OPERATION, self._client._clock() + self._client._policy.timeout_s)
                call = stub.Watch(metadata=metadata) if metadata else stub.Watch()
                self._call = call
                await call.write(self._progress.create())
                async for response in call:
                    for event in self._progress.read(endpoint, response):
                        pauses = 0
                        yield event
                if self._closed:
                    return
            except grpc.RpcError as error:
                if self._closed:
                    return
                if not _retriable(error):
                    raise RequestFailed(f"{endpoint}: the watch failed: {rpc_failure(error).details}",
                                        rpc_failure(error).code, rpc_failure(error).details) from None
            finally:
                if self._call is not None:
                    self._call.cancel()
                    self._call = None
            tried.add(endpoint)
            self._client._policy.directory.failed(endpoint, None)


#: What a watch stream is, for the client's token (it carries one, like a read).
_WATCH_OPERATION = Operation("watch", "Watch", None, leader=False)
