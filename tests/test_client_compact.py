"""
Tests for C{compact} in the client library (L{kvpaxos.client.blocking},
L{kvpaxos.client.aio}, L{kvpaxos.client.requests.compacted_by_retry}): the
refusals read by reason into L{Compacted} and L{FutureRevision}, and a
compaction resent after an attempt that may have applied.  No network, no
sleeping: L{tests.test_client.FakeCluster}, with a history to compact.
"""

from __future__ import annotations

import asyncio

import grpc
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors
from kvpaxos.client import (
    AsyncClient,
    Compacted,
    CompactRefused,
    FutureRevision,
    InvalidArgument,
    OutcomeUnknown,
    RequestFailed,
    compact_operation,
    compacted_by_retry,
)
from kvpaxos.v1 import kv_pb2
from tests.fake_grpc import FakeRpcError, unavailable
from tests.test_client import A, B, C, ClientTestCase, FakeCluster, FakeTime, LowRandom


class CompactingCluster(FakeCluster):
    """
    A L{FakeCluster} with a history: C{compacted} and C{revision}, and
    the state machine's rules for a compaction.  C{lose_answers}: how many
    compactions apply and then fail UNAVAILABLE (the answer lost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.compacted, self.revision = 0, 10
        self.lose_answers = 0

    def Compact(self, endpoint, request):
        target = request.revision
        metadata = {errors.COMPACT_REVISION: self.compacted, errors.REVISION: self.revision}
        if target > self.revision:
            raise FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "required revision is a future revision: ...",
                               errors.FUTURE_REVISION, metadata)
        if target < self.compacted or (target == self.compacted and self.compacted > 0):
            raise FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "required revision has been compacted: ...",
                               errors.COMPACTED, metadata)
        self.compacted = target
        if self.lose_answers:
            self.lose_answers -= 1
            raise unavailable("no answer from the node within 4.5s; leader is 3", 3)
        header = kv_pb2.ResponseHeader(member_id=self.MEMBERS[endpoint], leader_id=self.leader,
                                       revision=self.revision)
        return kv_pb2.CompactResponse(header=header, compact_revision=target)


class CompactTests(ClientTestCase):
    """Client.compact: one sessionless write to the leader, its refusals read by reason."""

    def setUp(self) -> None:
        super().setUp()
        self.cluster = CompactingCluster()
        self.client = self.make_client()

    def test_compact(self) -> None:
        """compact returns the compacted revision; it opens no session and is sent unary (the client streams)."""
        self.assertEqual(self.client.compact(4), 4)
        self.assertEqual(self.client.compact(6), 6)
        self.assertEqual([r[2].revision for r in self.cluster.sent("Compact")], [4, 6])
        self.assertEqual((self.cluster.sent("OpenSession"), self.cluster.ways), ([], ["unary", "unary"]))

    def test_compacted(self) -> None:
        """A revision already compacted raises Compacted (a RequestFailed) with the history's revisions; not resent."""
        self.cluster.compacted = 6
        with self.assertRaises(Compacted) as raised:
            self.client.compact(5)
        refusal = raised.exception
        self.assertIsInstance(refusal, RequestFailed)
        self.assertEqual((refusal.code, refusal.reason, refusal.compact_revision, refusal.revision,
                          refusal.maybe_applied), (grpc.StatusCode.OUT_OF_RANGE, errors.COMPACTED, 6, 10, False))
        self.assertTrue(str(refusal).startswith("a:1: OUT_OF_RANGE: required revision has been compacted"))
        self.assertEqual(len(self.cluster.sent("Compact")), 1)

    def test_future_revision(self) -> None:
        """A revision above the store's raises FutureRevision, a CompactRefused."""
        with self.assertRaises(FutureRevision) as raised:
            self.client.compact(11)
        self.assertIsInstance(raised.exception, CompactRefused)
        self.assertEqual((raised.exception.revision, raised.exception.compact_revision), (10, 0))

    def test_resent_after_lost_answer(self) -> None:
        """Resent after UNAVAILABLE, a compaction whose first attempt applied is refused COMPACTED: that is success."""
        self.cluster.lose_answers = 1
        self.assertEqual(self.client.compact(5), 5)
        self.assertEqual([r[2].revision for r in self.cluster.sent("Compact")], [5, 5])

    def test_resent_compacted_further(self) -> None:
        """Resent, and another compaction went further meanwhile: success, answering the history's revision."""
        self.cluster.lose_answers = 1
        original = self.cluster.Compact

        def compact_then_more(endpoint, request):
            if self.cluster.compacted == 5:
                self.cluster.compacted = 8  # the leader's own compaction, between the two attempts
            return original(endpoint, request)

        self.cluster.Compact = compact_then_more
        self.assertEqual(self.client.compact(5), 8)

    def test_resent_without_revision(self) -> None:
        """A resent compaction refused COMPACTED without saying where the history starts is not taken for success."""
        self.cluster.errors[A] = [unavailable()]
        self.cluster.errors[B] = [FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "compacted", errors.COMPACTED)]
        with self.assertRaises(Compacted) as raised:
            self.client.compact(3)
        self.assertEqual((raised.exception.maybe_applied, raised.exception.compact_revision), (True, None))

    def test_deadline_exceeded(self) -> None:
        """A compaction whose RPC timed out is not resent: OutcomeUnknown (calling again is safe)."""
        self.cluster.errors[A] = [FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]
        self.assertRaises(OutcomeUnknown, self.client.compact, 4)
        self.assertEqual(len(self.cluster.sent("Compact")), 1)

    def test_bad_revision(self) -> None:
        """A negative revision, or not a whole number, is InvalidArgument before anything is sent."""
        for revision in (-1, 1.5, True, 1 << 63):
            self.assertRaises(InvalidArgument, self.client.compact, revision)
        self.assertEqual(self.cluster.requests, [])


