"""
Tests for the COMPACT command (L{kvpaxos.kv.compaction}, its log encoding)
and the leader's automatic compaction (L{kvpaxos.node.compactor}).
"""

from collections import deque

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.encoding.commands import decode_request, encode_request
from kvpaxos.kv.commands import InvalidArgument, Op, Request, validate_request
from kvpaxos.kv.compaction import (
    CompactDone,
    CompactError,
    CompactRefused,
    apply_compact,
    compact_refusal,
)
from kvpaxos.node.compactor import HistoryCompaction, HistoryLimits, compaction_target


class CompactRequestTests(SynchronousTestCase):
    """A COMPACT's validation and log encoding."""

    def test_round_trip(self):
        request = Request(Op.COMPACT, origin=3, request_id=9, compact_revision=12345)
        self.assertEqual(decode_request(encode_request(request)), request)

    def test_user_kept(self):
        request = Request(Op.COMPACT, compact_revision=7, user="alice")
        self.assertEqual(decode_request(encode_request(request)), request)

    def test_takes_no_key_session_or_txn(self):
        for bad in (Request(Op.COMPACT, key=b"k", compact_revision=1),
                    Request(Op.COMPACT, client_id=1, sequence=1, compact_revision=1),
                    Request(Op.COMPACT, prev_kv=True)):
            self.assertRaises(InvalidArgument, validate_request, bad)

    def test_revision_bounds(self):
        self.assertRaises(InvalidArgument, validate_request, Request(Op.COMPACT, compact_revision=-1))
        self.assertRaises(InvalidArgument, validate_request, Request(Op.COMPACT, compact_revision=1 << 63))
        validate_request(Request(Op.COMPACT, compact_revision=(1 << 63) - 1))

    def test_only_compact_carries_a_revision(self):
        self.assertRaises(InvalidArgument, validate_request, Request(Op.PUT, b"k", b"v", compact_revision=3))
        self.assertRaises(InvalidArgument, validate_request, Request(Op.OPEN_SESSION, compact_revision=3))


class _View:
    def __init__(self, compacted, revision):
        self.compacted, self.rev, self.calls = compacted, revision, []

    def compacted_revision(self):
        return self.compacted

    def revision(self):
        return self.rev

    def compact_history(self, revision):
        self.calls.append(revision)
        self.compacted = revision


class ApplyCompactTests(SynchronousTestCase):
    """L{apply_compact}: etcd's rules, in kvpaxos revisions."""

    def test_compacts(self):
        view = _View(0, 10)
        self.assertEqual(apply_compact(view, Request(Op.COMPACT, compact_revision=4)), CompactDone(4, 10))
        self.assertEqual(view.calls, [4])

    def test_up_to_the_store_revision(self):
        view = _View(2, 10)
        self.assertEqual(apply_compact(view, Request(Op.COMPACT, compact_revision=10)), CompactDone(10, 10))

    def test_future_refused(self):
        view = _View(0, 10)
        self.assertEqual(apply_compact(view, Request(Op.COMPACT, compact_revision=11)),
                         CompactRefused(CompactError.FUTURE, 0, 10))
        self.assertEqual(view.calls, [])

    def test_at_or_below_compacted_refused(self):
        view = _View(5, 10)
        for target in (4, 5):
            self.assertEqual(apply_compact(view, Request(Op.COMPACT, compact_revision=target)),
                             CompactRefused(CompactError.COMPACTED, 5, 10))
        self.assertEqual(view.calls, [])

    def test_never_compacted_accepts_zero(self):
        self.assertIsNone(compact_refusal(0, 0, 0))
        self.assertIsNone(compact_refusal(0, 0, 3))
        self.assertEqual(compact_refusal(1, 0, 0), CompactError.FUTURE)


class CompactionTargetTests(SynchronousTestCase):
    """L{compaction_target}: what the leader compacts, by count and by age."""

    def test_count_keeps_the_last_revisions(self):
        limits = HistoryLimits(revisions=100)
        self.assertIsNone(compaction_target(109, 0, deque(), 0.0, limits))  # under the slack
        self.assertEqual(compaction_target(110, 0, deque(), 0.0, limits), 11)
        self.assertIsNone(compaction_target(110, 11, deque(), 0.0, limits))

    def test_small_count(self):
        limits = HistoryLimits(revisions=3)
        self.assertIsNone(compaction_target(3, 0, deque(), 0.0, limits))
        self.assertEqual(compaction_target(4, 0, deque(), 0.0, limits), 2)

    def test_bounded_step(self):
        limits = HistoryLimits(revisions=10, step_revisions=1000)
        self.assertEqual(compaction_target(100_000, 5, deque(), 0.0, limits), 1005)

    def test_age(self):
        limits = HistoryLimits(revisions=0, age_s=60)
        samples = deque([(0.0, 5), (30.0, 9), (61.0, 20)])
        self.assertIsNone(compaction_target(20, 0, samples, 59.0, limits))
        self.assertEqual(compaction_target(20, 0, samples, 65.0, limits), 6)
        self.assertEqual(list(samples), [(0.0, 5), (30.0, 9), (61.0, 20)])
        self.assertEqual(compaction_target(25, 6, samples, 95.0, limits), 10)
        self.assertEqual(list(samples), [(30.0, 9), (61.0, 20)])  # the older one is no longer needed
        self.assertIsNone(compaction_target(25, 10, samples, 100.0, limits))

    def test_both_keep_the_less(self):
        limits = HistoryLimits(revisions=10, age_s=60)
        samples = deque([(0.0, 50)])
        self.assertEqual(compaction_target(100, 0, samples, 61.0, limits), 91)
        samples = deque([(0.0, 98)])
        self.assertEqual(compaction_target(100, 0, samples, 61.0, limits), 99)

    def test_never_past_the_store(self):
        limits = HistoryLimits(revisions=0, age_s=1)
        self.assertEqual(compaction_target(7, 0, deque([(0.0, 7)]), 5.0, limits), 7)

    def test_bad_limits(self):
        for bad in (dict(revisions=-1), dict(age_s=-1), dict(check_s=0), dict(step_revisions=0)):
            self.assertRaises(ValueError, HistoryLimits, **bad)


