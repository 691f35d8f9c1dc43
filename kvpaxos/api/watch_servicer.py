"""
The C{kvpaxos.v1.Watch} servicer (C{proto/kvpaxos/v1/watch.proto}): one
stream carries a client's watchers, on the gRPC thread's event loop.

Create, cancel and progress requests cross to the reactor (the node's
L{kvpaxos.node.watch_calls.WatchCalls}); a watcher's batches come back the
other way through its L{_StreamSink}, which the node calls in the reactor
thread: it takes a batch while the stream has fewer than C{queue_events}
events waiting to be written (always, when none wait), else refuses it,
and the watcher pauses where it is until the writer has drained half the
queue and says so (C{watch_ready}).  So a client that reads slowly costs
the member a bounded queue, and misses nothing: its watchers read on from
the history.  A watcher refused at creation (permission, a bad range) is
answered C{created} and C{canceled} with the reason, as etcd does; the
stream goes on.  Nothing here decides what is sent: the node does.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Optional

import grpc

from kvpaxos.api import convert
from kvpaxos.api.credentials import node_arguments
from kvpaxos.api.errors import InvalidArgument
from kvpaxos.api.limits import MAX_MESSAGE_BYTES, check_key
from kvpaxos.api.servicers import _Abort, _NodeCalls
from kvpaxos.kv.history import EventKind
from kvpaxos.node.watchers import Batch, Compacted, WatchSpec
from kvpaxos.v1 import kv_pb2, watch_pb2, watch_pb2_grpc

__all__ = ["WatchServicer"]

#: Events a stream may have waiting to be written before its watchers pause.
QUEUE_EVENTS = 10_000
#: The most watchers one stream may hold.
MAX_WATCHERS = 1000
#: Bytes of events per response (room left for the rest of the message).
_RESPONSE_BUDGET = MAX_MESSAGE_BYTES - (64 << 10)


@dataclass(frozen=True)
class _Created:
    watcher: Any
    revision: int


def _spec(request: watch_pb2.WatchCreateRequest) -> WatchSpec:
    """The L{WatchSpec} of a create request; raises L{InvalidArgument} for a bad one."""
    check_key(request.key)
    end = convert._end_from_proto(request.range_end)
    if request.start_revision < 0:
        raise InvalidArgument(f"start_revision must be 0 (now) or more, not {request.start_revision}")
    filters = set(request.filters)
    unknown = filters - {watch_pb2.WatchCreateRequest.NOPUT, watch_pb2.WatchCreateRequest.NODELETE}
    if unknown:
        raise InvalidArgument(f"unknown watch filter {sorted(unknown)[0]}")
    return WatchSpec(request.key, end, request.start_revision, request.prev_kv,
                     watch_pb2.WatchCreateRequest.NOPUT in filters,
                     watch_pb2.WatchCreateRequest.NODELETE in filters)


def _event(event, prev_kv: bool) -> watch_pb2.Event:
    message = watch_pb2.Event(type=watch_pb2.Event.PUT if event.kind is EventKind.PUT else watch_pb2.Event.DELETE,
                              kv=convert.key_value_to_proto(event.kv))
    if prev_kv and event.prev is not None:
        message.prev_kv.CopyFrom(convert.key_value_to_proto(event.prev))
    return message


class _StreamSink:
    """
    One watcher's sink (L{kvpaxos.node.watchers.Sink}): called by the node
    in the reactor thread, it hands batches to the stream's writer on the
    loop, within the stream's queue budget.
    """

    def __init__(self, stream: "_WatchStream", watch_id: int, prev_kv: bool) -> None:
        self._stream = stream
        self.watch_id = watch_id
        self.prev_kv = prev_kv
        self.watcher = None

    def send(self, batch: Batch) -> bool:
        return self._stream.offer(self, batch)

    def end(self, reason: Compacted) -> None:
        self._stream.post(("compacted", self, reason.compact_revision))


class _WatchStream:
    """The state of one Watch call: its watchers, its queue, its writer."""

    def __init__(self, servicer: "WatchServicer", context, loop) -> None:
        self._servicer = servicer
        self._context = context
        self._loop = loop
        self.sinks: dict[int, _StreamSink] = {}
        self._next_id = 0
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._lock = threading.Lock()
        # Guarded by _lock (reactor and loop threads):
        self._queued = 0
        self._paused: list[_StreamSink] = []
        self.closed = False

    # --- reactor thread -----------------------------------------------------

    def offer(self, sink: _StreamSink, batch: Batch) -> bool:
        n = len(batch.events)
        with self._lock:
            if self.closed:
                return True  # dropped: nobody reads any more (the watcher is being cancelled)
            if self._queued and self._queued + n > self._servicer.queue_events:
                self._paused.append(sink)
                return False
            self._queued += n
        self.post(("events", sink, batch))
        return True

    def post(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            pass

    # --- loop thread ------------------------------------------------------------

    def new_id(self, wanted: int) -> Optional[int]:
        if wanted:
            return None if wanted in self.sinks else wanted
        self._next_id += 1
        while self._next_id in self.sinks:
            self._next_id += 1
        return self._next_id

    async def write_all(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            kind = item[0]
            if kind == "response":
                await self._context.write(item[1])
            elif kind == "events":
                await self._write_events(item[1], item[2])
            else:  # compacted
                sink, revision = item[1], item[2]
                if self.sinks.pop(sink.watch_id, None) is not None:
                    await self._context.write(watch_pb2.WatchResponse(
                        header=self._servicer.header(revision), watch_id=sink.watch_id, canceled=True,
                        compact_revision=revision,
                        cancel_reason="etcdserver: mvcc: required revision has been compacted"))

    async def _write_events(self, sink: _StreamSink, batch: Batch) -> None:
        if sink.watch_id in self.sinks:
            events, size = [], 0
            for i, event in enumerate(batch.events):
                message = _event(event, sink.prev_kv)
                last = i + 1 == len(batch.events) or batch.events[i + 1].revision != event.revision
                events.append(message)
                size += message.ByteSize()
                if last and size >= _RESPONSE_BUDGET and i + 1 < len(batch.events):
                    # Split at a revision's end only: each revision stays in one response.
                    await self._context.write(watch_pb2.WatchResponse(
                        header=self._servicer.header(event.revision), watch_id=sink.watch_id, events=events))
                    events, size = [], 0
            if events:
                await self._context.write(watch_pb2.WatchResponse(
                    header=self._servicer.header(batch.revision), watch_id=sink.watch_id, events=events))
        with self._lock:
            self._queued -= len(batch.events)
            wake = []
            if self._paused and self._queued <= self._servicer.queue_events // 2:
                wake, self._paused = self._paused, []
        for paused in wake:
            if paused.watcher is not None:
                self._servicer.in_reactor(self._servicer.node.watch_ready, paused.watcher)

    def respond(self, response: watch_pb2.WatchResponse) -> None:
        self._outbox.put_nowait(("response", response))

    def close(self) -> list:
        with self._lock:
            self.closed = True
        self._outbox.put_nowait(None)
        sinks, self.sinks = list(self.sinks.values()), {}
        return sinks


class WatchServicer(watch_pb2_grpc.WatchServicer):
    """C{kvpaxos.v1.Watch}, for a node that offers L{kvpaxos.node.watch_calls.WatchCalls}."""

    queue_events = QUEUE_EVENTS
    max_watchers = MAX_WATCHERS

    def __init__(self, node, calls: _NodeCalls) -> None:
        self.node = node
        self._calls = calls

    def header(self, revision: int) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(member_id=self._calls.member_id or 0, leader_id=self._calls.leader or 0,
                                     revision=revision)

    def in_reactor(self, call, *args) -> None:
        """Run C{call(*args)} in the reactor thread, its outcome ignored (a cancel, a wake-up)."""
        self._calls._crossing.enqueue(lambda: call(*args), lambda ok, value: None)

    async def Watch(self, request_iterator, context) -> None:
        stream = _WatchStream(self, context, asyncio.get_running_loop())
        credential = self._calls.credential(context)
        writer = asyncio.ensure_future(stream.write_all())
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                kind = request.WhichOneof("request")
                if kind == "create_request":
                    await self._create(stream, request.create_request, context, credential)
                elif kind == "cancel_request":
                    self._cancel(stream, request.cancel_request.watch_id)
                elif kind == "progress_request":
                    await self._progress(stream, context)
                else:
                    stream.respond(watch_pb2.WatchResponse(
                        header=self.header(0), watch_id=-1, canceled=True, cancel_reason="an empty WatchRequest"))
        finally:
            for sink in stream.close():
                if sink.watcher is not None:
                    self.in_reactor(self.node.cancel_watch, sink.watcher)
            try:
                await writer
            except Exception:  # the call is gone: nothing to write to
                pass

    async def _create(self, stream: _WatchStream, request, context, credential) -> None:
        watch_id = stream.new_id(request.watch_id)
        refusal = None
        spec = None
        if watch_id is None:
            refusal = f"watch id {request.watch_id} is in use on this stream"
        elif len(stream.sinks) >= self.max_watchers:
            refusal = f"more than {self.max_watchers} watchers on one stream"
        else:
            try:
                spec = _spec(request)
            except InvalidArgument as error:
                refusal = str(error)
        if refusal is not None:
            stream.respond(watch_pb2.WatchResponse(header=self.header(0), watch_id=watch_id or request.watch_id,
                                                   created=True, canceled=True, cancel_reason=refusal))
            return
        sink = _StreamSink(stream, watch_id, spec.prev_kv)
        stream.sinks[watch_id] = sink

        def start(timeout_s: float) -> _Created:
            sink.watcher = self.node.watch(spec, sink, *node_arguments(credential))
            status = self.node.status()
            revision = self.node.store.revision()
            # Posted here, in the reactor, before the watcher's first step
            # can post a batch: "created" is the first answer on the stream.
            stream.post(("response", watch_pb2.WatchResponse(
                header=kv_pb2.ResponseHeader(member_id=status.member_id, leader_id=status.leader or 0,
                                             revision=revision),
                watch_id=watch_id, created=True)))
            return _Created(sink.watcher, revision)

        try:
            await self._calls.call(context, start)
        except _Abort as abort:
            stream.sinks.pop(watch_id, None)
            self.in_reactor(self._forget, sink)  # if it started after all (the wait ran out)
            stream.respond(watch_pb2.WatchResponse(header=self.header(0), watch_id=watch_id, created=True,
                                                   canceled=True, cancel_reason=abort.status.details))

    def _forget(self, sink: _StreamSink) -> None:
        if sink.watcher is not None:
            self.node.cancel_watch(sink.watcher)

    def _cancel(self, stream: _WatchStream, watch_id: int) -> None:
        sink = stream.sinks.pop(watch_id, None)
        if sink is None:
            return
        if sink.watcher is not None:
            self.in_reactor(self.node.cancel_watch, sink.watcher)
        stream.respond(watch_pb2.WatchResponse(header=self.header(0), watch_id=watch_id, canceled=True))

    async def _progress(self, stream: _WatchStream, context) -> None:
        watchers = [sink.watcher for sink in stream.sinks.values() if sink.watcher is not None]

        def caught_up(timeout_s: float):
            revisions = [self.node.watch_caught_up(w) for w in watchers]
            return None if None in revisions else _Created(None, self.node.store.revision())

        result, header = await self._calls.call(context, caught_up)
        if result is not None:
            stream.respond(watch_pb2.WatchResponse(header=header, watch_id=-1))
