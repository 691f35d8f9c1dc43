"""
The storage contracts, run against every provider: L{StorageContractMixin}
(L{IReplicaStorage}: the acceptor state) and L{NodeStoreContractMixin}
(L{INodeStore}: acceptor state and key-value data committed together).
Then what is particular to one provider (LMDB's map and files), the two
providers agreeing byte for byte, the on-disk record format, and finding
providers as plugins.

A provider is described by a small class with C{open} (a new, bootstrapped
store) and C{reopen} (the same store as a restarted node would see it; the
in-memory providers return the object itself, LMDB closes and reopens the
environment).  Add a provider by appending its class to L{PROVIDERS} (and
L{NODE_STORE_PROVIDERS}); a test case class for it is made below.  No
provider-specific assertions live in the contracts.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kvpaxos.kv import machine
from kvpaxos.kv.commands import (
    MAX_KEY_BYTES,
    compare_and_swap,
    MAX_VALUE_BYTES,
    TO_THE_END,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRange,
    DeleteResponse,
    InvalidArgument,
    KeyValue,
    Op,
    Put,
    Range,
    RangeResult,
    Request,
    Result,
    Txn,
    prefix_end,
)
from kvpaxos.encoding.commands import encode_request
from kvpaxos.encoding.state import decode_snapshot
from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange
from kvpaxos.paxos.messages import (
    NOOP,
    ZERO_BALLOT,
    Ballot,
    Batch,
    Snapshot,
)
from kvpaxos.paxos.state import Entry, HardState
from kvpaxos.storage.interfaces import (
    Commit,
    INodeStore,
    IReplicaStorage,
    IStateMachine,
    IStateView,
    IStoreFactory,
)
from kvpaxos.storage.lmdb import LMDBStore
from kvpaxos.storage.memory import MemoryState, MemoryStorage, MemoryStore
from kvpaxos.storage.providers import (
    UnknownStoreError,
    find_store_factory,
    store_factories,
)

CONFIG = Config(frozenset({1, 2, 3}))
B1 = Ballot(1, 1)
B2 = Ballot(2, 3)


def entry(ballot: Ballot, *commands: bytes) -> Entry:
    """Return an entry holding a batch of C{commands} accepted in C{ballot}."""
    return Entry(ballot, Batch(tuple(commands)))


#: LMDB's map in tests: small, so that growing it is exercised cheaply.
TEST_MAP_BYTES = 256 << 10


class MemoryProvider:
    """L{MemoryStorage}: its "disk" is the object, so reopening returns it."""

    name = "Memory"

    def open(self, testcase, config):
        return MemoryStorage(config)

    def reopen(self, testcase, storage):
        return storage


class MemoryStoreProvider:
    """L{MemoryStore}: its "disk" is the object, so reopening returns it."""

    name = "MemoryStore"

    def open(self, testcase, config):
        return MemoryStore(config)

    def reopen(self, testcase, storage):
        return storage


class LMDBProvider:
    """
    L{LMDBStore} in a fresh directory with a small map; reopening closes
    the environment and opens the directory again (with another member set,
    which must be ignored).
    """

    name = "LMDB"

    def open(self, testcase, config):
        directory = testcase.mktemp()
        return self._open(testcase, directory, config)

    def reopen(self, testcase, storage):
        storage.close()
        return self._open(testcase, storage.directory, Config(frozenset({99})))

    def _open(self, testcase, directory, config):
        store = LMDBStore(directory, config, map_bytes=TEST_MAP_BYTES)
        testcase.addCleanup(store.close)
        return store


#: Every provider the IReplicaStorage contract runs against.
PROVIDERS = [MemoryProvider, MemoryStoreProvider, LMDBProvider]
#: Every provider the INodeStore contract runs against.
NODE_STORE_PROVIDERS = [MemoryStoreProvider, LMDBProvider]


class _ProviderFixture:
    """A fresh store from C{provider} (a provider class) for each test."""

    provider: type

    def setUp(self):
        self.provider = type(self).provider()
        self.store = self.provider.open(self, CONFIG)

    def reopened(self):
        """Return the store as a restarted replica would read it."""
        self.store = self.provider.reopen(self, self.store)
        return self.store


class StorageContractMixin(_ProviderFixture):
    """
    The behaviour every L{IReplicaStorage} provider must have.  Mixed into a
    L{SynchronousTestCase} with C{provider} set to a provider class.
    """

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


# --- INodeStore -------------------------------------------------------------


def put(key: bytes, value: bytes) -> bytes:
    """Return the log bytes of a put."""
    return encode_request(Request(Op.PUT, key, value))


def append(key: bytes, value: bytes) -> bytes:
    """Return the log bytes of an append."""
    return encode_request(Request(Op.APPEND, key, value))


def delete(key: bytes) -> bytes:
    """Return the log bytes of a delete."""
    return encode_request(Request(Op.DELETE, key))


def batch(*commands: bytes) -> Batch:
    """Return a slot value holding C{commands}."""
    return Batch(tuple(commands))


def state_of(*items: tuple) -> bytes:
    """Return the snapshot data of a state made by putting the (key, value) C{items} in order."""
    state = MemoryState()
    machine.apply_batch(state, [put(k, v) for k, v in items], 1)
    return state.snapshot_data()


class NodeStoreContractMixin(_ProviderFixture):
    """
    The behaviour every L{INodeStore} provider must have.  Mixed into a
    L{SynchronousTestCase} with C{provider} set to a provider class.
    """

    def state(self, store=None):
        """Return everything a store holds, for comparing before and after."""
        store = store or self.store
        return (
            store.hard_state(),
            store.snapshot(),
            store.entries(0),
            store.applied_index(),
            store.snapshot_data(),
        )

    def apply_slots(self, *values, first=1):
        """Commit C{values} as the chosen slots C{first}, C{first + 1}, ..."""
        committed = list(enumerate(values, first))
        return self.store.commit(Commit(None, [], None, False, committed))

    def test_provides_interface(self):
        """The provider fully implements INodeStore, and its state_machine IStateMachine."""
        self.assertTrue(verifyObject(INodeStore, self.store))
        self.assertTrue(verifyObject(IStateMachine, self.store.state_machine))

    def test_only_a_retry_reads_a_saved_result(self):
        """
        A new request of a session asks the view only for the session's
        sequence; the saved result (a Txn's can be large) is read for a
        retry alone, and the retry gets it.
        """
        reads = []
        original = machine.apply_batch

        class Counting:
            def __init__(self, view) -> None:
                self._view = view

            def __getattr__(self, name):
                return getattr(self._view, name)

            def session(self, client_id):
                reads.append(client_id)
                return self._view.session(client_id)

        self.patch(machine, "apply_batch", lambda view, *a, **k: original(Counting(view), *a, **k))
        in_session = [encode_request(Request(Op.APPEND, b"k", b"x", client_id=1, sequence=n)) for n in (1, 2)]
        results = self.apply_slots(batch(encode_request(Request(Op.OPEN_SESSION))), batch(in_session[0]),
                                   batch(in_session[1]))
        self.assertEqual(reads, [])
        (retried,) = self.apply_slots(batch(in_session[1]), first=4)
        self.assertEqual(reads, [1])
        self.assertEqual(retried[1], results[2][1])

    def test_state_view_provides_interface(self):
        """The view the state machine applies through, inside a commit, fully implements IStateView."""
        views = []
        original = machine.apply_batch

        def spy(view, *args, **kwargs):
            views.append(view)
            return original(view, *args, **kwargs)

        self.patch(machine, "apply_batch", spy)
        self.apply_slots(batch(put(b"a", b"1")))
        self.assertEqual(len(views), 1)
        self.assertTrue(verifyObject(IStateView, views[0]))
        self.assertEqual(self.store.get(b"a"), b"1")

    def test_fresh_store(self):
        """A fresh store has applied nothing and holds no data."""
        self.assertEqual(self.store.applied_index(), 0)
        self.assertIsNone(self.store.get(b"a"))
        self.assertEqual(self.store.snapshot_data(), b"")

    def test_commit_persists_acceptor_state(self):
        """commit stores hard state, entries and snapshot as save does."""
        values = [(2, entry(B1, put(b"a", b"1"))), (3, Entry(B1, NOOP))]
        snapshot = Snapshot(1, CONFIG, b"")
        self.store.commit(Commit(HardState(B1, 2), values, snapshot, False, []))
        store = self.reopened()
        self.assertEqual(store.hard_state(), HardState(B1, 2))
        self.assertEqual(store.snapshot(), snapshot)
        self.assertEqual(store.entries(0), values)

    def test_commit_applies_in_order(self):
        """Committed batches apply in slot order and their results come back in that order."""
        results = self.apply_slots(
            batch(put(b"a", b"1"), append(b"a", b"2")),
            batch(delete(b"a"), put(b"b", b"x"), append(b"c", b"y")),
        )
        self.assertEqual(
            results,
            [
                (Request(Op.PUT, b"a", b"1"), Result(False, None, 1)),
                (Request(Op.APPEND, b"a", b"2"), Result(True, b"12", 2)),
                (Request(Op.DELETE, b"a"), Result(True, None, 3)),
                (Request(Op.PUT, b"b", b"x"), Result(False, None, 4)),
                (Request(Op.APPEND, b"c", b"y"), Result(False, b"y", 5)),
            ],
        )
        self.assertIsNone(self.store.get(b"a"))
        self.assertEqual(self.store.get(b"b"), b"x")
        self.assertEqual(self.store.applied_index(), 2)

    def test_commits_build_on_each_other(self):
        """A later commit sees the data an earlier one applied."""
        self.apply_slots(batch(put(b"k", b"one")))
        results = self.apply_slots(batch(append(b"k", b"+two")), first=2)
        self.assertEqual(results, [(Request(Op.APPEND, b"k", b"+two"), Result(True, b"one+two", 2))])

    def test_noop_and_config_change_advance_applied(self):
        """No-ops and config changes apply nothing to the data but count as applied."""
        results = self.apply_slots(NOOP, NOOP, ConfigChange(ChangeKind.REMOVE, 3))
        self.assertEqual(results, [])
        self.assertEqual(self.store.applied_index(), 3)
        self.assertEqual(self.store.snapshot_data(), b"")

    def test_corrupt_command_skipped(self):
        """A command that does not decode is skipped and the rest of its batch applies."""
        results = self.apply_slots(batch(b"not a command", put(b"a", b"1")))
        self.assertEqual(results, [(Request(Op.PUT, b"a", b"1"), Result(False, None, 1))])
        self.assertEqual(self.store.applied_index(), 1)

    def test_applied_survives_reopen(self):
        """The applied index and the data it covers are read back after a restart."""
        self.store.commit(Commit(
            HardState(B1, 2),
            [(1, entry(B1, put(b"a", b"1"))), (2, entry(B1, put(b"b", b"2")))],
            None,
            False,
            [(1, batch(put(b"a", b"1"))), (2, batch(put(b"b", b"2")))],
        ))
        store = self.reopened()
        self.assertEqual(store.applied_index(), 2)
        self.assertEqual((store.get(b"a"), store.get(b"b")), (b"1", b"2"))
        self.assertEqual(store.hard_state(), HardState(B1, 2))

    def test_failed_commit_changes_nothing(self):
        """A commit whose apply fails midway leaves acceptor state, data and applied index as they were."""
        self.store.commit(
            Commit(HardState(B1, 1), [(1, entry(B1, b"1"))], None, False, [(1, batch(put(b"a", b"1")))]),
        )
        before = self.state()
        original = machine.apply

        def apply(view, request, slot, limits, guard=None):
            if request.key == b"boom":
                raise RuntimeError("disk on fire")
            return original(view, request, slot, limits, guard)

        self.patch(machine, "apply", apply)
        self.assertRaises(
            RuntimeError,
            self.store.commit,
            Commit(
                HardState(B2, 3),
                [(2, entry(B2, b"2")), (3, entry(B2, b"3"))],
                Snapshot(1, CONFIG, b""),
                False,
                [(2, batch(put(b"a", b"2"), delete(b"a"), put(b"c", b"1"))), (3, batch(put(b"boom", b"")))],
            ),
        )
        self.assertEqual(self.state(), before)
        self.assertEqual(self.store.get(b"a"), b"1")
        self.assertIsNone(self.store.get(b"c"))
        self.assertEqual(self.state(self.reopened()), before)

    def test_out_of_order_slot_refused(self):
        """Applying a slot that does not follow the applied index is an AssertionError that changes nothing."""
        self.apply_slots(batch(put(b"a", b"1")))
        before = self.state()
        self.assertRaises(AssertionError, self.apply_slots, batch(put(b"a", b"2")), first=3)
        self.assertRaises(AssertionError, self.apply_slots, batch(put(b"a", b"2")), first=1)
        self.assertEqual(self.state(), before)

    def test_install_replaces_data(self):
        """Installing a snapshot replaces all data and sets the applied index to the snapshot's."""
        self.apply_slots(batch(put(b"a", b"1"), put(b"b", b"2")))
        snapshot = Snapshot(5, Config(frozenset({1, 2})), state_of((b"c", b"3")))
        results = self.store.commit(
            Commit(None, [], snapshot, True, [(6, batch(put(b"d", b"4")))]),
        )
        self.assertEqual(results, [(Request(Op.PUT, b"d", b"4"), Result(False, None, 2))])
        store = self.reopened()
        self.assertEqual(
            [store.get(k) for k in (b"a", b"b", b"c", b"d")], [None, None, b"3", b"4"]
        )
        self.assertEqual(store.applied_index(), 6)
        self.assertEqual(store.snapshot(), snapshot)

    def test_install_at_saved_index(self):
        """A snapshot at the saved snapshot's index (a joining node's bootstrap) installs."""
        snapshot = Snapshot(0, Config(frozenset({7})), state_of((b"k", b"v")))
        self.store.commit(Commit(None, [], snapshot, True, []))
        self.assertEqual(self.store.get(b"k"), b"v")
        self.assertEqual(self.store.snapshot(), snapshot)
        self.assertEqual(self.store.applied_index(), 0)

    def test_install_needs_snapshot(self):
        """install without a snapshot is caller misuse: ValueError, nothing changed."""
        before = self.state()
        self.assertRaises(ValueError, self.store.commit, Commit(None, [], None, True, []))
        self.assertEqual(self.state(), before)

    def test_compaction_point_without_data(self):
        """
        A snapshot without data (a durable state machine's compaction point)
        saves its index and member set, drops the log through it, keeps the
        data and reads back without data, also after a reopen.
        """
        self.apply_slots(batch(put(b"a", b"1")), batch(put(b"b", b"2")))
        self.store.save(HardState(B1, 2), [(3, entry(B1, b"3"))], Snapshot(1, CONFIG, b"old"))
        self.store.commit(Commit(None, [], Snapshot(2, CONFIG, None), False, []))
        store = self.reopened()
        self.assertEqual(store.snapshot(), Snapshot(2, CONFIG, None))
        self.assertEqual([slot for slot, _ in store.entries(0)], [3])
        self.assertEqual((store.get(b"a"), store.get(b"b"), store.applied_index()), (b"1", b"2", 2))

    def test_snapshot_now(self):
        """snapshot_now() is the applied index with the state at it; the state machine says durable."""
        self.apply_slots(batch(put(b"a", b"1")), batch(put(b"b", b"2")))
        self.assertEqual(self.store.snapshot_now(), (2, self.store.snapshot_data()))
        self.assertTrue(self.store.state_machine.durable)
        self.assertEqual(self.store.state_machine.snapshot_now(), self.store.snapshot_now())

    def test_read_ranges(self):
        """read_ranges answers each query as range would, a bad one with its error, from one view."""
        self.apply_slots(batch(put(b"a", b"1"), put(b"b", b"2")), batch(put(b"c", b"3")))
        queries = [Range(b"a"), Range(b"a", b"c"), Range(b"", None), Range(b"b", TO_THE_END, 1)]
        results = self.store.read_ranges(queries)
        self.assertEqual(results[0], self.store.range(b"a"))
        self.assertEqual(results[1], self.store.range(b"a", b"c"))
        self.assertIsInstance(results[2], InvalidArgument)
        self.assertEqual(results[3], self.store.range(b"b", TO_THE_END, 1))
        self.assertEqual({r.revision for r in (results[0], results[1], results[3])}, {3})
        self.assertEqual(self.store.read_ranges([]), [])

    def test_on_applied_gets_the_results(self):
        """on_applied is given the results commit returns, and is not called when nothing applied."""
        seen = []
        results = self.store.commit(
            Commit(None, [], None, False, [(1, batch(put(b"a", b"1"), put(b"a", b"2")))], None), seen.append,
        )
        self.assertEqual(seen, [results])
        self.assertEqual(len(results), 2)
        self.store.commit(Commit(HardState(B1, 1), [], None, False, [], None), seen.append)
        self.assertEqual(len(seen), 1)

    def test_install_needs_data(self):
        """Installing a snapshot without data is caller misuse: ValueError, nothing changed."""
        self.apply_slots(batch(put(b"a", b"1")))
        before = self.state()
        self.assertRaises(ValueError, self.store.commit, Commit(None, [], Snapshot(4, CONFIG, None), True, []))
        self.assertEqual(self.state(), before)

    def test_install_below_saved_snapshot_refused(self):
        """Installing a snapshot older than the saved one is a ValueError that changes nothing."""
        self.apply_slots(*[batch(put(b"a", b"%d" % i)) for i in range(1, 6)])
        self.store.save(HardState(B1, 5), [], Snapshot(5, CONFIG, self.store.snapshot_data()))
        before = self.state()
        old = Snapshot(3, CONFIG, state_of((b"z", b"z")))
        self.assertRaises(ValueError, self.store.commit, Commit(None, [], old, True, []))
        self.assertEqual(self.state(), before)

    def test_install_truncated_snapshot_refused(self):
        """A snapshot whose data is truncated raises ValueError and changes nothing."""
        self.apply_slots(batch(put(b"a", b"1")))
        before = self.state()
        data = state_of((b"b", b"2"), (b"c", b"3"))[:-1]
        self.assertRaises(ValueError, self.store.commit, Commit(None, [], Snapshot(4, CONFIG, data), True, []))
        self.assertEqual(self.state(), before)

    def test_snapshot_data_installs_on_another_store(self):
        """snapshot_data() installed on another store gives it the same data."""
        self.apply_slots(
            batch(put(b"b", b"2"), put(b"a", b"1"), put(b"c", b"")),
            batch(append(b"b", b"2"), delete(b"c")),
        )
        data = self.store.snapshot_data()
        other = self.provider.open(self, Config(frozenset()))
        other.commit(Commit(None, [], Snapshot(2, CONFIG, data), True, []))
        self.assertEqual(other.snapshot_data(), data)
        self.assertEqual((other.get(b"a"), other.get(b"b"), other.get(b"c")), (b"1", b"22", None))
        self.assertEqual(other.applied_index(), 2)

    def test_snapshot_data_in_key_order(self):
        """snapshot_data() lists every item once, in byte order of the keys."""
        keys = [b"b", b"a\xff", b"a", b"\x00", b"ab"]
        self.apply_slots(batch(*[put(k, k.upper()) for k in keys]))
        self.assertEqual(
            [(r.key, r.value) for r in decode_snapshot(self.store.snapshot_data()).records],
            [(k, k.upper()) for k in sorted(keys)],
        )

    def test_state_machine_view(self):
        """The state_machine's snapshot() is the store's snapshot_data()."""
        self.apply_slots(batch(put(b"a", b"1")))
        self.assertEqual(self.store.state_machine.snapshot(), self.store.snapshot_data())

    def test_store_grows(self):
        """Committing far more than LMDB's initial test map succeeds and all of it reads back."""
        value = b"v" * (60 << 10)
        for slot in range(1, 41):
            self.store.commit(
                Commit(HardState(B1, slot),
                [(slot, entry(B1, put(b"k%d" % slot, value)))],
                None,
                False,
                [(slot, batch(put(b"k%d" % slot, value)))]),
            )
        store = self.reopened()
        self.assertEqual(store.applied_index(), 40)
        self.assertEqual(len(store.entries(0)), 40)
        self.assertEqual({store.get(b"k%d" % s) for s in range(1, 41)}, {value})

    def test_largest_key_and_value(self):
        """A 511-byte key with a 1 MiB value is logged, applied and read back."""
        key = b"k" * MAX_KEY_BYTES
        value = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
        command = put(key, value)
        self.store.commit(Commit(HardState(B1, 1), [(1, entry(B1, command))], None, False, [(1, batch(command))]))
        store = self.reopened()
        self.assertEqual(store.get(key), value)
        self.assertEqual(store.entries(1), [(1, entry(B1, command))])

    def test_get_rejects_bad_keys(self):
        """get of an empty key or one over 511 bytes is the client's fault: InvalidArgument."""
        self.assertRaises(InvalidArgument, self.store.get, b"")
        self.assertRaises(InvalidArgument, self.store.get, b"k" * (MAX_KEY_BYTES + 1))

    def test_save_applies_nothing(self):
        """save stores acceptor state and leaves the data and applied index alone."""
        self.apply_slots(batch(put(b"a", b"1")))
        self.store.save(HardState(B1, 2), [(2, entry(B1, put(b"a", b"2")))], None)
        self.assertEqual(self.store.get(b"a"), b"1")
        self.assertEqual(self.store.applied_index(), 1)

    def test_records_and_revision(self):
        """get_record returns version and revisions, revision() the store's, and both survive a restart."""
        self.apply_slots(batch(put(b"a", b"1"), put(b"b", b"2"), append(b"a", b"1")))
        store = self.reopened()
        self.assertEqual(store.revision(), 3)
        self.assertEqual(store.get_record(b"a"), KeyValue(b"a", b"11", 2, 1, 3))
        self.assertIsNone(store.get_record(b"zz"))
        self.assertRaises(InvalidArgument, store.get_record, b"")

    def test_fresh_revision(self):
        """A fresh store is at revision 0."""
        self.assertEqual(self.store.revision(), 0)

    def test_range(self):
        """range reads keys in byte order with etcd's end conventions, limit, keys_only and count_only."""
        self.apply_slots(batch(*[put(k, k) for k in (b"b", b"a", b"ab", b"a\xff", b"c")]))
        store = self.reopened()
        keys = lambda result: [kv.key for kv in result.kvs]  # noqa: E731
        self.assertEqual(keys(store.range(b"a", prefix_end(b"a"))), [b"a", b"ab", b"a\xff"])
        self.assertEqual(keys(store.range(b"b")), [b"b"])
        self.assertEqual(keys(store.range(b"b", TO_THE_END)), [b"b", b"c"])
        self.assertEqual(store.range(b"c", b"a"), RangeResult((), 0, False, 5))
        limited = store.range(b"\x00", TO_THE_END, limit=2, keys_only=True)
        self.assertEqual(limited, RangeResult((KeyValue(b"a", b"", 1, 2, 2),
                                               KeyValue(b"ab", b"", 1, 3, 3)), 5, True, 5))
        self.assertEqual(store.range(b"a", b"b", count_only=True), RangeResult((), 3, False, 5))

    def test_range_rejects_bad_input(self):
        """range with an empty or oversized key or end, or a negative limit, is InvalidArgument."""
        for args in ((b"",), (b"k" * (MAX_KEY_BYTES + 1),), (b"a", b""), (b"a", b"b", -1)):
            self.assertRaises(InvalidArgument, self.store.range, *args)

    def test_transaction_applies_atomically(self):
        """A transaction commits all its writes at one revision, and its result comes back."""
        self.apply_slots(batch(put(b"a", b"1")))
        request = Request(Op.TXN, txn=Txn(
            (Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"1"),),
            (Put(b"c", b"2"), Put(b"b", b"2"), DeleteRange(b"a", b"a\x00"), Range(b"b")),
        ))
        [(_, result)] = self.apply_slots(batch(encode_request(request)), first=2)
        self.assertTrue(result.succeeded)
        self.assertEqual(result.revision, 2)
        self.assertEqual(result.responses[2], DeleteResponse(1))
        store = self.reopened()
        self.assertEqual(store.get_record(b"b"), KeyValue(b"b", b"2", 1, 2, 2))
        self.assertIsNone(store.get(b"a"))
        self.assertEqual(store.revision(), 2)

    def test_install_sets_revision(self):
        """Installing a snapshot brings its revision and records with it."""
        self.apply_slots(batch(put(b"x", b"1")))
        self.store.commit(Commit(None, [], Snapshot(3, CONFIG, state_of((b"a", b"1"), (b"a", b"2"))), True, []))
        store = self.reopened()
        self.assertEqual(store.revision(), 2)
        self.assertEqual(store.get_record(b"a"), KeyValue(b"a", b"2", 2, 1, 2))
        self.assertIsNone(store.get(b"x"))


