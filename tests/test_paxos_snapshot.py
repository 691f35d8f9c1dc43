"""
Tests for log compaction and snapshot install: a replica with a state
machine snapshots it every C{snapshot_interval} applied slots and drops the
log before; a follower behind that point is sent the snapshot (compare raft
§7, InstallSnapshot).
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Accept,
    Ballot,
    Batch,
    Heartbeat,
    InstallSnapshot,
    Replica,
    Snapshot,
)
from tests.paxos_helpers import (
    TEST_OPTIONS,
    Cluster,
    DurableLogStateMachine,
    LogStateMachine,
    config,
    lone,
    options,
    take,
)

HB = TEST_OPTIONS.heartbeat_ticks
B1 = Batch((b"one",))
B2 = Batch((b"two",))


def snapshotting(interval=3):
    """Return a three-node cluster with state machines, led by node 1."""
    c = Cluster(opts=options(snapshot_interval=interval), state_machines=True)
    c.elect(1)
    return c


def propose_each(c, commands):
    """Propose each command in its own turn (so each gets its own slot)."""
    for command in commands:
        c[1].propose(command)
        c.deliver()


class TakeSnapshotTests(SynchronousTestCase):
    """When and how a replica compacts its log."""

    def test_snapshot_after_interval(self):
        """
        After snapshot_interval applied slots a Ready carries a snapshot of
        the state machine at the applied index (not to be installed).
        """
        c = snapshotting(3)
        propose_each(c, [b"a", b"b", b"c"])
        snapshots = [rd for rd in c.readies[1] if rd.snapshot is not None]
        self.assertEqual(len(snapshots), 1)
        rd = snapshots[0]
        self.assertEqual(rd.snapshot, Snapshot(3, config(1, 2, 3), b"a\x00b\x00c"))
        self.assertFalse(rd.install_snapshot)

    def test_snapshot_drops_log(self):
        """Once the snapshot is saved, storage keeps no entry at or below its index."""
        c = snapshotting(3)
        propose_each(c, [b"a", b"b", b"c", b"d"])
        storage = c.storages[1]
        self.assertEqual(storage.snapshot().index, 3)
        self.assertEqual([slot for slot, _ in storage.entries(1)], [4])

    def test_no_state_machine_no_snapshot(self):
        """A replica without a state machine never compacts its log."""
        c = Cluster(opts=options(snapshot_interval=1))
        c.elect(1)
        propose_each(c, [b"a", b"b", b"c"])
        self.assertEqual([rd for rd in c.readies[1] if rd.snapshot is not None], [])

    def test_restart_from_snapshot_replays_after_it(self):
        """
        A replica rebuilt over storage holding a snapshot starts applied at
        the snapshot and replays only the chosen slots after it.
        """
        c = snapshotting(3)
        propose_each(c, [b"a", b"b", b"c", b"d"])
        again = lone(1, storage=c.storages[1], opts=c.opts)
        self.assertEqual(again.applied, 3)
        self.assertEqual(take(again).committed, [(4, Batch((b"d",)))])


class InstallSnapshotTests(SynchronousTestCase):
    """A follower behind the leader's compaction point."""

    def lagging(self):
        """Return a cluster whose node 3 missed slots the leader compacted."""
        c = snapshotting(3)
        c.isolated.add(3)
        propose_each(c, [b"a", b"b", b"c", b"d"])
        c.isolated.clear()
        c.tick(2 * HB)
        return c

    def test_lagging_follower_gets_install_snapshot(self):
        """A follower asking for slots the leader compacted away is sent the snapshot."""
        c = self.lagging()
        sent = c.sent(1, InstallSnapshot)
        self.assertEqual([(m.dst, m.snapshot.index) for m in sent], [(3, 3)])

    def test_install_snapshot_ready(self):
        """
        The follower's Ready says to install the snapshot, and its committed
        slots continue right after the snapshot's index.
        """
        c = self.lagging()
        (rd,) = [rd for rd in c.readies[3] if rd.install_snapshot]
        self.assertEqual(rd.snapshot.index, 3)
        later = [slot for r in c.readies[3][c.readies[3].index(rd):] for slot, _ in r.committed]
        self.assertEqual(later, [4])

    def test_follower_state_matches_after_install(self):
        """After installing the snapshot and catching up, the follower's state equals the leader's."""
        c = self.lagging()
        self.assertEqual(c.machines[3].commands, [b"a", b"b", b"c", b"d"])
        self.assertEqual(c[3].applied, c[1].applied)

    def test_older_snapshot_ignored(self):
        """An InstallSnapshot at or below the chosen index changes nothing."""
        r = lone(1, state_machine=LogStateMachine())
        r.step(Accept(2, 1, Ballot(1, 2), 1, (B1, B2), 0))
        r.step(Heartbeat(2, 1, Ballot(1, 2), 2, 0))
        take(r)
        r.step(InstallSnapshot(2, 1, Snapshot(1, config(1, 2, 3), b"old")))
        rd = take(r)
        self.assertIsNone(rd.snapshot)
        self.assertFalse(rd.install_snapshot)
        self.assertEqual(r.chosen_index, 2)


