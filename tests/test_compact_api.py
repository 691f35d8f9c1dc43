"""
Tests for C{kvpaxos.v1.KV.Compact} at the gRPC edge
(L{kvpaxos.api.servicers}, L{kvpaxos.api.statuses.compact_refused}): a
real grpcio server on 127.0.0.1 in front of L{tests.test_api.FakeNode},
whose answers the tests set (the state machine's compaction results,
L{kvpaxos.kv.compaction}); no reactor, nothing sleeps.
"""

from __future__ import annotations

import grpc
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.api import errors, statuses
from kvpaxos.kv.commands import Op, Request
from kvpaxos.kv.compaction import CompactDone, CompactError, CompactRefused
from kvpaxos.v1 import kv_pb2
from tests.test_api import RunningServer

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


class CompactTests(RunningServer, SynchronousTestCase):
    """Compact is a sessionless COMPACT log command; its refusals are OUT_OF_RANGE with a reason."""

    def answer(self, result) -> None:
        self.node.answer = lambda: defer.succeed(result)

    def compact(self, revision: int):
        return self.rpc(self.kv.Compact, kv_pb2.CompactRequest(revision=revision))

    def test_compacted(self) -> None:
        """A compaction that applied answers its compacted revision; the header carries the store's revision."""
        self.answer(CompactDone(5, 9))
        response = self.compact(5).result()
        self.assertEqual((response.compact_revision, response.header.revision, response.header.member_id,
                          response.header.leader_id), (5, 9, 1, 2))
        (call,) = self.node.calls
        self.assertEqual(call[:2], ("submit", Request(Op.COMPACT, compact_revision=5)))

    def test_already_compacted(self) -> None:
        """A revision the history is compacted past is OUT_OF_RANGE COMPACTED, naming the three revisions."""
        self.answer(CompactRefused(CompactError.COMPACTED, 7, 9))
        details = self.assertStatus(self.compact(3), OUT_OF_RANGE, errors.COMPACTED,
                                    {errors.COMPACT_REVISION: 7, errors.REVISION: 9, errors.MEMBER_ID: 1})
        self.assertEqual(details, "required revision has been compacted: cannot compact at revision 3, the history "
                                  "is already compacted at revision 7 (the store is at revision 9)")

    def test_future_revision(self) -> None:
        """A revision above the store's is OUT_OF_RANGE FUTURE_REVISION, naming the three revisions."""
        self.answer(CompactRefused(CompactError.FUTURE, 2, 9))
        details = self.assertStatus(self.compact(12), OUT_OF_RANGE, errors.FUTURE_REVISION,
                                    {errors.COMPACT_REVISION: 2, errors.REVISION: 9})
        self.assertEqual(details, "required revision is a future revision: cannot compact at revision 12, the "
                                  "store is at revision 9 (its history is compacted at revision 2)")

    def test_negative_revision(self) -> None:
        """A negative revision is INVALID_ARGUMENT and never reaches the node."""
        details = self.assertStatus(self.compact(-1), grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT)
        self.assertIn("compaction revision", details)
        self.assertEqual(self.node.calls, [])

    def test_unexpected_result(self) -> None:
        """A result that is no compaction's is INTERNAL (a node bug), not a wrong answer."""
        self.answer(object())
        self.assertStatus(self.compact(1), grpc.StatusCode.INTERNAL, errors.INTERNAL)


class CompactAppliedTests(RunningServer, SynchronousTestCase):
    """Compact through the real state machine (L{tests.test_api.FakeNode} applies it to a MemoryState)."""

    def compact(self, revision: int):
        return self.rpc(self.kv.Compact, kv_pb2.CompactRequest(revision=revision))

    def test_rules(self) -> None:
        """A compaction applies once; the same again is COMPACTED, one past the store's revision FUTURE_REVISION."""
        self.node.state.set_revision(5)
        response = self.compact(3).result()
        self.assertEqual((response.compact_revision, response.header.revision), (3, 5))
        self.assertStatus(self.compact(3), OUT_OF_RANGE, errors.COMPACTED,
                          {errors.COMPACT_REVISION: 3, errors.REVISION: 5})
        self.assertStatus(self.compact(2), OUT_OF_RANGE, errors.COMPACTED)
        self.assertStatus(self.compact(6), OUT_OF_RANGE, errors.FUTURE_REVISION,
                          {errors.COMPACT_REVISION: 3, errors.REVISION: 5})
        self.assertEqual(self.compact(5).result().compact_revision, 5)
        self.assertEqual(self.node.state.compacted_revision(), 5)

    def test_never_compacted(self) -> None:
        """A store never compacted accepts 0 (dropping nothing), again and again."""
        for _ in range(2):
            self.assertEqual(self.compact(0).result().compact_revision, 0)


class CompactStatusTests(SynchronousTestCase):
    """L{statuses.compact_refused}: each refusal's code, reason and metadata."""

    def test_reasons_have_codes(self) -> None:
        """Both reasons travel with the code the catalogue names, OUT_OF_RANGE, and are not logged."""
        for error, reason in ((CompactError.COMPACTED, errors.COMPACTED), (CompactError.FUTURE, errors.FUTURE_REVISION)):
            status = statuses.compact_refused(CompactRefused(error, 4, 6), 5)
            self.assertEqual((status.code, status.reason, status.unexpected), (OUT_OF_RANGE, reason, False))
            self.assertEqual(errors.REASONS[reason], OUT_OF_RANGE)
            self.assertEqual(status.metadata, {errors.COMPACT_REVISION: 4, errors.REVISION: 6})
