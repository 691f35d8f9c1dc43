"""
The C{kvpaxos.v1.Watch} servicer (L{kvpaxos.api.watch_servicer}) on a real
grpcio server (127.0.0.1, ephemeral port) in front of a fake node whose
watchers (the real L{kvpaxos.node.watchers.Watchers}) read a fake history;
the test thread is the reactor (tests.test_api's harness), so the test
decides when anything is applied.  Every wait is bounded.
"""

from __future__ import annotations

import queue
import threading

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.errors import PermissionDenied
from kvpaxos.api.watch_servicer import _StreamSink, _WatchStream
from kvpaxos.node.watchers import Batch, Watchers
from kvpaxos.v1 import watch_pb2, watch_pb2_grpc
from tests.test_api import BOUND_S, FakeNode, ServerFixture, ThreadedTestReactor
from tests.test_watchers import History


class WatchingNode(FakeNode):
    """A L{FakeNode} with watchers over a L{History}, fed on the (test) reactor."""

    def __init__(self, reactor: ThreadedTestReactor) -> None:
        super().__init__()
        self.history = History()
        self.refuse: set = set()
        h = self.history
        self.watchers = Watchers(h.read, lambda: h.compacted, lambda: h.revision,
                                 lambda step: reactor.callFromThread(step))
        self.store = self
        self.cancelled = []

    def revision(self) -> int:
        return self.history.revision

    def apply(self, *changes) -> int:
        revision = self.history.write(*changes)
        self.watchers.applied()
        return revision

    def watch(self, spec, sink, credential=None):
        if spec.key in self.refuse:
            raise PermissionDenied("etcdserver: permission denied")
        return self.watchers.add(spec, sink)

    def cancel_watch(self, watcher) -> None:
        self.cancelled.append(watcher.id)
        self.watchers.cancel(watcher)

    def watch_ready(self, watcher) -> None:
        self.watchers.ready(watcher)

    def watch_caught_up(self, watcher):
        return self.history.revision if self.watchers.caught_up(watcher) else None


class Stream:
    """One Watch call: requests sent through a queue, responses read by a thread into another."""

    def __init__(self, stub, reactor: ThreadedTestReactor) -> None:
        self._requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self._reactor = reactor
        self.call = stub.Watch(self._outgoing(), timeout=BOUND_S * 3)
        self.error = None
        threading.Thread(target=self._read, daemon=True).start()

    def _outgoing(self):
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
                self._reactor.wake()
        except grpc.RpcError as error:
            self.error = error
        self.responses.put(None)
        self._reactor.wake()

    def send(self, **request) -> None:
        self._requests.put(watch_pb2.WatchRequest(**request))

    def create(self, key: bytes, **fields) -> None:
        self.send(create_request=watch_pb2.WatchCreateRequest(key=key, **fields))

    def take(self, n: int) -> list:
        got = []
        self._reactor.pump_until(lambda: self.responses.qsize() >= n)
        for _ in range(n):
            got.append(self.responses.get_nowait())
        return got

    def end(self) -> None:
        self._requests.put(None)


