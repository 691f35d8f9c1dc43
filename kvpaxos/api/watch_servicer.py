"""
Watch streams on the gRPC thread's event loop: L{WatchStreamServicer},
what the C{kvpaxos.v1.Watch} servicer (L{WatchServicer},
C{proto/kvpaxos/v1/watch.proto}) and etcd's C{etcdserverpb.Watch}
(L{kvpaxos.api.etcd_watch}) share, and the first of them.  One stream
carries a client's watchers.

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
stream goes on.

Every response of a watcher is posted in the reactor thread (its
creation, its batches, its cancellation, its progress), so they reach the
stream in the order the node made them: "created" first, then its events.
A progress request is answered (watch id -1, the applied revision) once
every watcher of the stream has been sent everything applied (etcd
3.4.25's rule: never a revision some watcher has not reached); a watcher
created with C{progress_notify} is sent its progress every
C{progress_notify_s} (etcd: 10 minutes, plus up to a tenth more) when it
was sent no events since the last time.

What differs between the two services (their messages, their headers,
their revisions, their ids and their words) is in the methods a subclass
overrides; nothing here decides what is sent: the node does.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import grpc
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvpaxos.api import convert
from kvpaxos.api.credentials import node_arguments
from kvpaxos.api.errors import ApiError, InvalidArgument
from kvpaxos.api.limits import MAX_MESSAGE_BYTES, check_key
from kvpaxos.api.servicers import _Abort, _NodeCalls
from kvpaxos.kv.history import EventKind
from kvpaxos.node.watchers import Batch, Compacted, WatchSpec
from kvpaxos.v1 import kv_pb2, watch_pb2, watch_pb2_grpc

__all__ = ["COMPACTED_REASON", "Refused", "WatchServicer", "WatchStreamServicer"]

#: Events a stream may have waiting to be written before its watchers pause.
QUEUE_EVENTS = 10_000
#: The most watchers one stream may hold.
MAX_WATCHERS = 1000
#: Bytes of events per response (room left for the rest of the message).
_RESPONSE_BUDGET = MAX_MESSAGE_BYTES - (64 << 10)
#: etcd's default interval between a quiet watcher's progress notifications.
PROGRESS_NOTIFY_S = 600.0
#: How soon a progress request asks again whether every watcher has caught up.
PROGRESS_RETRY_S = 0.05
#: The cancel reason of a watcher whose next revision was compacted (etcd's words).
COMPACTED_REASON = "etcdserver: mvcc: required revision has been compacted"

_log = Logger()


class Refused(Exception):
    """A create request refused by the edge (bad input, an id in use, too many watchers): the reason."""


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

    @ivar progress_notify: the watcher asked for periodic progress.
    @ivar fragment: the watcher's client joins fragments (etcd's
        C{fragment}): a revision too large for one response may be split.
    @ivar quiet: no events were written to it since the last progress
        tick (loop thread only).
    """

    def __init__(self, stream: "_WatchStream", watch_id: int, prev_kv: bool, progress_notify: bool = False,
                 fragment: bool = False) -> None:
        self._stream = stream
        self.watch_id = watch_id
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.quiet = True
        self.watcher = None

    def send(self, batch: Batch) -> bool:
        return self._stream.offer(self, batch)

    def end(self, reason: Compacted) -> None:
        self._stream.post(("compacted", self, reason.compact_revision))


