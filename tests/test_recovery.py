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
        """The member set is this node alone under the new id; accepted writes stay; member changes become no-ops."""
        store = self.open()
        ballot = Ballot(4, 2)
        accepted = [(1, Entry(ballot, Batch((b"w1",)))), (2, Entry(ballot, ConfigChange(ChangeKind.REMOVE, 1))),
                    (3, Entry(ballot, Batch((b"w3",))))]
        store.commit(Commit(entries=accepted))
        line = force_new_cluster(store, 1, "127.0.0.1:1000", "127.0.0.1:1001", 1234)
        snapshot = store.snapshot()
        self.assertEqual((snapshot.index, snapshot.config.voters, snapshot.config.learners),
                         (0, frozenset({1}), frozenset()))
        self.assertEqual(snapshot.config.cluster_id, 1234)
        self.assertEqual(snapshot.config.peer_addresses(), {1: "127.0.0.1:1000"})
        self.assertEqual(store.entries(1), [accepted[0], (2, Entry(ballot, NOOP)), accepted[2]])
        self.assertIn("1 member changes among them made no-ops", line)
        self.assertIn("it was one of voters [1, 2, 3]", line)

    def test_refusals(self):
        """A store with no member set (a joining node's) is refused."""
        store = find_store_factory("lmdb").open(self.mktemp(), Config(frozenset()))
        self.addCleanup(store.close)
        error = self.assertRaises(RecoveryRefused, force_new_cluster, store, 1, "a:1", "a:2", 5)
        self.assertIn("still joining", str(error))


def set_key(path: str, line: str, present: bool) -> None:
    """Put C{line} before the [peers] table of a node's TOML file, or take it out."""
    with open(path) as f:
        text = f.read()
    text = text.replace(line + "\n", "")
    if present:
        text = text.replace("[peers]", f"{line}\n[peers]") if "[peers]" in text else text + line + "\n"
    with open(path, "w") as f:
        f.write(text)


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
        config = cluster.nodes[survivor].config_path
        set_key(config, "force_new_cluster = true", True)
        cluster.start(survivor)
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
        set_key(config, "force_new_cluster = true", False)
        cluster.start(survivor)
        cluster.wait_for_leader(timeout_s=20, among=[survivor])
        self.assertEqual(node.kv().Get(kv_pb2.GetRequest(key=b"after"), timeout=5).value, b"x")
        self.assertEqual(node.cluster().MemberList(kv_pb2.MemberListRequest(), timeout=5).cluster_id,
                         members.cluster_id)
        self.assertTrue(os.path.exists(cluster.data_directory(survivor)))
