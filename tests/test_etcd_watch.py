"""
etcd's C{Watch} service on the etcd port (L{kvpaxos.api.etcd_watch}) in
front of an in-memory node whose watchers (the real
L{kvpaxos.node.watchers.Watchers}) read a fake history
(L{tests.test_watchers.History}).  No port, no thread: the servicer's
coroutine runs on a loop in the test thread, the crossing runs each node
call at once (L{tests.test_etcd_fakes}), the watchers step on the loop,
and the progress timers are recorded and fired by the test.  Revisions on
the wire are kvpaxos's + 1.
"""

from __future__ import annotations

import asyncio

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api.crossing import LoopPost, ReactorCrossing
from kvpaxos.api.errors import PermissionDenied, Unauthenticated, Unavailable
from kvpaxos.api.etcd import EtcdCalls
from kvpaxos.api.etcd_watch import DUPLICATE_ID, EMPTY_RANGE, WatchServicer, event_message, watch_spec
from kvpaxos.api.limits import TO_THE_END
from kvpaxos.api.watch_servicer import COMPACTED_REASON, Refused
from kvpaxos.etcdpb import kv_pb2 as mvccpb
from kvpaxos.etcdpb import rpc_pb2 as pb
from kvpaxos.kv.commands import KeyValue
from kvpaxos.kv.history import delete_event, put_event
from tests.test_etcd_fakes import CLUSTER_ID, Aborted, Counts, EtcdNode, FakeContext, ImmediateReactor, with_status
from tests.test_watch_api import WatchingNode

PUT, DELETE = mvccpb.Event.PUT, mvccpb.Event.DELETE
#: The most loop iterations a test runs while waiting for a response.
ITERATIONS = 200


class _LoopSteps:
    """The watchers' reactor: their steps run on the loop (the test thread)."""

    def __init__(self, loop) -> None:
        self.callFromThread = loop.call_soon


class EtcdWatchingNode(WatchingNode, EtcdNode):
    """
    L{tests.test_watch_api.WatchingNode} (watchers over a fake history)
    with the etcd fakes' status and member view; C{errors} maps keys to
    the node's refusal of a watch of them.
    """

    def __init__(self, loop) -> None:
        super().__init__(_LoopSteps(loop))
        self.errors: dict = {}
        self.specs: list = []

    def watch(self, spec, sink, credential=None):
        self.credentials.append(credential)
        if spec.key in self.errors:
            raise self.errors[spec.key]
        self.specs.append(spec)
        return super().watch(spec, sink, credential)


class StreamContext(FakeContext):
    """A Watch call's context: requests the test queues, responses the servicer writes (held while C{held})."""

    def __init__(self, metadata=()) -> None:
        super().__init__(metadata)
        self.requests: asyncio.Queue = asyncio.Queue()
        self.written: list = []
        self.held = None

    async def read(self):
        return await self.requests.get()

    async def write(self, message) -> None:
        if self.held is not None:
            await self.held.wait()
        self.written.append(message)


class Timers:
    """Records the servicer's timers; the test fires them."""

    def __init__(self) -> None:
        self.due: list = []

    def call_later(self, loop, delay_s: float, f):
        timer = _Timer(delay_s, f)
        self.due.append(timer)
        return timer

    def fire(self, shortest: bool = False) -> list:
        """Fire the timers set so far (only those of the shortest delay if C{shortest}); return their delays."""
        due = [t for t in self.due if not t.cancelled]
        if shortest:
            low = min(t.delay_s for t in due)
            due = [t for t in due if t.delay_s == low]
        for timer in due:
            self.due.remove(timer)
            timer.f()
        return [t.delay_s for t in due]


class _Timer:
    def __init__(self, delay_s: float, f) -> None:
        self.delay_s, self.f, self.cancelled = delay_s, f, False

    def cancel(self) -> None:
        self.cancelled = True


class Stream:
    """One Watch call on the harness's loop."""

    def __init__(self, case: "WatchHarness", metadata=()) -> None:
        self.case = case
        self.context = StreamContext(metadata)
        self.task = case.loop.create_task(case.servicer.Watch(iter(()), self.context))

    def send(self, **request) -> None:
        self.context.requests.put_nowait(pb.WatchRequest(**request))

    def create(self, key: bytes, **fields) -> None:
        self.send(create_request=pb.WatchCreateRequest(key=key, **fields))

    def take(self, n: int) -> list:
        """The next C{n} responses (the loop runs until they are written, at most L{ITERATIONS} turns)."""
        self.case.spin(lambda: len(self.context.written) >= n)
        taken, self.context.written[:n] = self.context.written[:n], []
        self.case.assertEqual(len(taken), n, f"only {taken} were written")
        return taken

    def nothing(self) -> None:
        """No response is waiting (after the loop ran until idle)."""
        self.case.spin(lambda: False)
        self.case.assertEqual(self.context.written, [])

    def end(self) -> None:
        self.context.requests.put_nowait(grpc.aio.EOF)
        self.case.spin(self.task.done)


