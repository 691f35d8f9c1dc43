"""
L{kvpaxos.storage.apply.apply_committed}, the slot loop both providers run
in their commit, over a plain L{MemoryState} view (the providers' own
commits are pinned by the contract in L{tests.test_storage}).
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.kv.commands import Op, Request
from kvpaxos.encoding.commands import encode_request
from kvpaxos.kv.sessions import DEFAULT_LIMITS
from kvpaxos.paxos.config import ChangeKind, ConfigChange
from kvpaxos.paxos.messages import NOOP, Batch
from kvpaxos.storage.apply import apply_committed
from kvpaxos.storage.memory import MemoryState


def put(key: bytes, value: bytes) -> bytes:
    """Return the log bytes of a put."""
    return encode_request(Request(Op.PUT, key, value))


class ApplyCommittedTests(SynchronousTestCase):
    """Committed slots apply in order, batches through the state machine."""

    def setUp(self):
        self.state = MemoryState()

    def test_batches_apply_in_slot_order(self):
        """Each batch applies at its slot, in order, and the last slot is returned with every result."""
        applied, results = apply_committed(
            self.state,
            [(4, Batch((put(b"a", b"1"),))), (5, Batch((put(b"a", b"2"), put(b"b", b"3"))))],
            3,
            DEFAULT_LIMITS,
        )
        self.assertEqual(applied, 5)
        self.assertEqual([request.key for request, _ in results], [b"a", b"a", b"b"])
        self.assertEqual(self.state.get(b"a").value, b"2")
        self.assertEqual(self.state.get(b"a").mod_revision, 2)

    def test_other_values_only_advance(self):
        """A no-op or a configuration change advances the applied slot and applies nothing."""
        applied, results = apply_committed(
            self.state, [(1, NOOP), (2, ConfigChange(ChangeKind.ADD_LEARNER, 4))], 0, DEFAULT_LIMITS
        )
        self.assertEqual((applied, results), (2, []))
        self.assertEqual(self.state.revision(), 0)

    def test_nothing_committed(self):
        """No committed slots leave the applied slot where it was."""
        self.assertEqual(apply_committed(self.state, [], 7, DEFAULT_LIMITS), (7, []))

    def test_gap_refused(self):
        """A slot that does not follow the one before is a broken invariant: AssertionError."""
        self.assertRaises(
            AssertionError, apply_committed, self.state, [(3, NOOP)], 1, DEFAULT_LIMITS
        )
