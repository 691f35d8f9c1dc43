"""
Regression tests for bugs found in review: a leader's chosen index moves only
by its own quorums, and a correct acceptor survives stale messages.
"""

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.paxos import (
    Ballot,
    Batch,
    Catchup,
    Config,
    InstallSnapshot,
    Snapshot,
)
from tests.paxos_helpers import Cluster


class LeaderLearnsOnlyFromItsQuorumsTests(SynchronousTestCase):
    """A (possibly deposed) leader ignores chosen values others announce."""

    def test_leader_ignores_install_snapshot(self):
        """
        A late InstallSnapshot does not move a leader's chosen index: its
        heartbeats would otherwise make followers learn its own ballot's
        values for slots chosen in a later ballot.
        """
        cluster = Cluster((1, 2, 3))
        leader = cluster.elect(1)
        chosen = leader.chosen_index
        snapshot = Snapshot(chosen + 5, Config(frozenset({1, 2, 3})), b"")
        leader.step(InstallSnapshot(2, 1, snapshot))
        self.assertEqual(leader.chosen_index, chosen)
        self.assertTrue(leader.is_leader)

    def test_leader_ignores_catchup(self):
        """A late Catchup does not move a leader's chosen index or empty its window."""
        cluster = Cluster((1, 2, 3))
        leader = cluster.elect(1)
        chosen = leader.chosen_index
        entries = ((Ballot(9, 2), Batch((b"other",))),)
        leader.step(Catchup(2, 1, chosen + 1, entries, chosen + 1))
        self.assertEqual(leader.chosen_index, chosen)
        leader.propose(b"mine")
        cluster.deliver()
        cluster.tick(3)
        cluster.deliver()
        self.assertIn(b"mine", cluster.commands(2))
        self.assertNotIn(b"other", cluster.commands(1))
