"""
Membership with real processes (issue 11): twistd nodes on 127.0.0.1 grow,
shrink, lose their leader, get a wiped member back and catch a member up on
a large store, all through the operator's CLI over the admin port, while
clients write through the client library.  Every run's history must pass
the linearizability checker and keep every acknowledged append.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.client import Client
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.testing.recorder import final_check, run_recorders

CLIENTS = 3


def members(cluster: ProcessCluster, via: int) -> dict:
    """{id: role} of the member list node C{via} shows (CLI, --json)."""
    listed = try_members(cluster, via)
    if listed is None:
        raise AssertionError(f"member list via node {via} failed")
    return listed


def try_members(cluster: ProcessCluster, via: int):
    """L{members}, or None if the CLI failed (for a wait to try again)."""
    code, parsed, error = cluster.admin(via, "member", "list")
    if code != 0 or parsed is None:
        return None
    return {m["member_id"]: m["role"] for m in parsed["members"]}


def shows(cluster: ProcessCluster, via: int, test) -> bool:
    """Whether node C{via}'s member list could be read and passes C{test}."""
    listed = try_members(cluster, via)
    return listed is not None and test(listed)


def caught_up(cluster: ProcessCluster, node_id: int, leader: int) -> bool:
    """Whether C{node_id} has applied everything the leader had chosen a moment ago."""
    try:
        target = cluster.nodes[leader].status().chosen_index
        return cluster.nodes[node_id].status().applied_index >= target
    except Exception:
        return False


class MembershipClusterTests(SynchronousTestCase):
    """An operator changes the member set of a serving cluster with the CLI."""

    def cluster(self, size: int = 3, **keywords) -> ProcessCluster:
        cluster = ProcessCluster(self.mktemp(), size=size, **keywords)
        self.addCleanup(cluster.stop)
        cluster.start()
        cluster.wait_for_leader(timeout_s=20)
        return cluster

    def admin_ok(self, cluster, via, *arguments, attempts_s: float = 30.0):
        """Run an admin command until it succeeds (a lagging learner is refused for a while)."""
        last = None

        def attempt():
            nonlocal last
            code, parsed, error = cluster.admin(via, *arguments)
            last = (code, error)
            return code == 0 and (parsed if parsed is not None else True)

        return cluster.wait_for(attempt, attempts_s, f"{' '.join(arguments)} ({last})", interval_s=0.5)

    def add_and_promote(self, cluster, node_id, via, by_command: bool):
        """
        Add C{node_id}: with C{member add} first when C{by_command}, else
        only by starting it with C{join}; then promote it once caught up.
        """
        node = cluster.add_node(node_id)
        if by_command:
            self.admin_ok(
                cluster, via, "member", "add", str(node_id),
                "--peer", f"127.0.0.1:{node.peer_port}", "--client", node.endpoint,
            )
            self.assertEqual(members(cluster, via).get(node_id), "learner")
        cluster.start(node_id)
        cluster.wait_for(lambda: shows(cluster, via, lambda m: m.get(node_id) == "learner"), 30,
                         f"node {node_id} a learner")
        self.admin_ok(cluster, via, "member", "promote", str(node_id), attempts_s=60)
        cluster.wait_for(lambda: shows(cluster, via, lambda m: m.get(node_id) == "voter"), 30,
                         f"node {node_id} a voter")

    def test_grow_and_shrink(self):
        """
        3 -> 5 (one member added with `member add`, one only by --join) and
        5 -> 3 (removing two of the first members, the leader among them)
        while clients write: the history is linearizable and nothing
        acknowledged is lost.
        """
        cluster = self.cluster()
        endpoints = [n.endpoint for n in cluster.nodes.values()]
        history, acked, stop = run_recorders(endpoints, CLIENTS, seed=11)
        try:
            cluster.wait_for(lambda: len(acked) >= 10, 30, "appends before the changes")
            self.add_and_promote(cluster, 4, via=1, by_command=True)
            self.add_and_promote(cluster, 5, via=2, by_command=False)
            self.assertEqual(
                members(cluster, 3), {1: "voter", 2: "voter", 3: "voter", 4: "voter", 5: "voter"}
            )
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 10, 30, "appends with five members")
            leader = cluster.wait_for_leader(timeout_s=20)
            other = next(i for i in (1, 2, 3) if i != leader)
            stopped = []
            for removed in (leader, other):
                via = next(i for i in (4, 5) if i != removed)
                # It may stop as soon as its removal is chosen, before the
                # answer to the remove arrives.
                removed_node = cluster.nodes[removed]
                removed_node.expected = False
                self.admin_ok(cluster, via, "member", "remove", str(removed))
                cluster.wait_for(lambda: shows(cluster, via, lambda m: removed not in m), 30,
                                 f"node {removed} removed")
                # A removed node learns of its removal (the leader's last
                # heartbeat, or every member refusing its link as
                # REMOVED_MEMBER) and stops by itself, exit 0.
                cluster.wait_for(lambda: removed_node.process.poll() is not None, 20,
                                 f"node {removed} to stop", exits_allowed=True)
                self.assertEqual(removed_node.process.returncode, 0, removed_node.log()[-2000:])
                self.assertIn("was removed from the cluster", removed_node.log())
                stopped.append(removed)
            left = sorted(members(cluster, 4))
            self.assertEqual(len(left), 3)
            new_leader = cluster.wait_for_leader(timeout_s=20, among=left)
            self.assertIn(new_leader, left)
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 10, 30, "appends after the shrink")
        finally:
            history = stop()
        survivors = [cluster.nodes[i].endpoint for i in left]
        checked = final_check(self, survivors, history, acked)
        print(
            f"\ngrow 3->5, shrink 5->3: checked {checked} operations; removed {leader} (the leader)"
            f" and {other}; both stopped by themselves (exit 0): {stopped}"
        )

    def test_replace_wiped_member(self):
        """
        A member whose disk was replaced is removed, added back empty with
        its old addresses and id, catches up, and votes again.
        """
        cluster = self.cluster()
        endpoints = [n.endpoint for n in cluster.nodes.values()]
        history, acked, stop = run_recorders(endpoints, CLIENTS, seed=12)
        try:
            cluster.wait_for(lambda: len(acked) >= 10, 30, "appends before the wipe")
            leader = cluster.wait_for_leader()
            victim = next(i for i in cluster.nodes if i != leader)
            cluster.kill(victim)
            cluster.wipe(victim)
            self.admin_ok(cluster, leader, "member", "remove", str(victim))
            node = cluster.nodes[victim]
            self.admin_ok(
                cluster, leader, "member", "add", str(victim),
                "--peer", f"127.0.0.1:{node.peer_port}", "--client", node.endpoint,
            )
            join = [n.endpoint for i, n in cluster.nodes.items() if i != victim]
            cluster.add_node(victim, join=join)
            cluster.start(victim)
            self.admin_ok(cluster, leader, "member", "promote", str(victim), attempts_s=60)
            cluster.wait_for(lambda: caught_up(cluster, victim, leader), 60, "the replaced member caught up")
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 10, 30, "appends after the replacement")
        finally:
            history = stop()
        checked = final_check(self, [n.endpoint for n in cluster.nodes.values()], history, acked)
        print(f"\nreplace a wiped member: checked {checked} operations")