class _WatchStream:
    """The state of one Watch call: its watchers, its queue, its writer."""

    def __init__(self, servicer: "WatchStreamServicer", context, loop) -> None:
        self.servicer = servicer
        self._context = context
        self.loop = loop
        self.sinks: dict[int, _StreamSink] = {}
        self._next_id: Optional[int] = None
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._lock = threading.Lock()
        # Guarded by _lock (reactor and loop threads):
        self._queued = 0
        self._paused: list[_StreamSink] = []
        self.closed = False
        # Loop thread only:
        #: A progress request waits for every watcher to catch up (one at a time, as etcd).
        self.progress_due = False
        self.notify_timer = None

    # --- reactor thread -----------------------------------------------------

    def offer(self, sink: _StreamSink, batch: Batch) -> bool:
        n = len(batch.events)
        with self._lock:
            if self.closed:
                return True  # dropped: nobody reads any more (the watcher is being cancelled)
            if self._queued and self._queued + n > self.servicer.queue_events:
                self._paused.append(sink)
                return False
            self._queued += n
        self.post(("events", sink, batch))
        return True

    def post(self, item) -> None:
        """Queue C{item} for the writer (from any thread)."""
        try:
            self._loop_call(self._outbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            pass

    def later(self, delay_s: float, f, *args) -> None:
        """Call C{f(*args)} on the loop in C{delay_s} (from any thread)."""
        try:
            self._loop_call(self.servicer.call_later, self.loop, delay_s, partial(f, *args))
        except RuntimeError:  # the loop is closed
            pass

    def _loop_call(self, f, *args) -> None:
        self.loop.call_soon_threadsafe(f, *args)

    # --- loop thread ------------------------------------------------------------

    def new_id(self, wanted: int, first: int) -> Optional[int]:
        """C{wanted} if it is free (None if in use), or, for 0, the lowest free id from C{first} on not yet given."""
        if wanted:
            return None if wanted in self.sinks else wanted
        next_id = first if self._next_id is None else self._next_id
        while next_id in self.sinks:
            next_id += 1
        self._next_id = next_id + 1
        return next_id

    def release_id(self, watch_id: int) -> None:
        """The id L{new_id} gave last went to no watcher: give it again."""
        if self._next_id is not None and watch_id == self._next_id - 1:
            self._next_id = watch_id

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
            elif kind == "progress":
                sink = item[1]
                if sink is None:  # the answer to a progress request
                    self.progress_due = False
                    await self._context.write(item[2])
                elif self.sinks.get(sink.watch_id) is sink:
                    await self._context.write(item[2])
            else:  # compacted
                sink, revision = item[1], item[2]
                if self.sinks.get(sink.watch_id) is sink:
                    del self.sinks[sink.watch_id]
                    await self._context.write(self.servicer.compacted_response(sink.watch_id, revision))

    async def _write_events(self, sink: _StreamSink, batch: Batch) -> None:
        if self.sinks.get(sink.watch_id) is sink:
            servicer = self.servicer
            budget = servicer.response_bytes
            events, size = [], 0
            count = len(batch.events)
            for i, event in enumerate(batch.events):
                message = servicer.event_message(event, sink.prev_kv)
                events.append(message)
                size += message.ByteSize()
                if size < budget or i + 1 == count:
                    continue
                whole = batch.events[i + 1].revision != event.revision
                if whole or sink.fragment:
                    # Split at a revision's end only, so that each revision
                    # stays in one response; or, for a client that joins
                    # fragments, anywhere (a fragment is flagged).
                    await self._context.write(servicer.events_response(sink.watch_id, events, event.revision,
                                                                       not whole))
                    events, size = [], 0
            if events:
                await self._context.write(servicer.events_response(sink.watch_id, events, batch.revision, False))
            sink.quiet = False
        with self._lock:
            self._queued -= len(batch.events)
            wake = []
            if self._paused and self._queued <= self.servicer.queue_events // 2:
                wake, self._paused = self._paused, []
        for paused in wake:
            if paused.watcher is not None:
                self.servicer.in_reactor(self.servicer.node.watch_ready, paused.watcher)

    def respond(self, response) -> None:
        self._outbox.put_nowait(("response", response))

    def close(self) -> list:
        with self._lock:
            self.closed = True
        if self.notify_timer is not None:
            self.notify_timer.cancel()
        self._outbox.put_nowait(None)
        sinks, self.sinks = list(self.sinks.values()), {}
        return sinks


def _log_failure(ok: bool, value) -> None:
    if not ok and not isinstance(value, (ApiError, asyncio.CancelledError)):  # not a stop's refusal
        _log.failure("a watch stream's call in the reactor failed", Failure(value))


class WatchStreamServicer:
    """
    A Watch service's one bidirectional RPC (L{serve}), for a node that
    offers L{kvpaxos.node.watch_calls.WatchCalls}.  A subclass names its
    messages (C{response_type}, C{request_field}, L{event_message}, ...),
    its headers (L{header} on the loop, L{reactor_header} in the
    reactor), its ids (C{first_watch_id}; C{numbers_refused}: whether a
    refused create uses up the id it was given) and its words.
    """

    queue_events = QUEUE_EVENTS
    max_watchers = MAX_WATCHERS
    response_bytes = _RESPONSE_BUDGET
    progress_notify_s = PROGRESS_NOTIFY_S
    progress_retry_s = PROGRESS_RETRY_S

    response_type: type
    request_field: str
    first_watch_id = 1
    numbers_refused = True
    duplicate_id_reason = "watch id {} is in use on this stream"

    def __init__(self, node, calls: _NodeCalls) -> None:
        self.node = node
        self._calls = calls
        #: Draws the jitter of each stream's progress interval.
        self.random = random.Random()

    # --- what a service says its own way ------------------------------------------

    def header(self, revision: Optional[int]):
        """The response header at kvpaxos revision C{revision} (None: the newest known), on the loop."""
        raise NotImplementedError

    def reactor_header(self, revision: int):
        """The response header at kvpaxos revision C{revision}, built in the reactor thread."""
        raise NotImplementedError

    def create_spec(self, request) -> WatchSpec:
        """The L{WatchSpec} of a create request; raises L{Refused} for one the service refuses."""
        raise NotImplementedError

    def event_message(self, event, prev_kv: bool):
        """One history event as the service's C{Event}, its previous record if C{prev_kv}."""
        raise NotImplementedError

    def events_response(self, watch_id: int, events: list, revision: int, fragment: bool):
        """A response carrying C{events}, all up to kvpaxos revision C{revision}; C{fragment}: more follow."""
        return self.response_type(header=self.header(revision), watch_id=watch_id, events=events)

    def compacted_response(self, watch_id: int, compacted: int):
        """The end of a watcher whose next revision is below kvpaxos's compacted revision C{compacted}."""
        raise NotImplementedError

    def refused_response(self, request, watch_id: Optional[int], reason: str, header):
        """The answer to a create request refused for C{reason} (C{watch_id}: the id it was given, if any)."""
        return self.response_type(header=header, watch_id=watch_id or request.watch_id, created=True,
                                  canceled=True, cancel_reason=reason)

    def refusal_reason(self, status: grpc.Status, context) -> str:
        """The cancel reason of a create the node refused with C{status}."""
        return status.details

    def empty_request(self, stream: _WatchStream) -> None:
        """A request with none of create, cancel or progress."""

    def make_sink(self, stream: _WatchStream, watch_id: int, request, spec: WatchSpec) -> _StreamSink:
        return _StreamSink(stream, watch_id, spec.prev_kv, request.progress_notify)

    # --- the stream -------------------------------------------------------------------

    def in_reactor(self, call, *args) -> None:
        """Run C{call(*args)} in the reactor thread, its result ignored (a cancel, a wake-up); a failure is logged."""
        self._calls._crossing.enqueue(lambda: call(*args), _log_failure)

    def call_later(self, loop, delay_s: float, f):
        """C{loop.call_later(delay_s, f)}: the timers of progress (tests replace it)."""
        return loop.call_later(delay_s, f)

    async def serve(self, context) -> None:
        """Serve one Watch call until the client ends it; its watchers end with it."""
        stream = _WatchStream(self, context, asyncio.get_running_loop())
        credential = self._calls.credential(context)
        writer = asyncio.ensure_future(stream.write_all())
        notify_s = self.progress_notify_s * (1 + self.random.random() / 10)  # etcd's jitter
        self._notify_later(stream, notify_s)
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                kind = request.WhichOneof(self.request_field)
                if kind == "create_request":
                    await self._create(stream, request.create_request, context, credential)
                elif kind == "cancel_request":
                    self._cancel(stream, request.cancel_request.watch_id)
                elif kind == "progress_request":
                    self._progress(stream)
                else:
                    self.empty_request(stream)
        finally:
            for sink in stream.close():
                if sink.watcher is not None:
                    self.in_reactor(self.node.cancel_watch, sink.watcher)
            try:
                await writer
            except Exception:  # the call is gone: nothing to write to
                pass

    def _new_id(self, stream: _WatchStream, request) -> int:
        watch_id = stream.new_id(request.watch_id, self.first_watch_id)
        if watch_id is None:
            raise Refused(self.duplicate_id_reason.format(request.watch_id))
        return watch_id

    async def _create(self, stream: _WatchStream, request, context, credential) -> None:
        watch_id = None
        try:
            if self.numbers_refused:
                watch_id = self._new_id(stream, request)
            if len(stream.sinks) >= self.max_watchers:
                raise Refused(f"more than {self.max_watchers} watchers on one stream")
            spec = self.create_spec(request)
            if watch_id is None:
                watch_id = self._new_id(stream, request)
        except Refused as refused:
            self.in_reactor(self._refused, stream, request, watch_id, str(refused))
            return
        sink = self.make_sink(stream, watch_id, request, spec)
        stream.sinks[watch_id] = sink

        def start(timeout_s: float) -> _Created:
            sink.watcher = self.node.watch(spec, sink, *node_arguments(credential))
            revision = self.node.store.revision()
            # Posted here, in the reactor, before the watcher's first step
            # can post a batch: "created" is the first answer on the stream.
            stream.post(("response", self.response_type(header=self.reactor_header(revision), watch_id=watch_id,
                                                        created=True)))
            return _Created(sink.watcher, revision)

        try:
            await self._calls.call(context, start)
        except _Abort as abort:
            stream.sinks.pop(watch_id, None)
            self.in_reactor(self._forget, sink)  # if it started after all (the wait ran out)
            if not self.numbers_refused and not request.watch_id:
                stream.release_id(watch_id)
            stream.respond(self.refused_response(request, watch_id, self.refusal_reason(abort.status, context),
                                                 self.header(None)))

    def _refused(self, stream: _WatchStream, request, watch_id: Optional[int], reason: str) -> None:
        """Post the refusal of a create request (in the reactor: after what the stream's earlier requests posted)."""
        header = self.reactor_header(self.node.store.revision())
        stream.post(("response", self.refused_response(request, watch_id, reason, header)))

    def _forget(self, sink: _StreamSink) -> None:
        if sink.watcher is not None:
            self.node.cancel_watch(sink.watcher)

    def _cancel(self, stream: _WatchStream, watch_id: int) -> None:
        sink = stream.sinks.pop(watch_id, None)
        if sink is not None:  # etcd answers nothing for an id it does not know
            self.in_reactor(self._cancelled, stream, sink)

    def _cancelled(self, stream: _WatchStream, sink: _StreamSink) -> None:
        if sink.watcher is not None:
            self.node.cancel_watch(sink.watcher)
        stream.post(("response", self.response_type(header=self.reactor_header(self.node.store.revision()),
                                                    watch_id=sink.watch_id, canceled=True)))

    # --- progress -----------------------------------------------------------------------

    def _progress(self, stream: _WatchStream) -> None:
        if stream.progress_due:
            return  # one answer covers every request made while it waits (etcd's rule)
        stream.progress_due = True
        self._check_progress(stream)

    def _check_progress(self, stream: _WatchStream) -> None:
        if stream.closed:
            return
        watchers = [sink.watcher for sink in stream.sinks.values() if sink.watcher is not None]
        self.in_reactor(self._progress_if_caught_up, stream, watchers)

    def _progress_if_caught_up(self, stream: _WatchStream, watchers: list) -> None:
        if any(self.node.watch_caught_up(watcher) is None for watcher in watchers):
            stream.later(self.progress_retry_s, self._check_progress, stream)
            return
        header = self.reactor_header(self.node.store.revision())
        stream.post(("progress", None, self.response_type(header=header, watch_id=-1)))

    def _notify_later(self, stream: _WatchStream, notify_s: float) -> None:
        stream.notify_timer = self.call_later(stream.loop, notify_s, partial(self._notify, stream, notify_s))

    def _notify(self, stream: _WatchStream, notify_s: float) -> None:
        """A progress tick: each quiet watcher that asked for progress is sent it, if it has caught up."""
        if stream.closed:
            return
        due = []
        for sink in stream.sinks.values():
            if sink.progress_notify:
                if sink.quiet and sink.watcher is not None:
                    due.append(sink)
                sink.quiet = True
        if due:
            self.in_reactor(self._notify_caught_up, stream, due)
        self._notify_later(stream, notify_s)

    def _notify_caught_up(self, stream: _WatchStream, sinks: list) -> None:
        for sink in sinks:
            revision = self.node.watch_caught_up(sink.watcher)
            if revision is not None:
                stream.post(("progress", sink, self.response_type(header=self.reactor_header(revision),
                                                                  watch_id=sink.watch_id)))


class WatchServicer(WatchStreamServicer, watch_pb2_grpc.WatchServicer):
    """C{kvpaxos.v1.Watch}, for a node that offers L{kvpaxos.node.watch_calls.WatchCalls}."""

    response_type = watch_pb2.WatchResponse
    request_field = "request"

    def header(self, revision: Optional[int]) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(member_id=self._calls.member_id or 0, leader_id=self._calls.leader or 0,
                                     revision=revision or 0)

    def reactor_header(self, revision: int) -> kv_pb2.ResponseHeader:
        status = self.node.status()
        return kv_pb2.ResponseHeader(member_id=status.member_id, leader_id=status.leader or 0, revision=revision)

    def create_spec(self, request: watch_pb2.WatchCreateRequest) -> WatchSpec:
        try:
            return _spec(request)
        except InvalidArgument as error:
            raise Refused(str(error)) from None

    def event_message(self, event, prev_kv: bool) -> watch_pb2.Event:
        return _event(event, prev_kv)

    def compacted_response(self, watch_id: int, compacted: int) -> watch_pb2.WatchResponse:
        return watch_pb2.WatchResponse(header=self.header(compacted), watch_id=watch_id, canceled=True,
                                       compact_revision=compacted, cancel_reason=COMPACTED_REASON)

    def empty_request(self, stream: _WatchStream) -> None:
        stream.respond(watch_pb2.WatchResponse(header=self.header(0), watch_id=-1, canceled=True,
                                               cancel_reason="an empty WatchRequest"))

    async def Watch(self, request_iterator, context) -> None:
        await self.serve(context)