class WatchServicerTests(ServerFixture, SynchronousTestCase):

    def setUp(self) -> None:
        self.reactor = ThreadedTestReactor()
        self.node = WatchingNode(self.reactor)
        self.server = self.start_server()
        self.stub = watch_pb2_grpc.WatchStub(self.connect(self.server))

    def stream(self) -> Stream:
        stream = Stream(self.stub, self.reactor)
        self.addCleanup(stream.call.cancel)
        return stream

    def test_created_then_events_in_order(self) -> None:
        self.node.apply((b"k", b"0"))
        stream = self.stream()
        stream.create(b"k", prev_kv=True)
        created, = stream.take(1)
        self.assertTrue(created.created)
        self.assertEqual((created.watch_id, created.header.revision, created.header.member_id), (1, 1, 1))
        self.node.apply((b"k", b"1"))
        responses = stream.take(1)
        self.node.apply((b"other", b"x"))
        self.node.apply((b"k", None))  # one step of the watchers covers both
        responses += stream.take(1)
        events = [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision, e.prev_kv.value)
                  for r in responses for e in r.events]
        self.assertEqual(events, [(watch_pb2.Event.PUT, b"k", b"1", 2, b"0"),
                                  (watch_pb2.Event.DELETE, b"k", b"", 4, b"1")])
        self.assertEqual([r.header.revision for r in responses], [2, 4])

    def test_from_the_past_in_one_response_per_batch(self) -> None:
        for i in range(3):
            self.node.history.write((b"k", b"%d" % i))
        stream = self.stream()
        stream.create(b"k", start_revision=2)
        created, events = stream.take(2)
        self.assertTrue(created.created)
        self.assertEqual([e.kv.value for e in events.events], [b"1", b"2"])
        self.assertFalse(events.events[0].HasField("prev_kv"))

    def test_a_refused_watch_is_created_and_canceled_with_the_reason(self) -> None:
        self.node.refuse.add(b"secret")
        stream = self.stream()
        stream.create(b"secret")
        refused, = stream.take(1)
        self.assertTrue(refused.created and refused.canceled)
        self.assertIn("permission denied", refused.cancel_reason)
        stream.create(b"", range_end=b"")  # an empty key
        bad, = stream.take(1)
        self.assertTrue(bad.canceled)
        stream.create(b"fine")
        fine, = stream.take(1)
        self.assertTrue(fine.created and not fine.canceled)

    def test_cancel_and_ids(self) -> None:
        stream = self.stream()
        stream.create(b"a", watch_id=7)
        stream.create(b"b", watch_id=7)
        first, second = stream.take(2)
        self.assertEqual((first.watch_id, first.canceled), (7, False))
        self.assertEqual((second.watch_id, second.canceled), (7, True))
        self.assertIn("in use", second.cancel_reason)
        stream.send(cancel_request=watch_pb2.WatchCancelRequest(watch_id=7))
        cancelled, = stream.take(1)
        self.assertTrue(cancelled.canceled)
        self.reactor.pump_until(lambda: self.node.cancelled == [1])
        self.node.apply((b"a", b"after"))
        stream.send(progress_request=watch_pb2.WatchProgressRequest())
        progress, = stream.take(1)
        self.assertEqual((progress.watch_id, list(progress.events)), (-1, []))

    def test_compacted_start(self) -> None:
        for i in range(4):
            self.node.history.write((b"k", b"%d" % i))
        self.node.history.compacted = 3
        stream = self.stream()
        stream.create(b"k", start_revision=1)
        created, compacted = stream.take(2)
        self.assertTrue(created.created)
        self.assertEqual((compacted.canceled, compacted.compact_revision), (True, 3))
        self.assertIn("compacted", compacted.cancel_reason)

    def test_the_stream_ending_cancels_its_watchers(self) -> None:
        stream = self.stream()
        stream.create(b"a")
        stream.create(b"b")
        stream.take(2)
        stream.end()
        self.reactor.pump_until(lambda: sorted(self.node.cancelled) == [1, 2])
        self.assertEqual(len(self.node.watchers), 0)


class QueueTests(SynchronousTestCase):
    """A stream's queue budget: a full queue refuses batches, and a drained one wakes the paused watchers."""

    def test_a_full_queue_refuses_and_a_drained_one_wakes(self) -> None:
        woken = []

        class Servicer:
            queue_events = 4

            def in_reactor(self, call, *args):
                woken.append(args)

            node = type("N", (), {"watch_ready": None})()

            def header(self, revision):
                return None

        class Loop:
            def call_soon_threadsafe(self, f, *args):
                f(*args)

        stream = _WatchStream(Servicer(), None, Loop())
        stream._outbox = queue.Queue()  # a plain queue: no loop runs here
        sink = _StreamSink(stream, 1, False)
        sink.watcher = "w"
        self.assertTrue(sink.send(Batch(tuple(range(3)), 3)))
        self.assertFalse(sink.send(Batch(tuple(range(2)), 5)))  # 3 + 2 > 4
        self.assertTrue(stream._outbox.qsize() == 1)
        # The writer wrote the first batch: the paused watcher is woken.
        stream.sinks = {}
        import asyncio
        asyncio.run(stream._write_events(sink, Batch(tuple(range(3)), 3)))
        self.assertEqual(woken, [("w",)])
        # An empty queue takes a batch whatever its size.
        self.assertTrue(sink.send(Batch(tuple(range(10)), 9)))