class WatchHarness:
    """Mixed into a SynchronousTestCase: a L{WatchingNode} and the etcd Watch servicer in front of it."""

    def setUp(self) -> None:
        super().setUp()
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        self.node = EtcdWatchingNode(self.loop)
        self.calls = EtcdCalls(self.node, ReactorCrossing(ImmediateReactor()), 5.0)
        self.calls.post = LoopPost(self.loop)
        self.calls.metrics = self.counts = Counts()
        self.servicer = WatchServicer(self.node, self.calls)
        self.timers = Timers()
        self.servicer.call_later = self.timers.call_later
        self.streams: list = []
        self.addCleanup(self._end_streams)

    def _end_streams(self) -> None:
        for stream in self.streams:
            if not stream.task.done():
                stream.task.cancel()
                self.spin(stream.task.done)

    def spin(self, done) -> None:
        """Run the loop until C{done()}, or for L{ITERATIONS} turns."""
        for _ in range(ITERATIONS):
            if done():
                return
            self.loop.run_until_complete(asyncio.sleep(0))

    def stream(self, metadata=()) -> Stream:
        stream = Stream(self, metadata)
        self.streams.append(stream)
        return stream


def events(responses) -> list:
    """(type, key, value, create, mod, version, prev value or None) of each event of C{responses}."""
    return [(e.type, e.kv.key, e.kv.value, e.kv.create_revision, e.kv.mod_revision, e.kv.version,
             e.prev_kv.value if e.HasField("prev_kv") else None) for r in responses for e in r.events]