class DurableStateMachineTests(SynchronousTestCase):
    """
    A durable state machine (it keeps its state with its applied index) is
    its own snapshot: compaction copies nothing, and a snapshot is taken
    only to be sent.
    """

    def cluster(self):
        c = Cluster(opts=options(snapshot_interval=3), state_machines=DurableLogStateMachine)
        c.elect(1)
        return c

    def test_compaction_copies_nothing(self):
        """The compaction point carries no data, and the log before it is dropped."""
        c = self.cluster()
        propose_each(c, [b"a", b"b", b"c", b"d"])
        (rd,) = [rd for rd in c.readies[1] if rd.snapshot is not None]
        self.assertEqual(rd.snapshot, Snapshot(3, config(1, 2, 3), None))
        self.assertEqual(c.storages[1].snapshot().index, 3)
        self.assertEqual([slot for slot, _ in c.storages[1].entries(1)], [4])
        self.assertEqual(c.machines[1].taken, [])

    def test_lagging_follower_gets_state_now(self):
        """
        A follower behind the compaction point is sent the state machine's
        state as it is when asked, labelled with the index it has applied
        (here past the compaction point), and catches up from there.
        """
        c = self.cluster()
        c.isolated.add(3)
        propose_each(c, [b"a", b"b", b"c", b"d"])
        c.isolated.clear()
        c.tick(2 * HB)
        sent = c.sent(1, InstallSnapshot)
        self.assertEqual([(m.dst, m.snapshot.index, m.snapshot.data) for m in sent],
                         [(3, 4, b"a\x00b\x00c\x00d")])
        self.assertEqual(sent[0].snapshot.config, config(1, 2, 3))
        self.assertEqual(c.machines[1].taken, [4])
        self.assertEqual(c[3].applied, c[1].applied)
        self.assertEqual(c.machines[3].commands, [b"a", b"b", b"c", b"d"])

    def test_restarted_replica_sends_state_now(self):
        """A replica restarted over storage with a data-less compaction point still serves one."""
        c = self.cluster()
        c.isolated.add(3)
        propose_each(c, [b"a", b"b", b"c", b"d"])
        self.assertIsNone(c.storages[1].snapshot().data)
        machine = c.machines[1]
        # Durable: the state and its applied index outlive the process.
        c.network = [m for m in c.network if m.dst != 1]
        c.replicas[1] = Replica(1, c.storages[1], random.Random(7), c.opts,
                                state_machine=machine, applied=machine.slots[-1])
        self.assertEqual(c[1].snapshot, Snapshot(3, config(1, 2, 3), None))
        c.elect(1)
        c.isolated.clear()
        c.tick(2 * HB)
        sent = c.sent(1, InstallSnapshot)
        self.assertTrue(sent)
        self.assertTrue(all(m.snapshot.data is not None for m in sent))
        self.assertEqual(c.machines[3].commands, c.machines[1].commands)
        self.assertEqual(c.machines[1].commands[:4], [b"a", b"b", b"c", b"d"])
        self.assertEqual(c[3].applied, c[1].applied)