class LargeStoreTests(SynchronousTestCase):
    """A member added to a store of more than 256 MiB catches up by a streamed snapshot."""

    def test_add_to_large_store(self):
        """
        Fill a store past 256 MiB (compacted, so a new member needs the
        snapshot), add a member, kill it during its transfer, restart it:
        it catches up, while clients keep writing with a linearizable
        history.  Prints how long the add took.
        """
        cluster = ProcessCluster(self.mktemp(), size=3, settings={"snapshot_interval": 64})
        self.addCleanup(cluster.stop)
        cluster.start()
        leader = cluster.wait_for_leader(timeout_s=20)
        endpoints = [n.endpoint for n in cluster.nodes.values()]
        filler = Client(endpoints, timeout_s=30.0)
        self.addCleanup(filler.close)
        value = os.urandom(1 << 19)
        total = 0
        started = time.monotonic()
        for i in range(520):
            filler.put(f"big/{i:05d}".encode(), value)
            total += len(value)
        fill_s = time.monotonic() - started
        self.assertGreater(total, 256 << 20)
        history, acked, stop = run_recorders(endpoints, CLIENTS, seed=13)
        try:
            cluster.wait_for(lambda: len(acked) >= 10, 30, "appends before the add")
            node = cluster.add_node(4)
            started = time.monotonic()
            cluster.start(4)
            cluster.wait_for(lambda: "receiving a snapshot" in node.log(), 60, "the transfer to begin")
            time.sleep(0.5)  # into its transfer (the state takes several seconds to stage)
            self.assertNotIn("installing the snapshot", node.log(), "the transfer ended before the kill")
            cluster.kill(4, signal.SIGKILL)
            killed_at = len(node.log())
            cluster.start(4)
            cluster.wait_for(lambda: caught_up(cluster, 4, leader), 300, "the new member caught up")
            add_s = time.monotonic() - started
            after = node.log()[killed_at:]
            self.assertIn("receiving a snapshot", after, "no new transfer after the restart")
            self.assertIn("installing the snapshot", after)
            self.assertEqual(
                Client([node.endpoint], timeout_s=10.0).get(b"big/00000", consistency="serializable"),
                value,
            )
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 10, 30, "appends after the add")
        finally:
            history = stop()
        checked = final_check(self, endpoints, history, acked)
        print(
            f"\nlarge store: {total / (1 << 20):.0f} MiB filled in {fill_s:.1f}s;"
            f" member added (killed mid-transfer, restarted) and caught up in {add_s:.1f}s;"
            f" checked {checked} operations"
        )