for _provider in NODE_STORE_PROVIDERS:
    _name = f"{_provider.name}NodeStoreContractTests"
    globals()[_name] = type(
        _name,
        (NodeStoreContractMixin, SynchronousTestCase),
        {"provider": _provider, "__module__": __name__},
    )
del _provider, _name


# --- provider specifics ----------------------------------------------------


class LMDBStoreTests(SynchronousTestCase):
    """What is particular to L{LMDBStore}: its environment, map and files."""

    def open(self, directory=None, config=CONFIG, map_bytes=TEST_MAP_BYTES):
        """Return an LMDBStore in C{directory} (a new one by default), closed on cleanup."""
        store = LMDBStore(directory or self.mktemp(), config, map_bytes=map_bytes)
        self.addCleanup(store.close)
        return store

    def test_durable_environment(self):
        """The environment fsyncs data and metadata on commit and writes through no writable map."""
        flags = self.open()._env.flags()
        self.assertEqual(
            {k: flags[k] for k in ("sync", "metasync", "writemap", "map_async")},
            {"sync": True, "metasync": True, "writemap": False, "map_async": False},
        )

    def test_map_grows(self):
        """A commit larger than the map grows it instead of failing."""
        store = self.open()
        before = store._env.info()["map_size"]
        command = put(b"big", b"x" * (2 * TEST_MAP_BYTES))
        store.commit(Commit(None, [], None, False, [(1, batch(command))]))
        self.assertGreater(store.map_growths, 0)
        self.assertGreater(store._env.info()["map_size"], before)
        self.assertEqual(store.get(b"big"), b"x" * (2 * TEST_MAP_BYTES))

    def test_bootstrap_persisted_at_open(self):
        """A new store's bootstrap snapshot is on disk before any commit."""
        store = self.open(config=Config(frozenset({4, 5}), frozenset({6})))
        directory = store.directory
        store.close()
        reopened = self.open(directory, config=CONFIG)
        self.assertEqual(reopened.snapshot(), Snapshot(0, Config(frozenset({4, 5}), frozenset({6}))))

    def test_no_config_bootstraps_empty_member_set(self):
        """A store opened without a config bootstraps an empty member set (a joining node)."""
        self.assertEqual(self.open(config=None).snapshot(), Snapshot(0, Config(frozenset())))

    def test_session_limits_used(self):
        """The store applies batches with the session limits it was opened with."""
        from kvpaxos.kv.sessions import SessionLimits

        store = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES,
                          limits=SessionLimits(max_sessions=1))
        self.addCleanup(store.close)
        opening = encode_request(Request(Op.OPEN_SESSION))
        store.commit(Commit(None, [], None, False, [(1, batch(opening, opening))]))
        self.assertEqual(store.range(b"\x00", TO_THE_END).count, 0)
        [(_, result)] = store.commit(Commit(None, [], None, False, [(2, batch(encode_request(
            Request(Op.PUT, b"k", b"v", client_id=1, sequence=1))))]))
        self.assertEqual(type(result).__name__, "SessionExpired")

    def test_log_keys_sort_as_slots(self):
        """Log keys are 8-byte big-endian, so slots past 255 and 65535 still come back in order."""
        store = self.open()
        slots = [70000, 1, 256, 255, 65536]
        store.save(None, [(s, entry(B1, b"%d" % s)) for s in slots], None)
        self.assertEqual([s for s, _ in store.entries(0)], sorted(slots))
        self.assertEqual([s for s, _ in store.entries(256)], [256, 65536, 70000])


