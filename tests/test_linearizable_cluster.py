"""
A real-process linearizability test: three twistd nodes, concurrent clients
through L{kvpaxos.client} against different nodes, the leader killed and a
follower paused (cut off from everyone) mid-run.  The recorded history must
pass the linearizability checker, and every acknowledged append must survive.
"""

import signal
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.testing.recorder import Recorder, final_check

CLIENTS = 4


class LinearizableClusterTests(SynchronousTestCase):
    """The whole system, under faults, is linearizable and loses nothing."""

    def test_history_under_faults(self):
        """
        Clients writing and reading through different nodes while the leader
        is killed and a follower is isolated leave a linearizable history,
        every acknowledged append is in the final values, and none is applied
        twice.
        """
        cluster = ProcessCluster(self.mktemp(), size=3, proxied=True)
        self.addCleanup(cluster.stop)
        cluster.start()
        leader = cluster.wait_for_leader(timeout_s=20)
        endpoints = [n.endpoint for n in cluster.nodes.values()]
        history, acked, lock, stop = [], [], threading.Lock(), threading.Event()
        recorders = [
            Recorder(i, endpoints[i % 3:] + endpoints[:i % 3], history, lock, acked, seed=i)
            for i in range(1, CLIENTS + 1)
        ]
        threads = [threading.Thread(target=r.run, args=(stop,)) for r in recorders]
        for thread in threads:
            thread.start()
        try:
            cluster.wait_for(lambda: len(acked) >= 20, 30, "appends before the faults")
            cluster.kill(leader, signal.SIGKILL)
            survivors = [i for i in cluster.nodes if i != leader]
            cluster.wait_for_leader(timeout_s=20, among=survivors)
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 20, 30, "appends after the kill")
            cluster.start(leader)
            new_leader = cluster.wait_for_leader(timeout_s=20)
            isolated = next(i for i in cluster.nodes if i != new_leader)
            cluster.isolate(isolated)
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 20, 30, "appends while a follower is isolated")
            time.sleep(1.5)  # long enough for the isolated node to time out and try to campaign
            behind = cluster.nodes[isolated].status().applied_index
            ahead = cluster.nodes[new_leader].status().chosen_index
            self.assertLess(behind, ahead, "the isolated node kept up: it was not isolated")
            cluster.reconnect(isolated)
            count = len(acked)
            cluster.wait_for(lambda: len(acked) >= count + 20, 30, "appends after the isolation")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        # Exactly once (checked by final_check): the clients' sessions keep
        # (client_id, sequence) across retries, through the leader's death.
        checked = final_check(self, endpoints, history, acked)
        self.assertGreater(checked, 100)
        print(f"\nchecked a real-process history of {checked} operations")