class CompactedByRetryTests(SynchronousTestCase):
    """L{compacted_by_retry}, the rule alone."""

    def refusal(self, compacted, maybe_applied: bool) -> Compacted:
        return Compacted("x", grpc.StatusCode.OUT_OF_RANGE, "x", errors.COMPACTED, compacted, 9, maybe_applied)

    def test_rule(self) -> None:
        """Success only after an attempt that may have applied, with the history compacted at or past the revision."""
        self.assertEqual(compacted_by_retry(5, self.refusal(5, True)), 5)
        self.assertEqual(compacted_by_retry(5, self.refusal(7, True)), 7)
        self.assertIsNone(compacted_by_retry(5, self.refusal(4, True)))
        self.assertIsNone(compacted_by_retry(5, self.refusal(5, False)))
        self.assertIsNone(compacted_by_retry(5, self.refusal(None, True)))

    def test_operation(self) -> None:
        """The operation is a sessionless write to the leader."""
        operation = compact_operation(3)
        self.assertEqual((operation.rpc, operation.request.revision, operation.write, operation.session,
                          operation.leader), ("Compact", 3, True, False, True))


class AsyncCompactTests(SynchronousTestCase):
    """AsyncClient.compact: the same rules."""

    def setUp(self) -> None:
        self.cluster = CompactingCluster()
        self.time = FakeTime()

    def run_client(self, body):
        async def main():
            async with AsyncClient([A, B, C], channel_factory=self.cluster.aio_channel, sleep=self.time.async_sleep,
                                   clock=self.time.clock, rng=LowRandom()) as client:
                return await body(client)
        return asyncio.run(main())

    def test_compact_and_refusals(self) -> None:
        """compact returns the revision; a lost answer resent is success; refusals raise by reason."""
        self.cluster.lose_answers = 1

        async def body(client):
            done = [await client.compact(3)]
            for revision in (2, 11):
                try:
                    await client.compact(revision)
                except CompactRefused as refusal:
                    done.append(type(refusal))
            return done

        self.assertEqual(self.run_client(body), [3, Compacted, FutureRevision])
