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

from kvpaxos.client import Client
from kvpaxos.testing.linearizability import Operation, check
from kvpaxos.testing.processes import ProcessCluster
from kvpaxos.testing.recorder import APPEND_KEYS, PUT_KEYS, Recorder

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
        final = Client(endpoints, timeout_s=10.0)
        self.addCleanup(final.close)
        values = {key: final.get(key) or b"" for key in APPEND_KEYS}
        for key, token in acked:
            self.assertIn(token, values[key], f"acknowledged append {token!r} to {key!r} lost")
        # Exactly once: the clients' sessions keep (client_id, sequence) across
        # retries, through the leader's death, so no append is applied twice.
        for op in history:
            if op.kind == "append":
                self.assertLessEqual(values[op.key].count(op.input), 1, f"{op.input!r} applied twice")
        for key in PUT_KEYS + APPEND_KEYS:
            now = time.monotonic()
            history.append(Operation(0, "get", key, output=final.get(key), call=now, ret=time.monotonic()))
        verdict = check(history, time_limit_s=60)
        self.assertEqual(verdict.outcome, "ok", verdict.explain())
        self.assertGreater(len(history), 100)
        print(f"\nchecked a real-process history of {len(history)} operations")