class CreateTests(WatchHarness, SynchronousTestCase):
    """Creating watchers: the answer, the events, the ids."""

    def test_created_then_events_with_etcd_revisions_and_header(self) -> None:
        """"created" carries etcd's header (cluster, member, term, revision + 1); events follow, with prev_kv."""
        self.node.apply((b"k", b"0"))
        stream = self.stream()
        stream.create(b"k", prev_kv=True)
        created, = stream.take(1)
        self.assertEqual((created.watch_id, created.created, created.canceled), (0, True, False))
        self.assertEqual((created.header.cluster_id, created.header.member_id, created.header.raft_term,
                          created.header.revision), (CLUSTER_ID, 1, 5, 2))
        self.node.apply((b"k", b"1"))
        self.node.apply((b"other", b"x"))
        self.node.apply((b"k", None))
        responses = stream.take(1)
        self.assertEqual(events(responses), [(PUT, b"k", b"1", 2, 3, 2, b"0"), (DELETE, b"k", b"", 0, 5, 0, b"1")])
        self.assertEqual([r.header.revision for r in responses], [5])
        self.assertEqual(responses[0].header.cluster_id, CLUSTER_ID)

    def test_auto_ids_from_zero_and_client_ids(self) -> None:
        """0 asks for an id: the member gives 0, 1, ... (skipping ids in use); a duplicate id is refused as etcd."""
        stream = self.stream()
        stream.create(b"a")
        stream.create(b"b", watch_id=2)
        stream.create(b"c")
        stream.create(b"d")
        stream.create(b"e", watch_id=2)
        responses = stream.take(5)
        self.assertEqual([(r.watch_id, r.created, r.canceled) for r in responses],
                         [(0, True, False), (2, True, False), (1, True, False), (3, True, False), (-1, True, True)])
        self.assertEqual(responses[4].cancel_reason, DUPLICATE_ID)
        self.assertEqual(responses[4].header.revision, 1)
        stream.create(b"f")
        self.assertEqual(stream.take(1)[0].watch_id, 4)

    def test_start_revision_is_etcds(self) -> None:
        """start_revision N reads from etcd's N (kvpaxos's N - 1); etcd's 1 is the very first write."""
        for i in range(3):
            self.node.history.write((b"k", b"%d" % i))
        stream = self.stream()
        stream.create(b"k", start_revision=3)
        stream.create(b"k", start_revision=1)
        responses = stream.take(4)
        self.assertEqual([r.watch_id for r in responses if r.created], [0, 1])
        late, early = sorted((r for r in responses if not r.created), key=lambda r: r.watch_id)
        self.assertEqual([e.kv.mod_revision for e in late.events], [3, 4])
        self.assertEqual([e.kv.mod_revision for e in early.events], [2, 3, 4])
        self.assertEqual((late.header.revision, early.header.revision), (4, 4))
        self.assertEqual([spec.start for spec in self.node.specs], [2, 1])

    def test_ranges(self) -> None:
        """A prefix range, every key from a key on (range_end "\\0"), and every key (empty key, "\\0")."""
        stream = self.stream()
        stream.create(b"p/", range_end=b"p0")
        stream.create(b"q", range_end=b"\x00")
        stream.create(b"", range_end=b"\x00")
        stream.take(3)
        self.node.apply((b"a", b"1"), (b"p/x", b"2"), (b"q", b"3"), (b"z", b"4"))
        keys = {r.watch_id: [e.kv.key for e in r.events] for r in stream.take(3)}
        self.assertEqual(keys, {0: [b"p/x"], 1: [b"q", b"z"], 2: [b"a", b"p/x", b"q", b"z"]})

    def test_filters(self) -> None:
        """NOPUT leaves out puts, NODELETE deletes; an unknown filter is ignored, as etcd does."""
        stream = self.stream()
        stream.create(b"k", filters=[pb.WatchCreateRequest.NOPUT])
        stream.create(b"k", filters=[pb.WatchCreateRequest.NODELETE])
        stream.create(b"k", filters=[7])
        stream.take(3)
        self.node.apply((b"k", b"1"))
        self.node.apply((b"k", None))  # one step of the watchers covers both revisions
        got = {}
        for response in stream.take(3):
            got.setdefault(response.watch_id, []).extend(e.type for e in response.events)
        self.assertEqual(got, {0: [DELETE], 1: [PUT], 2: [PUT, DELETE]})

    def test_compacted_start(self) -> None:
        """A start below the compacted revision ends the watcher: canceled, etcd's compact_revision, the reason."""
        for i in range(4):
            self.node.history.write((b"k", b"%d" % i))
        self.node.history.compacted = 3
        stream = self.stream()
        stream.create(b"k", start_revision=2)
        created, compacted = stream.take(2)
        self.assertTrue(created.created and not created.canceled)
        self.assertEqual((compacted.watch_id, compacted.canceled, compacted.compact_revision,
                          compacted.cancel_reason), (0, True, 4, COMPACTED_REASON))
        self.assertEqual(compacted.header.revision, 5)
        stream.create(b"k", start_revision=4)  # etcd's compact revision itself is still there
        created, from_there = stream.take(2)
        self.assertEqual([e.kv.mod_revision for e in from_there.events], [4, 5])

    def test_bad_input(self) -> None:
        """An empty range and a negative start are refused (-1, created, canceled, etcd's words); the stream goes on."""
        stream = self.stream()
        stream.create(b"b", range_end=b"a")
        stream.create(b"b", range_end=b"b")
        stream.create(b"k", start_revision=-1)
        stream.send()  # an empty request: ignored, as etcd does
        refusals = stream.take(3)
        self.assertEqual([(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in refusals],
                         [(-1, True, True, EMPTY_RANGE)] * 2 + [(-1, True, True, COMPACTED_REASON)])
        stream.create(b"k")
        self.assertEqual(stream.take(1)[0].watch_id, 0)
        stream.nothing()


class RefusalTests(WatchHarness, SynchronousTestCase):
    """The node's refusals of a watch, in etcd's words."""

    def test_permission_denied(self) -> None:
        """A key the user may not read: created and canceled, id -1, etcd's reason; the next watch gets id 0."""
        self.node.errors[b"secret"] = PermissionDenied("no")
        stream = self.stream()
        stream.create(b"secret")
        refused, = stream.take(1)
        self.assertEqual((refused.watch_id, refused.created, refused.canceled, refused.cancel_reason),
                         (-1, True, True, "etcdserver: permission denied"))
        stream.create(b"fine")
        fine, = stream.take(1)
        self.assertEqual((fine.watch_id, fine.canceled), (0, False))

    def test_unauthenticated(self) -> None:
        """No token: "user name is empty"; a bad token: "invalid auth token"."""
        self.node.errors[b"k"] = Unauthenticated("who?")
        bare = self.stream()
        bare.create(b"k")
        self.assertEqual(bare.take(1)[0].cancel_reason, "etcdserver: user name is empty")
        tokened = self.stream(metadata=(("token", "stale"),))
        tokened.create(b"k")
        self.assertEqual(tokened.take(1)[0].cancel_reason, "etcdserver: invalid auth token")
        self.assertEqual(self.node.credentials[-1].token, "stale")

    def test_not_serving(self) -> None:
        """A member that is not serving refuses the watch as the etcd port words it (the stream goes on)."""
        self.node.errors[b"k"] = Unavailable("node 1 has no member set yet")
        stream = self.stream()
        stream.create(b"k")
        refused, = stream.take(1)
        self.assertEqual((refused.watch_id, refused.canceled, refused.cancel_reason),
                         (-1, True, "etcdserver: request timed out"))

    def test_require_leader(self) -> None:
        """With "hasleader" metadata (etcdctl's), a member that knows no leader ends the stream: etcd's "no leader"."""
        self.node.node_status = with_status(leader=None)
        stream = self.stream(metadata=(("hasleader", "true"),))
        self.spin(stream.task.done)
        error = stream.task.exception()
        self.assertIsInstance(error, Aborted)
        self.assertEqual((error.status.code, error.status.details),
                         (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"))
        self.assertIn(("etcdserverpb.Watch/Watch", "UNAVAILABLE"), self.counts.seen)
        self.node.node_status = with_status()
        served = self.stream(metadata=(("hasleader", "true"),))
        served.create(b"k")
        self.assertTrue(served.take(1)[0].created)


class CancelTests(WatchHarness, SynchronousTestCase):
    """Cancelling watchers, one by one and with the stream."""

    def test_cancel(self) -> None:
        """A cancel is answered (canceled, the id, the revision); nothing more is sent; an unknown id is ignored."""
        stream = self.stream()
        stream.create(b"k")
        stream.take(1)
        self.node.apply((b"x", b"1"))
        stream.send(cancel_request=pb.WatchCancelRequest(watch_id=0))
        cancelled, = stream.take(1)
        self.assertEqual((cancelled.watch_id, cancelled.canceled, cancelled.created, cancelled.header.revision),
                         (0, True, False, 2))
        self.assertEqual(self.node.cancelled, [1])
        self.node.apply((b"k", b"after"))
        stream.send(cancel_request=pb.WatchCancelRequest(watch_id=5))
        stream.nothing()

    def test_the_stream_ending_cancels_its_watchers(self) -> None:
        """When the client ends the stream, every watcher of it is cancelled at the node; the RPC counts OK."""
        stream = self.stream()
        stream.create(b"a")
        stream.create(b"b")
        stream.take(2)
        stream.end()
        self.assertEqual(sorted(self.node.cancelled), [1, 2])
        self.assertEqual(len(self.node.watchers), 0)
        self.assertEqual(self.counts.seen, [("etcdserverpb.Watch/Watch", "OK")])


class ProgressTests(WatchHarness, SynchronousTestCase):
    """Progress requests and progress notifications."""

    def test_progress_request(self) -> None:
        """A progress request is answered with id -1 and the revision when every watcher has caught up."""
        stream = self.stream()
        stream.create(b"k")
        stream.take(1)
        self.node.apply((b"other", b"1"))
        stream.send(progress_request=pb.WatchProgressRequest())
        progress, = stream.take(1)
        self.assertEqual((progress.watch_id, list(progress.events), progress.header.revision), (-1, [], 2))

    def test_progress_waits_for_every_watcher(self) -> None:
        """A watcher behind (its client reads slowly) holds the progress answer back until it has caught up."""
        self.servicer.queue_events = 1
        stream = self.stream()
        stream.create(b"k")
        stream.take(1)
        stream.context.held = asyncio.Event()
        for i in range(3):
            self.node.apply((b"k", b"%d" % i))
            self.spin(lambda: False)
        stream.send(progress_request=pb.WatchProgressRequest())
        stream.send(progress_request=pb.WatchProgressRequest())  # one answer covers both
        self.spin(lambda: False)
        self.assertEqual(self.timers.fire(shortest=True), [self.servicer.progress_retry_s])
        stream.context.held.set()
        stream.context.held = None
        self.spin(lambda: False)
        while not any(r.watch_id == -1 for r in stream.context.written):
            self.assertEqual(self.timers.fire(shortest=True), [self.servicer.progress_retry_s])
            self.spin(lambda: False)
        responses = stream.take(len(stream.context.written))
        self.assertEqual([e.kv.value for r in responses for e in r.events], [b"0", b"1", b"2"])
        self.assertEqual((responses[-1].watch_id, responses[-1].header.revision), (-1, 4))
        self.assertEqual(len([r for r in responses if r.watch_id == -1]), 1)

    def test_progress_notify(self) -> None:
        """progress_notify: each tick, a quiet caught-up watcher is sent its progress (its id, no events)."""
        stream = self.stream()
        stream.create(b"k", progress_notify=True)
        stream.create(b"j")
        stream.take(2)
        delays = self.timers.fire()
        self.assertTrue(600 <= delays[0] <= 660, delays)
        notify, = stream.take(1)
        self.assertEqual((notify.watch_id, list(notify.events), notify.created, notify.canceled,
                          notify.header.revision), (0, [], False, False, 1))
        self.node.apply((b"k", b"1"))
        stream.take(1)
        self.assertEqual(self.timers.fire(), delays)  # events since the last tick: no progress
        stream.nothing()
        self.timers.fire()
        notify, = stream.take(1)
        self.assertEqual((notify.watch_id, notify.header.revision), (0, 2))

    def test_events_carry_the_term_now(self) -> None:
        """The header of events carries the ballot round when they were sent, as etcd's raft term."""
        stream = self.stream()
        stream.create(b"k")
        stream.take(1)
        self.node.node_status = with_status(ballot_round=9)
        self.node.apply((b"k", b"1"))
        self.assertEqual(stream.take(1)[0].header.raft_term, 9)


class FragmentTests(WatchHarness, SynchronousTestCase):
    """Responses over the size budget."""

    def test_fragments_and_whole_revisions(self) -> None:
        """A revision over the budget is split in fragments for a fragment watcher, kept whole otherwise."""
        self.servicer.response_bytes = 100
        stream = self.stream()
        stream.create(b"k/", range_end=b"k0", fragment=True)
        stream.create(b"k/", range_end=b"k0")
        stream.take(2)
        value = b"v" * 60
        self.node.apply((b"k/a", value), (b"k/b", value), (b"k/c", value))
        self.spin(lambda: len(stream.context.written) >= 3)
        self.node.apply((b"k/d", value))
        responses = stream.take(5)
        fragmented = [(len(r.events), r.fragment) for r in responses if r.watch_id == 0]
        whole = [(len(r.events), r.fragment) for r in responses if r.watch_id == 1]
        self.assertEqual(fragmented, [(2, True), (1, False), (1, False)])
        self.assertEqual(whole, [(3, False), (1, False)])


class ConversionTests(SynchronousTestCase):
    """The pure reading of requests and writing of events."""

    def test_watch_spec(self) -> None:
        """The key, range, start and filters of a create request, as etcd reads them."""
        spec = watch_spec(pb.WatchCreateRequest(key=b"", range_end=b"\x00", start_revision=5, prev_kv=True,
                                                filters=[pb.WatchCreateRequest.NODELETE]))
        self.assertEqual((spec.key, spec.end, spec.start, spec.prev_kv, spec.no_put, spec.no_delete),
                         (b"\x00", TO_THE_END, 4, True, False, True))
        self.assertEqual(watch_spec(pb.WatchCreateRequest(key=b"k")).end, None)
        self.assertEqual(watch_spec(pb.WatchCreateRequest(key=b"k", start_revision=1)).start, 1)
        self.assertEqual(watch_spec(pb.WatchCreateRequest(key=b"a", range_end=b"b")).end, b"b")
        for request in (pb.WatchCreateRequest(key=b"b", range_end=b"a"), pb.WatchCreateRequest(start_revision=-3)):
            self.assertRaises(Refused, watch_spec, request)

    def test_event_message(self) -> None:
        """A put carries its record (etcd's revisions), a delete its key and revision alone, prev_kv if asked."""
        old = KeyValue(b"k", b"old", 1, 2, 2)
        new = KeyValue(b"k", b"new", 2, 2, 5)
        put = event_message(put_event(new, old), True)
        self.assertEqual((put.type, put.kv.create_revision, put.kv.mod_revision, put.kv.version, put.prev_kv.value,
                          put.prev_kv.mod_revision), (PUT, 3, 6, 2, b"old", 3))
        self.assertFalse(event_message(put_event(new, old), False).HasField("prev_kv"))
        gone = event_message(delete_event(new, 7), False)
        self.assertEqual(gone.kv, mvccpb.KeyValue(key=b"k", mod_revision=8))
        self.assertEqual(gone.type, DELETE)
