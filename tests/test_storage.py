"""
The storage contract: one test case, L{StorageContractMixin}, run against
every provider of L{IReplicaStorage}.

A provider is described by a small class with C{open} (a new, bootstrapped
store) and C{reopen} (the same store as a restarted node would see it; the
in-memory provider returns the object itself).  Add a provider by appending
its class to L{PROVIDERS}; a test case class for it is made below.  No
provider-specific assertions live here.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.paxos.messages import (
    NOOP,
    ZERO_BALLOT,
    Ballot,
    Batch,
    ChangeKind,
    Config,
    ConfigChange,
    Snapshot,
)
from kvpaxos.paxos.state import Entry, HardState
from kvpaxos.storage.interfaces import IReplicaStorage
from kvpaxos.storage.memory import MemoryStorage

CONFIG = Config(frozenset({1, 2, 3}))
B1 = Ballot(1, 1)
B2 = Ballot(2, 3)


def entry(ballot: Ballot, *commands: bytes) -> Entry:
    """Return an entry holding a batch of C{commands} accepted in C{ballot}."""
    return Entry(ballot, Batch(tuple(commands)))


class MemoryProvider:
    """L{MemoryStorage}: its "disk" is the object, so reopening returns it."""

    name = "Memory"

    def open(self, testcase, config):
        return MemoryStorage(config)

    def reopen(self, testcase, storage):
        return storage


#: Every provider the contract runs against.
PROVIDERS = [MemoryProvider]


class StorageContractMixin:
    """
    The behaviour every L{IReplicaStorage} provider must have.  Mixed into a
    L{SynchronousTestCase} with C{provider} set to a provider class.
    """

    provider: type

    def setUp(self):
        self.provider = type(self).provider()
        self.store = self.provider.open(self, CONFIG)

    def reopened(self):
        """Return the store as a restarted replica would read it."""
        self.store = self.provider.reopen(self, self.store)
        return self.store

    def save_slots(self, slots, ballot=B1):
        """Save one entry at each of C{slots}, each with its slot number as command."""
        self.store.save(None, [(s, entry(ballot, b"%d" % s)) for s in slots], None)

    def test_provides_interface(self):
        """The provider fully implements IReplicaStorage."""
        self.assertTrue(verifyObject(IReplicaStorage, self.store))

    def test_fresh_hard_state(self):
        """A fresh store has the zero hard state: nothing promised, nothing chosen."""
        self.assertEqual(self.store.hard_state(), HardState())
        self.assertEqual(self.store.hard_state().promised, ZERO_BALLOT)
        self.assertEqual(self.store.hard_state().chosen_index, 0)

    def test_fresh_snapshot(self):
        """A fresh store holds the bootstrap snapshot: index 0, the given member set, no data."""
        self.assertEqual(self.store.snapshot(), Snapshot(0, CONFIG, b""))

    def test_fresh_entries(self):
        """A fresh store has no log entries."""
        self.assertEqual(self.store.entries(0), [])
        self.assertEqual(self.store.entries(1), [])

    def test_save_hard_state(self):
        """A saved hard state is what is read back, the latest save winning."""
        self.store.save(HardState(B1, 0), [], None)
        self.store.save(HardState(B2, 7), [], None)
        self.assertEqual(self.reopened().hard_state(), HardState(B2, 7))

    def test_save_none_keeps_hard_state(self):
        """A save with hard_state None leaves the saved hard state alone."""
        self.store.save(HardState(B1, 3), [], None)
        self.save_slots([1])
        self.assertEqual(self.reopened().hard_state(), HardState(B1, 3))

    def test_save_entries(self):
        """Saved entries are read back with their slots, ballots and values."""
        values = [
            (1, Entry(B1, NOOP)),
            (2, entry(B1, b"put a", b"put b")),
            (3, Entry(B1, ConfigChange(ChangeKind.ADD_LEARNER, 4))),
        ]
        self.store.save(None, values, None)
        self.assertEqual(self.reopened().entries(1), values)

    def test_entries_overwrite(self):
        """An entry saved at a slot replaces the one there and leaves other slots alone."""
        self.save_slots([1, 2, 3], ballot=B1)
        self.store.save(None, [(2, entry(B2, b"new"))], None)
        self.assertEqual(
            self.reopened().entries(1),
            [(1, entry(B1, b"1")), (2, entry(B2, b"new")), (3, entry(B1, b"3"))],
        )

    def test_entries_slot_order(self):
        """Entries come back in slot order whatever order they were saved in."""
        self.save_slots([5, 1, 3])
        self.save_slots([4, 2])
        self.assertEqual([s for s, _ in self.reopened().entries(1)], [1, 2, 3, 4, 5])

    def test_entries_from_first_slot(self):
        """entries(first_slot) returns only the slots at or after first_slot."""
        self.save_slots([1, 2, 3, 4, 5])
        store = self.reopened()
        self.assertEqual([s for s, _ in store.entries(3)], [3, 4, 5])
        self.assertEqual([s for s, _ in store.entries(5)], [5])
        self.assertEqual(store.entries(6), [])

    def test_save_snapshot(self):
        """A saved snapshot is the one read back."""
        snapshot = Snapshot(4, Config(frozenset({1, 2})), b"state")
        self.store.save(None, [], snapshot)
        self.assertEqual(self.reopened().snapshot(), snapshot)

    def test_snapshot_drops_entries(self):
        """A snapshot drops every entry at or below its index and keeps the later ones."""
        self.save_slots([1, 2, 3, 4, 5])
        self.store.save(None, [], Snapshot(3, CONFIG, b"3"))
        self.assertEqual(
            self.reopened().entries(1), [(4, entry(B1, b"4")), (5, entry(B1, b"5"))]
        )

    def test_entries_only_after_snapshot(self):
        """entries(first_slot) never returns a slot at or below the snapshot, even for first_slot 0."""
        self.store.save(None, [], Snapshot(3, CONFIG, b"3"))
        self.save_slots([4, 5])
        store = self.reopened()
        self.assertEqual([s for s, _ in store.entries(0)], [4, 5])
        self.assertEqual([s for s, _ in store.entries(2)], [4, 5])

    def test_snapshot_and_entries_in_one_save(self):
        """One save of a snapshot with entries keeps only the entries after the snapshot."""
        self.save_slots([1, 2])
        self.store.save(
            HardState(B1, 3),
            [(3, entry(B1, b"3")), (4, entry(B1, b"4"))],
            Snapshot(3, CONFIG, b"3"),
        )
        store = self.reopened()
        self.assertEqual(store.snapshot(), Snapshot(3, CONFIG, b"3"))
        self.assertEqual(store.entries(1), [(4, entry(B1, b"4"))])
        self.assertEqual(store.hard_state(), HardState(B1, 3))

    def test_older_snapshot_ignored(self):
        """A snapshot older than the saved one replaces neither it nor the entries after it."""
        newer = Snapshot(5, CONFIG, b"5")
        self.save_slots([1, 2, 3, 4, 5, 6, 7])
        self.store.save(None, [], newer)
        self.store.save(None, [], Snapshot(2, CONFIG, b"2"))
        store = self.reopened()
        self.assertEqual(store.snapshot(), newer)
        self.assertEqual([s for s, _ in store.entries(1)], [6, 7])

    def test_empty_save_changes_nothing(self):
        """save(None, [], None) changes neither hard state, snapshot nor entries."""
        self.store.save(HardState(B1, 2), [], Snapshot(1, CONFIG, b"1"))
        self.save_slots([2, 3])
        before = (self.store.hard_state(), self.store.snapshot(), self.store.entries(0))
        self.store.save(None, [], None)
        store = self.reopened()
        self.assertEqual((store.hard_state(), store.snapshot(), store.entries(0)), before)

    def test_save_copies_entries(self):
        """Changing the list given to save afterwards does not change what was saved."""
        entries = [(1, entry(B1, b"1"))]
        self.store.save(None, entries, None)
        entries.append((2, entry(B1, b"2")))
        entries[0] = (1, entry(B2, b"changed"))
        self.assertEqual(self.reopened().entries(1), [(1, entry(B1, b"1"))])


for _provider in PROVIDERS:
    _name = f"{_provider.name}StorageContractTests"
    globals()[_name] = type(
        _name,
        (StorageContractMixin, SynchronousTestCase),
        {"provider": _provider, "__module__": __name__},
    )
del _provider, _name