class ProvidersAgreeTests(SynchronousTestCase):
    """The LMDB and in-memory stores hold the same data after the same commits."""

    def setUp(self):
        self.lmdb = LMDBStore(self.mktemp(), CONFIG, map_bytes=TEST_MAP_BYTES)
        self.addCleanup(self.lmdb.close)
        self.memory = MemoryStore(CONFIG)

    def test_same_results_and_snapshot(self):
        """The same committed slots (writes, transactions, sessions) give the same results, snapshot bytes and history."""
        session = Request(Op.APPEND, b"a", b"s", client_id=1, sequence=1)
        cas = encode_request(compare_and_swap(b"c", b"3", expected_version=1))
        committed = [
            (1, batch(put(b"b", b"1"), append(b"a", b"x"), b"junk")),
            (2, NOOP),
            (3, batch(delete(b"b"), put(b"c", b"2"), append(b"a", b"y"))),
            (4, batch(encode_request(Request(Op.OPEN_SESSION)), encode_request(session), cas, cas)),
            (5, batch(encode_request(session), encode_request(Request(Op.TXN, txn=Txn(
                (), (DeleteRange(b"\x00", TO_THE_END, True), Range(b"a"))))))),
        ]
        results = [s.commit(Commit(None, [], None, False, committed)) for s in (self.lmdb, self.memory)]
        self.assertEqual(results[0], results[1])
        self.assertEqual(self.lmdb.snapshot_data(), self.memory.snapshot_data())
        self.assertEqual(self.lmdb.history(0, 100), self.memory.history(0, 100))

    def test_snapshot_crosses_providers(self):
        """Data snapshotted from an LMDB store installs into a memory store, and back."""
        self.lmdb.commit(Commit(None, [], None, False, [(1, batch(put(b"k", b"v"), put(b"j", b"w")))]))
        data = self.lmdb.snapshot_data()
        self.memory.commit(Commit(None, [], Snapshot(1, CONFIG, data), True, []))
        self.assertEqual(self.memory.snapshot_data(), data)
        self.memory.commit(Commit(None, [], None, False, [(2, batch(delete(b"j")))]))
        self.lmdb.commit(Commit(None, [], Snapshot(2, CONFIG, self.memory.snapshot_data()), True, []))
        self.assertEqual(
            [(r.key, r.value) for r in decode_snapshot(self.lmdb.snapshot_data()).records],
            [(b"k", b"v")],
        )


