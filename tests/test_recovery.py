"""
C{--force-new-cluster} (issue 13, part 4): the one surviving member of a
cluster that lost its quorum becomes a one-node cluster with its data, a
new cluster id, the writes it accepted kept, and no member change from the
old cluster in force.
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvpaxos.node.recovery import RecoveryRefused, force_new_cluster
from kvpaxos.paxos.config import ChangeKind, Config, ConfigChange, MemberAddress
from kvpaxos.paxos.messages import NOOP, Ballot, Batch
from kvpaxos.paxos.state import Entry
from kvpaxos.storage.interfaces import Commit
from kvpaxos.storage.providers import find_store_factory
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.v1 import kv_pb2


class ForceNewClusterStoreTests(SynchronousTestCase):
    def open(self, storage="lmdb"):
        config = Config(frozenset({1, 2, 3})).with_addresses(
            {n: MemberAddress(f"127.0.0.1:{n}000", f"127.0.0.1:{n}001") for n in (1, 2, 3)}).with_cluster_id(99)
        store = find_store_factory(storage).open(self.mktemp(), config)
        self.addCleanup(store.close)
        return store

    def test_rewrite(self):
        """
        After an applied member change (a learner added), the member set is
        this node alone under a new id; the accepted entries after the
        applied slot stay, member changes among them made no-ops.
        """
        store = self.open()
        ballot = Ballot(4, 2)
        learner = ConfigChange(ChangeKind.ADD_LEARNER, 4, "127.0.0.1:4000", "")
        store.commit(Commit(entries=[(1, Entry(ballot, learner))], committed=[(1, learner)]))
        self.assertEqual(store.applied_index(), 1)
        accepted = [(2, Entry(ballot, Batch((b"w2",)))), (3, Entry(ballot, ConfigChange(ChangeKind.REMOVE, 1))),
                    (4, Entry(ballot, Batch((b"w4",))))]
        store.commit(Commit(entries=accepted))
        line = force_new_cluster(store, 1, "127.0.0.1:1000", "127.0.0.1:1001")
        snapshot = store.snapshot()
        self.assertEqual((snapshot.index, snapshot.config.voters, snapshot.config.learners),
                         (1, frozenset({1}), frozenset()))
        self.assertNotIn(snapshot.config.cluster_id, (0, 99))
        self.assertEqual(snapshot.config.peer_addresses(), {1: "127.0.0.1:1000"})
        self.assertEqual(store.entries(2), [accepted[0], (3, Entry(ballot, NOOP)), accepted[2]])
        self.assertIn("1 member changes among them made no-ops", line)
        self.assertIn("it was one of voters [1, 2, 3]", line)
        # Forcing again is refused: the node is the only member already.
        error = self.assertRaises(RecoveryRefused, force_new_cluster, store, 1, "127.0.0.1:1000", "127.0.0.1:1001")
        self.assertIn("already the only member", str(error))

    def test_new_ids_differ(self):
        """Two forcings of the same state give two ids, neither the old one."""
        ids = set()
        for _ in range(2):
            store = self.open()
            force_new_cluster(store, 2, "a:1", "a:2")
            ids.add(store.snapshot().config.cluster_id)
        self.assertEqual(len(ids), 2)
        self.assertNotIn(99, ids)

    def test_refusals(self):
        """A store with no member set (a joining node's), or a node that is not a voter, is refused."""
        store = find_store_factory("lmdb").open(self.mktemp(), Config(frozenset()))
        self.addCleanup(store.close)
        error = self.assertRaises(RecoveryRefused, force_new_cluster, store, 1, "a:1", "a:2")
        self.assertIn("still joining", str(error))
        error = self.assertRaises(RecoveryRefused, force_new_cluster, self.open(), 7, "a:1", "a:2")
        self.assertIn("not a voter", str(error))


class ForceNewClusterTests(TestCase):
    def test_survivor_becomes_a_one_node_cluster(self):
        cluster = ProcessCluster(self.mktemp(), size=3)
        self.addCleanup(cluster.stop)
        cluster.start()
        leader = cluster.nodes[cluster.wait_for_leader(timeout_s=20)]
        for i in range(30):
            leader.kv().Put(kv_pb2.PutRequest(key=b"k%02d" % i, value=b"v%d" % i), timeout=5)
        cluster.wait_for(lambda: all(n.status().applied_index >= leader.status().chosen_index
                                     for n in cluster.nodes.values()), 10, "every member to apply")
        old_id = leader.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5).cluster_id
        survivor = 1
        for node_id in (2, 3):
            cluster.kill(node_id, signal.SIGKILL)
        cluster.kill(survivor, signal.SIGTERM)
        cluster.nodes[survivor].close_channel()
        cluster.start(survivor, flags=("--force-new-cluster",))
        node = cluster.nodes[survivor]
        cluster.wait_for_leader(timeout_s=20, among=[survivor])
        self.assertIn("is now the only member of a new cluster", node.log())
        members = node.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5)
        self.assertEqual([m.member_id for m in members.members], [survivor])
        self.assertNotEqual(members.cluster_id, old_id)
        kv = node.kv()
        for i in range(30):
            self.assertEqual(kv.Get(kv_pb2.GetRequest(key=b"k%02d" % i), timeout=5).value, b"v%d" % i)
        kv.Put(kv_pb2.PutRequest(key=b"after", value=b"x"), timeout=5)
        # Restarted without the flag, it stays the cluster it became.
        cluster.kill(survivor, signal.SIGTERM)
        node.close_channel()
        cluster.start(survivor)
        cluster.wait_for_leader(timeout_s=20, among=[survivor])
        self.assertEqual(node.kv().Get(kv_pb2.GetRequest(key=b"after"), timeout=5).value, b"x")
        self.assertEqual(node.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5).cluster_id,
                         members.cluster_id)
        self.assertTrue(os.path.exists(cluster.data_directory(survivor)))