class _Replica:
    is_leader = True


class _Store:
    def __init__(self):
        self.rev = 0
        self.compacted = 0

    def revision(self):
        return self.rev

    def compacted_revision(self):
        return self.compacted


class _Writes:
    def __init__(self):
        self.submitted = []

    def submit(self, request, timeout_s, leader_only=False):
        assert leader_only, "the leader's own compaction is never forwarded nor queued"
        d = defer.Deferred()
        self.submitted.append((request, d))
        return d


class _Options:
    election_ticks = 10


class _Node(HistoryCompaction):
    tick_s = 0.05
    options = _Options()

    def __init__(self, limits):
        self.history_limits = limits
        self.clock = task.Clock()
        self.replica = _Replica()
        self.store = _Store()
        self.writes = _Writes()


class HistoryCompactionTests(SynchronousTestCase):
    """L{HistoryCompaction}: the leader proposes COMPACT, one at a time, on its own clock."""

    def test_proposes_when_over(self):
        node = _Node(HistoryLimits(revisions=10))
        node.store.rev = 20
        node._compact_tick()
        [(request, d)] = node.writes.submitted
        self.assertEqual(request, Request(Op.COMPACT, compact_revision=11))
        node._compact_tick()  # one in flight: nothing more
        node.clock.advance(5)
        node._compact_tick()
        self.assertEqual(len(node.writes.submitted), 1)
        node.store.compacted = 11
        d.callback(CompactDone(11, 20))
        node.store.rev = 40
        node._compact_tick()
        self.assertEqual([r.compact_revision for r, _ in node.writes.submitted], [11, 31])

    def test_count_checked_every_tick_age_sampled_per_period(self):
        node = _Node(HistoryLimits(revisions=10, check_s=2.0))
        node._compact_tick()
        node.store.rev = 50
        node.clock.advance(0.05)
        node._compact_tick()  # the count rule does not wait for the period
        self.assertEqual([r.compact_revision for r, _ in node.writes.submitted], [41])
        node = _Node(HistoryLimits(revisions=0, age_s=5, check_s=2.0))
        for _ in range(40):  # 2 s of ticks
            node.store.rev += 1
            node._compact_tick()
            node.clock.advance(0.05)
        self.assertEqual(list(node._history_samples), [(0.0, 1)])
        node._compact_tick()
        samples = list(node._history_samples)
        self.assertEqual([revision for _, revision in samples], [1, 40])
        self.assertAlmostEqual(samples[1][0], 2.0)

    def test_failure_lets_it_try_again(self):
        node = _Node(HistoryLimits(revisions=10))
        node.store.rev = 20
        node._compact_tick()
        node.writes.submitted[0][1].errback(RuntimeError("timed out"))
        node.clock.advance(1.0)
        node._compact_tick()
        self.assertEqual(len(node.writes.submitted), 2)

    def test_samples_bounded(self):
        node = _Node(HistoryLimits(revisions=1_000_000))
        for _ in range(100):
            node.store.rev += 1
            node.clock.advance(1.0)
            node._compact_tick()
        self.assertEqual(len(node._history_samples), 0)  # no age limit: nothing to remember
        node = _Node(HistoryLimits(revisions=0, age_s=10))
        for _ in range(100):
            node.store.rev += 1
            node.clock.advance(1.0)
            node._compact_tick()
            if node.writes.submitted:
                node.store.compacted = node.writes.submitted[-1][0].compact_revision
                node.writes.submitted.pop()[1].callback(CompactDone(node.store.compacted, node.store.rev))
        self.assertLessEqual(len(node._history_samples), 12)

    def test_follower_proposes_nothing_and_forgets_its_samples(self):
        node = _Node(HistoryLimits(revisions=0, age_s=10))
        node.store.rev = 5
        node._compact_tick()  # samples (0, 5) as leader
        node.replica.is_leader = False
        node.clock.advance(20)
        node._compact_tick()
        self.assertEqual(node.writes.submitted, [])
        node.replica.is_leader = True  # leads again: its old samples are not trusted
        node._compact_tick()
        self.assertEqual(node.writes.submitted, [])
        node.clock.advance(10)
        node._compact_tick()
        # Everything through 5 is old enough; 5 is the store's revision, the most it may compact at.
        self.assertEqual([r.compact_revision for r, _ in node.writes.submitted], [5])