# --- plugins -----------------------------------------------------------------


class StoreFactoryTests(SynchronousTestCase):
    """Storage providers are found by name among the kvpaxos.plugins plugins."""

    def test_both_found(self):
        """Plugin discovery finds the lmdb and memory factories, each a full IStoreFactory."""
        factories = store_factories()
        self.assertTrue({"lmdb", "memory"} <= set(factories))
        for name, factory in factories.items():
            self.assertTrue(verifyObject(IStoreFactory, factory))
            self.assertEqual(factory.name, name)
            self.assertIsInstance(factory.description, str)

    def test_lmdb_opens_store(self):
        """The lmdb factory opens an LMDBStore in the directory, bootstrapped with the config."""
        store = find_store_factory("lmdb").open(self.mktemp(), CONFIG)
        self.addCleanup(store.close)
        self.assertIsInstance(store, LMDBStore)
        self.assertTrue(verifyObject(INodeStore, store))
        self.assertEqual(store.snapshot(), Snapshot(0, CONFIG))

    def test_memory_ignores_directory(self):
        """The memory factory opens a MemoryStore and creates nothing in the directory."""
        directory = self.mktemp()
        store = find_store_factory("memory").open(directory, CONFIG)
        self.assertIsInstance(store, MemoryStore)
        self.assertTrue(verifyObject(INodeStore, store))
        self.assertEqual(store.snapshot(), Snapshot(0, CONFIG))
        self.assertFalse(os.path.exists(directory))

    def test_unknown_name(self):
        """An unknown name raises UnknownStoreError naming the providers there are."""
        error = self.assertRaises(UnknownStoreError, find_store_factory, "floppy")
        self.assertIn("floppy", str(error))
        self.assertIn("lmdb, memory", str(error))


class ImportTests(SynchronousTestCase):
    """The store modules do not import the provider registry (no import circle)."""

    def test_providers_not_imported_by_stores(self):
        """Importing both store modules in a fresh interpreter loads neither providers.py nor the plugins."""
        import subprocess
        import sys

        code = (
            "import sys, kvpaxos.storage.lmdb, kvpaxos.storage.memory;"
            "print(sorted(m for m in sys.modules"
            " if m in ('kvpaxos.storage.providers', 'kvpaxos.plugins')))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, b"[]"), done.stderr)
